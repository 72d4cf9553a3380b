"""DDP launching through torchrun (``python -m torch.distributed.run``), one process per GPU or, on the
CPU, ``--nproc`` gloo processes; several nodes meet through torchrun's c10d rendezvous.

The launcher passes the run configuration as JSON to every worker, streams torchrun's stderr through
while reading its failure summary (torchrun's own traceback and summary are kept off the console unless
DPPROF_DEBUG=1), and when a rank dies exits non-zero naming the rank that failed first (and marks the
manifest ``failed``). Ctrl-C reaches the workers directly (same process group); this process waits for
torchrun to wind them down rather than dying first.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dpprof.collect.manifest import mark_unfinished
from dpprof.errors import DpprofError

#: libkineto's log level for workers unless the user set one (5: fatal only; 2 would keep errors).
KINETO_QUIET = "5"
#: torchrun's failure summary: "rank      : 1 (local_rank: 1)" then "exitcode  : -9 (pid: 123)".
_RANK_LINE = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_EXIT_LINE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_RULE = re.compile(r"^={10,}\s*$")
#: Lines between the parts of a chained Python traceback.
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


@dataclass
class Topology:
    """How torchrun forms the group: processes on this node, nodes, and the rendezvous."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None


def torchrun_command(topo: Topology, entry: list[str], python: str = sys.executable) -> list[str]:
    """The torchrun argv that starts this node's workers with ``entry`` (e.g. ``-m dpprof.collect.worker
    CONFIG`` for ``dpprof profile``, ``-m dpprof.run --config CONFIG`` for ``dpprof run``)."""
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(topo.nproc_per_node),
           "--max-restarts", "0"]
    if topo.nnodes == 1 and not topo.rdzv_endpoint:
        cmd.append("--standalone")  # rendezvous on a free local port
    else:
        if not topo.rdzv_endpoint:
            raise DpprofError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
        cmd += ["--nnodes", str(topo.nnodes), "--node-rank", str(topo.node_rank), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", topo.rdzv_endpoint, "--rdzv-id", topo.rdzv_id or "dpprof"]
    return cmd + list(entry)


@dataclass
class FailureScan:
    """Ranks torchrun reported as failed, with their exit codes, read from its stderr as it passes.

    torchrun's summary lists the rank that failed first under "Root Cause (first observed failure)" and
    the ranks it then stopped itself (SIGTERM) under "Failures"; the root cause is named first.
    """

    failed: dict[int, int | None] = field(default_factory=dict)
    root: int | None = None
    _last_rank: int | None = None
    _in_root: bool = False

    def feed(self, line: str) -> None:
        if line.startswith("Root Cause"):
            self._in_root = True
            return
        if line.startswith(("Failures:", "Other Failures:")):
            self._in_root = False
            return
        m = _RANK_LINE.match(line)
        if m:
            self._last_rank = int(m.group(1))
            self.failed.setdefault(self._last_rank, None)
            if self._in_root and self.root is None:
                self.root = self._last_rank
            return
        m = _EXIT_LINE.match(line)
        if m and self._last_rank is not None:
            self.failed[self._last_rank] = int(m.group(1))

    def first(self) -> int:
        if self.root is not None and self.root in self.failed:
            return self.root
        # No root-cause section: a rank torchrun did not stop with SIGTERM itself is the likelier culprit.
        return min(self.failed, key=lambda r: (self.failed[r] == -signal.SIGTERM, r))

    def describe(self) -> str:
        if not self.failed:
            return "rank unknown (see torchrun's output above)"
        first = self.first()
        text = _rank_text(first, self.failed[first])
        others = sorted(r for r in self.failed if r != first)
        if others:
            names = ", ".join(str(r) for r in others)
            text += f" failed first; torchrun then stopped rank{'s' if len(others) > 1 else ''} {names}"
        return text


def _rank_text(rank: int, code: int | None) -> str:
    if code is None:
        return f"rank {rank}"
    if code < 0:
        try:
            return f"rank {rank} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"rank {rank} (signal {-code})"
    return f"rank {rank} (exit code {code})"


class StderrFilter:
    """Passes torchrun's stderr through, minus torchrun's own Python traceback ending in
    ``ChildFailedError`` and the failure summary after it (the launcher condenses both into its closing
    error line). Workers' own tracebacks pass unchanged. ``keep_all`` (DPPROF_DEBUG=1) passes everything.
    """

    def __init__(self, sink: IO[str], keep_all: bool = False) -> None:
        self.sink = sink
        self.keep_all = keep_all
        self._held: list[str] = []
        self._rules_left = 0  # '=====' lines still to drop of torchrun's summary block

    def _out(self, lines: list[str]) -> None:
        for x in lines:
            self.sink.write(x)
        self.sink.flush()

    def feed(self, line: str) -> None:
        if self.keep_all:
            self._out([line])
            return
        if self._rules_left:
            if _RULE.match(line):
                self._rules_left -= 1
            return
        if line.startswith("Traceback (most recent call last)"):
            self._held.append(line)
            return
        if self._held:
            if not line.strip() or line[0].isspace() or line.startswith(_CHAIN):
                self._held.append(line)
                return
            held, self._held = self._held, []
            if "ChildFailedError" in line:
                self._rules_left = 2  # the summary opens and closes with a rule of '='
                return
            self._out([*held, line])
            return
        self._out([line])

    def close(self) -> None:
        held, self._held = self._held, []
        self._out(held)


def _pump(src: IO[str], out: StderrFilter, scan: FailureScan) -> None:
    for line in src:
        scan.feed(line)
        out.feed(line)
    out.close()


@dataclass
class Launched:
    """How torchrun ended: its exit code, the signals this launcher passed on, the ranks that failed."""

    rc: int
    interrupted: list[str]
    scan: FailureScan

    def first_failed_exit_code(self) -> int | None:
        """The exit code of the rank that failed first (128 + N for a rank killed by signal N), or None."""
        if not self.scan.failed:
            return None
        code = self.scan.failed[self.scan.first()]
        if code is None:
            return None
        return 128 - code if code < 0 else code


def launch_torchrun(cmd: list[str], env: dict[str, str] | None = None) -> Launched:
    """Run torchrun to the end, passing its stderr through (:class:`StderrFilter`) and reading its
    failure summary; SIGTERM to this process is passed on to torchrun."""
    full_env = dict(os.environ if env is None else env)
    # torchrun would set 1 thread per worker anyway (and warn); say it here so the run is reproducible.
    # dpprof profile's workers then apply the run's own --threads (RunConfig.threads) with
    # torch.set_num_threads; dpprof run leaves the thread count to the script, as torchrun would.
    full_env.setdefault("OMP_NUM_THREADS", "1")
    # libkineto logs "ERROR: ... gpuGetDeviceCount failed" on machines without CUDA: keep its fatal lines only.
    full_env.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET)
    try:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=full_env, bufsize=1)
    except OSError as exc:
        raise DpprofError(f"cannot start torchrun: {exc}") from None
    scan = FailureScan()
    out = StderrFilter(sys.stderr, keep_all=full_env.get("DPPROF_DEBUG") == "1")
    pump = threading.Thread(target=_pump, args=(proc.stderr, out, scan), daemon=True)
    pump.start()
    interrupted: list[str] = []

    def forward(signum: int, frame: Any) -> None:
        interrupted.append(signal.Signals(signum).name)
        if signum == signal.SIGTERM:  # SIGINT from a terminal already reached the whole group
            proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        pump.join(timeout=5)
    return Launched(rc, interrupted, scan)


def run_torchrun(cmd: list[str], run_dir: Path, env: dict[str, str] | None = None) -> int:
    """``dpprof profile``'s launch: run torchrun to the end. Returns 0, or 130 when interrupted; raises
    DpprofError naming the rank that failed otherwise (exit code 1)."""
    done = launch_torchrun(cmd, env)
    if done.rc == 0:
        return 0
    if done.interrupted:
        mark_unfinished(run_dir, "incomplete", f"launcher interrupted by {done.interrupted[0]}")
        return 130
    who = done.scan.describe()
    mark_unfinished(run_dir, "failed", f"DDP worker failed: {who}; torchrun exit code {done.rc}")
    raise DpprofError(f"DDP worker failed: {who} (torchrun exit code {done.rc}); run directory {run_dir}",
                      exit_code=1)
