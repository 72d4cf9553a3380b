"""dpprof's profiler window inside a user's script, which must never break the script.

Kineto runs one profiler per process. A script that starts its own ``torch.profiler.profile`` (or
``_KinetoProfile``, or the older ``torch.autograd.profiler.profile``) keeps it: their start methods are
watched for the session (:class:`~dpprof.collect.patches.Patches`), and when the script's profiler
starts, dpprof's window is skipped (or, if it is recording, stopped, keeping what it recorded) before
the script's profiler goes on. The same happens when starting dpprof's own window fails for any reason
(e.g. a profiler already enabled): one line on stderr, a warning in the manifest, and the run goes on
with step times, NVML and the manifest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from dpprof.collect.patches import Patches
from dpprof.collect.profiler import TraceWindow


class ScriptWindow:
    """Steps a :class:`TraceWindow` (or none) and yields to the script's own profiler."""

    def __init__(self, window: TraceWindow | None, say: Callable[[str], None]) -> None:
        self.window = window
        self.say = say
        self.steps = 0
        self.stopped_at: int | None = None  # first step index the window no longer covers
        self.skip_reason: str | None = None
        self._entered = False
        self._patches = Patches()
        if window is not None:
            self._watch_user_profilers()

    @property
    def running(self) -> bool:
        return self.window is not None and self.stopped_at is None

    def _watch_user_profilers(self) -> None:
        import torch.autograd.profiler as autograd_profiler
        import torch.profiler as torch_profiler
        from torch.profiler.profiler import _KinetoProfile

        own = self.window._prof if self.window is not None else None

        def starts(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            def make(start: Callable[..., Any]) -> Callable[..., Any]:
                def wrapped(prof: Any, *args: Any, **kwargs: Any) -> Any:
                    if prof is not own:
                        self.yield_to(what)
                    return start(prof, *args, **kwargs)
                return wrapped
            return make

        self._patches.wrap(torch_profiler.profile, "start", starts("torch.profiler.profile"))
        self._patches.wrap(_KinetoProfile, "start", starts("torch.profiler._KinetoProfile"))
        self._patches.wrap(autograd_profiler.profile, "__enter__", starts("torch.autograd.profiler.profile"))

    def begin(self) -> None:
        """Enter the window (its wait steps record nothing); skipped when a profiler is already on."""
        if self.window is None:
            return
        import torch

        if torch.autograd._profiler_enabled():  # C++'s view: any profiler, however it was started
            self.yield_to("a profiler already running")
            return
        self._guard(self.window.__enter__)
        self._entered = self.running

    def step(self) -> None:
        """One step has ended."""
        if self.running and self._entered:
            self._guard(self.window.step)  # type: ignore[union-attr]
        self.steps += 1

    def _guard(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # dpprof's profiler must not take the script down with it
            self._stop(f"dpprof's profiler failed ({type(exc).__name__}: {exc})", "stopped")

    def yield_to(self, what: str) -> None:
        """The script starts its own profiler: step aside once (later starts find the window stopped).
        A window already over has nothing to give up."""
        if not self.running or (self.window is not None and self.window.finished):
            return
        on = self._entered and self.window is not None and self.window.is_profiler_on(self.steps)
        self._stop(f"the script runs its own profiler ({what})", "stopped" if on else "skipped")

    def _stop(self, why: str, how: str) -> None:
        active = self._entered and self.window is not None and self.window.is_active_step(self.steps)
        self.stopped_at = self.steps
        if how == "stopped" and self._entered and self.window is not None:
            with contextlib.suppress(Exception):
                self.window.__exit__(None, None, None)  # saves what an active part recorded
        self._entered = False
        kept = ""
        if how == "stopped":
            kept = f" in step {self.steps} ({'its trace keeps what it recorded' if active else 'no trace'})"
        self.skip_reason = f"{why}: dpprof's profiler window {how}{kept}; step times, NVML and the manifest go on"
        self.say(self.skip_reason)

    def is_active_step(self, index: int) -> bool:
        return self.window is not None and self._covers(index) and self.window.is_active_step(index)

    def is_profiler_on(self, index: int) -> bool:
        return self.window is not None and self._covers(index) and self.window.is_profiler_on(index)

    def _covers(self, index: int) -> bool:
        return self.stopped_at is None or index < self.stopped_at

    def close(self) -> None:
        """End the window (torch saves a window cut short in its active part) and stop watching."""
        self._patches.restore()
        if self._entered and self.window is not None:
            self._entered = False
            self._guard(lambda: self.window.__exit__(None, None, None))  # type: ignore[union-attr]

    @property
    def files(self) -> list[Any]:
        return list(self.window.files) if self.window is not None else []
