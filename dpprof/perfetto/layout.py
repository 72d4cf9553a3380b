"""What the user selected, where the merged trace goes, and how ranks, GPUs and threads become Perfetto ids.

Perfetto's JSON importer keys processes by ``pid`` and threads by ``tid`` system-wide (a tid seen under two
pids is two threads only by accident of order), and Kineto writes the device index as the GPU ``pid`` and the
stream as its ``tid`` in every rank. So every rank's processes and threads get new ids, chosen so that they
sort in rank, then host / GPU order (Perfetto's JSON importer reads only the ``process_name`` and
``thread_name`` metadata rows, ``JsonTraceParserImpl::ParseJsonPacket`` in its ``json_trace_parser_impl.cc``;
the ``*_sort_index`` rows are for the viewers that read them, such as chrome://tracing):

- ``pid = (i + 1) * PID_STRIDE + slot``: ``i`` the rank's position among the merged ranks, slot 0 its host
  process (every non-GPU pid of the trace: the python process, Kineto's ``Spans``...), slot ``1 + g`` GPU ``g``;
- ``tid = pid * TID_STRIDE + k``: ``k = 0`` dpprof's attribution track, then the trace's threads in order; a
  process with more threads than ``TID_STRIDE - 1`` puts the surplus on one shared track, its last ``k``.

Both stay below 2**31 (Perfetto reads them as uint32, other viewers as int32) for up to ``MAX_RANKS`` ranks in
one file, and every tid is above every pid. ``TID_STRIDE`` is large because DataParallel starts one new thread
per replica in every forward (``parallel_apply`` in torch/nn/parallel/parallel_apply.py), all of them recorded
with ``profile_all_threads``: a long profiling window of an 8-GPU DP run has thousands of threads.
"""

from __future__ import annotations

import re
import shlex
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from dpprof.errors import DpprofError
from dpprof.rundir import MERGED_DIR, TRACES_DIR

PERFETTO_DIR = "perfetto"
SUFFIX = ".json.gz"
PID_STRIDE = 100
TID_STRIDE = 10_000
MAX_RANKS = 2000
MAX_DEVICE = PID_STRIDE - 2
#: The per-process track (``k``) that holds every thread beyond the ``TID_STRIDE - 2`` that get their own.
SHARED_K = TID_STRIDE - 1
#: Uncompressed JSON above this makes Perfetto's in-browser JSON importer slow, then out of memory.
WARN_JSON_BYTES = 250_000_000
_NUMBERS = re.compile(r"^\d{1,10}(-\d{1,10})?(,\d{1,10}(-\d{1,10})?)*$")  # ten digits: no int() of 5,000
#: How a merged trace begins: ``otherData`` (the Chrome trace format's top-level metadata; Perfetto's JSON
#: importer skips it, ``JsonTraceTokenizer::ParseInternal`` in its json_trace_tokenizer.cc, where an unknown key
#: before ``traceEvents`` would end the import) holding ``dpprof``. ``metadata``, at the end because it holds what
#: the merge found, repeats it as ``metadata.dpprof``; the head is what ``is_merged`` reads.
_MERGED = re.compile(rb'\s*\{\s*"otherData"\s*:\s*\{\s*"dpprof"\s*:\s*"dpprof [^"]* perfetto')
_HEAD_BYTES = 4096
_MAX_HEAD_INPUT = 1 << 20


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
    """Thread ``k`` (0 or more) of process ``pid``; every ``k`` from ``SHARED_K`` on is the shared track."""
    return pid * TID_STRIDE + min(k, SHARED_K)


def head(marker: str) -> bytes:
    """The merged trace's first bytes, up to its first event: ``marker`` (``metadata.dpprof``) in ``otherData``."""
    return b'{"otherData": {"dpprof": ' + msgspec.json.encode(marker) + b'},\n"traceEvents": [\n'


def is_merged(path: Path) -> bool:
    """Whether ``path`` is a trace ``dpprof perfetto`` wrote, from its first 4 KB of JSON (gunzipped as they are
    read: the rest of the file is not). An unreadable file is not (the merge says what is wrong with it)."""
    try:
        return _MERGED.match(_head(path)) is not None
    except (OSError, zlib.error):
        return False


def _head(path: Path) -> bytes:
    """Up to ``_HEAD_BYTES`` of the file's text, gunzipped when it is gzip (a cut-short file gives what it has)."""
    with open(path, "rb") as fh:
        raw = fh.read(_HEAD_BYTES)
        if raw[:2] != b"\x1f\x8b":
            return raw
        inflate = zlib.decompressobj(wbits=31)  # gzip framing
        out, read = b"", len(raw)
        while raw and len(out) < _HEAD_BYTES and not inflate.eof:
            out += inflate.decompress(raw, _HEAD_BYTES - len(out))
            if inflate.unconsumed_tail:
                raw = inflate.unconsumed_tail
            elif read < _MAX_HEAD_INPUT:  # a long gzip header (name, comment) before the data
                raw = fh.read(_HEAD_BYTES)
                read += len(raw)
            else:
                break
        return out


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
