"""DP's phase marks in the user's own ``nn.DataParallel`` modules, without changing their class.

``dpprof profile`` builds its DP model as :class:`~dpprof.collect.strategies.MarkedDataParallel`. A user's
script builds plain ``nn.DataParallel`` (or its own subclass), so here the four methods DP's ``forward``
calls on itself (``scatter``, ``replicate``, ``parallel_apply``, ``gather``: torch/nn/parallel/
data_parallel.py, ``DataParallel.forward``) are wrapped once on the ``nn.DataParallel`` class. Each
wrapper calls the method it replaced with the same arguments and returns its result, inside the
``record_function`` range of :data:`~dpprof.vocabulary.DP_MARKS`, so the trace carries the same
names as the harness's and the analysis reads both alike. It marks a module only while a ``dpprof run``
session marks every DP module, or when the module was given to :func:`mark_dataparallel`; otherwise it
only calls through. The module's type, its pickling and a subclass's own overrides are untouched.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dpprof.collect.patches import ORIGINAL

_MARKED: weakref.WeakSet[Any] = weakref.WeakSet()
_MARK_ALL = [0]  # sessions now marking every DP module


def _wrap(mark: str, method: Callable[..., Any]) -> Callable[..., Any]:
    from torch.profiler import record_function

    from dpprof.collect.strategies import MarkedDataParallel

    @functools.wraps(method)
    def marked(self: Any, *args: Any, **kwargs: Any) -> Any:
        # MarkedDataParallel marks itself (it reaches here through super()): never twice.
        if (_MARK_ALL[0] or self in _MARKED) and not isinstance(self, MarkedDataParallel):
            with record_function(mark):
                return method(self, *args, **kwargs)
        return method(self, *args, **kwargs)

    setattr(marked, ORIGINAL, method)
    return marked


def install() -> None:
    """Wrap DP's four phase methods on the class (again where something replaced the wrappers since)."""
    from torch import nn

    from dpprof.vocabulary import DP_MARKS

    for phase, mark in DP_MARKS.items():
        current = vars(nn.DataParallel)[phase]
        if not hasattr(current, ORIGINAL):
            setattr(nn.DataParallel, phase, _wrap(mark, current))


def mark_dataparallel(model: Any) -> Any:
    """Mark the phases of this ``nn.DataParallel`` module (scatter, replicate, parallel_apply, gather) with
    the ``record_function`` ranges dpprof's analysis reads; returns ``model`` itself, unchanged in type
    and behaviour. Only DP's multi-GPU path reaches these phases: with one GPU only scatter runs, and
    without a GPU DP calls the module directly (no marks)."""
    from torch import nn

    if not isinstance(model, nn.DataParallel):
        raise TypeError(f"mark_dataparallel expects an nn.DataParallel module, got {type(model).__name__}")
    install()
    _MARKED.add(model)
    return model


@contextmanager
def marking_all() -> Iterator[None]:
    """Mark every DP module while the block runs (``dpprof run``: the script's DP modules, however made)."""
    install()
    _MARK_ALL[0] += 1
    try:
        yield
    finally:
        _MARK_ALL[0] -= 1
