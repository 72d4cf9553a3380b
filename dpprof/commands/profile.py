"""``dpprof profile``: train under the profiler and NVML, write one run directory (docs/run-format.md)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from dpprof.errors import DpprofError
from dpprof.vocabulary import PROCESS_PER_RANK, PROFILE_STRATEGIES

HELP = "train a built-in model under single / DP / DDP / FSDP with torch.profiler and NVML, writing one run directory"

_LR_HELP = ("base learning rate for a global batch of 128; the run uses base_lr x global_batch / 128 "
            "(linear scaling), so every strategy with the same --batch-size gets the same lr")


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.collect.config import LR_RULE
    from dpprof.collect.models import MODEL_NAMES
    from dpprof.collect.options import add_launch_options, add_output_options, add_profiler_options

    p.epilog = (f"Learning rate: {LR_RULE}. --steps and --epochs: whichever limit comes first "
                "(--steps 0 with --epochs: no step limit). Output: OUT/<strategy>-<model>-b<batch>-<UTC stamp>/ "
                "with traces/ (one trace per rank), manifest.json, nvml.<host>.jsonl, steps.rank<R>.jsonl "
                "(docs/run-format.md). SIGINT/SIGTERM: the current step finishes, the run is kept, marked incomplete.")
    g = p.add_argument_group("what to train")
    g.add_argument("--strategy", choices=PROFILE_STRATEGIES, default="dp",
                   help="single device, nn.DataParallel, DistributedDataParallel or FSDP2 (fully_shard per "
                        "conv/linear layer, then the root) via torchrun (default dp)")
    g.add_argument("--model", choices=MODEL_NAMES, default="vgg16", help="default vgg16 (CIFAR VGG16, 14.7M params)")
    g.add_argument("--data", choices=("synthetic", "cifar10"), default="synthetic",
                   help="synthetic: learnable CIFAR-shaped data, deterministic per --seed (default)")
    g.add_argument("--data-root", help="CIFAR-10 folder (with --data cifar10)")
    g.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-root if missing")
    g.add_argument("--train-size", type=int, help="training images (default 2048 synthetic, all CIFAR-10)")
    g.add_argument("--test-size", type=int, help="held-out images (default 512 synthetic, all CIFAR-10)")
    g.add_argument("--batch-size", type=int, default=128,
                   help="GLOBAL batch for every strategy; DDP gives each rank batch/world_size (default 128)")
    g.add_argument("--steps", type=int, help="stop after this many steps (default 12 unless --epochs is given)")
    g.add_argument("--epochs", type=int, help="stop after this many epochs (with --steps: whichever comes first)")
    g.add_argument("--lr", type=float, default=0.05, help=_LR_HELP + " (default 0.05)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, help="DataLoader workers per process (default 2 on GPU, 0 on CPU)")
    g.add_argument("--loss-every", type=int, default=10, help="read the loss every K steps (a sync; 0 = never)")
    g.add_argument("--exact-timing", action="store_true",
                   help="synchronise the GPU around every step for exact host timing (perturbs the run)")
    g.add_argument("--no-cudnn-benchmark", action="store_true", help="turn cudnn.benchmark off")

    d = p.add_argument_group("devices and processes")
    d.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: cuda if available")
    d.add_argument("--gpus", type=int, help="dp: GPUs to use (default all); ddp/fsdp on GPUs: processes per node")
    d.add_argument("--device-ids", help="dp: explicit CUDA device list, e.g. 0,1 or 0,0 (repeats allowed)")
    d.add_argument("--threads", type=int,
                   help="intra-op CPU threads per process (default: OMP_NUM_THREADS if set; on the CPU the cores "
                        "split evenly over the processes of a node, so every strategy gets the same cores; on "
                        "GPUs torch's default for single/dp, 1 per DDP worker as torchrun sets)")
    d.add_argument("--backend", choices=("nccl", "gloo"), help="ddp/fsdp backend (default nccl on GPU, gloo on CPU)")
    add_launch_options(d, 2, "ddp/fsdp")

    r = p.add_argument_group("profiling and output")
    add_profiler_options(r)
    r.add_argument("--no-probe", action="store_true", help="skip the link bandwidth probe on GPUs")
    r.add_argument("--no-comm-probe", action="store_true",
                   help="ddp: skip the short allreduce probe (latency and bandwidth) before training")
    add_output_options(r, "<strategy>-<model>-b<batch>-<UTC stamp>")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def _device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise DpprofError("--device cuda but no CUDA GPU is visible")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _device_ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DpprofError(f"--device-ids {text!r}: expected integers separated by commas, e.g. 0,1") from None


def _threads(given: int | None, strategy: str, device: str, nproc: int) -> int | None:
    """Intra-op threads per process; None = torch's default.

    On the CPU every strategy gets the same cores in total: cores // processes per node (single and DP
    run one process, DDP ``--nproc``), so DP-vs-DDP comparisons are not a comparison of thread counts
    (oversubscribing cores made in-process DP 1.7x slower on a busy 2-core machine: 22.1 vs 12.7 ms/step).
    On GPUs: torch's default for single/DP, 1 per DDP worker as torchrun sets it.
    """
    if given is not None:
        if given < 1:
            raise DpprofError("--threads must be at least 1")
        return given
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env)
    if device == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // (max(1, nproc) if strategy in PROCESS_PER_RANK else 1))
    return 1 if strategy in PROCESS_PER_RANK else None


def build_config(args: argparse.Namespace, argv: list[str]) -> tuple[Any, Any]:
    """(RunConfig, launcher Topology or None) from the parsed arguments; validates both."""
    from dpprof.collect.run_dir import check_run_name

    if args.run_name is not None:
        check_run_name(args.run_name)
    import torch

    from dpprof.collect.config import RunConfig, default_run_name, scaled_lr, validate
    from dpprof.collect.options import profiler_settings, topology

    device = _device(args.device)
    ids = _device_ids(args.device_ids)
    steps = args.steps if (args.steps is not None or args.epochs is not None) else 12
    if args.steps == 0 and args.epochs is not None:
        steps = None  # --steps 0 with --epochs: no step limit
    cfg = RunConfig(strategy=args.strategy, model=args.model, data=args.data, data_root=args.data_root,
                    download=args.download, train_size=args.train_size, test_size=args.test_size,
                    batch_size=args.batch_size, epochs=args.epochs, steps=steps, base_lr=args.lr,
                    lr=scaled_lr(args.lr, args.batch_size), momentum=args.momentum, seed=args.seed,
                    workers=args.workers if args.workers is not None else (2 if device == "cuda" else 0),
                    loss_every=args.loss_every, **profiler_settings(args),
                    exact_timing=args.exact_timing, device=device, cudnn_benchmark=not args.no_cudnn_benchmark,
                    probe=not args.no_probe, command=argv, created_unix_ns=time.time_ns(), quiet=args.quiet,
                    threads=_threads(args.threads, args.strategy, device, args.nproc),
                    comm_probe=not args.no_comm_probe)
    topo = None
    if cfg.strategy == "dp":
        cfg.device_ids = ids
        cfg.gpus = len(ids) if ids else (args.gpus or (torch.cuda.device_count() if device == "cuda" else 0))
    elif cfg.strategy == "single":
        cfg.device_ids = [ids[0]] if ids else ([0] if device == "cuda" else None)
        cfg.gpus = 1 if device == "cuda" else 0
    else:
        if ids:
            raise DpprofError(f"--device-ids is for dp; {cfg.strategy} uses one GPU per process (local rank)")
        nproc = args.gpus if (device == "cuda" and args.gpus) else args.nproc
        topo = topology(args, nproc)
        if device == "cuda" and nproc > torch.cuda.device_count():
            raise DpprofError(f"{nproc} {cfg.strategy.upper()} processes per node but {torch.cuda.device_count()} "
                              "GPU(s): NCCL needs one GPU per process (use --nproc/--gpus to match, or --device "
                              "cpu for gloo)")
        cfg.nproc, cfg.nnodes, cfg.world_size = nproc, args.nnodes, nproc * args.nnodes
        cfg.gpus = nproc if device == "cuda" else 0
        cfg.backend = args.backend or ("nccl" if device == "cuda" else "gloo")
    cfg.per_rank_batch_size = cfg.batch_size // cfg.world_size
    validate(cfg)
    name = args.run_name or default_run_name(cfg, args.rdzv_id if cfg.nnodes > 1 else None, cfg.created_unix_ns)
    path = Path(args.out) / name
    if args.run_name and cfg.nnodes == 1 and path.exists():  # early; run() creates it atomically
        raise DpprofError(f"{path} already exists: a new run never writes into an existing run directory "
                          "(choose another --run-name)")
    cfg.run_dir, cfg.run_id = str(path), name
    return cfg, topo


def _create_run_dir(args: argparse.Namespace, cfg: Any) -> Path:
    """Create the run directory atomically (see dpprof.collect.run_dir); cfg.run_dir/run_id follow it."""
    from dpprof.collect.run_dir import create_run_dir, rendezvous_record

    rdzv = rendezvous_record(args.rdzv_id, args.rdzv_endpoint, cfg.nnodes) if cfg.nnodes > 1 else None
    run_dir = create_run_dir(Path(args.out), cfg.run_id, explicit=bool(args.run_name), rendezvous=rdzv)
    cfg.run_dir, cfg.run_id = str(run_dir), run_dir.name
    return run_dir


def run(args: argparse.Namespace) -> int:
    from dpprof.commands.options import require_extra
    from dpprof.report.files import report_after_run

    require_extra("collect", "dpprof profile")
    from dpprof.collect.summary import print_summary

    # The command line as typed when run from a shell; from Python (tests) only what is known.
    argv = ["dpprof", *sys.argv[1:]] if "profile" in sys.argv[1:] else ["dpprof", "profile"]
    cfg, topo = build_config(args, argv)
    run_dir = _create_run_dir(args, cfg)
    if not cfg.quiet:
        print(f"dpprof profile: {cfg.strategy} {cfg.model} on {cfg.device}, global batch {cfg.batch_size}, "
              f"lr {cfg.lr:g} ({cfg.lr_rule.split(' (')[0]}) -> {run_dir}", flush=True)
    if cfg.strategy in PROCESS_PER_RANK:
        from dpprof.collect.launch import run_torchrun, torchrun_command

        rc = run_torchrun(torchrun_command(topo, ["-m", "dpprof.collect.worker", cfg.to_json()]), run_dir,
                          dict(os.environ))
    else:
        from dpprof.collect.progress import ConsoleProgress
        from dpprof.collect.worker import run_worker

        progress = None if cfg.quiet else ConsoleProgress()
        try:
            rc = run_worker(cfg, progress)
        finally:
            if progress is not None:
                progress.close()
    print_summary(run_dir)
    if rc != 0:
        print(f"dpprof profile: interrupted; the run directory is kept and marked incomplete: {run_dir}",
              file=sys.stderr)
        return rc
    if args.report:
        return report_after_run(run_dir, "dpprof profile")
    return 0
