"""The lean install: without the ``collect`` and ``interop`` extras (no torch, torchvision, NVML, HTA), the read-only
commands work and the others say in one line what to install (exit 2).

Each case runs ``dpprof.cli.main`` in a fresh interpreter where those modules cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise ImportError and ``find_spec`` return None, as when the
package is not installed). A real install into a bare venv is the README's ``pip install .``; this keeps CI fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

ABSENT = ("torch", "torchvision", "pynvml", "hta", "torch_tb_profiler")


def _dpprof(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys\n"
            f"for name in {ABSENT!r}: sys.modules[name] = None\n"
            "from dpprof.cli import main\n"
            f"sys.exit(main({list(argv)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_read_only_commands_need_no_extra(tmp_path: Path) -> None:
    dup, g0, g1 = (str(FIXTURES[k]) for k in ("dp_dup00", "ddp2_gloo_rank0", "ddp2_gloo_rank1"))
    for argv in (["analyze", dup, "--json", str(tmp_path / "a.json")],
                 ["report", g0, g1, "--out", str(tmp_path / "r.html")],
                 ["compare", dup, g0, "--out", str(tmp_path / "c.html")]):
        proc = _dpprof(*argv, cwd=Path(__file__).parent.parent)
        assert proc.returncode == 0, (argv[0], proc.stderr[-2000:])
    assert (tmp_path / "a.json").stat().st_size > 1000 and (tmp_path / "r.html").stat().st_size > 10_000
    assert (tmp_path / "c.html").stat().st_size > 10_000


@pytest.mark.parametrize("argv,extra", [(["profile", "--strategy", "dp"], "collect"), (["sweep"], "collect"),
                                        (["analyze", str(FIXTURES["dp_1dev"]), "--no-json", "--crosscheck", "hta"],
                                         "interop")])
def test_commands_of_an_extra_say_what_to_install(argv: list[str], extra: str, tmp_path: Path) -> None:
    proc = _dpprof(*argv, cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert f"dpprof[{extra}]" in errors[0] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
