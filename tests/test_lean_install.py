"""The lean install: without the ``collect`` and ``interop`` extras (no torch, torchvision, NVML, HTA), the read-only
commands work and the others say in one line what to install (exit 2).

Each case runs ``dpprof.cli.main`` in a fresh interpreter where those modules cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise ImportError and ``find_spec`` return None, as when the
package is not installed). A real install into a bare venv is the README's ``pip install .``; this keeps CI fast.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, FIXTURES

ABSENT = ("torch", "torchvision", "pynvml", "hta", "torch_tb_profiler")
ROOT = Path(__file__).parent.parent


def _dpprof(*argv: str, cwd: Path, absent: tuple[str, ...] = ABSENT) -> subprocess.CompletedProcess[str]:
    code = ("import sys\n"
            f"for name in {absent!r}: sys.modules[name] = None\n"
            "from dpprof.cli import main\n"
            f"sys.exit(main({list(argv)!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_read_only_commands_need_no_extra(tmp_path: Path) -> None:
    dup, g0, g1 = (str(FIXTURES[k]) for k in ("dp_dup00", "ddp2_gloo_rank0", "ddp2_gloo_rank1"))
    for argv in (["analyze", dup, "--json", str(tmp_path / "a.json")],
                 ["report", g0, g1, "--out", str(tmp_path / "r.html")],
                 ["compare", dup, g0, "--out", str(tmp_path / "c.html")]):
        proc = _dpprof(*argv, cwd=ROOT)
        assert proc.returncode == 0, (argv[0], proc.stderr[-2000:])
    assert (tmp_path / "a.json").stat().st_size > 1000 and (tmp_path / "r.html").stat().st_size > 10_000
    assert (tmp_path / "c.html").stat().st_size > 10_000


def test_perfetto_and_merge_nvml_need_no_extra(tmp_path: Path) -> None:
    """The other read-only commands, on run directories: the committed CPU run (perfetto) and a synthetic GPU run
    with NVML samples (merge-nvml, which needs samples to merge)."""
    from tests.golden import _synth_dp_nvml

    tiny = tmp_path / "tiny"
    shutil.copytree(DATA / "cpu" / "ddp2_tiny_run", tiny)
    proc = _dpprof("perfetto", str(tiny), "--out", str(tmp_path / "all.json.gz"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "all.json.gz").stat().st_size > 10_000
    (run,) = _synth_dp_nvml(tmp_path / "gpu")
    proc = _dpprof("merge-nvml", run, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = sorted((Path(run) / "merged").iterdir())
    assert len(merged) == 1 and merged[0].stat().st_size > 10_000 and "counter events" in proc.stdout


def test_run_refuses_in_one_line_without_torch(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("print('the script ran')\n")
    proc = _dpprof("run", "--out", str(tmp_path / "traces"), str(script), cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "dpprof[collect]" in errors[0] and "torch" in errors[0]
    assert "the script ran" not in proc.stdout and sorted(tmp_path.iterdir()) == [script]


def test_crosscheck_needs_hta_only(tmp_path: Path) -> None:
    """torch-tb-profiler is in the interop extra for the tests; the cross-check does not import it."""
    proc = _dpprof("analyze", str(FIXTURES["single_vgg16cifar"]), "--no-json", "--crosscheck", "hta",
                   cwd=tmp_path, absent=("torch_tb_profiler",))
    assert proc.returncode == 0 and "HTA cross-check" in proc.stdout, proc.stderr[-2000:]


def test_missing_extra_names_pip_packages_and_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dpprof.commands.options import require_extra
    from dpprof.errors import DpprofError

    for name in ABSENT:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DpprofError) as exc:
        require_extra("interop", "dpprof analyze --crosscheck hta")
    assert str(exc.value) == ("dpprof analyze --crosscheck hta needs holistictraceanalysis, which is not installed: "
                              "pip install 'dpprof[interop]' (or `make venv` in a clone)")
    with pytest.raises(DpprofError, match=r"needs torch and torchvision, which are not installed: pip install "):
        require_extra("collect", "dpprof sweep")
    with pytest.raises(DpprofError, match=r"dpprof run needs torch, which is not installed: .*dpprof\[collect\]"):
        require_extra("collect", "dpprof run", ["torch"])


@pytest.mark.parametrize("argv,extra", [(["profile", "--strategy", "dp"], "collect"), (["sweep"], "collect"),
                                        (["analyze", str(FIXTURES["dp_1dev"]), "--no-json", "--crosscheck", "hta"],
                                         "interop")])
def test_commands_of_an_extra_say_what_to_install(argv: list[str], extra: str, tmp_path: Path) -> None:
    proc = _dpprof(*argv, cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert f"dpprof[{extra}]" in errors[0] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
