"""dpprof's Python API, for scripts that mark their own steps (``dpprof.session``, ``dpprof.mark_dataparallel``).

    import dpprof
    with dpprof.session(out="traces") as s:      # the run directory dpprof run writes
        for x, y in loader:
            ...                                   # forward, backward, optimizer.step()
            s.step()                              # one step ends here

The session records what ``dpprof run`` records (docs/run-format.md): one trace per rank from the
profiler window, step times, NVML samples, the manifest (with ``script.api: true``). Under torchrun each
rank opens its own session and all ranks write into one run directory. Inside ``dpprof run`` (or another
session) ``session()`` opens nothing: that run records, and ``s.step()`` counts there only with
``dpprof run --step-on manual``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpprof.collect.dp_marks import mark_dataparallel

__all__ = ["Session", "mark_dataparallel", "session"]


class Session:
    """The handle ``session()`` yields: :meth:`step` ends a step; ``run_dir`` is where it all goes."""

    def __init__(self, inner: Any, forward_steps: bool = True) -> None:
        self._inner = inner
        self._forward = forward_steps
        self._ignored = False
        self.run_dir: Path = inner.run_dir

    def step(self) -> None:
        """The current training step has ended (call it after ``optimizer.step()``). Counted only when
        the session's steps are manual (``step_on="manual"``): with another step source, that source
        ends the steps and a call here is ignored (said once), so no step is counted twice."""
        if self._forward:
            self._inner.step()
        elif not self._ignored:
            self._ignored = True
            self._inner.say(f"s.step() ignored: steps end on {self._inner.step_on.describe()} "
                            "(only step_on=\"manual\", or dpprof run --step-on manual, counts s.step())")

    @property
    def steps(self) -> int:
        """Steps ended so far."""
        return int(self._inner.steps)


@contextlib.contextmanager
def session(out: str | os.PathLike[str] = "traces", *, run_name: str | None = None, step_on: str = "manual",
            batch_size: int | None = None, profile: bool = True, profile_wait: int = 2, profile_warmup: int = 1,
            profile_active: int = 3, all_threads: bool = True, record_shapes: bool = False,
            with_stack: bool = False, nvml_period_ms: int = 100, quiet: bool = False) -> Iterator[Session]:
    """Record the training inside the ``with`` block into a new run directory under ``out``.

    ``step_on``: ``"manual"`` (default: each ``s.step()`` ends a step) or what ``dpprof run --step-on``
    takes (``"optimizer"``, ``"backward:4"``, ``"function:train_step"``...). ``batch_size``: the global
    batch, when dim 0 of the model's first input is not it. The profiler window (``profile_*``, counted in
    steps) and NVML period are ``dpprof run``'s options. An exception leaving the block marks the run
    ``failed`` (``incomplete`` for Ctrl-C) and goes on; the files are complete on disk either way.
    """
    from dpprof.collect.config import validate_profiler
    from dpprof.collect.outputs import fresh_run_dir
    from dpprof.collect.run_config import (
        ScriptRunConfig,
        default_run_name,
        shared_run_name,
        torchrun_record,
        under_torchrun,
    )
    from dpprof.collect.script_runner import Outcome, last_line
    from dpprof.collect.script_session import ACTIVE, RunSession
    from dpprof.collect.stepping import find_function, parse_step_on

    if ACTIVE:  # inside dpprof run, or a session already open: that one records
        outer = ACTIVE[-1]
        yield Session(outer, forward_steps=outer.step_on.kind == "manual")
        return
    main = sys.modules.get("__main__")
    target = str(getattr(main, "__file__", None) or "python")
    cfg = ScriptRunConfig(target=target, args=sys.argv[1:], step_on=step_on, batch_size=batch_size,
                          command=[sys.executable, *sys.argv], created_unix_ns=time.time_ns(), quiet=quiet,
                          profile=profile, profile_wait=profile_wait, profile_warmup=profile_warmup,
                          profile_active=profile_active, profile_all_threads=all_threads,
                          record_shapes=record_shapes, with_stack=with_stack, nvml_period_ms=nvml_period_ms)
    validate_profiler(cfg)
    steps = parse_step_on(step_on)
    function = find_function(steps, main) if steps.kind == "function" else None  # before any directory
    torchrun = under_torchrun()
    name = run_name or (shared_run_name(target, False) if torchrun else
                        default_run_name(target, False, cfg.created_unix_ns))
    # absolute (the script may chdir); the ranks of one torchrun launch create-or-join one directory
    run_dir = fresh_run_dir(Path(out), name, explicit=bool(run_name), join=torchrun_record() if torchrun else None)
    cfg.run_dir, cfg.run_id = str(run_dir), run_dir.name
    inner = RunSession(cfg, None, steps, function)
    try:
        inner.start()
    except BaseException as exc:
        inner.finish(Outcome("failed", 1, last_line(exc)))
        raise
    outcome = Outcome("complete", 0)
    try:
        yield Session(inner, forward_steps=steps.kind == "manual")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        outcome = Outcome("complete" if code == 0 else "failed", code, None if code == 0 else f"exit code {code}")
        raise
    except KeyboardInterrupt:
        outcome = Outcome("incomplete", 130, "KeyboardInterrupt")
        raise
    except BaseException as exc:
        outcome = Outcome("failed", 1, last_line(exc))
        raise
    finally:
        inner.finish(outcome)
        if not quiet and inner.ctx.rank == 0:
            print(f"dpprof: {inner.steps} step(s) recorded ({outcome.status}) -> {run_dir}",
                  file=sys.stderr, flush=True)
