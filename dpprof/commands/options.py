"""Command-line options shared by the commands that analyse a run (``analyze``, ``report``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpprof.errors import DpprofError
from dpprof.trace.inflate import add_read_options  # noqa: F401 (re-exported beside add_diagnosis_options)


def add_diagnosis_options(p: Any) -> None:
    """The options of `analyze` and `report` that feed the diagnosis (argparse parser or group)."""
    p.add_argument("--baseline", nargs="+", default=(), metavar="RUN_DIR|TRACE",
                   help="a single-GPU run of the same configuration: DP's ideal step = its compute / N plus the "
                   "data loading and host time measured in the DP run (otherwise the ideal is estimated and "
                   "labelled so)")
    p.add_argument("--link-gbps", type=_positive_float, default=None, metavar="GBPS",
                   help="declared GPU link bandwidth (GB/s) for the what-if projection, where the run measured none")
    p.add_argument("--sweep", type=Path, default=None, metavar="SWEEP_DIR",
                   help="a `dpprof sweep` directory (or its sweep.json): answers the hyperparameters question "
                   "and puts measured step times beside the projection")
    p.add_argument("--param-bytes", type=_positive_int, default=None, metavar="BYTES",
                   help="model parameter bytes for the projection, where no manifest states them "
                   "(CIFAR VGG16: 58913064)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


#: What dpprof's own commands import from each extra (``pip install 'dpprof[collect]'``): import name -> pip
#: package. The extras in pyproject.toml may hold more: ``[interop]`` also has torch-tb-profiler, which only the
#: tests use, so a missing one must not refuse ``analyze --crosscheck hta`` (it imports HTA alone).
EXTRAS: dict[str, dict[str, str]] = {
    "collect": {"torch": "torch", "torchvision": "torchvision"},
    "interop": {"hta": "holistictraceanalysis"},
}


def require_extra(extra: str, command: str, modules: Sequence[str] | None = None) -> None:
    """Raise DpprofError (one line, exit 2) naming the pip packages and the extra to install when one of the
    modules ``command`` imports (``modules``, import names; default: all of ``EXTRAS[extra]``) is missing."""
    import importlib.util

    wanted = EXTRAS[extra] if modules is None else {m: EXTRAS[extra].get(m, m) for m in modules}
    missing = [pip for name, pip in wanted.items() if importlib.util.find_spec(name) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DpprofError(f"{command} needs {' and '.join(missing)}, which {verb} not installed: "
                          f"pip install 'dpprof[{extra}]' (or `make venv` in a clone)")
