"""Estimate: how each model can run as a replica on each GPU type (the solvers' input).

A configuration ``k`` is (model ``i``, GPU type ``t``, batch ``b``, slowdown budget ``a``) with,
from the model's profile on the simulated GPU of type ``t`` (``profilers/profile.py``):

    l_k         solo latency of one batch (ms);  c_k, m_k, o_k  compute, memory and SM-slot demand
    f_k         memory footprint (MB): weights + activations + per-process context
    tau_k       = l_k / b                        solo GPU seconds per request (/1000)
    T_k         = SLO_i - Q l_k a                batching timeout the replica may use (ms)
    lam_max_k   = rho_max b / (l_k a)            requests/s one replica may serve
    lam_min_k   = (b - 1) / T_k                  below this a batch of b does not fill in time

A replica of ``k`` serving ``lam`` requests/s adds to its GPU ``u = lam tau``, ``u c``, ``u m``
and ``u o a`` (solo busy time, compute, memory, and the SM slots it holds: its occupancy for up
to ``a`` times as long as alone). Its predicted p99 slowdown among neighbours ``j`` is

    alpha_k = 1 + kappa sum_j u_j beta_kj
                + max_j (beta99_kj + min(1, u_j) delta - u_j beta_kj)

the mean excess of every neighbour (each counted for the share ``u_j`` of time it is busy)
and, at the tail, one neighbour's full p99 excess instead of its mean share: the p99 of a sum
of many small, independent contributions is about their mean plus one bad event, not the sum
of their tails. ``beta_kj`` is the pairwise mean fit, ``beta99_kj`` the p99 fit
(``profilers/interference.py``: ``w`` and ``w99``), ``delta`` the fit's out-of-sample margin
(the 99th percentile of its leave-one-model-out under-predictions):
``beta_kj = A_k + B_k c_j + D_k m_j + E_k L_j`` with ``A_k = w0 - 1 + w1 c_k + w3 m_k``,
``B_k = w2 + w5 c_k``, ``D_k = w4 + w6 m_k``, ``E_k = w7 / l_k`` (``L_j`` the neighbour's
longest kernel), each clipped at 0 so a neighbour never helps; ``beta99`` the same with
``w99`` (coefficients ``TA .. TE``; ``TM = delta``). The first sum is linear in the GPU's
totals ``U, C, M`` and ``K = sum u_j L_j``. Budgets ``a`` go down to 1.0: such a replica must
run unslowed, i.e. alone on its GPU.

Why ``delta`` is scaled by the neighbour's busy share ``u_j`` (at most 1) while ``beta99`` is
not: ``delta`` was measured on pairs whose two sides both ran closed loops, each side busy all
the time (``u_j = 1``): there it is the error of the p99 fit. With no neighbour (``u_j = 0``)
there is nothing to mispredict: the error is 0. Between those two measured points it is
interpolated linearly, the same way the mean excess counts a neighbour for its busy share; the
neighbour's fitted p99 excess itself is still counted in full (one bad event). That
interpolation is an assumption, not a bound (at ``u_j = 1`` it is the measured margin, below it
nothing was measured): ``gpusched bench usher`` replays every plan to check it. Before, the full
``delta`` was added for any neighbour, so a neighbour busy 1% of the time cost 0.24 of slowdown
budget on the H100 and every replica with a budget under 1.3 ran alone.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import profilers
from gpusched.placement.knobs import DEFAULT, Knobs
from gpusched.placement.pool import GpuType
from gpusched.placement.spec import ModelSpec, SpecError
from profilers.interference import longest_ms
from profilers.profile import profile

log = logging.getLogger("gpusched.place")

WEIGHTS_DIR = Path(profilers.__file__).resolve().parent / "data" / "interference"  # packaged


@dataclass(frozen=True)
class Config:
    model: int          # index into the workload's models
    gpu: str            # GPU type
    batch: int
    alpha: float        # slowdown budget a
    latency_ms: float   # l
    compute: float      # c
    occupancy: float    # o: share of the SM slots it holds while it runs
    memory: float       # m
    footprint_mb: float  # f
    timeout_ms: float   # T
    rate_min: float     # lam_min
    rate_max: float     # lam_max
    A: float                # mean pairwise excess coefficients (beta)
    B: float
    D: float
    E: float = 0.0          # per ms of a neighbour's longest kernel
    longest_ms: float = 0.0  # L: its own longest kernel
    TA: float = 0.0         # p99 pairwise excess coefficients (beta99)
    TB: float = 0.0
    TD: float = 0.0
    TE: float = 0.0
    TM: float = 0.0         # delta: the fit's out-of-sample margin (x the neighbour's busy share)

    @property
    def tau(self) -> float:
        """Solo GPU seconds per request."""
        return self.latency_ms / 1000.0 / self.batch

    @property
    def held(self) -> float:
        """Share of the SM slots it holds per unit of solo busy time: its occupancy, for up to
        ``alpha`` times as long as alone (its kernels stretched by its neighbours)."""
        return self.occupancy * self.alpha


@functools.cache
def model_profile(model: str, batch: int, gpu: str):
    return profile(model, batch, f"sim:{gpu}")


@functools.cache
def latency_on_share_ms(model: str, batch: int, gpu: str, share: float) -> float:
    """Solo latency on ``share`` of the SMs (an MPS partition), measured on the simulated GPU:
    a kernel wider than the partition runs in more waves (simgpu R8)."""
    if share >= 1.0:
        return model_profile(model, batch, gpu).latency_ms
    return profile(model, batch, f"sim:{gpu}", share=share).latency_ms


@dataclass(frozen=True)
class InterferenceModel:
    """What placement predicts slowdowns with on one GPU type."""
    weights: tuple[float, ...]       # w: the mean fit
    weights_p99: tuple[float, ...]   # w99: the tail (p99) fit (an older fit: the mean one)
    margin: float                    # delta: out-of-sample p99 under-prediction (slowdown)
    source: str                      # where it came from (for the report)
    tail: bool                       # whether it has a tail fit


@functools.cache
def interference_model(gpu: str) -> InterferenceModel:
    """The fit for ``sim:GPU``: the profile store's (``gpusched profile --pairs``) if present,
    else the one shipped with gpusched (``tools/fit_interference.py``). A fit of the first
    version (mean only) is used as it is, with a warning: its tail is its mean and it has no
    out-of-sample margin."""
    found = None
    try:
        from profilers.store import ProfileStore
        stored = ProfileStore().get_interference(f"sim:{gpu}")
        if stored:
            found = (stored, f"profile store (sim:{gpu})")
    except (ValueError, OSError) as e:  # an unreadable store is no reason to stop
        log.warning("place: profile store unusable (%s); using the shipped fit", e)
    if found is None:
        path = WEIGHTS_DIR / f"{gpu}.json"
        try:
            found = (json.loads(path.read_text()), str(path.relative_to(WEIGHTS_DIR.parents[1])))
        except OSError:
            raise SpecError(f"no interference model for {gpu}: run 'gpusched profile --pairs "
                            f"--device sim:{gpu} --batch 1,8,32'") from None
    fit, source = found
    w = tuple(fit["weights"])
    if "weights_p99" in fit:
        return InterferenceModel(w, tuple(fit["weights_p99"]), float(fit.get("margin", 0.0)),
                                 source, True)
    log.warning("place: the interference fit for %s (%s) predicts mean slowdowns only, not "
                "the tail, and has no out-of-sample margin; refit it with 'gpusched profile "
                "--pairs --device sim:%s --batch 1,8,32'", gpu, source, gpu)
    return InterferenceModel(w, w, 0.0, source, False)


def coefficients(w: tuple[float, ...], c: float, m: float,
                 latency_ms: float = 1.0) -> tuple[float, float, float, float]:
    """``A, B, D, E`` of a replica with demands ``c, m`` and solo latency ``l``, each clipped at
    0 (the tail margin is kept apart, in ``Config.TM``). A fit without the blocking feature
    (the first version's seven weights) has ``E = 0``."""
    e = max(0.0, w[7]) / latency_ms if len(w) > 7 else 0.0
    return (max(0.0, w[0] - 1 + w[1] * c + w[3] * m), max(0.0, w[2] + w[5] * c),
            max(0.0, w[4] + w[6] * m), e)


def configs_for(i: int, ms: ModelSpec, gpu: GpuType, knobs: Knobs = DEFAULT) -> list[Config]:
    im = interference_model(gpu.name)
    out = []
    for b in ms.batches:
        p = model_profile(ms.model, b, gpu.name)
        f = p.footprint_mb + knobs.context_mb
        if f > gpu.memory_mb * knobs.mem_frac:
            continue
        mean = coefficients(im.weights, p.compute_demand, p.memory_demand, p.latency_ms)
        tail = coefficients(im.weights_p99, p.compute_demand, p.memory_demand, p.latency_ms)
        for a in knobs.alphas:
            T = ms.slo_ms - knobs.queue_factor * p.latency_ms * a
            if T < 0 or (b > 1 and T <= 0):
                continue
            lam_min = (b - 1) / (T / 1000.0) if b > 1 else 0.0
            lam_max = knobs.rho_max * b / (p.latency_ms * a / 1000.0)
            if lam_min > lam_max:
                continue
            out.append(Config(i, gpu.name, b, a, p.latency_ms, p.compute_demand,
                              p.occupancy, p.memory_demand, f, T, lam_min, lam_max, *mean,
                              longest_ms(p), *tail, im.margin))
    return out


def estimate(models: tuple[ModelSpec, ...], pool: tuple[GpuType, ...],
             knobs: Knobs = DEFAULT) -> list[list[Config]]:
    """Configurations per model (over every GPU type of the pool). A model no configuration
    fits is a mistake in the input: the error says why (its SLO or its memory)."""
    table = []
    for i, ms in enumerate(models):
        cfgs = [c for t in pool for c in configs_for(i, ms, t, knobs)]
        if not cfgs:
            solo = min(model_profile(ms.model, 1, t.name).latency_ms for t in pool)
            need = knobs.queue_factor * solo * min(knobs.alphas)
            raise SpecError(
                f"line {ms.line}: model {ms.name!r}: SLO {ms.slo_ms:g} ms cannot be met on "
                f"{'/'.join(t.name for t in pool)}: its solo latency at batch 1 is {solo:.2f} ms "
                f"and a replica needs at least {need:.2f} ms (queueing and interference "
                "headroom); raise slo_ms or add a faster GPU type")
        table.append(cfgs)
    return table
