"""Attributes dpprof replaces in torch while it watches a user's script, and puts back afterwards.

``dpprof run`` attaches to an unchanged script, so the few places where torch offers no hook are wrapped
for the session's duration only (each wrapper calls the original with the same arguments and returns its
result): ``Optimizer.__init__`` (creation order), ``GradScaler.step`` (skipped steps),
``torch.autograd.backward`` (``--step-on backward``), the profilers' start methods (a script's own
profiler). Restored in reverse order, so patches stacked on one attribute unwind correctly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

#: Set on every wrapper: the function it wraps.
ORIGINAL = "__dpprof_original__"


class Patches:
    """A stack of replaced attributes; :meth:`restore` puts every original back."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any, bool]] = []

    def replace(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name = value``, remembering what was there (for a class: its own raw attribute)."""
        if isinstance(owner, type):
            had = name in vars(owner)
            saved = vars(owner).get(name)
        else:
            had, saved = hasattr(owner, name), getattr(owner, name, None)
        self._saved.append((owner, name, saved, had))
        setattr(owner, name, value)

    def wrap(self, owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Replace ``owner.name`` with ``make(original)`` (named and documented like the original)."""
        original = getattr(owner, name)
        wrapper = functools.wraps(original)(make(original))
        setattr(wrapper, ORIGINAL, original)
        self.replace(owner, name, wrapper)

    def restore(self) -> None:
        while self._saved:
            owner, name, value, had = self._saved.pop()
            if had:
                setattr(owner, name, value)
            else:  # the attribute came from a base class: uncover it again
                delattr(owner, name)
