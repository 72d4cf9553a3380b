"""Matplotlib figures as deterministic inline SVG, and the small ``Plot`` record the templates read.

Rendering the same data twice gives identical bytes: the SVG hash salt is fixed, no date or creator
metadata is written, text stays text (``svg.fonttype: none``), and every element id is prefixed with the
plot's key so that several SVGs inlined in one HTML page never share an id.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

#: rcParams used for every figure: fixed hash salt (stable clip-path ids), text kept as text.
RC: dict[str, Any] = {
    "svg.hashsalt": "dpprof",
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#8a94a6",
    "axes.labelcolor": "#2b3445",
    "xtick.color": "#4a5568",
    "ytick.color": "#4a5568",
    "axes.grid": True,
    "grid.color": "#e3e8ef",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "legend.fontsize": 8.0,
    "figure.dpi": 72,
}

#: Colour of each step category (the same in every plot and in the HTML legend).
CATEGORY_COLORS: dict[str, str] = {
    "compute": "#3b6fb6",
    "dp_scatter": "#f2a541",
    "dp_broadcast": "#e4572e",
    "dp_gather": "#c8553d",
    "dp_reduce": "#8f2d56",
    "comm": "#7b5ea7",
    "peer_wait": "#d8b4e2",
    "memcpy": "#2a9d8f",
    "data_loading": "#b5a642",
    "host": "#8d99ae",
    "idle": "#dfe4ea",
}
#: Colours for series (GPUs, strategies) in line plots.
SERIES_COLORS: tuple[str, ...] = (
    "#3b6fb6", "#e4572e", "#2a9d8f", "#7b5ea7", "#f2a541", "#8f2d56", "#4c956c", "#6c757d",
)

#: Figure width in inches: at the page's width the charts' text is about the size of the table text.
FIG_W = 13.0

_ID = re.compile(r'\bid="([^"]+)"')
#: Where an id is defined or referenced: id="X", url(#X), href="#X".
_REF = re.compile(r'(\bid="|url\(#|href="#)([^"()]+)([")])')
_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.DOTALL)
_SIZE = re.compile(r'<svg\b([^>]*?)\swidth="[^"]*"\sheight="[^"]*"')


@dataclass(frozen=True)
class Plot:
    """One chart of a report: inline SVG, or no SVG and a sentence saying why there is no chart."""

    key: str
    title: str
    svg: str | None = None
    note: str = ""  # shown under the chart, or instead of it when ``svg`` is None

    @property
    def present(self) -> bool:
        return self.svg is not None


def absent(key: str, title: str, why: str) -> Plot:
    """A chart that cannot be drawn from measured data: the page shows ``why`` instead."""
    return Plot(key=key, title=title, svg=None, note=why)


@contextmanager
def figure(width_in: float, height_in: float, nrows: int = 1, ncols: int = 1, **kw: Any) -> Iterator[Any]:
    """A matplotlib (Agg) figure with dpprof's style; yields ``(fig, axes)``, closes it afterwards."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(cast(Any, RC)):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width_in, height_in), **kw)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def integer_axis(axis: Any) -> None:
    """Ticks on whole numbers only (steps, GPU counts)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def to_svg(fig: Any, key: str, title: str) -> str:
    """Serialise ``fig`` to an SVG element fit for inlining (no XML prologue, ids prefixed by ``key``)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(cast(Any, RC)):
        fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.08,
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = _PROLOGUE.sub("", buf.getvalue(), count=1)
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", key)
    ids = set(_ID.findall(text))
    # One pass over the text (a replace per id was quadratic: 2 s for a plot with thousands of markers).
    text = _REF.sub(lambda m: f"{m[1]}{prefix}-{m[2]}{m[3]}" if m[2] in ids else m[0], text)
    # The page sizes charts with CSS (viewBox kept), so they shrink with the window.
    text = _SIZE.sub(r"<svg\1", text, count=1)
    label = (title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
             .replace('"', "&quot;"))
    text = text.replace("<svg ", f'<svg role="img" aria-label="{label}" class="chart" ', 1)
    return text.strip() + "\n"
