"""Synthetic multi-GPU DP and DDP Kineto traces with known figures (see dp.py, ddp.py, expect.py)."""

from tests.synth.ddp import write_ddp_run
from tests.synth.dp import write_dp_run

__all__ = ["write_ddp_run", "write_dp_run"]
