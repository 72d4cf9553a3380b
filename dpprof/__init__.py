"""dpprof: profile and diagnose PyTorch data-parallel training (DP and DDP).

Importing the package is cheap: torch, matplotlib and NVML are imported only by the stages that need them.
"""

__version__ = "0.1.0"
