"""``dpprof run`` on scripts that test its promises: the script's semantics are Python's (compared with
the same script run plainly), failures keep what was recorded, steps are found without an optimizer,
several optimizers and GradScaler's skipped steps, a script's own profiler, ``-m``, and user errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from .run_helpers import SCRIPTS, dpprof_run, in_process, load, only_run, python, step_records, without_kineto

SMALL_WINDOW = ["--profile-wait", "0", "--profile-warmup", "1", "--profile-active", "2"]  # done after step 2


def _manifest(out: Path) -> dict:
    return load(only_run(out) / "manifest.json")


@pytest.mark.slow
def test_script_sees_what_python_gives_it_and_its_exit_code_passes_through(tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    script = str(SCRIPTS / "train_args.py")
    plain = python([script, "--steps", "5", "--exit", "3"], cwd=cwd)
    proc = dpprof_run(["--out", str(tmp_path / "t"), *SMALL_WINDOW, script, "--steps", "5", "--exit", "3"], cwd=cwd)
    assert plain.returncode == proc.returncode == 3
    # argv, __name__, __file__, sys.path[0], the working directory, __spec__, sys.modules["__main__"]
    assert json.loads(proc.stdout) == json.loads(plain.stdout)
    assert json.loads(proc.stdout)["cwd"] == str(cwd) and json.loads(proc.stdout)["name"] == "__main__"
    assert "a line the script writes to stderr" in proc.stderr
    m = _manifest(tmp_path / "t")
    assert m["status"] == "failed" and m["script"]["exit_code"] == 3 and m["script"]["error"] == "exit code 3"
    assert m["script"]["args"] == ["--steps", "5", "--exit", "3"] and m["script"]["cwd"] == str(cwd)
    assert "the script failed: exit code 3" in m["warnings"]
    assert m["summary"]["steps"] == 5 and len(m["files"]["traces"]) == 1  # the finished window is kept


@pytest.mark.slow
def test_uncaught_exception_prints_pythons_traceback_and_keeps_finished_windows(tmp_path):
    script = str(SCRIPTS / "train_args.py")
    plain = python([script, "--steps", "9", "--raise-at", "4"])
    proc = dpprof_run(["--out", str(tmp_path / "t"), "--quiet", *SMALL_WINDOW, script, "--steps", "9",
                       "--raise-at", "4"])
    assert plain.returncode == proc.returncode == 1
    # the same traceback, no dpprof frame in it
    assert without_kineto(proc.stderr).split("Traceback", 1)[1] == plain.stderr.split("Traceback", 1)[1]
    m = _manifest(tmp_path / "t")
    assert m["status"] == "failed" and m["script"]["error"] == "ValueError: bad batch at step 4"
    assert [s["step"] for s in step_records(only_run(tmp_path / "t"))] == [0, 1, 2, 3]
    trace = only_run(tmp_path / "t") / m["files"]["traces"][0]
    with gzip.open(trace, "rt") as fh:
        steps = {e["name"] for e in json.load(fh)["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#1", "ProfilerStep#2"}


@pytest.mark.slow
def test_module_form_runs_like_python_m(tmp_path):
    plain = python(["-m", "train_args", "--steps", "2"], cwd=SCRIPTS)
    proc = dpprof_run(["--out", str(tmp_path / "t"), "-m", "train_args", "--steps", "2"], cwd=SCRIPTS)
    assert plain.returncode == proc.returncode == 0
    seen, expected = json.loads(proc.stdout), json.loads(plain.stdout)
    assert seen == expected and seen["spec"] is False and seen["argv"][0] == str(SCRIPTS / "train_args.py")
    m = load(only_run(tmp_path / "t") / "manifest.json")
    assert m["script"]["module"] is True and m["script"]["target"] == "train_args"


def test_steps_without_an_optimizer(tmp_path, capsys):
    script = str(SCRIPTS / "manual_sgd.py")
    # gradient accumulation: 3 backward passes per update, one step each 3
    assert in_process(["--out", str(tmp_path / "a"), "--step-on", "backward:3", script, "--steps", "5",
                       "--accumulate", "3"]) == 0
    m = _manifest(tmp_path / "a")
    assert m["summary"]["steps"] == 5 and m["stepping"]["means"] == "one step per 3 backward() calls"
    assert m["config"]["batch_size"] == 4  # dim 0 of the model's first input: one accumulation chunk
    # a method of a class of the script, decorated in its syntax tree
    assert in_process(["--out", str(tmp_path / "b"), "--step-on", "function:Trainer.train_step", script,
                       "--steps", "5", "--accumulate", "2"]) == 0
    assert _manifest(tmp_path / "b")["summary"]["steps"] == 5
    # nothing ends a step: the run still completes and says why it has none
    assert in_process(["--out", str(tmp_path / "c"), script, "--steps", "3"]) == 0
    m = _manifest(tmp_path / "c")
    assert m["summary"]["steps"] == 0 and m["config"]["strategy"] == "single"
    assert any(w.startswith("no steps recorded") for w in m["warnings"])
    assert "done 3" in capsys.readouterr().out


def test_first_created_optimizer_drives_steps_and_skipped_steps_are_marked(tmp_path):
    script = str(SCRIPTS / "amp_gan.py")
    assert in_process(["--out", str(tmp_path / "a"), "--quiet", script, "--steps", "6", "--inf-at", "3"]) == 0
    run = only_run(tmp_path / "a")
    m = load(run / "manifest.json")
    assert m["stepping"]["optimizers"] == ["SGD", "Adam"] and m["stepping"]["tracked"] == 0
    assert m["stepping"]["optimizer_steps"] == [5, 6]  # the GradScaler skipped SGD's step 3
    recs = step_records(run)
    assert [s["grad_scaler_skipped"] for s in recs] == [False, False, False, True, False, False]
    assert m["stepping"]["grad_scaler_skipped_steps"] == 1
    assert in_process(["--out", str(tmp_path / "b"), "--quiet", "--step-on", "optimizer:1", script,
                       "--steps", "6"]) == 0
    recs = step_records(only_run(tmp_path / "b"))
    assert len(recs) == 6 and all(s["grad_scaler_skipped"] is None for s in recs)  # Adam: no GradScaler


def test_a_scripts_own_profiler_wins(tmp_path, capsys):
    script = str(SCRIPTS / "own_profiler.py")
    assert in_process(["--out", str(tmp_path / "a"), script, "--out", str(tmp_path / "own.json")]) == 0
    err = capsys.readouterr().err
    # one line when it happens (the closing summary lists it again among the run's warnings)
    lines = [x for x in err.splitlines() if "runs its own profiler" in x and not x.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("dpprof: ") and "skipped" in lines[0]
    assert (tmp_path / "own.json").is_file()
    m = _manifest(tmp_path / "a")
    assert m["files"]["traces"] == [] and m["summary"]["steps"] == 10 and m["profiler_skipped"]
    assert m["summary"]["median_basis"] == "no_profiler"
    # started after dpprof's window recorded step 3: dpprof's trace keeps it
    assert in_process(["--out", str(tmp_path / "b"), "--quiet", script, "--start", "4",
                       "--out", str(tmp_path / "own4.json")]) == 0
    run = only_run(tmp_path / "b")
    assert [s["step"] for s in step_records(run) if s["profiled"]] == [3]
    assert len(load(run / "manifest.json")["files"]["traces"]) == 1
    # started once dpprof's window is over: nothing to give up, nothing to say
    capsys.readouterr()
    assert in_process(["--out", str(tmp_path / "c"), script, "--start", "7", "--out", str(tmp_path / "own7.json")]) == 0
    assert "runs its own profiler" not in capsys.readouterr().err
    run = only_run(tmp_path / "c")
    assert [s["step"] for s in step_records(run) if s["profiled"]] == [3, 4, 5]
    assert load(run / "manifest.json")["profiler_skipped"] is None


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    assert in_process(["--out", str(tmp_path)]) == 2
    assert in_process(["--out", str(tmp_path), str(tmp_path / "missing.py")]) == 2
    assert in_process(["--out", str(tmp_path), "--step-on", "sometimes", str(SCRIPTS / "manual_sgd.py")]) == 2
    assert in_process(["--out", str(tmp_path), "--step-on", "function:no_such", str(SCRIPTS / "manual_sgd.py")]) == 2
    assert in_process(["--out", str(tmp_path), "--profile-active", "0", str(SCRIPTS / "manual_sgd.py")]) == 2
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert in_process(["--nproc", "2", "--out", str(tmp_path), str(SCRIPTS / "manual_sgd.py")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 6 and all(line.startswith("dpprof run: error: ") for line in err), err
    assert "missing.py: no such file" in err[1] and "manual_sgd.py defines no function or method no_such" in err[3]
    assert "already started by torchrun" in err[5]
    assert list(tmp_path.iterdir()) == []  # nothing ran, so no run directory


@pytest.mark.slow
def test_launcher_exits_with_the_failed_ranks_code(tmp_path):
    proc = dpprof_run(["--nproc", "2", "--out", str(tmp_path / "t"), str(SCRIPTS / "train_args.py"),
                       "--steps", "4", "--exit", "3"])
    assert proc.returncode == 3, proc.stderr[-3000:]
    run = only_run(tmp_path / "t")
    m = load(run / "manifest.json")
    assert m["status"] == "failed" and m["script"]["exit_code"] == 3
    assert any(w.startswith("a rank's script failed: rank ") for w in m["warnings"]), m["warnings"]
    assert len(m["files"]["steps"]) == 2 and all(len(step_records(run, r)) == 4 for r in (0, 1))


@pytest.mark.slow
def test_sigterm_records_the_run_then_ends_the_process_as_sigterm_does(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from .run_helpers import env

    out = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "dpprof.run", "--out", str(out), "--run-name", "r",
                             str(SCRIPTS / "train_args.py"), "--steps", "10000000"], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps_file = out / "r" / "steps.rank0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not steps_file.exists() or steps_file.stat().st_size < 2000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    m = load(out / "r" / "manifest.json")
    assert m["status"] == "incomplete" and m["script"]["exit_code"] == 128 + signal.SIGTERM
    assert m["summary"]["steps"] > 10 and len(m["files"]["traces"]) == 1
    assert any("stopped by SIGTERM" in w for w in m["warnings"])
