"""The geo cost model: seconds per iteration and dollars, one pure function per term.

Every formula is written out, with its source, in docs/geo-cost-model.md; the symbols there are
the argument names here. Units: seconds, bytes, bytes/s, FLOP/s, US dollars. alpha = one-way
latency of a link (RTT/2), beta = its bandwidth.
"""
from __future__ import annotations

GB = 1e9


def compute_s(work_flop: float, n_gpus: int, flops_per_gpu: float, mfu: float) -> float:
    """Dense compute of one iteration: W / (n * F * mfu); W = 6*P*T for a transformer."""
    if n_gpus <= 0:
        raise ValueError("n_gpus must be positive")
    return work_flop / (n_gpus * flops_per_gpu * mfu)


def split_compute_s(work_flop: float, gpus_per_site: list[int], flops_per_gpu: float, mfu: float,
                    shares: list[float] | None = None) -> float:
    """One iteration's work split over sites: site s does ``shares[s]`` of W on its m_s GPUs and
    the slowest site paces the step, max_s shares_s * W / (m_s * F * mfu) (data-parallel: the
    synchronous all-reduce waits for the last site; pipeline: the slowest stage sets the beat).
    Default shares m_s / n (the same batch per GPU; layers in proportion to GPUs), which gives
    W / (n * F * mfu) whatever the sizes."""
    n = sum(gpus_per_site)
    if n <= 0 or min(gpus_per_site) <= 0:
        raise ValueError("every site needs at least one GPU")
    shares = shares or [m / n for m in gpus_per_site]
    return max(w * work_flop / (m * flops_per_gpu * mfu) for w, m in zip(shares, gpus_per_site))


def transformer_work_flop(params: float, tokens: float) -> float:
    """Forward + backward FLOPs of one iteration: 6 * P * T (Kaplan et al. 2020)."""
    return 6.0 * params * tokens


def ring_allreduce_s(nbytes: float, n: int, beta: float, alpha: float) -> float:
    """Ring all-reduce of ``nbytes`` over ``n`` peers: 2(n-1)*alpha + 2(n-1)/n * bytes/beta."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes / beta


def cross_site_allreduce_s(nbytes: float, k_sites: int, beta_min: float, alpha_max: float) -> float:
    """The WAN step of a hierarchical all-reduce over k sites: a ring of sites, each site's
    share travelling over its slowest link (the ring's pace is its slowest hop)."""
    return ring_allreduce_s(nbytes, k_sites, beta_min, alpha_max)


def hierarchical_allreduce_s(nbytes: float, gpus_per_site: list[int], beta_intra: float,
                             alpha_intra: float, beta_wan_min: float, alpha_wan_max: float,
                             sync_every: int = 1) -> float:
    """Intra-site ring (reduce-scatter + all-gather: the largest site paces it) plus the
    cross-site ring divided by the local-SGD period H (``sync_every``; 1 = every step)."""
    intra = ring_allreduce_s(nbytes, max(gpus_per_site), beta_intra, alpha_intra)
    cross = cross_site_allreduce_s(nbytes, len(gpus_per_site), beta_wan_min, alpha_wan_max)
    return intra + cross / max(1, sync_every)


def pipeline_boundary_s(act_bytes_per_microbatch: float, microbatches: int,
                        beta: float, alpha: float) -> float:
    """One stage boundary over the WAN per iteration: activations forward and gradients back,
    each micro-batch paying alpha + A/beta per direction: 2 * m * (alpha + A/beta).
    Not overlapped with compute: an upper bound (docs/geo-cost-model.md)."""
    return 2 * microbatches * (alpha + act_bytes_per_microbatch / beta)


def pipeline_stage_allreduce_s(nbytes: float, gpus_per_site: list[int], beta: float,
                               alpha: float) -> float:
    """Each pipeline stage all-reduces its own gradients inside its site: stage s holds the
    share m_s / n of the layers (so of the G bytes) on m_s GPUs; the slowest stage counts:
    max_s t_ar(G * m_s / n, m_s, beta, alpha)."""
    n = sum(gpus_per_site)
    return max(ring_allreduce_s(nbytes * m / n, m, beta, alpha) for m in gpus_per_site)


def pipeline_bubble_factor(stages: int, microbatches: int) -> float:
    """GPipe's fill/drain overhead: compute time is multiplied by 1 + (S-1)/m."""
    return 1.0 + (stages - 1) / microbatches


def data_read_s(dataset_bytes: float, iterations: int, beta: float) -> float:
    """Streaming a remote dataset once over the run: the per-iteration share over the link.
    Reads overlap compute, so the iteration takes max(step, read) (see iteration_s)."""
    return dataset_bytes / iterations / beta


def iteration_s(step_s: float, read_s: float = 0.0) -> float:
    """A step overlaps its prefetch of the next batch: the slower of the two paces training."""
    return max(step_s, read_s)


def gpu_usd_per_hour(gpus_and_prices: list[tuple[int, float]]) -> float:
    """Sum over sites of GPUs * $/GPU-hour."""
    return sum(n * p for n, p in gpus_and_prices)


def egress_usd(bytes_and_prices: list[tuple[float, float]]) -> float:
    """Sum of egress $/GB * GB moved."""
    return sum(b / GB * p for b, p in bytes_and_prices)


def allreduce_wan_bytes_per_site(nbytes: float, k_sites: int) -> float:
    """Bytes each site sends over the WAN in one cross-site ring all-reduce: 2(k-1)/k * G."""
    return 0.0 if k_sites <= 1 else 2 * (k_sites - 1) / k_sites * nbytes


def migration_s(checkpoint_bytes: float, beta: float | None, alpha: float, restart_s: float) -> float:
    """Moving a running job: its checkpoint over the WAN (none if it stays inside a site) plus
    the restart (load checkpoint, rebuild the process group)."""
    wire = 0.0 if beta is None else alpha + checkpoint_bytes / beta
    return wire + restart_s
