"""The terms of the what-if projection, each a small pure function with its unit test (µs, bytes).

* Ring allreduce (NCCL's and gloo's ring algorithms): a bucket of ``b`` bytes over ``N`` ranks moves
  2(N−1)/N × b through every link, plus a per-collective latency α: ``t = α + 2(N−1)/N × b × β`` with β the time
  per byte of one link (µs/byte).
* DDP's buckets (torch/nn/parallel/distributed.py: the first bucket is 1 MiB, the others ``bucket_cap_mb`` = 25 MiB)
  fill in the order gradients become ready; each bucket's allreduce starts when it is full and runs beside the
  rest of backward. The last bucket is ready only when backward ends: it cannot overlap. Exposed =
  t(last) + max(0, Σ t(others) − backward).
* DP's data path per backend: with NCCL (distinct devices) broadcast and reduce are pipelined ring/tree collectives:
  GPU0's link carries each parameter byte about once each way, with a latency per hop; the copy fallback sends
  (N−1) copies from GPU0. Scatter and gather copy (N−1)/N of the batch's inputs and outputs from/to GPU0, one
  after another on GPU0's stream (Copy.cu).
* CPU ranks: the collector splits a node's cores evenly over its processes, so N processes each get cores ÷ N
  threads; the compute of 1/N of the batch on cores ÷ N threads is modelled with linear thread scaling.
"""

from __future__ import annotations

MiB = 2**20
DDP_FIRST_BUCKET_BYTES = 1 * MiB
DDP_BUCKET_CAP_BYTES = 25 * MiB


def ring_allreduce_us(nbytes: float, n: int, alpha_us: float, beta_us_per_byte: float) -> float:
    """One ring allreduce of ``nbytes`` over ``n`` ranks (0 for one rank)."""
    if n <= 1:
        return 0.0
    return alpha_us + 2 * (n - 1) / n * nbytes * beta_us_per_byte


def link_beta_from_fit(beta_fit_us_per_byte: float, n_fit: int) -> float:
    """The per-link β from a fit of t = α + β_fit × bytes measured at ``n_fit`` ranks (β_fit = 2(n−1)/n × β)."""
    return beta_fit_us_per_byte * n_fit / (2 * (n_fit - 1)) if n_fit > 1 else beta_fit_us_per_byte


def default_buckets(param_bytes: float, cap: float = DDP_BUCKET_CAP_BYTES,
                    first: float = DDP_FIRST_BUCKET_BYTES) -> list[float]:
    """DDP's bucket sizes for ``param_bytes`` of gradients: 1 MiB first, then ``cap``-sized, the rest last."""
    out: list[float] = []
    left = float(param_bytes)
    size = first
    while left > 0:
        out.append(min(size, left))
        left -= out[-1]
        size = cap
    return out


def ddp_exposed_us(bucket_us: list[float], backward_us: float) -> float:
    """Allreduce time not hidden behind backward: the last bucket, and what the others do not fit in backward."""
    if not bucket_us:
        return 0.0
    return bucket_us[-1] + max(0.0, sum(bucket_us[:-1]) - backward_us)


def dp_comm_us(params: float, buffers: float, io_bytes: float, n: int, backend: str, beta_us_per_byte: float,
               alpha_us: float) -> dict[str, float]:
    """GPU0's data-path transfer per DP step over ``n`` GPUs: broadcast, reduce, scatter + gather (µs)."""
    if n <= 1:
        return {"broadcast_us": 0.0, "reduce_us": 0.0, "scatter_gather_us": 0.0}
    if backend == "nccl":
        bcast = alpha_us * (n - 1) + (params + buffers) * beta_us_per_byte
        red = alpha_us * (n - 1) + params * beta_us_per_byte
    else:
        bcast = (n - 1) * (params + buffers) * beta_us_per_byte
        red = (n - 1) * params * beta_us_per_byte
    return {"broadcast_us": bcast, "reduce_us": red, "scatter_gather_us": io_bytes * (n - 1) / n * beta_us_per_byte}


def cpu_compute_us(parallel_1: float, threads_profiled: int, n: int, cores: int) -> float:
    """CPU: compute of 1/n of the batch on cores // n threads, from the whole batch's compute measured with
    ``threads_profiled`` threads (linear thread scaling)."""
    threads = max(1, cores // max(n, 1))
    return parallel_1 * threads_profiled / (n * threads)
