"""The runs of ``make gpu-check`` and what each must show; sizes kept small so that the whole check takes about
5 minutes on one GPU and its run directories fit one archive of a few MB (2 profiled steps per trace)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from gpu_check_inspect import MARKS, Plan

#: Issue 15's targets for the harness and the NVML sampler: B/A <= 1.03 on unprofiled steps.
OVERHEAD_TARGET = 1.03
PROFILED_STEPS = 2

#: What one GPU cannot exercise, said where those paths would be (FIELD_NOTES.md, fixtures/h200/README.md).
NOT_P2P_DP = ("DP [0, 0]: no P2P copies and no NCCL broadcast/reduce: device_ids repeat one GPU, so replicate "
              "and the gradient reduce copy and add on it (torch/cuda/nccl.py is_available: NCCL needs distinct "
              "devices; torch/csrc/cuda/comm.cpp falls back); needs 2+ GPUs (dp_01)")
NOT_MULTI_RANK = ("DDP/FSDP with 1 rank: no multi-rank NCCL: one rank launches no NCCL kernel and NCCL refuses "
                  "two ranks on one GPU ('Duplicate GPU detected'); cross-rank matching, clock alignment and "
                  "stragglers need 2+ GPUs (ddp2)")
NOT_P2P_PROBE = "link bandwidth probe: no P2P figure (p2p_GBps): one GPU has no peer"


class Sizes(NamedTuple):
    model: str
    batch: int
    steps: int
    dp_dup_steps: int  # DP [0, 0] steps: ~0.65 s each on an H200 (cuDNN autotuning in every replica thread)
    ex_steps: int  # the examples' steps and batch (their small CNN)
    ex_batch: int
    timeout_s: int


def sizes(cuda: bool) -> Sizes:
    """Model, batch and steps: VGG16 at batch 128 on a GPU (the fixtures' workload), tiny on the CPU."""
    if cuda:
        return Sizes("vgg16", 128, 20, 12, 30, 32, 150)
    return Sizes("tiny", 16, 8, 8, 8, 16, 120)


def make_plans(cuda: bool, gpus: int, examples: Path, runs: Path) -> list[Plan]:
    """``dpprof profile`` per strategy, then ``dpprof run`` on each example; 2+ GPUs add DP [0, 1] and 2-rank DDP.
    ``runs``: the run directories' parent, as the commands see it (they run in the work folder)."""
    s = sizes(cuda)
    model, batch, timeout_s = s.model, s.batch, s.timeout_s
    one = cuda and gpus == 1
    dev = ["--device", "cuda" if cuda else "cpu"]

    def profile(name: str, extra: list[str], steps: int, marks: tuple[str, ...] | None = None,
                dp_mode: str | None = None, nccl: bool = False, ranks: int = 1, notes: tuple[str, ...] = ()) -> Plan:
        argv = ["profile", *extra, *dev, "--model", model, "--steps", str(steps), "--batch-size", str(batch),
                "--train-size", str(batch * (steps + 2)), "--test-size", str(batch),
                "--profile-active", str(PROFILED_STEPS), "--out", str(runs), "--run-name", name, "--quiet"]
        return Plan(name, "profile", tuple(argv), ranks=ranks, marks=marks, dp_mode=dp_mode, nccl=nccl,
                    not_exercised=((NOT_P2P_PROBE,) if one else ()) + notes, timeout_s=timeout_s)

    def run(name: str, script: str, nproc: int | None = None, marks: tuple[str, ...] | None = None,
            dp_mode: str | None = None, nccl: bool = False, notes: tuple[str, ...] = ()) -> Plan:
        argv = ["run", *(["--nproc", str(nproc)] if nproc else []), "--out", str(runs), "--run-name", name,
                "--quiet", "--profile-active", str(PROFILED_STEPS), str(examples / script),
                "--steps", str(s.ex_steps), "--batch-size", str(s.ex_batch), *([] if cuda else ["--cpu"])]
        return Plan(name, "run", tuple(argv), marks=marks, dp_mode=dp_mode, nccl=nccl, not_exercised=notes,
                    timeout_s=timeout_s)

    multi = (NOT_MULTI_RANK,) if one else ()
    plans = [profile("single", ["--strategy", "single"], s.steps)]
    if cuda:
        plans += [profile("dp_1dev", ["--strategy", "dp", "--device-ids", "0"], s.steps, marks=MARKS[:1],
                          dp_mode="one_device"),
                  profile("dp_dup00", ["--strategy", "dp", "--device-ids", "0,0"], s.dp_dup_steps, marks=MARKS,
                          dp_mode="multi_device", notes=(NOT_P2P_DP,) if one else ())]
    else:  # without a GPU, DataParallel has one path: the module called directly, no marks
        plans.append(profile("dp_nogpu", ["--strategy", "dp"], s.steps, marks=(), dp_mode="no_gpu"))
    plans.append(profile("ddp1", ["--strategy", "ddp", "--nproc", "1"], s.steps, nccl=cuda, notes=multi))
    if cuda and gpus >= 2:
        plans += [profile("dp_01", ["--strategy", "dp", "--device-ids", "0,1"], s.steps, marks=MARKS,
                          dp_mode="multi_device"),
                  profile("ddp2", ["--strategy", "ddp", "--nproc", "2"], s.steps, ranks=2, nccl=True)]
    dp_marks, dp_mode = ((MARKS[:1], "one_device") if one else (MARKS, "multi_device")) if cuda else ((), "no_gpu")
    plans += [run("run_single", "single.py"),
              run("run_dp", "dp.py", marks=dp_marks, dp_mode=dp_mode),
              run("run_ddp1", "ddp.py", nproc=1, nccl=cuda, notes=multi),
              run("run_fsdp1", "fsdp.py", nproc=1, notes=multi)]
    return plans


def overhead_args(cuda: bool) -> list[str]:
    """benchmarks/overhead.py on VGG16 at batch 128 on a GPU (about a minute: 6 pairs of 10-step blocks per
    comparison, one trace export per profiled block); tiny and 2 pairs on the CPU."""
    if cuda:
        return ["--model", "vgg16", "--batch", "128", "--steps", "10", "--pairs", "6"]
    return ["--model", "tiny", "--batch", "16", "--steps", "2", "--pairs", "2"]
