"""What the user selected, where the merged trace goes, and how ranks, GPUs and threads become Perfetto ids.

Perfetto's JSON importer keys processes by ``pid`` and threads by ``tid`` system-wide (a tid seen under two
pids is two threads only by accident of order), and Kineto writes the device index as the GPU ``pid`` and the
stream as its ``tid`` in every rank. So every rank's processes and threads get new ids, chosen so that they
sort in rank, then host / GPU order (the UI orders process groups by ``process_sort_index``, then by activity):

- ``pid = (i + 1) * PID_STRIDE + slot``: ``i`` the rank's position among the merged ranks, slot 0 its host
  process (every non-GPU pid of the trace: the python process, Kineto's ``Spans``...), slot ``1 + g`` GPU ``g``;
- ``tid = pid * TID_STRIDE + k``: ``k = 0`` dpprof's attribution track, then the trace's threads in order.

Both stay below 2**32 (Perfetto reads them as uint32) for up to ``MAX_RANKS`` ranks in one file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dpprof.errors import DpprofError
from dpprof.rundir import MERGED_DIR, TRACES_DIR

PERFETTO_DIR = "perfetto"
SUFFIX = ".json.gz"
PID_STRIDE = 1000
TID_STRIDE = 1000
MAX_RANKS = 4000
MAX_DEVICE = PID_STRIDE - 2
#: Uncompressed JSON above this makes Perfetto's in-browser JSON importer slow, then out of memory.
WARN_JSON_BYTES = 250_000_000
_NUMBERS = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass(frozen=True)
class Selection:
    """What goes into the merged trace: ranks and steps (None: all), host ops and GPU activities."""

    ranks: tuple[int, ...] | None = None
    steps: tuple[int, ...] | None = None
    host_ops: bool = True
    kernels: bool = True

    def stem(self) -> str:
        """File name stem: ``all_ranks``, or what was kept (``ranks_0.3_steps_3-5_no-kernels``; no commas, which
        a deep link's ``url=`` would carry escaped)."""
        parts = [f"ranks_{spell(self.ranks, '.')}" if self.ranks is not None else "all_ranks"]
        if self.steps is not None:
            parts.append(f"steps_{spell(self.steps, '.')}")
        parts += [flag for flag, on in (("no-host-ops", not self.host_ops), ("no-kernels", not self.kernels)) if on]
        return "_".join(parts)


def parse_numbers(text: str, what: str) -> tuple[int, ...]:
    """``"0,3,7"``, ``"3-5"`` or ``"0-3,7"`` -> sorted distinct numbers; DpprofError for anything else."""
    spec = text.replace(" ", "")
    if not _NUMBERS.match(spec):
        raise DpprofError(f"--{what} {text!r}: expected numbers and ranges such as 0,3,7 or 3-5")
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a:
            raise DpprofError(f"--{what} {text!r}: range {part} runs backwards")
        if b - a > 1_000_000:
            raise DpprofError(f"--{what} {text!r}: range {part} is too long")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


def spell(numbers: Sequence[int], sep: str = ",") -> str:
    """Sorted numbers as ranges: (0, 1, 2, 5) -> ``0-2,5``."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return sep.join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def host_pid(index: int) -> int:
    return (index + 1) * PID_STRIDE


def gpu_pid(index: int, device: int) -> int:
    if not 0 <= device <= MAX_DEVICE:
        raise DpprofError(f"GPU index {device} is outside 0..{MAX_DEVICE}: cannot give it a process")
    return (index + 1) * PID_STRIDE + 1 + device


def thread_tid(pid: int, k: int) -> int:
    if not 0 <= k < TID_STRIDE:
        raise DpprofError(f"process {pid} has more than {TID_STRIDE - 1} threads: cannot number them")
    return pid * TID_STRIDE + k


def default_output(run_dir: Path | None, traces: Sequence[Path], selection: Selection) -> Path:
    """``RUN/perfetto/<stem>.json.gz``; for trace files, ``perfetto/`` beside the (first) trace's folder."""
    if run_dir is not None:
        folder = run_dir / PERFETTO_DIR
    else:
        parent = traces[0].parent
        folder = (parent.parent if parent.name in (TRACES_DIR, MERGED_DIR) else parent) / PERFETTO_DIR
    return folder / f"{selection.stem()}{SUFFIX}"


def check_output(out: Path, run_dir: Path | None, traces: Sequence[Path]) -> None:
    """Refuse a place or name where dpprof, HTA or TensorBoard would read the merged file as a rank's trace."""
    name = out.name
    if not (name.endswith(".json") or name.endswith(".json.gz")):
        raise DpprofError(f"{out}: the merged trace must be named *.json or *.json.gz")
    if ".pt.trace.json" in name:
        raise DpprofError(f"{out}: *.pt.trace.json* names are read as one rank's trace (dpprof, HTA, "
                          "TensorBoard): choose another name")
    folder = out.resolve().parent
    banned = {p.resolve().parent for p in traces}
    if run_dir is not None:
        banned |= {(run_dir / TRACES_DIR).resolve(), (run_dir / MERGED_DIR).resolve()}
    if folder in banned or folder.name in (TRACES_DIR, MERGED_DIR):
        raise DpprofError(f"{out}: not beside the rank traces ({folder} is read as one file per rank): "
                          f"write it elsewhere, e.g. RUN/{PERFETTO_DIR}/")


def command_line(run_dir: Path | None, traces: Sequence[Path]) -> str:
    """The command that writes and opens the merged trace of these inputs (shown in the HTML report)."""
    targets = [run_dir] if run_dir is not None else list(traces)
    return " ".join(["dpprof", "perfetto", *(shlex.quote(str(p)) for p in targets), "--open"])
