"""Analysis stage: traces -> per-step, per-device attribution -> diagnosis (plain frozen data).

``analyze`` is re-exported lazily so ``import dpprof.analyze.model`` stays light (no numpy, no msgspec).
"""

from __future__ import annotations

from typing import Any

__all__ = ["analyze"]


def __getattr__(name: str) -> Any:
    if name == "analyze":
        from dpprof.analyze.pipeline import analyze

        return analyze
    raise AttributeError(f"module 'dpprof.analyze' has no attribute {name!r}")
