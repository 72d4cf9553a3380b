"""The run directory is created atomically and never shared by two runs (dpprof.collect.run_dir)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from dpprof.cli import main
from dpprof.collect.run_dir import JOIN_FILE, check_run_name, create_run_dir, rendezvous_record
from dpprof.errors import DpprofError


@pytest.mark.parametrize("name", ['a"b', "../x", "a/b", "-x", "", ".hidden", "x\x1b]0;t\x07", "a b", "é",
                                  "x" * 129, "a..b"])
def test_run_names_that_cannot_name_a_run_are_refused(name: str) -> None:
    with pytest.raises(DpprofError, match="--run-name"):
        check_run_name(name)


def test_good_run_names() -> None:
    for name in ("ddp-g2-b32-w0", "run_1.2", "A" * 128):
        assert check_run_name(name) == name


def test_profile_refuses_a_bad_run_name_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--run-name", 'a"b', "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dpprof profile: error: --run-name"), err
    assert list(tmp_path.iterdir()) == []


def _race(n: int, fn: object) -> tuple[list[Path], list[str]]:
    """Call ``fn`` from ``n`` threads released together; (paths returned, errors raised)."""
    start = threading.Barrier(n)
    paths: list[Path] = []
    errors: list[str] = []

    def one() -> None:
        start.wait()
        try:
            paths.append(fn())  # type: ignore[operator]
        except DpprofError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return paths, errors


def test_two_runs_started_together_never_share_a_directory(tmp_path: Path) -> None:
    paths, errors = _race(8, lambda: create_run_dir(tmp_path, "r", explicit=True))
    assert len(paths) == 1 and len(errors) == 7 and all("already exists" in e for e in errors)
    paths, errors = _race(8, lambda: create_run_dir(tmp_path, "dp-tiny-b8-20260101T000000", explicit=False))
    assert not errors and len(set(paths)) == 8  # default names: the next free suffix, each run its own
    assert sorted(p.name for p in paths)[:2] == ["dp-tiny-b8-20260101T000000", "dp-tiny-b8-20260101T000000-2"]


def test_an_existing_directory_is_never_reused(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()  # even empty: a run started a moment earlier may not have written yet
    with pytest.raises(DpprofError, match="already exists"):
        create_run_dir(tmp_path, "r", explicit=True)


def test_nodes_join_only_the_run_of_their_rendezvous(tmp_path: Path) -> None:
    rdzv = rendezvous_record("job7", "10.0.0.1:29500", 2)
    paths, errors = _race(4, lambda: create_run_dir(tmp_path, "ddp-job7", explicit=False, rendezvous=rdzv))
    assert not errors and set(paths) == {tmp_path / "ddp-job7"}
    assert json.loads((tmp_path / "ddp-job7" / JOIN_FILE).read_text())["rdzv_id"] == "job7"
    assert [p.name for p in tmp_path.iterdir()] == ["ddp-job7"]  # no temporary folder left
    other = rendezvous_record("job8", "10.0.0.1:29500", 2)
    with pytest.raises(DpprofError, match="not a run of this rendezvous"):
        create_run_dir(tmp_path, "ddp-job7", explicit=False, rendezvous=other)
    (tmp_path / "ddp-job7" / "manifest.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(DpprofError, match="has ended"):
        create_run_dir(tmp_path, "ddp-job7", explicit=False, rendezvous=rdzv)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "manifest.json").write_text("{}")  # a single-node run of the same name
    with pytest.raises(DpprofError, match="not a run of this rendezvous"):
        create_run_dir(tmp_path, "plain", explicit=True, rendezvous=rdzv)


TORCHRUN_A = {"TORCHELASTIC_RUN_ID": "launch-a", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
              "GROUP_WORLD_SIZE": "1"}


def _under_torchrun(monkeypatch: pytest.MonkeyPatch, run_id: str = "launch-a", rank: str = "0") -> None:
    for key, value in {**TORCHRUN_A, "TORCHELASTIC_RUN_ID": run_id, "RANK": rank}.items():
        monkeypatch.setenv(key, value)


def test_ranks_of_one_torchrun_launch_join_and_another_launch_is_refused(tmp_path: Path) -> None:
    from dpprof.collect.outputs import fresh_run_dir
    from dpprof.collect.run_config import torchrun_record

    a = torchrun_record(TORCHRUN_A)
    paths, errors = _race(4, lambda: fresh_run_dir(tmp_path, "r", explicit=True, join=a))
    assert not errors and set(paths) == {tmp_path / "r"}
    assert json.loads((tmp_path / "r" / JOIN_FILE).read_text()) == {"torchrun_run_id": "launch-a"}
    b = torchrun_record({**TORCHRUN_A, "TORCHELASTIC_RUN_ID": "launch-b"})
    with pytest.raises(DpprofError, match="not a run of this rendezvous"):
        fresh_run_dir(tmp_path, "r", explicit=True, join=b)
    with pytest.raises(DpprofError, match="--run-name"):  # an explicit name is checked under torchrun too
        fresh_run_dir(tmp_path, 'a"b/../../x', explicit=True, join=a)
    # relative --out: the directory is absolute (a script's os.chdir must not move it)
    assert fresh_run_dir(Path(os.path.relpath(tmp_path)), "s", explicit=True).is_absolute()


def test_dpprof_run_under_torchrun_checks_the_name_and_refuses_another_launchs_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    script = str(Path(__file__).parents[1] / "data" / "scripts" / "manual_sgd.py")
    _under_torchrun(monkeypatch)
    out = tmp_path / "out"
    assert main(["run", "--out", str(out), "--run-name", 'a"b/../../x', script]) == 2
    assert not out.exists() and not (tmp_path / "x").exists()
    quick = ["--quiet", "--no-profile", "--step-on", "backward", script, "--steps", "2"]
    assert main(["run", "--out", str(out), "--run-name", "r", *quick]) == 0
    assert json.loads((out / "r" / JOIN_FILE).read_text())["torchrun_run_id"] == "launch-a"
    _under_torchrun(monkeypatch, run_id="launch-b", rank="1")  # another launch, the same --run-name
    assert main(["run", "--out", str(out), "--run-name", "r", *quick]) == 2
    assert not (out / "r" / "steps.rank1.jsonl").exists()  # the refused launch wrote nothing there
    assert json.loads((out / "r" / "manifest.json").read_text())["status"] == "complete"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--run-name" in err[0] and "not a run of this rendezvous" in err[1], err


def test_the_api_under_torchrun_checks_the_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dpprof

    _under_torchrun(monkeypatch)
    with pytest.raises(DpprofError, match="--run-name"), dpprof.session(out=tmp_path, run_name="../x"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_multi_node_dpprof_run_checks_the_name_before_anything(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    script = str(Path(__file__).parents[1] / "data" / "scripts" / "manual_sgd.py")
    assert main(["run", "--out", str(tmp_path), "--nnodes", "2", "--rdzv-id", "j", "--run-name", 'a"b', script]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--run-name" in err[0]
    assert list(tmp_path.iterdir()) == []
