"""Number and text formatting shared by the HTML reports (fixed formats, so output is deterministic)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

HYPOTHESIS_TITLES: dict[str, str] = {
    "data_path": "GPU0 data path",
    "hardware": "Hardware: devices and links",
    "hyperparameters": "Hyperparameters: batch size and loader workers",
}
HYPOTHESIS_QUESTIONS: dict[str, str] = {
    "data_path": "Is DP slow because scatter, broadcast, gather, reduce and the optimizer all go through GPU0?",
    "hardware": "Is the excess time caused by the GPUs or links themselves (unequal devices, slow P2P, throttling)?",
    "hyperparameters": "Is the excess time caused by the batch size or the number of loader workers?",
}
VERDICT_LABELS: dict[str, str] = {
    "supported": "supported",
    "not_supported": "not supported",
    "inconclusive": "inconclusive",
}


def num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (thousands separated); '–' for None/NaN."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "–"
        if value == 0:
            return "0"
        mag = math.floor(math.log10(abs(value)))
        decimals = max(0, digits - 1 - mag)
        return f"{value:,.{decimals}f}"
    return str(value)


def ms(us: float | None, decimals: int = 2) -> str:
    """Microseconds shown as milliseconds with fixed decimals."""
    return "–" if us is None else f"{us / 1000.0:,.{decimals}f}"


def pct(part: float, whole: float) -> str:
    return "–" if not whole else f"{100.0 * part / whole:.1f} %"


def size(nbytes: float | None) -> str:
    """Bytes in binary units (KiB, MiB, GiB)."""
    if nbytes is None:
        return "–"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def value(v: Any, key: str = "") -> str:
    """Any evidence value as short text; byte counts (keys ending in ``_bytes``) in binary units."""
    if key.endswith("_bytes") and isinstance(v, (int, float)) and not isinstance(v, bool):
        return size(v)
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {value(x, str(k))}" for k, x in sorted(v.items(), key=lambda kv: str(kv[0])))
    if isinstance(v, (list, tuple)):
        return ", ".join(value(x, key) for x in v) if v else "none"
    return num(v)


def rows(mapping: Mapping[str, Any] | None, skip: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(key, formatted value) rows of a mapping, keys sorted, for a two-column table."""
    if not mapping:
        return []
    return [(str(k), value(v, str(k))) for k, v in sorted(mapping.items(), key=lambda kv: str(kv[0]))
            if k not in skip]


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
