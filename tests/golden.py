"""Golden outputs: ``dpprof analyze`` JSON and ``dpprof report`` pages of the fixtures, kept in tests/data/golden/.

They were written at the start of the architecture issue (11), after the collectives (9) and verdicts (10) issues
changed the schema, so that moving code around cannot change what dpprof says without a test failing
(tests/test_golden.py). When a change of output is intended, rewrite them and commit the diff with the change::

    .venv/bin/python -m tests.golden --write

Each case runs the commands as a user would (``dpprof.cli.main``); paths are written relative (``<root>`` for
the repository, ``<tmp>`` for a synthetic run's folder) so the files do not depend on where the clone lives.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DATA, FIXTURES

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = DATA / "golden"
CPU = DATA / "cpu"


def _fixture(*names: str) -> Callable[[Path], list[str]]:
    return lambda _tmp: [str(FIXTURES[n]) for n in names]


def _synth(kind: str, n: int, variant: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        from tests.synth import write_ddp_run, write_dp_run

        writer = write_dp_run if kind == "dp" else write_ddp_run
        folder, _ = writer(tmp, n, variant)
        return [str(folder.parent)]

    return make


#: name -> (inputs given a scratch folder, extra options for both commands)
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "single_vgg16cifar": (_fixture("single_vgg16cifar"), []),
    "single_vgg16tv": (_fixture("single_vgg16tv"), []),
    "dp_1dev": (_fixture("dp_1dev"), []),
    "dp_dup00": (_fixture("dp_dup00"), []),
    "dp_dup00_baseline": (_fixture("dp_dup00"), ["--baseline", str(FIXTURES["single_vgg16cifar"])]),
    "ddp1_nccl": (_fixture("ddp1_nccl_rank0"), []),
    "ddp2_gloo": (_fixture("ddp2_gloo_rank0", "ddp2_gloo_rank1"), []),
    "fsdp2_gloo_cpu": (lambda _tmp: [str(CPU / f"fsdp2_gloo_rank{r}.pt.trace.json.gz") for r in (0, 1)], []),
    "synth_dp4_gpu0_bound": (_synth("dp", 4, "gpu0_bound"), []),
    "synth_dp4_slow_link": (_synth("dp", 4, "slow_link"), []),
    "synth_ddp4_straggler": (_synth("ddp", 4, "straggler"), []),
}


def _normalise(text: str, tmp: Path) -> str:
    # the report links traces relative to itself (it is written in tmp)
    for real, name in ((os.path.relpath(ROOT, tmp), "<root>"), (tmp.resolve(), "<tmp>"), (tmp, "<tmp>"),
                       (ROOT, "<root>")):
        text = text.replace(str(real), name)
    return text


def produce(name: str, tmp: Path) -> dict[str, str]:
    """Run ``dpprof analyze`` and ``dpprof report`` on one case; returns {"analysis.json": ..., "report.html": ...}
    with paths made relative."""
    from dpprof.cli import main

    make, extra = CASES[name]
    inputs = make(tmp)
    out_json, out_html = tmp / "analysis.json", tmp / "report.html"
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        rc_a = main(["analyze", *inputs, *extra, "--json", str(out_json), "--quiet"])
        rc_r = main(["report", *inputs, *extra, "--out", str(out_html)])
    if rc_a or rc_r:
        raise RuntimeError(f"golden case {name}: analyze exited {rc_a}, report {rc_r}: {quiet.getvalue()[-2000:]}")
    return {f: _normalise((tmp / f).read_text(encoding="utf-8"), tmp) for f in ("analysis.json", "report.html")}


def write_all(names: list[str]) -> None:
    for name in names:
        with tempfile.TemporaryDirectory(prefix="dpprof-golden-") as tmp:
            files = produce(name, Path(tmp))
        folder = GOLDEN / name
        folder.mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            (folder / file).write_text(text, encoding="utf-8")
        print(f"wrote {folder.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the golden files")
    ap.add_argument("cases", nargs="*", default=sorted(CASES), help="cases (default: all)")
    args = ap.parse_args()
    if not args.write:
        ap.error("nothing to do without --write (the comparison is tests/test_golden.py)")
    write_all(args.cases)
