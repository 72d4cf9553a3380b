"""DDP launching through torchrun (``python -m torch.distributed.run``), one process per GPU or, on the
CPU, ``--nproc`` gloo processes; several nodes meet through torchrun's c10d rendezvous.

The launcher passes the run configuration as JSON to every worker, streams torchrun's stderr through
while reading its failure summary, and when a rank dies exits non-zero naming it (and marks the
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

from dpprof.collect.config import RunConfig
from dpprof.collect.manifest import mark_unfinished
from dpprof.errors import DpprofError

#: torchrun's failure summary: "rank      : 1 (local_rank: 1)" then "exitcode  : -9 (pid: 123)".
_RANK_LINE = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_EXIT_LINE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


@dataclass
class Topology:
    """How torchrun forms the group: processes on this node, nodes, and the rendezvous."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None


def torchrun_command(cfg: RunConfig, topo: Topology, python: str = sys.executable) -> list[str]:
    """The torchrun argv that starts this node's workers (``-m dpprof.collect.worker CONFIG``)."""
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(topo.nproc_per_node),
           "--max-restarts", "0"]
    if topo.nnodes == 1 and not topo.rdzv_endpoint:
        cmd.append("--standalone")  # rendezvous on a free local port
    else:
        if not topo.rdzv_endpoint:
            raise DpprofError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
        cmd += ["--nnodes", str(topo.nnodes), "--node-rank", str(topo.node_rank), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", topo.rdzv_endpoint, "--rdzv-id", topo.rdzv_id or "dpprof"]
    return cmd + ["-m", "dpprof.collect.worker", cfg.to_json()]


@dataclass
class FailureScan:
    """Ranks torchrun reported as failed, with their exit codes, read from its stderr as it passes."""

    failed: dict[int, int | None] = field(default_factory=dict)
    _last_rank: int | None = None

    def feed(self, line: str) -> None:
        m = _RANK_LINE.match(line)
        if m:
            self._last_rank = int(m.group(1))
            self.failed.setdefault(self._last_rank, None)
            return
        m = _EXIT_LINE.match(line)
        if m and self._last_rank is not None:
            self.failed[self._last_rank] = int(m.group(1))

    def describe(self) -> str:
        if not self.failed:
            return "rank unknown (see torchrun's output above)"
        parts = []
        for rank, code in sorted(self.failed.items()):
            if code is None:
                parts.append(f"rank {rank}")
            elif code < 0:
                try:
                    parts.append(f"rank {rank} (killed by {signal.Signals(-code).name})")
                except ValueError:
                    parts.append(f"rank {rank} (signal {-code})")
            else:
                parts.append(f"rank {rank} (exit code {code})")
        return ", ".join(parts)


def _pump(src: IO[str], sink: IO[str], scan: FailureScan) -> None:
    for line in src:
        scan.feed(line)
        sink.write(line)
        sink.flush()


def run_torchrun(cmd: list[str], run_dir: Path, env: dict[str, str] | None = None) -> int:
    """Run torchrun to the end. Returns 0, or 130 when interrupted; raises DpprofError naming the rank
    that failed otherwise (exit code 1)."""
    full_env = dict(os.environ if env is None else env)
    # torchrun would set 1 thread per worker anyway (and warn); say it here so the run is reproducible.
    full_env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=full_env, bufsize=1)
    except OSError as exc:
        raise DpprofError(f"cannot start torchrun: {exc}") from None
    scan = FailureScan()
    pump = threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, scan), daemon=True)
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
    if rc == 0:
        return 0
    if interrupted:
        mark_unfinished(run_dir, "incomplete", f"launcher interrupted by {interrupted[0]}")
        return 130
    who = scan.describe()
    mark_unfinished(run_dir, "failed", f"DDP worker failed: {who}; torchrun exit code {rc}")
    raise DpprofError(f"DDP worker failed: {who} (torchrun exit code {rc}); run directory {run_dir}",
                      exit_code=1)
