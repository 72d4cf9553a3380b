"""dpprof: profile and diagnose PyTorch data-parallel training (DP, DDP and FSDP).

Importing the package is cheap: torch, matplotlib and NVML are imported only by the stages that need them.
The Python API, ``dpprof.session`` and ``dpprof.mark_dataparallel`` (:mod:`dpprof.collect.api`), is
loaded on first use.
"""

from typing import Any

from dpprof.version import __version__

__all__ = ["__version__", "mark_dataparallel", "session"]


def __getattr__(name: str) -> Any:
    if name in ("session", "mark_dataparallel", "Session"):
        from dpprof.collect import api

        return getattr(api, name)
    raise AttributeError(f"module 'dpprof' has no attribute {name!r}")
