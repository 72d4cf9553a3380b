"""The parts of ``dpprof run`` one at a time: --step-on, the script's syntax tree, run directory names
under torchrun, batch sizes, patches, exit outcomes, the model watch and the Python API's edges."""

from __future__ import annotations

import ast
import sys

import pytest
import torch
from torch import nn

from dpprof.collect import stepping
from dpprof.collect.model_watch import ModelWatch, first_batch
from dpprof.collect.patches import Patches
from dpprof.collect.run_config import shared_run_name
from dpprof.collect.script_runner import _exit_outcome
from dpprof.collect.stepping import DecorateDefinitions, StepOn, parse_step_on
from dpprof.errors import DpprofError


def test_parse_step_on():
    assert parse_step_on("optimizer") == StepOn("optimizer")
    assert parse_step_on("optimizer:2") == StepOn("optimizer", index=2)
    assert parse_step_on("backward:4") == StepOn("backward", every=4)
    s = parse_step_on("function:pkg.mod:Trainer.step")
    assert (s.module, s.qualname) == ("pkg.mod", "Trainer.step")
    assert parse_step_on("function:train_step").module is None
    # Python's own __qualname__ of a function defined inside main()
    assert parse_step_on("function:main.<locals>.train_step").qualname == "main.<locals>.train_step"
    for bad in ("optimizer:-1", "backward:0", "backward:x", "function:", "function:a b", "manual:1", "epoch",
                "function:<locals>.f", "function:main.<locals>", "function:pkg:main.<locals>.f"):
        with pytest.raises(DpprofError, match="--step-on"):
            parse_step_on(bad)


def test_decorator_goes_on_every_definition_of_the_qualname_and_nowhere_else():
    source = """
def step(): pass
class T:
    def step(self): pass
    class Inner:
        def step(self): pass
def outer():
    def step(): pass
"""
    for qualname, found in (("step", 1), ("T.step", 1), ("T.Inner.step", 1), ("outer.<locals>.step", 1),
                            ("T", 0), ("nothing", 0)):
        d = DecorateDefinitions(qualname)
        tree = d.transform(ast.parse(source))
        assert d.found == found and d.resolved == qualname, qualname
        decorated = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.decorator_list]
        assert all(n.decorator_list[0].id == stepping.DECORATOR for n in decorated)
        assert len(decorated) == found


def test_a_bare_name_finds_a_single_nested_definition_and_refuses_several():
    source = """
def main():
    if True:
        def train_step(): pass
    def run(): pass
class T:
    def run(self): pass
"""
    d = DecorateDefinitions("train_step")
    d.transform(ast.parse(source))
    assert (d.found, d.resolved) == (1, "main.<locals>.train_step")
    with pytest.raises(DpprofError, match=r"several functions of that name \(T.run, main.<locals>.run\)"):
        DecorateDefinitions("run").transform(ast.parse(source))


def test_step_decorator_rewraps_staticmethods_and_classmethods():
    ends = []
    decorate = stepping.step_decorator(lambda skipped: ends.append(skipped))

    class T:
        @decorate  # outermost, as DecorateDefinitions puts it
        @staticmethod
        def s(x):
            return x + 1

        @decorate
        @classmethod
        def c(cls, x):
            return (cls.__name__, x)

    assert T.s(1) == 2 and T().s(2) == 3 and T.c(5) == ("T", 5)
    assert len(ends) == 3


def test_shared_run_name_under_torchrun(monkeypatch):
    env = {"TORCHELASTIC_RUN_ID": "3f2a9c4e-1d2b-4c3d-8e9f-0a1b2c3d4e5f", "RANK": "1", "WORLD_SIZE": "2"}
    assert shared_run_name("dir/train.py", False, env) == "run-train-3f2a9c4e"
    assert shared_run_name("pkg.train", True, {**env, "TORCHELASTIC_RUN_ID": "job/7"}) == "run-train-job_7"
    with pytest.raises(DpprofError, match="--run-name"):  # several nodes, no rendezvous id to agree on
        shared_run_name("t.py", False, {**env, "TORCHELASTIC_RUN_ID": "none", "GROUP_WORLD_SIZE": "2"})
    # one node without an id: named after torchrun's agent (this process's parent) start time
    a = shared_run_name("t.py", False, {**env, "TORCHELASTIC_RUN_ID": "none"})
    assert a == shared_run_name("t.py", False, {**env, "TORCHELASTIC_RUN_ID": "none", "RANK": "0"})
    assert a.startswith("run-t-")


def test_first_batch():
    x = torch.zeros(7, 3)
    assert first_batch((x,)) == 7
    assert first_batch((torch.tensor(1.0), [torch.zeros(5)])) == 5
    assert first_batch(({"input_ids": torch.zeros(4, 9)},)) == 4
    assert first_batch(("text", 3)) is None


def test_patches_restore_in_reverse_and_uncover_inherited_attributes():
    class Base:
        def f(self):
            return "base"

    class Child(Base):
        pass

    p = Patches()
    p.wrap(Child, "f", lambda f: lambda self: "outer:" + f(self))
    p.wrap(Child, "f", lambda f: lambda self: "twice:" + f(self))
    assert Child().f() == "twice:outer:base"
    p.restore()
    assert Child().f() == "base" and "f" not in vars(Child)


def test_exit_outcomes_follow_python():
    assert (_exit_outcome(None).exit_code, _exit_outcome(None).status) == (0, "complete")
    assert (_exit_outcome(4).exit_code, _exit_outcome(4).status, _exit_outcome(4).error) == (4, "failed", "exit code 4")
    assert _exit_outcome("bye").exit_code == 1


def test_model_watch_sees_the_wrapper_and_its_batch_then_leaves():
    from torch.nn.modules import module as torch_module

    before = len(torch_module._global_forward_pre_hooks)
    watch = ModelWatch()
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    dp = nn.DataParallel(model)
    dp(torch.zeros(6, 4))
    watch.stop()
    assert len(torch_module._global_forward_pre_hooks) == before
    inf = watch.infer()
    assert (inf.strategy, inf.per_rank_batch, inf.global_batch, inf.dp_mode) == ("dp", 6, 6, "no_gpu")
    assert inf.model_info["params"] == 15 and inf.model_info["name"] == "Sequential"
    assert watch.infer(batch_size=32).global_batch == 32


def test_model_watch_reads_keyword_inputs_and_says_why_when_there_is_no_tensor():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x=None, mask=None):
            return self.lin(torch.as_tensor(x))

    watch = ModelWatch()
    Net()(**{"x": torch.zeros(9, 4), "mask": None})  # model(**batch): no positional input at all
    watch.stop()
    inf = watch.infer()
    assert (inf.strategy, inf.per_rank_batch) == ("single", 9) and "first tensor given to" in inf.batch_from
    watch = ModelWatch()
    nn.DataParallel(Net())(x=torch.zeros(3, 4))  # a wrapper called with keywords
    watch.stop()
    assert (watch.infer().strategy, watch.infer().per_rank_batch) == ("dp", 3)
    watch = ModelWatch()
    Net()(x=[[1.0] * 4])  # no tensor anywhere: the reason is what was seen, not "no module was called"
    watch.stop()
    inf = watch.infer()
    assert inf.per_rank_batch is None and inf.batch_from.startswith("the first call of Net had no tensor")
    watch = ModelWatch()
    watch.stop()
    inf = watch.infer()  # nothing called at all: no strategy is claimed
    assert inf.strategy is None and inf.strategy_from.startswith("no module was called")


def test_api_counts_each_step_once_when_a_step_source_is_given(tmp_path, capsys):
    import dpprof
    from dpprof.rundir import read_json

    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dpprof.session(out=tmp_path, run_name="opt", step_on="optimizer", profile=False) as s:
        for _ in range(10):
            model(torch.randn(5, 4)).sum().backward()
            opt.step()
            s.step()  # as the README's manual example does: ignored here, said once
    m = read_json(tmp_path / "opt" / "manifest.json")
    assert m["summary"]["steps"] == 10 and s.steps == 10
    err = capsys.readouterr().err
    assert err.count("s.step() ignored") == 1 and "optimizer.step()" in err


def test_api_session_records_failure_and_nests(tmp_path, monkeypatch):
    import dpprof
    from dpprof.rundir import read_json

    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="diverged"), \
            dpprof.session(out=tmp_path, run_name="api", step_on="optimizer", quiet=True, profile=False) as s:
        for i in range(3):
            model(torch.randn(5, 4)).sum().backward()
            opt.step()  # ends a step (step_on="optimizer"): s.step() is not needed
            with dpprof.session(out=tmp_path / "inner") as inner:  # inside a session: that one records,
                inner.step()  # and its steps come from optimizer.step(), so this one does not count
            assert s.steps == i + 1
            if i == 2:
                raise RuntimeError("diverged")
    m = read_json(tmp_path / "api" / "manifest.json")
    assert m is not None and m["status"] == "failed" and m["script"]["error"] == "RuntimeError: diverged"
    assert m["script"]["api"] is True and m["summary"]["steps"] == 3 and m["config"]["batch_size"] == 5
    assert not (tmp_path / "inner").exists()
    assert sys.modules["__main__"] is not None  # the API never replaces the running program's __main__


def test_long_runs_keep_a_bounded_number_of_records_in_memory(tmp_path, monkeypatch):
    import dpprof
    from dpprof.collect import recorder
    from dpprof.rundir import read_json

    monkeypatch.setattr(recorder, "KEPT_RECORDS", 5)
    model = nn.Linear(3, 1)
    with dpprof.session(out=tmp_path, run_name="long", quiet=True, profile=False) as s:
        for _ in range(8):
            model(torch.randn(2, 3)).sum().backward()
            s.step()
    m = read_json(tmp_path / "long" / "manifest.json")
    assert m["summary"]["steps"] == 8 and m["stepping"]["boundaries"] == 8
    assert len((tmp_path / "long" / "steps.rank0.jsonl").read_text().splitlines()) == 8
    assert any("medians are over the first 5" in w for w in m["warnings"])
