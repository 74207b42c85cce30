"""Interference model: a co-located model's slowdown from the resource demands on its GPU.

Estimate (``measure_pairs``): every pair of (model, batch) configurations runs together on the
simulated GPU, each side a closed loop of jobs on its own stream (like two processes), under the
policy the daemons serve with (``slo``: least slack first, each job's deadline ``slo_factor``
times its solo latency) unless told otherwise. Both loops keep going until each side has
finished at least ``jobs`` jobs, so every measured job ran beside a busy neighbour. Per side:
the mean and the 99th percentile of its latency over its solo latency (``alpha``, ``alpha99``).

Model (``fit``), the explicit linear form of gpulet extended with USHER's balance of compute
against memory: for model ``i`` sharing the GPU with ``j``, with compute and memory-bandwidth
demands ``c`` and ``m`` from its profile (``profilers/profile.py``),

    alpha_i = w0 + w1 c_i + w2 c_j + w3 m_i + w4 m_j + w5 c_i c_j + w6 m_i m_j + w7 L_j / l_i
    latency_i = solo_i * max(1, alpha_i)

``L_j / l_i`` is head-of-line blocking: the neighbour's longest kernel (``longest_ms``: kernels
are not preempted, so one of ``i``'s kernels may wait that long for SMs) over ``i``'s solo
latency. Without it the tail model was optimistic by up to 1.3x next to gpt2 at batch 32
(a 0.7 ms LM-head kernel; every other zoo kernel is under 0.1 ms): leave-one-model-out, its
99th-percentile under-prediction fell from 0.49 to 0.24 (H100, measured while building it).
``w`` is fitted by least squares to the mean slowdowns, ``w99`` the same way to the p99
slowdowns (the tail that SLOs are about).

Report (``evaluate``, ``leave_one_out``): the error of the predicted co-located latency
(mean absolute percentage error, p90 and p99 of the relative error) on pairs the fit did not
see, three ways, from the most to the least generous:

- ``in_sample``: a random 30% of the pairs held out; their models and batch sizes were all
  in the training pairs;
- ``leave_one_model_out``: for each model ``x``, fit on the pairs without ``x`` on either side,
  predict every pair with ``x`` (a model never profiled beside anything);
- ``leave_one_batch_out``: for each batch size, fit on the other sizes, predict that one.

``margin`` (``tail_margin``): the 99th percentile, over the leave-one-model-out predictions, of
how far the measured p99 slowdown exceeds the predicted one (in slowdown units, at least 0).
Placement adds it to every pairwise tail prediction, so the slowdowns it plans with are above
the measured ones on 99% of pairs it was not fitted on.
"""
from __future__ import annotations

import itertools
import os
import random
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from profilers.profile import ModelProfile, profile

FEATURES = ("1", "c_me", "c_other", "m_me", "m_other", "c_me*c_other", "m_me*m_other",
            "L_other/l_me")
POLICY = "slo"          # the daemons' serving policy (docs/placement.md)
SLO_FACTOR = 5.0        # a pair job's deadline: this many times its solo latency
MARGIN_QUANTILE = 0.99  # the tail margin covers this share of out-of-sample under-predictions


def longest_ms(p: ModelProfile) -> float:
    """The longest kernel of one forward pass (ms; 0 when the profile has no kernel rows)."""
    return max((op.time_us for op in p.ops), default=0.0) / 1e3


def features(me: ModelProfile, other: ModelProfile) -> list[float]:
    c, cj, m, mj = me.compute_demand, other.compute_demand, me.memory_demand, other.memory_demand
    return [1.0, c, cj, m, mj, c * cj, m * mj, longest_ms(other) / me.latency_ms]


def colocated_latencies(a: str, ba: int, b: str, bb: int, gpu: str, jobs: int = 6,
                        policy: str = POLICY) -> tuple[float, float]:
    """Mean latency (s) of ``a`` and of ``b`` running together (``colocated_runs``)."""
    la, lb = colocated_runs(a, ba, b, bb, gpu, jobs, policy)
    return float(np.mean(la)), float(np.mean(lb))


def colocated_runs(a: str, ba: int, b: str, bb: int, gpu: str, jobs: int = 6,
                   policy: str = POLICY,
                   slo_factor: float = SLO_FACTOR) -> tuple[list[float], list[float]]:
    """Latency (s) of every job of ``a`` and of ``b`` running together, each a closed loop on
    its own stream: a side submits its next job when its last one ends, and both go on until
    each has finished ``jobs`` (the faster side finishes more); jobs that end after that are
    not counted, so each counted job had the other side busy all along."""
    from profilers import zoo
    from scheduler_daemon.core.gpu_specs import gpu_spec
    from scheduler_daemon.core.jobs import Job
    from scheduler_daemon.core.policies import make_policy
    from scheduler_daemon.core.scheduler import SchedulerCore
    from scheduler_daemon.devices.simgpu import SimGpu
    from scheduler_daemon.simulation import VirtualRun

    spec = gpu_spec(gpu)
    core = SchedulerCore(make_policy(policy), spec.capacity)
    run = VirtualRun(core, SimGpu(spec))
    models = [core.make_model(("A", a), a, zoo.zoo_kernels(a, ba, spec.name)),
              core.make_model(("B", b), b, zoo.zoo_kernels(b, bb, spec.name))]
    slo_ms = [slo_factor * profile(a, ba, f"sim:{gpu}").latency_ms,
              slo_factor * profile(b, bb, f"sim:{gpu}").latency_ms]
    lat: list[list[float]] = [[], []]
    next_id = [2]

    def on_finished(job):
        if len(lat[0]) >= jobs and len(lat[1]) >= jobs:
            return  # both sides have their samples: stop both loops
        side = job.tenant == "B"
        lat[side].append(job.total_s)
        next_id[0] += 1
        run.submit(Job(next_id[0], job.tenant, models[side], slo_ms[side], run.env.now))
    run.on_finished = on_finished
    run.submit_at(Job(0, "A", models[0], slo_ms[0], 0.0))
    run.submit_at(Job(1, "B", models[1], slo_ms[1], 0.0))
    run.run()
    return lat[0], lat[1]


def _pair(args) -> tuple[list[float], list[float]]:
    ca, cb, gpu, jobs, policy = args
    return colocated_runs(ca[0], ca[1], cb[0], cb[1], gpu, jobs, policy)


def measure_pairs(configs: list[tuple[str, int]], gpu: str, jobs: int = 6, progress=None,
                  policy: str = POLICY, workers: int = 1) -> list[dict]:
    """One sample per side of every unordered pair (self-pairs included): its features, solo
    latency, and mean and p99 co-located latency (ms). ``workers`` > 1 runs pairs in that many
    processes (the result is the same)."""
    prof = {c: profile(c[0], c[1], f"sim:{gpu}") for c in configs}
    pairs = list(itertools.combinations_with_replacement(configs, 2))
    tasks = [(ca, cb, gpu, jobs, policy) for ca, cb in pairs]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            results = list(_progressed(ex.map(_pair, tasks, chunksize=4), progress))
    else:
        results = list(_progressed(map(_pair, tasks), progress))
    samples = []
    for (ca, cb), (la, lb) in zip(pairs, results):
        for me, other, lat in ((ca, cb, la), (cb, ca, lb)):
            pm, po = prof[me], prof[other]
            samples.append({"me": list(me), "other": list(other), "x": features(pm, po),
                            "solo_ms": pm.latency_ms,
                            "measured_ms": float(np.mean(lat)) * 1e3,
                            "measured_p99_ms": float(np.percentile(lat, 99)) * 1e3,
                            "jobs": len(lat)})
    return samples


def _progressed(it, progress):
    for x in it:
        if progress:
            progress()
        yield x


def _target(s: dict, tail: bool) -> float:
    return s["measured_p99_ms"] if tail else s["measured_ms"]


def fit(samples: list[dict], tail: bool = False) -> list[float]:
    """Least squares on ``alpha = measured / solo`` (the p99 latency's with ``tail``)."""
    x = np.array([s["x"] for s in samples])
    y = np.array([_target(s, tail) / s["solo_ms"] for s in samples])
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    return [float(v) for v in w]


def predict_ms(w: list[float], sample: dict) -> float:
    return sample["solo_ms"] * max(1.0, float(np.dot(w, sample["x"])))


def evaluate(w: list[float], samples: list[dict], tail: bool = False) -> dict:
    """Relative error of the predicted (mean, or with ``tail`` p99) co-located latency."""
    err = np.array([abs(predict_ms(w, s) - _target(s, tail)) / _target(s, tail)
                    for s in samples])
    return {"mape": float(err.mean()), "p90_rel_error": float(np.percentile(err, 90)),
            "p99_rel_error": float(np.percentile(err, 99)), "samples": len(samples)}


def _key(s: dict, by: str):
    return {s["me"][0], s["other"][0]} if by == "model" else {s["me"][1], s["other"][1]}


def leave_one_out(samples: list[dict], by: str = "model", tail: bool = False) -> dict:
    """For each model (``by="model"``) or batch size (``"batch"``) ``x``: fit on the samples
    whose two sides are both not ``x``, predict the samples with ``x`` on either side. Returns
    the pooled errors, the same for "no interference", and per held-out sample the measured
    minus predicted slowdown (``under``; positive: the model was optimistic)."""
    groups = sorted({v for s in samples for v in _key(s, by)}, key=str)
    preds, folds = [], {}
    for g in groups:
        train = [s for s in samples if g not in _key(s, by)]
        test = [s for s in samples if g in _key(s, by)]
        if len(train) < len(FEATURES) or not test:
            continue
        w = fit(train, tail)
        folds[str(g)] = {"train": len(train), "test": len(test),
                         "mape": evaluate(w, test, tail)["mape"]}
        preds.extend((s, w) for s in test)
    err = np.array([abs(predict_ms(w, s) - _target(s, tail)) / _target(s, tail)
                    for s, w in preds])
    none = np.array([abs(s["solo_ms"] - _target(s, tail)) / _target(s, tail) for s, _ in preds])
    under = [(_target(s, tail) - predict_ms(w, s)) / s["solo_ms"] for s, w in preds]
    return {"by": by, "target": "p99" if tail else "mean", "predictions": len(preds),
            "mape": float(err.mean()), "p90_rel_error": float(np.percentile(err, 90)),
            "p99_rel_error": float(np.percentile(err, 99)),
            "mape_if_no_interference": float(none.mean()), "folds": folds, "under": under}


def tail_margin(under: list[float], q: float = MARGIN_QUANTILE) -> float:
    """The ``q`` quantile of the out-of-sample under-predictions (slowdown units), >= 0."""
    return max(0.0, float(np.quantile(under, q))) if under else 0.0


def run_pairs(models: list[str], batches: list[int], gpu: str, holdout: float = 0.3,
              seed: int = 0, jobs: int = 6, progress=None, policy: str = POLICY,
              workers: int = 1) -> dict:
    """Measure; fit the mean and the tail model; report the in-sample split, leave one model
    out and leave one batch size out; the tail margin. ``weights`` and ``weights_p99`` are
    fitted on every pair (what placement uses); the errors are those of fits without the
    held-out pairs."""
    configs = [(m, b) for m in models for b in batches]
    samples = measure_pairs(configs, gpu, jobs, progress, policy, workers)
    return summarize(samples, f"sim:{gpu}", policy, holdout, seed, configs)


def summarize(samples: list[dict], device: str, policy: str = POLICY, holdout: float = 0.3,
              seed: int = 0, configs=None) -> dict:
    """Fits and error reports of ``run_pairs`` from measured ``samples``."""
    pairs = sorted({tuple(sorted((tuple(s["me"]), tuple(s["other"])))) for s in samples})
    rng = random.Random(seed)
    rng.shuffle(pairs)
    test_pairs = set(pairs[:max(1, int(len(pairs) * holdout))])
    side = lambda s: tuple(sorted((tuple(s["me"]), tuple(s["other"]))))
    test = [s for s in samples if side(s) in test_pairs]
    train = [s for s in samples if side(s) not in test_pairs]
    solo_only = [1.0] + [0.0] * (len(FEATURES) - 1)  # "no interference" as a yardstick
    out = {"device": device, "policy": policy, "features": list(FEATURES),
           "weights": fit(samples), "weights_p99": fit(samples, tail=True), "pairs": len(pairs),
           "configs": [list(c) for c in (configs or sorted({tuple(s["me"]) for s in samples}))]}
    for name, tail in (("mean", False), ("p99", True)):
        w = fit(train, tail)
        lomo = leave_one_out(samples, "model", tail)
        lobo = leave_one_out(samples, "batch", tail)
        out[name] = {
            "in_sample": {"train": evaluate(w, train, tail), "held_out": evaluate(w, test, tail),
                          "held_out_if_no_interference": evaluate(solo_only, test, tail)},
            "leave_one_model_out": {k: v for k, v in lomo.items() if k != "under"},
            "leave_one_batch_out": {k: v for k, v in lobo.items() if k != "under"}}
        if tail:
            out["margin"] = tail_margin(lomo["under"])
            out["margin_quantile"] = MARGIN_QUANTILE
    # the keys of the first version (gpusched profile --pairs prints them)
    out["train"] = out["mean"]["in_sample"]["train"]
    out["held_out"] = out["mean"]["in_sample"]["held_out"]
    out["held_out_if_no_interference"] = out["mean"]["in_sample"]["held_out_if_no_interference"]
    out["samples"] = samples
    return out


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
