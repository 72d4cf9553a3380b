"""What ``make gpu-check`` checks in what dpprof wrote: a run directory, its HTML report, a Perfetto timeline.

Every check ends as ``passed``, ``failed`` or ``skipped`` with the reason; a check that only a GPU can
answer is skipped on a CPU run, never passed. The expectations of each planned run are in :class:`Plan`
(built by ``gpu_check_plan.py``).
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpprof.vocabulary import DP_MARKS

MARKS: tuple[str, ...] = tuple(DP_MARKS.values())
NO_GPU = "no GPU (CPU dry run)"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "passed" | "failed" | "skipped"
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def check(name: str, ok: bool, detail: str = "") -> Check:
    return Check(name, "passed" if ok else "failed", detail)


def skipped(name: str, why: str) -> Check:
    return Check(name, "skipped", why)


@dataclass(frozen=True)
class Plan:
    """One run of the check: the dpprof command and what its run directory must show."""

    name: str
    kind: str  # "profile" (a built-in model) or "run" (dpprof run on an example script)
    argv: tuple[str, ...]  # after `python -m dpprof.cli`
    ranks: int = 1
    marks: tuple[str, ...] | None = None  # DP's phase marks expected in the trace; None: not a DP run
    dp_mode: str | None = None
    nccl: bool = False  # DDP/FSDP over NCCL: the trace must hold nccl: annotations
    not_exercised: tuple[str, ...] = ()  # GPU paths this run cannot reach on this machine, and why
    timeout_s: int = 150


@dataclass
class Outcome:
    """What one step produced: figures for the summary table and its checks."""

    name: str
    kind: str
    command: list[str] = field(default_factory=list)
    status: str = "not run"
    wall_s: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    not_exercised: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(c.status == "failed" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "command": self.command, "status": self.status,
                "wall_s": self.wall_s, **self.figures, "checks": [c.to_json() for c in self.checks],
                "not_exercised": self.not_exercised}


def read_trace(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_figures(run: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Median, p10 and p90 step time (ms) and images/s over the steps dpprof's own median stands on
    (``summary.median_basis``: after the profiler window, else the wait steps but step 0), from rank 0's
    steps file; the profiler's active-step ratio and the step count from the manifest."""
    summary, prof = manifest.get("summary") or {}, manifest.get("profiler") or {}
    out: dict[str, Any] = {"step_ms_median": summary.get("step_ms_median"),
                           "images_per_s_median": summary.get("images_per_s_median"),
                           "profiler_ratio": prof.get("overhead_ratio"), "steps": summary.get("steps"),
                           "step_ms_p10": None, "step_ms_p90": None}
    path = run / "steps.rank0.jsonl"
    if not path.is_file():
        return out
    steps = [s for s in read_jsonl(path) if isinstance(s.get("wall_ms"), (int, float))]
    end = int(prof.get("wait") or 0) + int(prof.get("warmup") or 0) + int(prof.get("active") or 0)
    basis = summary.get("median_basis")
    if basis == "after_window":
        ms = [s["wall_ms"] for s in steps if s["step"] >= end]
    elif basis == "before_window":
        ms = [s["wall_ms"] for s in steps if 1 <= s["step"] < int(prof.get("wait") or 0)]
    else:
        ms = [s["wall_ms"] for s in steps if s["step"] >= 1]
    if len(ms) >= 2:
        q = statistics.quantiles(ms, n=10, method="inclusive")
        out["step_ms_p10"], out["step_ms_p90"] = round(q[0], 3), round(q[-1], 3)
    elif ms:
        out["step_ms_p10"] = out["step_ms_p90"] = ms[0]
    return out


def nvml_figures(run: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """(samples, the samples, the last header) of every ``nvml.*.jsonl`` in the run directory."""
    samples: list[dict[str, Any]] = []
    header: dict[str, Any] = {}
    for f in sorted(run.glob("nvml.*.jsonl")):
        for rec in read_jsonl(f):
            if rec.get("type") == "sample":
                samples.append(rec)
            elif rec.get("type") == "header":
                header = rec
    return len(samples), samples, header


def inspect_run(run: Path, plan: Plan, cuda: bool) -> tuple[dict[str, Any], list[Check]]:
    """Figures and checks of one run directory."""
    checks: list[Check] = []
    m = json.loads((run / "manifest.json").read_text())
    figures = step_figures(run, m)
    checks.append(check("manifest complete", m.get("status") == "complete", f"status {m.get('status')}"))
    traces = sorted((run / "traces").glob("rank*.pt.trace.json.gz"))
    names: set[str] = set()
    kernels = 0
    worlds = set()
    for t in traces:
        data = read_trace(t)
        events = data.get("traceEvents", [])
        names.update(str(e.get("name", "")) for e in events)
        kernels += sum(1 for e in events if e.get("cat") == "kernel")
        worlds.add((data.get("distributedInfo") or {}).get("world_size"))
    figures["kernels"] = kernels
    figures["trace_bytes"] = sum(t.stat().st_size for t in traces)
    checks.append(check("one trace per rank", len(traces) == plan.ranks and worlds == {plan.ranks},
                        f"{len(traces)} trace(s), distributedInfo world_size {sorted(worlds, key=str)}, "
                        f"expected {plan.ranks}"))
    steps = [n for n in names if n.startswith("ProfilerStep#")]
    checks.append(check("profiled steps in the trace", len(steps) >= 1, f"{len(steps)} ProfilerStep# span(s)"))
    n_samples, samples, header = nvml_figures(run)
    figures["nvml_samples"] = n_samples
    figures["nvml_sample_cost_us"] = header.get("sample_cost_us_median")
    if cuda:
        checks.append(check("GPU kernels in the trace", kernels > 0, f"{kernels} kernel events"))
        unmapped = sum(1 for s in samples if s.get("cuda_index") is None)
        checks.append(check("NVML samples, mapped to CUDA by UUID", n_samples > 0 and unmapped == 0,
                            f"{n_samples} samples, {unmapped} without a CUDA index; "
                            + "; ".join(header.get("warnings") or [])[:200]))
        cost = header.get("sample_cost_us_median")
        checks.append(check("NVML sample cost measured", isinstance(cost, (int, float)) and cost > 0,
                            f"{cost} us per GPU sample (median)"))
    else:
        checks += [skipped(n, NO_GPU) for n in ("GPU kernels in the trace", "NVML samples, mapped to CUDA by UUID",
                                               "NVML sample cost measured")]
    if plan.marks is not None:
        present = tuple(k for k in MARKS if k in names)
        checks.append(check("DP phase marks", present == plan.marks, f"{present}, expected {plan.marks}"))
    if plan.dp_mode is not None:
        checks.append(check("DP mode", m.get("dp_mode") == plan.dp_mode,
                            f"{m.get('dp_mode')}, expected {plan.dp_mode}"))
    if plan.nccl:
        backend = (m.get("config") or {}).get("backend")
        annotated = sorted(n for n in names if n.startswith("nccl:"))
        checks.append(check("NCCL backend and nccl: annotations", backend == "nccl" and bool(annotated),
                            f"backend {backend}, {annotated[:4]}"))
    checks.append(link_check(m, plan, cuda))
    return figures, checks


def link_check(m: dict[str, Any], plan: Plan, cuda: bool) -> Check:
    """The link bandwidth probe (``dpprof profile`` on a GPU) measured host<->device copies."""
    name = "link bandwidth probe (manifest)"
    if not cuda:
        return skipped(name, NO_GPU)
    if plan.kind != "profile":
        return skipped(name, "dpprof run leaves the GPUs to the script: no probe")
    lb = m.get("link_bandwidth") or {}
    h2d = lb.get("h2d_GBps")
    return check(name, bool(lb.get("measured")) and isinstance(h2d, (int, float)) and h2d > 0,
                 f"measured {lb.get('measured')}, h2d {h2d} GB/s, d2h {lb.get('d2h_GBps')} GB/s, "
                 f"p2p {lb.get('p2p_GBps')}; {lb.get('note', '')}")


def _section(html: str, ident: str) -> str:
    found = re.search(rf'<section id="{ident}">(.*?)</section>', html, re.S)
    return found.group(1) if found else ""


def inspect_report(html: str, plan: Plan, cuda: bool) -> list[Check]:
    """The report's sections that only a GPU run fills: the NVML plot, the top kernels, the link bandwidth
    measured at collection (``report/templates/run.html``: sections ``nvml``, ``kernels``, ``environment``)."""
    names = ("report: NVML plot", "report: top kernels", "report: link bandwidth")
    if not cuda:
        return [skipped(n, NO_GPU) for n in names]
    nvml = _section(html, "nvml")
    kernels = _section(html, "kernels")
    out = [check(names[0], "<svg" in nvml, "chart drawn" if "<svg" in nvml else re.sub(r"<[^>]+>", " ", nvml)[-200:]),
           check(names[1], "<table" in kernels and "No GPU kernel ran" not in kernels,
                 f"{kernels.count('<tr>') - 1} kernel row(s)")]
    if plan.kind != "profile":
        out.append(skipped(names[2], "dpprof run leaves the GPUs to the script: no probe"))
        return out
    link = re.search(r"Link bandwidth \(measured at collection\)</h3>(.*?)</table>", html, re.S)
    table = link.group(1) if link else ""
    h2d = re.search(r"<td>h2d_GBps</td><td>([0-9][0-9.,]*)</td>", table)
    measured = "<td>measured</td><td>yes</td>" in table
    out.append(check(names[2], bool(h2d) and measured,
                     f"h2d {h2d.group(1) if h2d else None} GB/s, measured {'yes' if measured else 'no'}"))
    return out


def inspect_perfetto(path: Path, cuda: bool) -> list[Check]:
    """The merged timeline: readable JSON with events; on a GPU also kernels and NVML counter tracks
    (docs/perfetto.md: kernels keep torch's ``cat``, NVML counters are ``cat: "nvml"``, ``ph: "C"``)."""
    try:
        events = read_trace(path).get("traceEvents", [])
    except (OSError, ValueError, EOFError) as exc:
        return [check("perfetto: timeline readable", False, f"{type(exc).__name__}: {exc}")]
    out = [check("perfetto: timeline readable", len(events) > 0, f"{len(events)} events")]
    if not cuda:
        return out + [skipped("perfetto: kernels and NVML counters", NO_GPU)]
    kernels = sum(1 for e in events if e.get("cat") == "kernel")
    counters = sum(1 for e in events if e.get("cat") == "nvml" and e.get("ph") == "C")
    return out + [check("perfetto: kernels and NVML counters", kernels > 0 and counters > 0,
                        f"{kernels} kernels, {counters} NVML counter events")]
