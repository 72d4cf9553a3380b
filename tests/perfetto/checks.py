"""What a merged trace must satisfy, checked on the file itself (the Chrome trace event format, as Perfetto's JSON
importer reads it), independently of how dpprof.perfetto builds it."""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dpprof.analyze.model import Analysis
from dpprof.perfetto import layout

PROCESS = re.compile(r"^rank (\d+) · (host|GPU (\d+))$")
METADATA = {"process_name", "process_sort_index", "thread_name", "thread_sort_index"}
#: pids and tids stay below 2**31: Perfetto reads them as uint32, other viewers as int32.
INT32 = 2**31


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load(path: Path) -> dict[str, Any]:
    """The file as strict JSON (NaN/Infinity refused), gunzipped when it is gzip."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc = json.loads(raw, parse_constant=_no_constants)
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    return doc


def ns(v: float | int) -> int:
    """A written µs value as integer ns, exactly: a float's repr is the decimal text it was written as."""
    return int((Decimal(repr(v)) * 1000).to_integral_value())


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < INT32


def check_format(doc: dict[str, Any]) -> None:
    """Every event as the Chrome trace event format wants it: X with numeric ts/dur and integer pid/tid,
    counters with numeric args, metadata with names; flows with an id."""
    for e in doc["traceEvents"]:
        ph = e["ph"]
        assert _id(e.get("pid")) and _id(e.get("tid")), e
        if ph == "X":
            assert _num(e["ts"]) and _num(e["dur"]) and e["dur"] >= 0, e
            assert isinstance(e["name"], str), e
        elif ph == "C":
            assert isinstance(e["name"], str) and _num(e["ts"]), e
            assert e["args"] and all(_num(v) for v in e["args"].values()), e
        elif ph == "M":
            assert e["name"] in METADATA, e
            if e["name"].endswith("_name"):
                assert isinstance(e["args"]["name"], str) and e["args"]["name"].strip(), e
            else:
                assert isinstance(e["args"]["sort_index"], int) and -2**31 <= e["args"]["sort_index"] < 2**31, e
        elif ph in "stf":
            assert isinstance(e["id"], int) and _num(e["ts"]), e
        elif "ts" in e:
            assert _num(e["ts"]), e


def processes(doc: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """pid -> (rank, device; -1 for the host) from the process names."""
    out: dict[int, tuple[int, int]] = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "M" and e["name"] == "process_name":
            m = PROCESS.match(e["args"]["name"])
            assert m, e
            out[e["pid"]] = (int(m.group(1)), int(m.group(3)) if m.group(3) else -1)
    return out


def check_groups(doc: dict[str, Any], ranks: list[int]) -> dict[int, tuple[int, int]]:
    """One process group per rank: a host process and its GPUs, named ``rank R · …``, pids (and sort indices)
    contiguous per rank and ordered by rank then device; every event on a named process; a tid on one pid."""
    procs = processes(doc)
    assert sorted({r for r, _ in procs.values()}) == sorted(ranks)
    order = sorted(procs, key=lambda p: procs[p])
    assert order == sorted(procs), "pids do not sort by rank, then host before GPUs"
    sort_index = {e["pid"]: e["args"]["sort_index"] for e in doc["traceEvents"]
                  if e["ph"] == "M" and e["name"] == "process_sort_index"}
    assert sorted(sort_index, key=sort_index.__getitem__) == order
    for r in ranks:
        pids = [p for p in order if procs[p][0] == r]
        assert sum(procs[p][1] == -1 for p in pids) == 1
        assert max(pids) - min(pids) < layout.PID_STRIDE
    owner: dict[int, int] = {}
    for e in doc["traceEvents"]:
        assert e["pid"] in procs, e
        if e["tid"] != 0 and (e["ph"] != "M" or e["name"].startswith("thread")):  # tid 0 is the pid's own
            assert owner.setdefault(e["tid"], e["pid"]) == e["pid"], f"tid {e['tid']} on two processes"
    return procs


def check_ids_per_rank(doc: dict[str, Any], procs: dict[int, tuple[int, int]]) -> None:
    """Flow ids (with cat and name, Perfetto's key) and External ids belong to one rank each."""
    flows: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    ext: dict[int, set[int]] = defaultdict(set)
    for e in doc["traceEvents"]:
        rank = procs[e["pid"]][0]
        if e["ph"] in "stf":
            flows[(e["cat"], e["name"], e["id"])].add(rank)
        if isinstance(e.get("args"), dict) and "External id" in e["args"]:
            ext[e["args"]["External id"]].add(rank)
    assert all(len(v) == 1 for v in flows.values())
    assert all(len(v) == 1 for v in ext.values())


def check_nesting(events: list[dict[str, Any]]) -> None:
    """X slices of one thread nest (Perfetto moves overlapping ones to an overflow track); ts/dur in ns."""
    by_tid: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for e in events:
        by_tid[e["tid"]].append((ns(e["ts"]), ns(e["dur"])))
    for slices in by_tid.values():
        stack: list[int] = []
        for ts, dur in sorted(slices, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= ts:
                stack.pop()
            assert not stack or ts + dur <= stack[-1], "slices overlap without nesting"
            stack.append(ts + dur)


def attribution(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in doc["traceEvents"] if e["ph"] == "X" and e.get("cat") == "dpprof"]


def check_attribution(doc: dict[str, Any], analysis: Analysis, ranks: list[int] | None = None,
                      steps: list[int] | None = None) -> int:
    """The attribution slices nest in their step; summed per step and category they equal the analysis's
    rows (each slice is rounded to the ns); whom a wait waited for is named. Returns the slices checked."""
    procs = processes(doc)
    events = attribution(doc)
    check_nesting(events)
    steps_at: dict[tuple[int, int, int], dict[str, Any]] = {}
    for e in events:
        if e["name"].startswith("step "):
            rank, dev = procs[e["pid"]]
            steps_at[(rank, dev, e["args"]["step"])] = e
    sums: dict[tuple[int, int, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    count: dict[tuple[int, int, int, str], int] = defaultdict(int)
    waits: dict[tuple[int, int, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        if e["name"].startswith("step "):
            continue
        rank, dev = procs[e["pid"]]
        step = next(k[2] for k, s in steps_at.items() if k[:2] == (rank, dev) and s["tid"] == e["tid"]
                    and ns(s["ts"]) <= ns(e["ts"]) and ns(e["ts"]) + ns(e["dur"]) <= ns(s["ts"]) + ns(s["dur"]))
        sums[(rank, dev, step)][e["name"]] += e["dur"]
        count[(rank, dev, step, e["name"])] += 1
        assert e["args"]["us"] == pytest.approx(e["dur"], abs=1e-9) and e["args"]["rule"] and e["args"]["rule_id"]
        if e["name"] == "peer_wait":
            waits[(rank, dev, step)][e["args"]["waited_for"]] += e["dur"]
    rows = [s for s in analysis.steps if (ranks is None or s.rank in ranks) and (steps is None or s.step in steps)]
    assert rows and len(rows) == len(steps_at)
    for row in rows:
        key = (row.rank, row.device, row.step)
        # Both ends rounded to the ns here, the duration rounded to the ns in analysis.json: 1.5 ns at most.
        assert steps_at[key]["dur"] == pytest.approx(row.duration_us, abs=2e-3)
        got = sums.get(key, {})
        for cat, us in row.categories_us.items():
            tol = 1e-3 * (count.get((*key, cat), 0) + 1)
            assert got.get(cat, 0.0) == pytest.approx(us, abs=tol), (key, cat)
        assert set(got) <= set(row.categories_us)
        for who, us in row.peer_wait_on_us.items():
            assert waits[key].get(who, 0.0) == pytest.approx(us, abs=1e-3 * (count.get((*key, "peer_wait"), 0) + 1))
    return sum(count.values())


def events_of(doc: dict[str, Any], rank: int, procs: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:
    """A rank's events from the trace itself (not dpprof's tracks)."""
    return [e for e in doc["traceEvents"] if procs[e["pid"]][0] == rank and e["ph"] != "M"
            and e.get("cat") not in ("dpprof", "nvml")]
