"""Consolidation by trial (``placement/trial.py``): a GPU is closed only when a simulated trial
of the GPUs that take its replicas keeps every SLO, and nothing is lost either way."""
from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from test_placement import HEAVY, LIGHT

from gpusched.cli import main
from gpusched.placement import spec, trial
from gpusched.placement.fit import GpuState
from gpusched.placement.knobs import DEFAULT
from gpusched.placement.plan import Plan
from gpusched.placement.pool import parse_pool
from gpusched.placement.replay import TRIAL_ATTAINMENT, replay
from gpusched.placement.solvers import place

POOL = parse_pool("H100:8")
# the model keeps these two apart (each GPU about half busy); a trial finds they share one
PAIR = """\
models:
  - {name: bert, model: bert-base, rate: 2000, slo_ms: 15}
  - {name: gpt, model: gpt2, rate: 2000, slo_ms: 10}
"""


def _replicas(gpus):
    return Counter((r.name, r.cfg.batch, round(r.rate, 9)) for g in gpus for r in g.replicas)


def _snapshot(gpus):
    return [(g.trial, [id(r) for r in g.replicas], round(g.U, 12)) for g in gpus]


def test_a_gpu_the_model_keeps_open_is_closed_when_its_trial_holds():
    models = spec.loads(PAIR).models
    start = place(models, POOL, "heuristic")     # the model keeps the two apart
    before = _snapshot(start.gpus)
    gpus, info = trial.consolidate(start.gpus, models)
    assert len(gpus) < start.gpus_used and info["closed"] == start.gpus_used - len(gpus)
    assert 1 <= info["trials"] <= trial.MAX_TRIALS
    assert _replicas(gpus) == _replicas(start.gpus)           # every replica kept, once
    assert _snapshot(start.gpus) == before                    # the start plan untouched
    took = [g for g in gpus if g.trial is not None]
    assert took and all(g.trial >= TRIAL_ATTAINMENT for g in took)
    # the model alone refuses every merged GPU: the trial is what let it through
    assert all(_model_refuses(g) for g in took)


def _model_refuses(g) -> bool:
    """Would fit.py's rule refuse g's replicas, added one by one to an empty GPU?"""
    fresh = GpuState(g.type)
    refused = False
    for r in g.replicas:
        refused |= fresh.check(r) is not None
        fresh.add(r)
    return refused


def test_a_failed_trial_changes_nothing():
    models = spec.loads(HEAVY).models   # more busy time than one H100 takes
    start = place(models, POOL, "heuristic")
    first, info = trial.consolidate(start.gpus, models)
    assert len(first) >= 2 and "trial met" in info["stopped"]   # it stopped at a failed trial
    state = [(g.trial, [r.name for r in g.replicas], round(g.U, 12)) for g in first]
    again, info = trial.consolidate(first, models)
    assert info["closed"] == 0 and "trial met" in info["stopped"]
    assert [(g.trial, [r.name for r in g.replicas], round(g.U, 12)) for g in again] == state
    assert _replicas(again) == _replicas(start.gpus)


def _four_gpus():
    """LIGHT's six replicas (budget 1.0) on four GPUs (U 0.038, 0.070, 0.041, 0.054); the
    least busy holds two, and one other GPU takes both when it is closed (one trial)."""
    models = spec.loads(LIGHT).models
    reps = sorted((r for g in place(models, POOL, "one-per-gpu").gpus for r in g.replicas),
                  key=lambda r: r.u)
    gpus = []
    for group in ((0, 1), (2, 3), (4,), (5,)):
        g = GpuState(POOL[0])
        for i in group:
            g.add(reps[i])
        gpus.append(g)
    return models, gpus


def _fake_trials(monkeypatch, most: int):
    """Trials that hold on a GPU of at most ``most`` replicas and fail on more; the GPUs tried."""
    seen = []

    def together(g, models, horizon_s=1.0):
        seen.append(len(g.replicas))
        return 1.0 if len(g.replicas) <= most else 0.5
    monkeypatch.setattr(trial, "attainment_together", together)
    return seen


def test_a_failed_single_gpu_trial_spreads_the_load_instead(monkeypatch):
    models, gpus = _four_gpus()
    seen = _fake_trials(monkeypatch, most=2)
    left, info = trial.consolidate(gpus, models, max_trials=3)
    # both replicas onto one GPU (3 there: fails), then one each onto two GPUs (2 and 2: hold)
    assert seen == [3, 2, 2] and info["closed"] == 1 and info["trials"] == 3
    assert sorted(len(g.replicas) for g in left) == [2, 2, 2]
    assert _replicas(left) == _replicas(gpus)
    assert sorted(g.trial is not None for g in left) == [False, True, True]


def test_the_trial_budget_is_never_exceeded(monkeypatch):
    models, gpus = _four_gpus()
    for k in (1, 2, 3, 4, 5):
        seen = _fake_trials(monkeypatch, most=2)
        left, info = trial.consolidate(gpus, models, max_trials=k)
        assert info["trials"] == len(seen) <= k
        assert len(left) == len(gpus) - info["closed"] and _replicas(left) == _replicas(gpus)
    _fake_trials(monkeypatch, most=2)
    left, info = trial.consolidate(gpus, models, max_trials=2)   # the spread needs two, 1 left
    assert info == {"closed": 0, "trials": 1,
                    "stopped": "trial budget: the next move needs 2 trials, 1 of 2 left"}
    assert [len(g.replicas) for g in left] == [2, 2, 1, 1]


def test_no_trial_budget_or_no_memory_closes_nothing():
    models = spec.loads(LIGHT).models
    start = place(models, POOL, "one-per-gpu")
    gpus, info = trial.consolidate(start.gpus, models, max_trials=0)
    assert len(gpus) == start.gpus_used and info["trials"] == 0
    assert info["stopped"] == "trial budget: the next move needs 1 trial, 0 of 0 left"
    tight = dataclasses.replace(DEFAULT, mem_frac=1e-6)   # no GPU has room for anything
    gpus, info = trial.consolidate(start.gpus, models, tight)
    assert len(gpus) == start.gpus_used and info["trials"] == 0
    assert info["stopped"].startswith("no GPU's replicas fit in the others' memory")


def test_the_trial_plan_replays_within_its_slos_and_reports_its_trials():
    """Out of the trial's sample: the replay draws other arrivals than the trial did."""
    from gpusched.placement.plan import report
    models = spec.loads(PAIR).models
    assert place(models, POOL, "heuristic").gpus_used == 2
    plan = place(models, POOL, "heuristic-trial")
    assert plan.gpus_used == 1
    out = report(plan, models)
    assert out["solver"] == "heuristic-trial" and out["trial"]["trials"] >= 1
    assert any("trial_attainment" in a for a in out["assignments"])
    assert replay(plan, models, horizon_s=0.5)["min_slo_attainment"] >= TRIAL_ATTAINMENT


@pytest.mark.parametrize("flag", [["--apply", "ipc:///tmp/none.sock"], ["--cluster"]])
def test_a_trial_plan_is_not_applied(capsys, tmp_path, flag):
    f = tmp_path / "m.yaml"
    f.write_text(LIGHT)
    assert main(["place", str(f), "--solver", "heuristic-trial", *flag]) == 2
    err = capsys.readouterr().err
    assert "cannot be applied" in err and "--solver heuristic" in err and "Traceback" not in err


def test_a_gpu_both_plans_have_is_simulated_once_for_both(monkeypatch):
    """replay_many simulates a GPU whose input two plans share once: each plan's report is
    what replaying it alone gives."""
    from gpusched.placement import replay as rp
    models = spec.loads(PAIR).models
    heur = place(models, POOL, "heuristic")              # two GPUs
    merged = place(models, POOL, "heuristic-trial", start=heur)   # one GPU: nothing shared
    alone = [rp.replay(p, models, 0.2, workers=1) for p in (heur, merged)]
    calls = []
    real = rp._simulate_gpu
    monkeypatch.setattr(rp, "_simulate_gpu",
                        lambda a, report=None, late=True: calls.append(a) or real(a, report, late))
    got = rp.replay_many([(heur, models, 0.2, 0, None), (merged, models, 0.2, 0, None),
                          (heur, models, 0.2, 0, None)], workers=1)
    assert len(calls) == 3                               # heur's two GPUs once, merged's one
    assert got == [alone[0], alone[1], alone[0]]
    # a GPU the consolidation left alone is the start plan's, simulated once for both
    models, gpus = _four_gpus()
    start = Plan("start", gpus)
    after = Plan("after", trial.consolidate(gpus, models, max_trials=1)[0])
    assert after.gpus_used == 3
    alone = [rp.replay(p, models, 0.2, workers=1) for p in (start, after)]
    calls.clear()
    assert rp.replay_many([(start, models, 0.2, 0, None), (after, models, 0.2, 0, None)],
                          workers=1) == alone
    assert len(calls) == 4 + 1                           # the start's four, the GPU that took
