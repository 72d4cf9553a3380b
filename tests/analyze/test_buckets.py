"""DDP's gradient buckets: the finding and its bucket_cap_mb advice, from the manifest's reducer or the trace."""

from __future__ import annotations

import dataclasses

import pytest

from dpprof.analyze.diagnosis import diagnose
from dpprof.analyze.model import Analysis, CollectiveSkew
from dpprof.manifest import manifest_of
from tests.analyze.diag_builders import analysis


# ---- DDP buckets -----------------------------------------------------------------------------------------
def _ddp2(allreduce: float = 2000.0) -> Analysis:
    return analysis("ddp", {(0, 0): {"compute": 8000, "comm": allreduce},
                            (1, 1): {"compute": 8000, "comm": allreduce}})


def _bucket_finding(d):
    return next(f for f in d.findings if f.id == "ddp_buckets")


MIB = 2**20


def test_buckets_from_manifest_balanced_for_cifar_vgg16():
    # CIFAR VGG16's rebuilt buckets (element counts of the DDP fixtures, fp32): 9.5 / 28.3 / 21.1 MB
    sizes = [4 * n for n in (2365450, 7082496, 5280320)]
    m = manifest_of({"ddp": {"bucket_sizes_bytes": sizes, "bucket_sizes_source": "rebuilt",
                             "bucket_cap_bytes": 25 * MIB}, "model_info": {"param_bytes": sum(sizes)}})
    d = diagnose(_ddp2(500.0), m)
    f = _bucket_finding(d)
    assert f.evidence["shape"] == "balanced" and f.evidence["buckets_per_step"] == 3
    assert f.evidence["largest_bucket_pct"] == pytest.approx(48.1, abs=0.05)
    assert "manifest ddp section (DDP reducer, rebuilt buckets)" in f.detail and f.severity == "info"
    assert not any(x.startswith("DDP buckets") or "DDP runs many" in x for x in d.advice)


def test_one_large_bucket_is_few_large_with_a_cap_suggestion():
    m = {"ddp": {"bucket_sizes_bytes": [60 * MIB], "bucket_sizes_source": "rebuilt", "bucket_cap_bytes": 100 * MIB}}
    d = diagnose(_ddp2(), manifest_of(m))
    f = _bucket_finding(d)
    assert f.evidence["shape"] == "one_bucket" and f.severity == "warning"  # 20 % exposed allreduce
    tip = next(x for x in d.advice if x.startswith("DDP buckets are few and large"))
    assert "bucket_cap_mb=15" in tip and "20.0 % of the step" in tip and "[based on manifest ddp section" in tip
    # the exposed-allreduce advice no longer says which way to move the cap: the bucket advice does
    assert not any("try a smaller bucket_cap_mb" in x for x in d.advice)


def test_a_parameter_larger_than_the_cap_cannot_be_split():
    # torchvision vgg16: the 392 MiB fc6 weight fills one bucket by itself
    sizes = [int(x * 1e6) for x in (67.3, 411.1, 28.3, 28.3, 2.2)]
    m = {"ddp": {"bucket_sizes_bytes": sizes, "bucket_sizes_source": "rebuilt", "bucket_cap_bytes": 25 * MIB}}
    d = diagnose(_ddp2(), manifest_of(m))
    assert _bucket_finding(d).evidence["shape"] == "few_large"
    assert "which no bucket_cap_mb can split" in _bucket_finding(d).detail
    assert any("a smaller cap cannot split it" in x for x in d.advice)


def test_many_small_buckets_suggest_a_larger_cap():
    m = {"ddp": {"bucket_sizes_bytes": [512 * 1024] * 40, "bucket_sizes_source": "rebuilt",
                 "bucket_cap_bytes": MIB // 2}}
    d = diagnose(_ddp2(), manifest_of(m))
    assert _bucket_finding(d).evidence["shape"] == "many_small"
    tip = next(x for x in d.advice if x.startswith("DDP runs many small allreduces"))
    assert "raise bucket_cap_mb (e.g. bucket_cap_mb=5, a quarter of the 20.0 MiB" in tip


def test_tiny_model_needs_no_bucket_advice():
    m = {"ddp": {"bucket_sizes_bytes": [6440], "bucket_sizes_source": "rebuilt", "bucket_cap_bytes": 25 * MIB}}
    d = diagnose(_ddp2(), manifest_of(m))
    assert _bucket_finding(d).evidence["shape"] == "balanced"
    assert not any("bucket_cap_mb=" in x for x in d.advice)


def test_buckets_counted_from_trace_collectives_without_manifest():
    one = _ddp2()
    colls = tuple(CollectiveSkew(group="0", index=k, name="nccl:all_reduce", start_skew_us=1.0, last_rank=1,
                                 ranks=(0, 1)) for k in range(3))
    d = diagnose(dataclasses.replace(one, collectives=colls))  # 3 steps, one allreduce each: one bucket
    f = _bucket_finding(d)
    assert f.evidence["allreduce_per_step"] == 1.0 and f.evidence["shape"] == "one_bucket"
    assert f.evidence["source"].startswith("trace: allreduce collectives per profiled step")
    assert any(x.startswith("DDP buckets are few and large") and "trace: allreduce" in x for x in d.advice)
    many = tuple(CollectiveSkew(group="0", index=k, name="gloo:all_reduce", start_skew_us=0.0, last_rank=-1,
                                ranks=(0, 1)) for k in range(60))
    f2 = _bucket_finding(diagnose(dataclasses.replace(one, collectives=many)))
    assert f2.evidence["allreduce_per_step"] == 20.0 and f2.evidence["shape"] == "many_small"
    assert not any(f.id == "ddp_buckets" for f in diagnose(one).findings)  # neither source: no finding


def test_buckets_of_the_real_gloo_fixture_are_counted(h200):
    from dpprof.analyze.pipeline import analyze

    a = analyze([h200["ddp2_gloo_rank0"], h200["ddp2_gloo_rank1"]], jobs=1)
    f = _bucket_finding(diagnose(a))
    # 9 gloo allreduces over ProfilerStep#3..#5: CIFAR VGG16's 3 rebuilt buckets
    assert f.evidence["allreduce_per_step"] == 3.0 and f.evidence["profiled_steps"] == 3
    assert f.evidence["shape"] == "unknown"
