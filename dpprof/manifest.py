"""The run manifest as a typed model, read in one place (``read_manifest``).

``manifest.json`` (docs/run-format.md) is written by ``dpprof profile``/``run``/``sweep`` (``dpprof.collect``) and
read by everything downstream through :class:`Manifest`: ``m.config.batch_size``, never ``m["config"]["..."]``.
Every field is optional: manifests of older versions, of runs still going or killed, and files written by hand
miss fields, and a missing field is None (an empty section, an empty list). Reading is tolerant: a field of the
wrong type (a string for a count, NaN, 10**400, a list for a mapping) is left out as if absent and named in a
problem line (``dpprof.schema.check_file`` against the table derived from these classes, so the types are
written down once, here). Fields the model does not name are ignored.

The writers keep building plain dicts (they add fields as a run goes on); only readers use this model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from dpprof.rundir import MANIFEST, load_json
from dpprof.schema import check_file, spec_of


class _Section(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A manifest section: every field optional (None when absent or of the wrong type)."""

    def shown(self) -> dict[str, Any]:
        """The fields present, as plain data (for the report's tables)."""
        return {k: v for k, v in msgspec.to_builtins(self).items() if v is not None}


class Config(_Section, frozen=True):
    strategy: str | None = None
    model: str | None = None
    data: str | None = None
    data_root: str | None = None
    batch_size: int | None = None
    per_rank_batch_size: int | None = None
    gpus: int | None = None
    device_ids: list[int] | None = None
    nproc: int | None = None
    nnodes: int | None = None
    world_size: int | None = None
    epochs: int | None = None
    steps: int | None = None
    lr: float | None = None
    lr_rule: str | None = None
    base_lr: float | None = None
    momentum: float | None = None
    workers: int | None = None
    seed: int | None = None
    profile: bool | None = None
    profile_wait: int | None = None
    profile_warmup: int | None = None
    profile_active: int | None = None
    profile_all_threads: bool | None = None
    record_shapes: bool | None = None
    with_stack: bool | None = None
    nvml_period_ms: int | None = None
    loss_every: int | None = None
    exact_timing: bool | None = None
    device: str | None = None
    backend: str | None = None
    threads: int | None = None
    torch_threads: int | None = None
    omp_num_threads_env: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    cudnn_benchmark: bool | None = None
    comm_probe: bool | None = None
    step_on: str | None = None  # dpprof run: --step-on as given
    inferred: list[str] | None = None  # dpprof run: the config keys dpprof inferred from the script



class ModelInfo(_Section, frozen=True):
    name: str | None = None
    params: int | None = None
    param_bytes: int | None = None
    buffers_bytes: int | None = None


class DataInfo(_Section, frozen=True):
    kind: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    root: str | None = None


class Gpu(_Section, frozen=True):
    cuda_index: int | None = None
    nvml_index: int | None = None
    uuid: str | None = None
    name: str | None = None
    memory_total_bytes: int | None = None


class Topology(_Section, frozen=True):
    p2p: dict[str, str] | None = None
    pcie_path: dict[str, str] | None = None
    nvlink_active_links: dict[str, int] | None = None


class Hardware(_Section, frozen=True):
    host: str | None = None
    cpus: int | None = None
    gpus: list[Gpu] | None = None
    warnings: list[str] | None = None
    topology: Topology | None = None


class DeviceLink(_Section, frozen=True):
    h2d_GBps: float | None = None
    d2h_GBps: float | None = None


class LinkBandwidth(_Section, frozen=True):
    h2d_GBps: float | None = None
    d2h_GBps: float | None = None
    p2p_GBps: dict[str, float] | None = None
    measured: bool | None = None
    note: str | None = None
    peer_access: dict[str, bool] | None = None
    per_device: dict[str, DeviceLink] | None = None
    bytes: int | None = None
    repeats: int | None = None


class Profiler(_Section, frozen=True):
    wait: int | None = None
    warmup: int | None = None
    active: int | None = None
    profile_all_threads: bool | None = None
    enabled: bool | None = None
    profiled_step_ms_median: float | None = None
    unprofiled_step_ms_median: float | None = None
    overhead_ratio: float | None = None
    profiled_steps: int | None = None
    unprofiled_steps: int | None = None
    unprofiled_basis: str | None = None


class Summary(_Section, frozen=True):
    steps: int | None = None
    step_ms_median: float | None = None
    images_per_s_median: float | None = None
    median_steps: int | None = None
    median_basis: str | None = None
    epochs: int | None = None
    final_train_acc: float | None = None
    final_test_acc: float | None = None
    wall_s: float | None = None


class Ddp(_Section, frozen=True):
    bucket_cap_mb: float | None = None
    bucket_cap_bytes: int | None = None
    bucket_sizes_bytes: list[int] | None = None
    bucket_sizes_source: str | None = None
    buckets: int | None = None
    read_after_step: int | None = None
    gradient_as_bucket_view: bool | None = None
    broadcast_buffers: bool | None = None
    static_graph: bool | None = None
    find_unused_parameters: bool | None = None
    note: str | None = None


class CommProbe(_Section, frozen=True):
    """The run's timed allreduce probe (``dpprof.collect.comm_probe``): the projection's α and β."""

    measured: bool | None = None
    reason: str | None = None
    backend: str | None = None
    world_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    op: str | None = None
    warmup: int | None = None
    repeats: int | None = None
    sizes_bytes: list[int] | None = None
    time_us_median: list[float] | None = None
    alpha_us: float | None = None
    beta_us_per_byte: float | None = None
    bandwidth_GBps: float | None = None
    bus_bandwidth_GBps: float | None = None
    fit_residual_rms_us: float | None = None
    fit_residual_rms_pct: float | None = None
    fit: str | None = None
    duration_ms: float | None = None
    note: str | None = None


class Fsdp(_Section, frozen=True):
    api: str | None = None  # "fully_shard" (FSDP2) or "FullyShardedDataParallel" (FSDP1)
    units: int | None = None
    sharding_strategy: str | None = None
    mesh_shape: list[int] | None = None
    placements: list[str] | None = None


class Script(_Section, frozen=True):
    """``dpprof run``: the user's script and how it ended."""

    path: str | None = None
    target: str | None = None
    module: bool | None = None
    args: list[str] | None = None
    sha256: str | None = None
    cwd: str | None = None
    python: str | None = None
    api: bool | None = None
    exit_code: int | None = None
    error: str | None = None
    launcher_command: list[str] | None = None


class Stepping(_Section, frozen=True):
    """``dpprof run``: where a step ends, and what dpprof's own bookkeeping cost per step."""

    step_on: str | None = None
    means: str | None = None
    boundaries: int | None = None
    grad_scaler_skipped_steps: int | None = None
    optimizers: list[str] | None = None
    optimizer_steps: list[int] | None = None
    tracked: int | None = None
    hook_us_median: float | None = None
    hook_us_p90: float | None = None


class Epoch(_Section, frozen=True):
    epoch: int | None = None
    train_acc: float | None = None
    test_acc: float | None = None
    loss: float | None = None
    time_s: float | None = None
    images_per_s: float | None = None
    steps: int | None = None
    partial: bool | None = None


class Node(_Section, frozen=True):
    host: str | None = None
    node_rank: int | None = None
    file: str | None = None


class Files(_Section, frozen=True):
    traces: list[str] | None = None
    nvml: list[str] | None = None
    steps: list[str] | None = None
    merged: list[str] | None = None


class Manifest(_Section, frozen=True):
    """``manifest.json``: the run's configuration, hardware, measurements and files."""

    schema: str | None = None
    run_id: str | None = None
    status: str | None = None
    complete: bool | None = None
    command: list[str] | None = None
    created_unix_ns: int | None = None
    ended_unix_ns: int | None = None
    dp_mode: str | None = None
    warnings: list[str] | None = None
    config: Config = Config()
    model_info: ModelInfo = ModelInfo()
    data_info: DataInfo = DataInfo()
    versions: dict[str, str] | None = None
    hardware: Hardware = Hardware()
    link_bandwidth: LinkBandwidth = LinkBandwidth()
    profiler: Profiler = Profiler()
    summary: Summary = Summary()
    ddp: Ddp | None = None
    fsdp: Fsdp | None = None
    comm_probe: CommProbe | None = None
    script: Script | None = None
    stepping: Stepping | None = None
    profiler_skipped: str | None = None
    epochs: list[Epoch] | None = None
    peak_memory_bytes: dict[str, int] | None = None
    nodes: list[Node] | None = None
    files: Files = Files()


#: The type table ``dpprof.schema.check_file`` checks a manifest against, derived from the classes above.
MANIFEST_SPEC: dict[str, Any] = spec_of(Manifest)


#: Counts of a run that are at least 1 (torchrun's --nnodes/--nproc-per-node, dist.get_world_size()), by section.
_COUNTS = {"config": ("world_size", "nproc", "nnodes")}


def _check_ranges(clean: dict[str, Any], name: str) -> list[str]:
    """Leave out counts below 1 and node ranks below 0 (right type, impossible value), naming each. ``clean`` is
    ``check_file``'s copy (its sections are new dicts), so the caller's data is not touched."""
    problems = []
    for section, keys in _COUNTS.items():
        sec = clean.get(section)
        if not isinstance(sec, dict):
            continue
        for key in keys:
            value = sec.get(key)
            if isinstance(value, int) and value < 1:
                problems.append(f"{name}: {section}.{key}: expected 1 or more, got {value}")
                del sec[key]
    for i, node in enumerate(clean.get("nodes") or []):
        value = node.get("node_rank") if isinstance(node, dict) else None
        if isinstance(value, int) and value < 0:
            problems.append(f"{name}: nodes[{i}].node_rank: expected 0 or more, got {value}")
            del node["node_rank"]
    return problems


def parse_manifest(data: Any, name: str = MANIFEST) -> tuple[Manifest | None, list[str]]:
    """A decoded manifest as a :class:`Manifest` (wrong fields left out) and what was wrong; None when it is not
    a JSON object."""
    clean, problems = check_file(data, MANIFEST_SPEC, name)
    if clean is None:
        return None, problems
    problems += _check_ranges(clean, name)
    return msgspec.convert(_without_nulls(clean), Manifest), problems


def _without_nulls(value: Any) -> Any:
    """null is absent (a section that is null reads as an empty one)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def manifest_of(data: dict[str, Any]) -> Manifest:
    """A Manifest from a dict built in memory (tests, synthetic runs); fields of the wrong type left out."""
    m, _ = parse_manifest(data)
    return m if m is not None else Manifest()


def read_manifest(run_dir: Path | None) -> tuple[Manifest | None, list[str]]:
    """The run's manifest and what was wrong in it; (None, []) without a run directory or a readable manifest."""
    if run_dir is None:
        return None, []
    data, why = load_json(run_dir / MANIFEST)
    if data is None:
        return None, [why] if why else []
    return parse_manifest(data)


#: The manifest of a run that has none: every field None, every section empty.
EMPTY = Manifest()
