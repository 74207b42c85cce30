"""One feasibility rule for every geo method and every re-plan (issue 16): a property test over
random fleets and random event sequences, and the regressions of the findings (a re-plan that
shrank jobs past their deadlines, moved a job over its budget, ignored the fleet budget).

The property test is deterministic by default (a few seconds per solver);
GEO_INVARIANT_EXAMPLES=N runs N random fleets per solver with fresh random seeds.
``gpusched bench geo --invariant-steps 10000`` is the long run (docs/geo.md).
"""
import os

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo.invariants import check_plan, run_steps
from geo.planner import plan
from geo.protocol import Event
from geo.replan import apply_event, initial_plan, replan
from geo.spec import load_spec, parse_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "geo", "spec.yaml")
EXAMPLES = int(os.environ.get("GEO_INVARIANT_EXAMPLES", "0"))
STEPS = 15


@pytest.mark.parametrize("solver", ["cpsat", "decomposed", "greedy", "single-region"])
def test_invariants_hold_after_every_random_event(solver):
    """A random fleet planned from scratch by ``solver`` (no promise broken), then random
    site-down/up, capacity, preempt, price, job-finished and submit events through an
    in-process geo service: after every step capacity, the fleet budget, each running job's
    type/mode/size and its deadline and budget hold, or the job is named at risk where an
    event broke them and nothing better was left (geo/invariants.py ``check_plan``)."""
    @settings(max_examples=EXAMPLES or 10, deadline=None, derandomize=not EXAMPLES,
              suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**31 - 1))
    def run(seed):
        steps, bad = run_steps(seed, STEPS, solver)
        assert bad == [], f"seed {seed}: " + "\n".join(bad)
        assert steps > 0  # not every request was refused

    run()


def test_the_checker_sees_a_broken_promise():
    """check_plan is not vacuous: a plan that runs a job past its deadline, over capacity or
    over the fleet budget, without saying so, is caught."""
    spec = parse_spec(SHRINK)
    p, _ = initial_plan(spec, "throughput", "decomposed")
    assert check_plan(spec, p, fresh=True) == []
    late = msgspec.structs.replace(spec.jobs[1], deadline_h=0.1)
    spec.jobs[1] = late
    assert any("deadline" in b for b in check_plan(spec, p, fresh=False))
    spec.sites[1].gpus[0].count = 8
    assert any(b.startswith("capacity") for b in check_plan(spec, p, fresh=False))
    spec.planner = msgspec.structs.replace(spec.planner, budget_usd_per_hour=1.0)
    assert any(b.startswith("fleet budget") for b in check_plan(spec, p, fresh=False))


# -- the findings of issue 16 ------------------------------------------------------------------
SHRINK = """\
sites:
  - name: a
    gpus: [{type: H100, count: 16, usd_per_hour: 3.0}]
  - name: b
    gpus: [{type: H100, count: 32, usd_per_hour: 3.0}]
links:
  - {src: a, dst: b, rtt_ms: 10, gbps: 10}
jobs:
  - {name: urgent, params: 1.0e+9, tokens_per_iter: 1.0e+6, iterations: 2000, gpu_types: [H100],
     min_gpus: 16, max_gpus: 16, priority: 3, deadline_h: 3,
     running: {a: {H100: 16}}, running_mode: single-site}
  - {name: tight, params: 7.0e+9, tokens_per_iter: 1.0e+6, iterations: 10000,
     gpu_types: [H100], min_gpus: 8, max_gpus: 32, priority: 2, deadline_h: 12,
     running: {b: {H100: 32}}, running_mode: single-site}
"""


def test_site_down_never_shrinks_a_job_past_its_deadline():
    """The finding: after site-down the re-plan shrank running jobs to make room, and they
    ended past their deadlines. 'tight' needs about 30 of its 32 GPUs to finish in 12 h; the
    displaced 'urgent' (higher priority) must not take 16 of them: it waits, and since it then
    misses its own deadline, the plan and the diff say so."""
    spec = parse_spec(SHRINK)
    reason = apply_event(spec, Event("site-down", site="a"), {})
    p, diff = replan(spec, "throughput", reason, improve=False)
    assert p.job("tight").running and p.job("tight").finish_h <= 12
    assert spec.jobs[1].running == {"b": {"H100": 32}}
    assert not p.job("urgent").running
    assert ("urgent", "stopped") in [(d.job, d.change) for d in diff]
    assert "deadline" in p.job("urgent").at_risk
    assert [(r.job, r.constraint) for r in p.at_risk] == [("urgent", "deadline")]
    assert ("urgent", "at-risk") in [(d.job, d.change) for d in diff]
    assert check_plan(spec, p, fresh=False) == []
    # the deadline was only 3 h: once 'a' is back the job runs again and keeps it
    reason = apply_event(spec, Event("site-up", site="a"), {"a": {"H100": 16}})
    p, diff = replan(spec, "throughput", reason, improve=True)
    assert p.job("urgent").running and p.job("urgent").finish_h <= 3 and not p.at_risk


BUDGET = """\
sites:
  - name: cheap
    gpus: [{type: H100, count: 8, usd_per_hour: 2.0}]
  - name: dear
    gpus: [{type: H100, count: 16, usd_per_hour: 6.0}]
links:
  - {src: cheap, dst: dear, rtt_ms: 10, gbps: 10}
jobs:
  - {name: thrifty, params: 1.0e+9, tokens_per_iter: 1.0e+6, iterations: 20000,
     gpu_types: [H100], min_gpus: 8, max_gpus: 8, budget_usd: 200,
     running: {cheap: {H100: 8}}, running_mode: single-site}
"""


def test_a_displaced_job_is_never_moved_over_its_budget():
    """The finding: a re-plan moved a job onto GPUs costing more than its budget. Here the only
    other GPUs cost 3x: the job waits instead."""
    spec = parse_spec(BUDGET)
    p0 = plan(spec, "throughput", "decomposed")
    assert p0.job("thrifty").total_usd <= 200
    reason = apply_event(spec, Event("site-down", site="cheap"), {})
    p, diff = replan(spec, "throughput", reason, improve=False)
    assert not p.job("thrifty").running and spec.jobs[0].running is None
    assert [(d.job, d.change) for d in diff] == [("thrifty", "stopped")]
    assert check_plan(spec, p, fresh=False) == []


def test_a_price_rise_that_breaks_a_budget_is_reported_at_risk():
    """The job's own candidate became dearer than its budget and no other place keeps it: it
    keeps running, and the plan, its JSON and the diff name it at risk (budget)."""
    spec = parse_spec(BUDGET)
    spec.sites[1].gpus[0].count = 0
    initial_plan(spec, "throughput", "cpsat")
    reason = apply_event(spec, Event("price", site="cheap", gpu_type="H100",
                                     usd_per_hour=9.0), {})
    p, diff = replan(spec, "throughput", reason, improve=True)
    jp = p.job("thrifty")
    assert jp.running and jp.total_usd > 200 and jp.at_risk.startswith("budget")
    assert msgspec.json.decode(p.to_json())["at_risk"][0]["constraint"] == "budget"
    [d] = [d for d in diff if d.change == "at-risk"]
    assert d.job == "thrifty" and "budget" in d.reason and "keeps running" in d.reason
    assert check_plan(spec, p, fresh=False) == []
    # the price falls back: the promise holds again and nobody is at risk
    reason = apply_event(spec, Event("price", site="cheap", gpu_type="H100",
                                     usd_per_hour=2.0), {})
    p, _ = replan(spec, "throughput", reason, improve=True)
    assert not p.at_risk and p.job("thrifty").total_usd <= 200


@pytest.mark.parametrize("solver", ["cpsat", "decomposed", "greedy", "single-region"])
def test_every_method_keeps_the_fleet_budget(solver):
    """The finding: decomposed planned $751.9/h under a $150/h budget on the example spec, and
    initial_plan marked the jobs that wait for budget as running."""
    spec = load_spec(EXAMPLE)
    spec.planner = msgspec.structs.replace(spec.planner, budget_usd_per_hour=150.0)
    p = plan(spec, "throughput", solver)
    assert 0 < p.cost_per_hour <= 150.0
    assert sum(j.cost_per_hour for j in p.jobs if j.running) == pytest.approx(p.cost_per_hour)
    assert any(j.sites and not j.running for j in p.jobs)  # some wait for the budget
    p2, diff = initial_plan(spec, "throughput", solver)
    running = {j.name for j in spec.jobs if j.running}
    assert running == {j.name for j in p2.jobs if j.running}
    assert {d.job for d in diff} == running
    assert check_plan(spec, p2, fresh=True) == []


GROW = """\
sites:
  - name: a
    gpus: [{type: A100, count: 64, usd_per_hour: 2.0}]
jobs:
  - {name: capped, params: 1.3e+10, tokens_per_iter: 2.0e+6, iterations: 3000,
     gpu_types: [A100], min_gpus: 8, max_gpus: 64, budget_usd: BUDGET}
"""


def test_growth_never_breaks_a_job_budget():
    """The finding: decomposed's growth step checked deadlines but not budgets. More GPUs
    finish sooner but pay more all-reduce: the budget sits between the 8-GPU and the 64-GPU
    price, so growth must stop below 64."""
    from geo.candidates import Model, single_site

    spec = parse_spec(GROW.replace("BUDGET", "1.0e+9"))
    m = Model(spec)
    j = spec.jobs[0]
    lo, hi = (single_site(m, j, "a", "A100", n).total_usd for n in (8, 64))
    assert lo < hi
    spec = parse_spec(GROW.replace("BUDGET", f"{(lo + hi) / 2:.2f}"))
    for solver in ("decomposed", "cpsat"):
        p = plan(spec, "throughput", solver)
        jp = p.job("capped")
        assert jp.running and 8 <= sum(jp.sites.values()) < 64
        assert jp.total_usd <= (lo + hi) / 2
