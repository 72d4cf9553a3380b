"""The attribution as a timeline: every stretch of every step row, its category, whom it waited for and the rule
that assigned it (for views that draw the attribution, e.g. a Perfetto track per GPU).

``finalize`` applies the same split as ``combine.split_waiting`` to the runs a worker returned: a run covered by a
collective execution is cut at the instant that collective's last participant started; before it is
``peer_wait`` on that participant. Per step and category the segments sum to the step row of the Analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpprof.analyze.attribution import CAT, Pieces
from dpprof.analyze.model import CATEGORIES
from dpprof.vocabulary import DP_PHASES

_PEER = CAT["peer_wait"]

#: The rule that assigns each category, in words (attribution.py's docstring, one clause each).
RULES: dict[str, str] = {
    "compute": "GPU busy: a compute kernel runs",
    "compute_host": "host row: a CPU op of a thread that runs no collective",
    **{p: f"GPU busy: work launched inside DP's {p.removeprefix('dp_')} phase (transfer)" for p in DP_PHASES},
    "comm": "a collective transfers (after its last participant started) and no compute runs beside it",
    "comm_copy": "GPU busy: a communication copy outside any matched collective (e.g. gloo's staging copies)",
    "peer_wait": "inside a collective, before its last participant started",
    "peer_wait_queued": "GPU idle with its next work queued behind another GPU's event",
    "memcpy": "GPU busy: a copy or memset",
    "data_loading": "GPU idle: the host is inside a DataLoader __next__",
    "host": "GPU idle: a host thread works (ops, launches, DP phases)",
    "idle": "none of the above",
}


@dataclass
class Segments:
    """One rank's segments (µs on the rank's trace clock), sorted by (step, device, start)."""

    rank: int
    step: np.ndarray
    device: np.ndarray
    start: np.ndarray
    end: np.ndarray
    category: list[str]
    who: list[str]  # whom a peer_wait segment waited for ("rank 1", "GPU 2"); "" otherwise
    rule: list[str]  # a key of RULES

    def __len__(self) -> int:
        return len(self.start)


def _rule(cat: str, device: int, covered: bool, queued: bool) -> str:
    if cat == "compute" and device < 0:
        return "compute_host"
    if cat == "comm" and not covered:
        return "comm_copy"
    if cat == "peer_wait":
        return "peer_wait_queued" if queued else "peer_wait"
    return cat


def finalize(rank: int, runs: Pieces, wait_end: np.ndarray, waited_for: list[str]) -> Segments:
    """Split each collective-covered run at its wait end and name every segment's rule."""
    step, dev, start, end, cat, who, rule = [], [], [], [], [], [], []

    def add(i: int, s: float, e: float, c: int, w: str) -> None:
        if e <= s:
            return
        name = CATEGORIES[c]
        step.append(int(runs.step[i]))
        dev.append(int(runs.device[i]))
        start.append(s)
        end.append(e)
        cat.append(name)
        who.append(w)
        rule.append(_rule(name, int(runs.device[i]), int(runs.uid[i]) >= 0, int(runs.waited[i]) >= 0))

    for i in range(len(runs.start)):
        s, e, lab, u = float(runs.start[i]), float(runs.end[i]), int(runs.label[i]), int(runs.uid[i])
        if int(runs.waited[i]) >= 0:
            add(i, s, e, lab, f"GPU {int(runs.waited[i])}")
            continue
        we = float(wait_end[u]) if u >= 0 else float("nan")
        if u < 0 or we != we or we <= s:
            add(i, s, e, lab, "")
            continue
        cut = min(we, e)
        add(i, s, cut, _PEER, waited_for[u])
        add(i, cut, e, lab, "")
    order = np.lexsort((np.array(start), np.array(dev), np.array(step))) if start else np.zeros(0, np.int64)
    pick = order.tolist()
    return Segments(rank=rank, step=np.array(step, np.int64)[order], device=np.array(dev, np.int32)[order],
                    start=np.array(start)[order], end=np.array(end)[order], category=[cat[k] for k in pick],
                    who=[who[k] for k in pick], rule=[rule[k] for k in pick])
