"""``dpprof run`` on scripts at the edges of what it promises: a script that changes its working
directory, one that does not compile, step functions that are static, class or nested, a model called with
keywords, a script that trains in processes of its own (``torch.multiprocessing.spawn``), and user errors
that must leave nothing behind."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from .run_helpers import SCRIPTS, dpprof_run, in_process, load, only_run, python

TRAIN = """
import torch
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
"""


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(TRAIN + textwrap.dedent(body))
    return str(path)


def test_a_script_that_changes_directory_keeps_its_run_where_out_said(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # restored after the test: the script's chdir happens in this process
    script = _script(tmp_path, "chdir.py", """
        import os
        os.makedirs("elsewhere", exist_ok=True)
        os.chdir("elsewhere")
        for _ in range(4):
            opt.zero_grad(); model(torch.randn(8, 4)).sum().backward(); opt.step()
    """)
    assert in_process(["--out", "rel", "--no-profile", script]) == 0  # a relative --out (the default is too)
    run = only_run(tmp_path / "rel")
    m = load(run / "manifest.json")
    assert m["status"] == "complete" and m["summary"]["steps"] == 4 and m["config"]["batch_size"] == 8
    assert not any("step recording stopped" in w for w in m["warnings"]), m["warnings"]
    assert len((run / "steps.rank0.jsonl").read_text().splitlines()) == 4
    assert not (tmp_path / "elsewhere" / "rel").exists()  # nothing written relative to the new directory
    assert f"-> {run}" in capsys.readouterr().err


def test_a_script_that_does_not_compile_reads_as_under_plain_python(tmp_path, capsys):
    script = tmp_path / "broken.py"
    script.write_text("x = 1\ndef f(:\n    pass\n")
    plain = python([str(script)])
    assert in_process(["--out", str(tmp_path / "t"), str(script)]) == plain.returncode == 1
    err = capsys.readouterr().err
    assert err == plain.stderr and "SyntaxError: invalid syntax" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists() or list((tmp_path / "t").iterdir()) == []  # nothing recorded


def test_step_functions_that_are_static_class_or_nested(tmp_path, capsys):
    script = _script(tmp_path, "steps.py", """
        class T:
            @staticmethod
            def s(x):
                return model(x).sum()

            @classmethod
            def c(cls, x):
                return model(x).sum()

        def main():
            def train_step(x):
                return model(x).sum()
            for _ in range(4):
                T.s(torch.randn(3, 4)); T.c(torch.randn(3, 4)); train_step(torch.randn(3, 4))
            print("ok")

        main()
    """)
    for i, name in enumerate(("T.s", "T.c", "main.<locals>.train_step", "train_step")):
        out = tmp_path / f"t{i}"
        assert in_process(["--out", str(out), "--quiet", "--no-profile", "--step-on", f"function:{name}",
                           script]) == 0, name
        m = load(only_run(out) / "manifest.json")
        assert m["summary"]["steps"] == 4 and m["status"] == "complete", name
        assert m["stepping"]["means"] == f"each return of {'main.<locals>.train_step' if i > 1 else name}"
    assert capsys.readouterr().out == "ok\n" * 4


def test_a_model_called_with_keywords_gives_the_batch(tmp_path):
    script = _script(tmp_path, "kw.py", """
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 2)

            def forward(self, x=None, mask=None):
                return self.lin(x)

        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(3):
            batch = {"x": torch.randn(6, 4), "mask": None}
            opt.zero_grad(); net(**batch).sum().backward(); opt.step()
    """)
    assert in_process(["--out", str(tmp_path / "t"), "--quiet", "--no-profile", script]) == 0
    m = load(only_run(tmp_path / "t") / "manifest.json")
    assert m["config"]["batch_size"] == 6 and "batch_size" in m["config"]["inferred"]
    assert m["inferred"]["batch_size"]["from"] == "dim 0 of the first tensor given to the first module called (Net)"
    assert not any("batch size unknown" in w for w in m["warnings"])


@pytest.mark.slow
def test_a_script_that_trains_in_spawned_processes_is_told_to_let_dpprof_start_them(tmp_path):
    script = tmp_path / "spawn.py"
    script.write_text(textwrap.dedent("""
        import torch
        import torch.multiprocessing as mp

        def train(rank):
            model = torch.nn.Linear(4, 2)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                opt.zero_grad(); model(torch.randn(6, 4)).sum().backward(); opt.step()

        if __name__ == "__main__":
            mp.spawn(train, nprocs=2)
            print("spawned")
    """))
    proc = dpprof_run(["--out", str(tmp_path / "t"), "--quiet", str(script)], timeout=120)
    assert proc.returncode == 0 and proc.stdout == "spawned\n", proc.stderr[-2000:]
    m = load(only_run(tmp_path / "t") / "manifest.json")
    assert m["config"]["strategy"] is None and "strategy" not in m["config"]["inferred"]  # nothing was seen
    assert m["inferred"]["strategy"]["from"].startswith("no module was called in this process")
    spawned = [w for w in m["warnings"] if "started 2 child process(es)" in w]
    assert len(spawned) == 1 and "dpprof run --nproc N" in spawned[0]
    assert not any("choose another --step-on" in w for w in m["warnings"]), m["warnings"]


def test_user_errors_leave_nothing_behind_and_name_what_is_wrong(tmp_path, capsys):
    script = str(SCRIPTS / "manual_sgd.py")
    assert in_process(["--out", str(tmp_path), "--nproc", "0", script]) == 2
    assert in_process(["--out", str(tmp_path), "--step-on", "function:os:nosuch", script]) == 2
    assert in_process(["--out", str(tmp_path), "--step-on", "function:no_such_module_x:f", script]) == 2
    assert in_process(["--out", str(tmp_path), "--step-on", "function:os:path.nosuch", script]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("dpprof run: error: ") for line in err), err
    assert "--nproc and --nnodes must be at least 1" in err[0]
    assert "function:os:nosuch: module os has no 'nosuch'" in err[1]
    assert "function:no_such_module_x:f: cannot import no_such_module_x" in err[2]
    assert "function:os:path.nosuch: module os has no 'path.nosuch'" in err[3]
    assert list(tmp_path.iterdir()) == []  # no run directory, not even a failed one


def test_an_ambiguous_bare_step_function_is_one_line(tmp_path, capsys):
    script = _script(tmp_path, "two.py", """
        class A:
            def step(self): pass
        class B:
            def step(self): pass
    """)
    assert in_process(["--out", str(tmp_path / "t"), "--step-on", "function:step", script]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "several functions of that name (A.step, B.step)" in err[0]
    assert not (tmp_path / "t").exists() or list((tmp_path / "t").iterdir()) == []


def test_manifest_of_a_run_names_the_resolved_step_function(tmp_path):
    """config.step_on keeps what was given; stepping.means says which definition it found."""
    script = _script(tmp_path, "nested.py", """
        def main():
            def train_step():
                opt.zero_grad(); model(torch.randn(2, 4)).sum().backward(); opt.step()
            for _ in range(2):
                train_step()
        main()
    """)
    assert in_process(["--out", str(tmp_path / "t"), "--quiet", "--no-profile", "--step-on", "function:train_step",
                       script]) == 0
    m = json.loads((only_run(tmp_path / "t") / "manifest.json").read_text())
    assert m["config"]["step_on"] == "function:train_step" and m["summary"]["steps"] == 2
    assert m["stepping"]["means"] == "each return of main.<locals>.train_step"
