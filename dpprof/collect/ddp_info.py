"""DDP's settings and gradient buckets as the manifest's ``ddp`` section (docs/run-format.md).

DDP fills its buckets in parameter order at construction and rebuilds them, in the order gradients
became ready, after the first iteration (the second with ``static_graph``). The reducer reports both
through ``DistributedDataParallel._get_ddp_logging_data()`` (a private API, present since torch 1.9
and in 2.11 and 2.14): ``bucket_sizes`` (initial) and, once rebuilt, ``rebuilt_bucket_sizes``, each a
string of byte counts joined by ", ". Both keys may be absent (other torch versions): the section then
says so instead of guessing.
"""

from __future__ import annotations

from typing import Any

#: Steps after which a watch stops reading when DDP never reports rebuilt buckets.
MAX_WATCH_STEPS = 20
#: Keys of the reducer's logging data, in order of preference.
_REBUILT, _INITIAL = "rebuilt_bucket_sizes", "bucket_sizes"


def parse_sizes(text: Any) -> list[int] | None:
    """``"84440, 80800"`` -> ``[84440, 80800]`` (bytes); None when absent or unreadable."""
    if isinstance(text, (list, tuple)):
        parts = [str(x) for x in text]
    elif isinstance(text, str) and text.strip():
        parts = text.replace(",", " ").split()
    else:
        return None
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        return None
    return sizes if sizes and all(s >= 0 for s in sizes) else None


def _logging_data(ddp: Any) -> dict[str, Any]:
    try:
        data = ddp._get_ddp_logging_data()
    except Exception:  # private API: gone or failing in some torch version
        return {}
    return dict(data) if isinstance(data, dict) else {}


def ddp_section(ddp: Any, step: int | None = None) -> dict[str, Any]:
    """The manifest's ``ddp`` section for a ``DistributedDataParallel`` module.

    ``bucket_sizes_bytes``: the rebuilt buckets when DDP has rebuilt them, else the initial ones
    (``bucket_sizes_source`` says which: ``"rebuilt"`` | ``"initial"`` | null when the reducer reports
    neither). ``step``: the 0-based training step after which the figures were read.
    """
    data = _logging_data(ddp)
    rebuilt, initial = parse_sizes(data.get(_REBUILT)), parse_sizes(data.get(_INITIAL))
    sizes, source = (rebuilt, "rebuilt") if rebuilt else (initial, "initial") if initial else (None, None)
    cap = getattr(ddp, "bucket_bytes_cap", None)
    if not isinstance(cap, int):
        cap = data.get("bucket_cap_bytes") if isinstance(data.get("bucket_cap_bytes"), int) else None
    notes = []
    if source is None:
        notes.append("this torch's DDP reducer reports no bucket sizes (_get_ddp_logging_data)")
    elif source == "initial":
        notes.append("buckets not rebuilt yet when read: sizes are DDP's initial, parameter-order buckets")

    def flag(attr: str, key: str) -> bool | None:
        v = getattr(ddp, attr, None)
        if isinstance(v, bool):
            return v
        v = data.get(key)
        return bool(v) if isinstance(v, int) else None

    return {
        "bucket_cap_mb": round(cap / 2**20, 3) if cap is not None else None,
        "bucket_cap_bytes": cap,
        "bucket_sizes_bytes": sizes,
        "bucket_sizes_source": source,
        "buckets": len(sizes) if sizes else None,
        "read_after_step": step,
        "gradient_as_bucket_view": flag("gradient_as_bucket_view", "gradient_as_bucket_view"),
        "broadcast_buffers": flag("broadcast_buffers", "broadcast_buffers"),
        "static_graph": flag("static_graph", "static_graph"),
        "find_unused_parameters": flag("find_unused_parameters", "find_unused_parameters"),
        "note": "; ".join(notes) or None,
    }


class BucketWatch:
    """Reads :func:`ddp_section` after each step until DDP reports rebuilt buckets, then stops reading
    (the reducer's figures do not change after the rebuild). :meth:`poll` returns True when the section
    changed and is worth writing."""

    def __init__(self, ddp: Any) -> None:
        self.ddp = ddp
        self.section: dict[str, Any] = ddp_section(ddp)
        self.done = False

    def poll(self, step: int) -> bool:
        if self.done:
            return False
        if step >= MAX_WATCH_STEPS:
            self.done = True
            return False
        section = ddp_section(self.ddp, step)
        self.done = section["bucket_sizes_source"] == "rebuilt"
        changed = section["bucket_sizes_bytes"] != self.section["bucket_sizes_bytes"] or self.done
        self.section = section
        return changed
