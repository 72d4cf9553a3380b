from __future__ import annotations

import io
import json

import pytest

from dpprof.collect.config import LR_RULE, RunConfig, default_run_name, scaled_lr
from dpprof.collect.launch import FailureScan, StderrFilter, Topology, torchrun_command
from dpprof.commands.profile import build_config
from dpprof.errors import DpprofError

from .helpers import parse


def test_lr_rule_is_linear_in_the_global_batch():
    assert scaled_lr(0.05, 128) == 0.05 and scaled_lr(0.05, 512) == 0.2
    assert "global_batch / 128" in LR_RULE


def test_config_for_ddp_splits_the_global_batch(tmp_path):
    cfg, topo = build_config(parse(["--strategy", "ddp", "--nproc", "2", "--batch-size", "64", "--device", "cpu",
                                    "--out", str(tmp_path)]), ["dpprof", "profile"])
    assert (cfg.world_size, cfg.per_rank_batch_size, cfg.backend, cfg.steps) == (2, 32, "gloo", 12)
    assert cfg.lr == 0.025 and topo.nproc_per_node == 2
    assert cfg.run_dir.startswith(str(tmp_path / "ddp-vgg16-b64-"))
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_config_errors_are_one_line(tmp_path):
    out = ["--out", str(tmp_path), "--device", "cpu"]
    with pytest.raises(DpprofError, match="not divisible"):
        build_config(parse(["--strategy", "ddp", "--nproc", "3", "--batch-size", "64", *out]), [])
    with pytest.raises(DpprofError, match="--run-name or --rdzv-id"):
        build_config(parse(["--strategy", "ddp", "--nnodes", "2", "--rdzv-endpoint", "x:1", *out]), [])
    with pytest.raises(DpprofError, match="--device-ids"):
        build_config(parse(["--strategy", "ddp", "--device-ids", "0,1", *out]), [])
    with pytest.raises(DpprofError, match="integers"):
        build_config(parse(["--strategy", "dp", "--device-ids", "a,b", *out]), [])
    with pytest.raises(DpprofError, match="--steps"):
        build_config(parse(["--steps", "-1", *out]), [])


def test_multi_node_run_name_comes_from_the_rendezvous_id(tmp_path):
    args = ["--strategy", "ddp", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:1234", "--rdzv-id", "job/7",
            "--device", "cpu", "--out", str(tmp_path)]
    cfg, _ = build_config(parse(args), [])
    assert cfg.run_dir == str(tmp_path / "ddp-vgg16-b128-job_7")
    cfg2, _ = build_config(parse(args), [])
    assert cfg2.run_dir == cfg.run_dir  # every node derives the same directory
    assert default_run_name(cfg, None, 0) == "ddp-vgg16-b128-19700101T000000"


def test_existing_run_directory_gets_a_suffix(tmp_path):
    args = parse(["--run-name", "r", "--out", str(tmp_path), "--device", "cpu"])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "manifest.json").write_text("{}")
    with pytest.raises(DpprofError, match="already exists"):
        build_config(args, [])


def test_torchrun_command():
    cfg = RunConfig(strategy="ddp", model="tiny")
    entry = ["-m", "dpprof.collect.worker", cfg.to_json()]
    single = torchrun_command(Topology(nproc_per_node=2), entry, python="py")
    assert single[:7] == ["py", "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "0"]
    assert "--standalone" in single and single[-3:-1] == ["-m", "dpprof.collect.worker"]
    assert json.loads(single[-1])["model"] == "tiny"
    multi = torchrun_command(Topology(2, nnodes=2, node_rank=1, rdzv_endpoint="h:29500", rdzv_id="x"), entry)
    assert "--standalone" not in multi
    i = multi.index("--rdzv-endpoint")
    assert multi[i + 1] == "h:29500" and multi[multi.index("--rdzv-backend") + 1] == "c10d"
    with pytest.raises(DpprofError, match="rdzv-endpoint"):
        torchrun_command(Topology(1, nnodes=2), entry)


def test_failure_scan_names_the_dead_rank():
    scan = FailureScan()
    text = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
dpprof.collect.worker FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-27_17:00:00
  host      : vm
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 1234)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 1234
"""
    for line in text.splitlines(keepends=True):
        scan.feed(line)
    assert scan.failed == {1: -9}
    assert scan.describe() == "rank 1 (killed by SIGKILL)"
    assert FailureScan().describe().startswith("rank unknown")


#: torchrun's closing output when rank 1 was killed and torchrun then stopped rank 0 (format of
#: torch.distributed.elastic.multiprocessing.errors.ChildFailedError, torch 2.14).
TORCHRUN_FAILURE = """Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/venv/lib/python3.12/site-packages/torch/distributed/run.py", line 936, in <module>
    main()
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
dpprof.collect.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-27_17:00:01
  host      : vm
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 1233)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 1233
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-27_17:00:00
  host      : vm
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 1234)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 1234
============================================================
"""


def test_failure_scan_names_the_root_cause_first_and_the_others_as_stopped():
    scan = FailureScan()
    for line in TORCHRUN_FAILURE.splitlines(keepends=True):
        scan.feed(line)
    assert scan.failed == {0: -15, 1: -9} and scan.root == 1
    assert scan.describe() == "rank 1 (killed by SIGKILL) failed first; torchrun then stopped rank 0"


def test_failure_scan_without_root_cause_prefers_a_rank_not_stopped_by_sigterm():
    scan = FailureScan()
    for line in ["  rank      : 0 (local_rank: 0)\n", "  exitcode  : -15 (pid: 1)\n",
                 "  rank      : 2 (local_rank: 2)\n", "  exitcode  : 1 (pid: 2)\n"]:
        scan.feed(line)
    assert scan.describe().startswith("rank 2 (exit code 1) failed first; torchrun then stopped rank 0")


def _filtered(text: str, keep_all: bool = False) -> str:
    sink = io.StringIO()
    f = StderrFilter(sink, keep_all=keep_all)
    for line in text.splitlines(keepends=True):
        f.feed(line)
    f.close()
    return sink.getvalue()


def test_stderr_filter_drops_torchruns_traceback_and_summary_only():
    worker_tb = ("Traceback (most recent call last):\n  File \"w.py\", line 3, in f\n    boom()\n"
                 "RuntimeError: worker said no\n")
    text = "step 3\n" + worker_tb + TORCHRUN_FAILURE + "after\n"
    out = _filtered(text)
    assert out == "step 3\n" + worker_tb + "after\n"
    assert _filtered(text, keep_all=True) == text


def test_stderr_filter_keeps_a_chained_worker_traceback_and_an_unfinished_one():
    chained = ("Traceback (most recent call last):\n  File \"a\", line 1\nKeyError: 1\n\n"
               "During handling of the above exception, another exception occurred:\n\n"
               "Traceback (most recent call last):\n  File \"b\", line 2\nValueError: 2\n")
    assert _filtered(chained) == chained
    cut = "Traceback (most recent call last):\n  File \"a\", line 1\n"
    assert _filtered(cut) == cut


def test_threads_one_rule_for_every_strategy(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)))

    def threads(*argv: str) -> int | None:
        cfg, _ = build_config(parse([*argv, "--out", str(tmp_path)]), [])
        return cfg.threads

    # CPU: the node's cores split over its processes, so every strategy gets the same cores in total
    assert threads("--strategy", "dp", "--device", "cpu") == threads("--strategy", "single", "--device", "cpu") == 4
    assert threads("--strategy", "ddp", "--device", "cpu", "--nproc", "2") == 2
    assert threads("--strategy", "ddp", "--device", "cpu", "--nproc", "8") == 1
    assert threads("--strategy", "single", "--device", "cpu", "--threads", "3") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads("--strategy", "dp", "--device", "cpu") == 2
    with pytest.raises(DpprofError, match="--threads"):
        threads("--strategy", "dp", "--device", "cpu", "--threads", "0")
    assert RunConfig(threads=2).manifest_section()["threads"] == 2
