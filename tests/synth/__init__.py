"""Synthetic multi-GPU DP, DDP and FSDP Kineto traces built with PyTorch's stream semantics (see streams.py)."""

from tests.synth.ddp import write_ddp_run
from tests.synth.dp import write_dp_run
from tests.synth.fsdp import write_fsdp_run

__all__ = ["write_ddp_run", "write_dp_run", "write_fsdp_run"]
