"""The run directory is created atomically and never shared by two runs (dpprof.collect.run_dir)."""

from __future__ import annotations

import json
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
