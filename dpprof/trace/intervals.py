"""Interval arithmetic on numpy arrays (times in µs): unions, lengths, coverage tests, labelled nesting.

An interval set is a pair ``(starts, ends)`` of float64 arrays. A *union* is sorted and disjoint.
"""

from __future__ import annotations

import numpy as np

Intervals = tuple[np.ndarray, np.ndarray]
EMPTY: Intervals = (np.zeros(0), np.zeros(0))


def union(starts: np.ndarray, ends: np.ndarray) -> Intervals:
    """Sorted, disjoint union of half-open intervals [start, end); empty intervals are dropped."""
    keep = ends > starts
    s, e = starts[keep], ends[keep]
    if len(s) == 0:
        return EMPTY
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    run_end = np.maximum.accumulate(e)
    # A new block starts where an interval begins after everything before it has ended.
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    new[1:] = s[1:] > run_end[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(s)) - 1
    return s[first], run_end[last]


def length(u: Intervals) -> float:
    """Total length of a union (µs)."""
    return float(np.sum(u[1] - u[0]))


def clip(u: Intervals, lo: float, hi: float) -> Intervals:
    """A union restricted to [lo, hi)."""
    s, e = u
    i0 = int(np.searchsorted(e, lo, side="right"))
    i1 = int(np.searchsorted(s, hi, side="left"))
    s, e = np.maximum(s[i0:i1], lo), np.minimum(e[i0:i1], hi)
    keep = e > s
    return s[keep], e[keep]


def covered(points: np.ndarray, u: Intervals) -> np.ndarray:
    """Boolean mask: which points lie inside the union (half-open)."""
    s, e = u
    if len(s) == 0:
        return np.zeros(len(points), dtype=bool)
    k = np.searchsorted(s, points, side="right") - 1
    ok = k >= 0
    out = np.zeros(len(points), dtype=bool)
    out[ok] = points[ok] < e[k[ok]]
    return out


def intersection_length(a: Intervals, b: Intervals) -> float:
    """Length of the intersection of two unions: |A| + |B| - |A ∪ B|."""
    if len(a[0]) == 0 or len(b[0]) == 0:
        return 0.0
    both = union(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    return max(0.0, length(a) + length(b) - length(both))


def boundaries(u: Intervals, lo: float, hi: float) -> np.ndarray:
    """Endpoints of a union that fall strictly inside (lo, hi)."""
    s, e = clip(u, lo, hi)
    return np.concatenate([s, e])


class Nesting:
    """Labels of possibly nested intervals: each instant gets the label of the innermost interval.

    Intervals are painted in order of (start, longest first), so an interval nested in another one
    overwrites it on its own span. For intervals on one thread (properly nested) that is the innermost;
    where intervals of different threads overlap without nesting, the later-starting one wins.
    """

    def __init__(self, starts: np.ndarray, ends: np.ndarray, labels: np.ndarray) -> None:
        keep = ends > starts
        starts, ends, labels = starts[keep], ends[keep], labels[keep]
        self.breaks = np.unique(np.concatenate([starts, ends]))
        self.dtype = labels.dtype if labels.dtype.kind == "i" else np.dtype(np.int64)
        self.seg_label = np.full(max(len(self.breaks) - 1, 0), -1, dtype=self.dtype)
        order = np.lexsort((-ends, starts))
        i0 = np.searchsorted(self.breaks, starts[order])
        i1 = np.searchsorted(self.breaks, ends[order])
        for a, b, lab in zip(i0.tolist(), i1.tolist(), labels[order].tolist(), strict=True):
            self.seg_label[a:b] = lab

    def label_at(self, points: np.ndarray) -> np.ndarray:
        """Label (the labels' integer type, -1 when outside every interval) at each point."""
        out = np.full(len(points), -1, dtype=self.dtype)
        if len(self.seg_label) == 0:
            return out
        k = np.searchsorted(self.breaks, points, side="right") - 1
        ok = (k >= 0) & (k < len(self.seg_label))
        out[ok] = self.seg_label[k[ok]]
        return out

    def boundaries(self, lo: float, hi: float) -> np.ndarray:
        i0, i1 = np.searchsorted(self.breaks, [lo, hi], side="right")
        return self.breaks[i0:i1]


def subtract(a: Intervals, b: Intervals) -> Intervals:
    """The union ``a`` minus the union ``b`` (both sorted and disjoint): ``a`` cut by the gaps between ``b``'s
    intervals, pair by overlapping pair (O(len(a) log len(b)))."""
    s, e = a
    if len(s) == 0 or len(b[0]) == 0:
        return a
    gap_s = np.concatenate([[-np.inf], b[1]])  # the complement of b: [end of one, start of the next)
    gap_e = np.concatenate([b[0], [np.inf]])
    j0 = np.searchsorted(gap_e, s, side="right")  # first gap ending after the interval starts
    j1 = np.searchsorted(gap_s, e, side="left")  # gaps starting before it ends
    counts = np.maximum(j1 - j0, 0)
    total = int(counts.sum())
    if total == 0:
        return EMPTY
    i = np.repeat(np.arange(len(s)), counts)
    j = np.repeat(j0, counts) + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    rs, re = np.maximum(s[i], gap_s[j]), np.minimum(e[i], gap_e[j])
    keep = re > rs
    return rs[keep], re[keep]
