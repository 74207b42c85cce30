"""tools/placement_ablation.py: each variant takes away exactly what it names."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gpusched.placement.estimate import estimate
from gpusched.placement.pool import parse_pool
from gpusched.placement.workloads import make_held_out

_spec = importlib.util.spec_from_file_location(
    "placement_ablation", Path(__file__).resolve().parents[1] / "tools" / "placement_ablation.py")
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)


@pytest.fixture(scope="module")
def workload():
    models = make_held_out(103).models
    pool = parse_pool("H100:64")
    return models, pool, estimate(models, pool)


def _flat(table):
    return [c for cfgs in table for c in cfgs]


def test_shipped_is_the_estimate(workload):
    models, pool, shipped = workload
    table, _ = ablation.loosened_table(models, pool, "shipped")
    assert table == shipped


def test_no_margin_and_no_stretch_touch_only_their_terms(workload):
    models, pool, shipped = workload
    assert any(c.TM > 0 for c in _flat(shipped)) and any(c.alpha > 1 for c in _flat(shipped))
    margin, _ = ablation.loosened_table(models, pool, "no margin")
    stretch, _ = ablation.loosened_table(models, pool, "no stretch")
    for s, m, t in zip(_flat(shipped), _flat(margin), _flat(stretch)):
        assert m.TM == 0.0 and m.held == s.held and m.timeout_ms == s.timeout_ms
        assert t.TM == s.TM and t.held == pytest.approx(s.occupancy)
        assert (t.latency_ms, t.timeout_ms, t.rate_max) == (s.latency_ms, s.timeout_ms, s.rate_max)


def test_a_loosened_queue_factor_lengthens_the_batching_timeout(workload):
    models, pool, shipped = workload
    table, knobs = ablation.loosened_table(models, pool,
                                           "margin and stretch kept, queue_factor 1.5")
    assert knobs.queue_factor == 1.5
    slo = {i: m.slo_ms for i, m in enumerate(models)}
    for c in _flat(table):
        assert c.timeout_ms == pytest.approx(slo[c.model] - 1.5 * c.latency_ms * c.alpha)
        assert c.TM > 0   # the margin kept
    assert len(_flat(table)) >= len(_flat(shipped))   # a looser rule admits no fewer configs


def test_target_gpus_follows_the_bench_headline_rule():
    assert ablation.target_gpus({"best_baseline_gpus": 45, "target_ratio": 1.3}) == 34
    assert ablation.target_gpus({"best_baseline_gpus": 26, "target_ratio": 1.3}) == 20
    assert ablation.target_gpus({"best_baseline_gpus": 3, "target_ratio": None}) == 2
    assert ablation.target_gpus({"best_baseline_gpus": None}) is None
