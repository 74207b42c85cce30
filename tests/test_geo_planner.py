"""Geo planner: CP-SAT respects capacity, infeasible specs name the constraint, decomposed is
close to CP-SAT, the baselines run, and ``gpusched geo plan`` works end to end."""
import json
import os
import subprocess
import sys

import pytest

from geo.candidates import Model
from geo.instances import make_instance
from geo.planner import plan
from geo.spec import parse_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "geo", "spec.yaml")

TWO_SITES = """\
sites:
  - name: a
    gpus: [{type: H100, count: 16, usd_per_hour: 2.0}]
  - name: b
    gpus: [{type: H100, count: 16, usd_per_hour: 3.0}]
links:
  - {src: a, dst: b, rtt_ms: 10, gbps: 100, egress_usd_per_gb: 0.02}
jobs:
"""


def job(name, *, min_gpus=8, max_gpus=16, modes="[single-site]", extra=""):
    return (f"  - {{name: {name}, params: 1.0e+9, tokens_per_iter: 1.0e+6, iterations: 1000, "
            f"gpu_types: [H100], min_gpus: {min_gpus}, max_gpus: {max_gpus}, modes: {modes}"
            f"{extra}}}\n")


def used(p):
    out = {}
    for j in p.jobs:
        if j.sites and j.start_h == 0:
            for s, n in j.sites.items():
                out[(s, j.gpu_type)] = out.get((s, j.gpu_type), 0) + n
    return out


@pytest.mark.parametrize("objective", ["throughput", "cost", "makespan"])
def test_cpsat_respects_capacity(objective):
    spec = make_instance(30, 6, seed=3)
    p = plan(spec, objective, "cpsat", time_limit_s=10)
    assert p.status in ("optimal", "feasible")
    m = Model(spec)
    for (s, t), n in used(p).items():
        assert n <= m.capacity(s, t), (s, t, n)
    assert sum(1 for j in p.jobs if j.sites) == 30


@pytest.mark.parametrize("objective", ["throughput", "cost", "makespan", "balance"])
def test_cpsat_serves_every_job_before_its_objective(objective):
    """The benchmark's 50 x 10 instance: supply hosts every job, so no objective may leave one
    waiting (throughput used to leave 2 waiting to grow the others: demand/supply 2.11)."""
    spec = make_instance(50, 10, seed=1)
    p = plan(spec, objective, "cpsat", time_limit_s=20)
    assert p.status == "optimal"
    assert all(j.sites and j.start_h == 0 for j in p.jobs), \
        [j.name for j in p.jobs if not (j.sites and j.start_h == 0)]
    assert p.max_demand_supply <= 1.0
    m = Model(spec)
    for (s, t), n in used(p).items():
        assert n <= m.capacity(s, t)


@pytest.mark.parametrize("objective", ["throughput", "cost", "makespan", "balance"])
def test_cpsat_serve_first_with_a_fleet_budget_the_hint_breaks(objective):
    """The decomposed hint runs both jobs ($32/h) but the fleet budget is $20/h: serve-first
    must not trust the hint's count; the priority-2 job runs, the other waits, in budget."""
    text = TWO_SITES.replace("sites:", "planner: {budget_usd_per_hour: 20}\nsites:")
    spec = parse_spec(text + job("x") + job("y", extra=", priority: 2"))
    p = plan(spec, objective, "cpsat")
    assert p.status == "optimal"
    assert p.cost_per_hour <= 20
    assert p.job("y").sites and p.job("y").start_h == 0


@pytest.mark.parametrize("seed", [2, 3])
def test_decomposed_close_to_cpsat(seed):
    spec = make_instance(20 + 10 * seed, 5 + seed, seed=seed)
    exact = plan(spec, "throughput", "cpsat", time_limit_s=20)
    fast = plan(spec, "throughput", "decomposed")
    assert exact.status == "optimal"
    assert fast.objective_value >= exact.objective_value * 0.98  # issue 6: gap <= 2%
    assert fast.objective_value <= exact.objective_value * 1.0001  # CP-SAT is the optimum
    m = Model(spec)
    for (s, t), n in used(fast).items():
        assert n <= m.capacity(s, t)
    assert fast.max_demand_supply <= 1.0  # supply allows every job: none waits


@pytest.mark.parametrize("size", [(60, 8, 6), (80, 10, 6)])
def test_decomposed_local_improvement_closes_the_gap(size):
    """Seeds where decomposed without its local improvement (exact sizes per pool, jobs moved
    between pools) was 1.8% / 0.7% below CP-SAT: a flexible 13B job must step down to A100s so
    that priority-3 fine-tunes can grow on the H100s. Now within 0.5%; no job waits."""
    spec = make_instance(*size[:2], seed=size[2])
    exact = plan(spec, "throughput", "cpsat", time_limit_s=30)
    fast = plan(spec, "throughput", "decomposed")
    assert exact.status == "optimal"
    assert exact.objective_value * 0.995 <= fast.objective_value <= exact.objective_value * 1.0001
    assert all(j.sites and j.start_h == 0 for j in fast.jobs)
    m = Model(spec)
    for (s, t), n in used(fast).items():
        assert n <= m.capacity(s, t)


def test_baselines_run_and_are_worse_than_decomposed():
    spec = make_instance(60, 8, seed=6)
    fast = plan(spec, "throughput", "decomposed")
    greedy = plan(spec, "throughput", "greedy")
    single = plan(spec, "throughput", "single-region")
    assert greedy.objective_value < fast.objective_value
    assert single.objective_value < greedy.objective_value
    assert single.max_demand_supply > 1.0  # everything wants one region


def test_job_no_site_can_host_is_reported_with_capacity():
    spec = parse_spec(TWO_SITES + job("ok") + job("huge", min_gpus=64, max_gpus=64))
    p = plan(spec, solver="cpsat")
    assert p.status == "infeasible"
    [bad] = p.infeasible
    assert bad.job == "huge" and bad.constraint == "capacity"
    assert "no site can host job 'huge'" in bad.reason and "64" in bad.reason
    assert p.job("ok").sites  # the rest is still planned
    assert p.job("huge").mode == "unplaced"


def test_deadline_no_plan_meets_is_reported_with_deadline():
    spec = parse_spec(TWO_SITES + job("late", extra=", deadline_h: 0.001"))
    p = plan(spec, solver="decomposed")
    [bad] = p.infeasible
    assert bad.constraint == "deadline" and "deadline_h 0.001" in bad.reason
    assert "finishes in" in bad.reason


def test_budget_per_hour_is_a_constraint():
    text = TWO_SITES.replace("sites:", "planner: {budget_usd_per_hour: 40}\nsites:")
    spec = parse_spec(text + job("x") + job("y"))
    p = plan(spec, solver="cpsat")
    assert p.cost_per_hour <= 40
    assert sum(1 for j in p.jobs if j.sites and j.start_h == 0) >= 1


def test_job_bigger_than_any_site_spans_sites():
    spec = parse_spec(TWO_SITES + job("wide", min_gpus=32, max_gpus=32,
                                      modes="[single-site, data-parallel, local-sgd]"))
    p = plan(spec, solver="cpsat")
    j = p.job("wide")
    assert j.mode in ("data-parallel", "local-sgd") and j.sites == {"a": 16, "b": 16}


def test_plan_json_schema():
    p = plan(parse_spec(TWO_SITES + job("x")), solver="cpsat")
    d = json.loads(p.to_json())
    assert {"status", "objective", "solve_time_s", "jobs", "sites"} <= set(d)
    assert {"name", "mode", "sites", "iteration_s", "cost_per_hour", "finish_h"} <= set(d["jobs"][0])
    assert {"name", "gpus_used", "gpus_total", "demand_supply_ratio"} <= set(d["sites"][0])


def gpusched(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "gpusched.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


@pytest.mark.slow
def test_cli_plan_example_prints_and_writes_png(tmp_path):
    r = gpusched("geo", "plan", EXAMPLE, "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["status"] == "optimal" and len(d["jobs"]) == 7
    png = tmp_path / "spec-plan.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    r = gpusched("geo", "plan", EXAMPLE, "--out", str(tmp_path), "--solver", "decomposed")
    assert r.returncode == 0 and "llm-7b" in r.stdout


@pytest.mark.slow
def test_cli_bad_yaml_exits_2_with_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TWO_SITES + job("x").replace("min_gpus: 8", "min_gpus: lots"))
    r = gpusched("geo", "plan", str(bad), "--out", str(tmp_path))
    assert r.returncode == 2
    assert f"{bad}:9: jobs[0].min_gpus" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("sites: [\n")
    r = gpusched("geo", "plan", str(bad), "--out", str(tmp_path))
    assert r.returncode == 2 and "malformed YAML" in r.stderr and f"{bad}:2" in r.stderr


@pytest.mark.slow
def test_cli_infeasible_spec_exits_2_naming_the_constraint(tmp_path):
    spec = tmp_path / "inf.yaml"
    spec.write_text(TWO_SITES + job("huge", min_gpus=64, max_gpus=64))
    r = gpusched("geo", "plan", str(spec), "--out", str(tmp_path))
    assert r.returncode == 2
    assert "infeasible: capacity: no site can host job 'huge'" in r.stderr


DATA = """\
sites:
  - name: a
    storage_tb: 10
    gpus: [{type: H100, count: 8, usd_per_hour: 2.0}]
  - name: b
    storage_tb: STORAGE
    gpus: [{type: H100, count: 64, usd_per_hour: 2.0}]
links:
  - {src: a, dst: b, rtt_ms: 40, gbps: 1, egress_usd_per_gb: 0.05}
datasets:
  - {name: big, size_gb: 8000, replicas: [a]}
jobs:
  - {name: reader, params: 1.0e+8, tokens_per_iter: 1.0e+5, iterations: 1000,
     gpu_types: [H100], min_gpus: 16, max_gpus: 32, dataset: big}
"""


@pytest.mark.parametrize("storage, added", [(100, True), (5, False)])
def test_data_placement_adds_a_replica_where_storage_allows(storage, added):
    from geo.data_placement import place_data
    spec = parse_spec(DATA.replace("STORAGE", str(storage)))
    before = plan(spec, solver="cpsat")
    assert set(before.job("reader").sites) == {"b"}  # 16+ GPUs only at b; 8 TB over 1 Gb/s
    p, new = place_data(spec, "throughput", lambda s: plan(s, solver="cpsat"))
    if added:
        assert [(d, s) for d, s, _ in new] == [("big", "b")]
        assert spec.datasets[0].replicas == ["a", "b"]
        assert p.job("reader").iteration_s < before.job("reader").iteration_s / 10
    else:  # 8 TB does not fit in 5 TB: no replica, same plan
        assert new == [] and p.job("reader").iteration_s == before.job("reader").iteration_s


def test_balance_penalty_is_asymmetric_and_cpsat_minimises_it():
    from geo.balance import OVER, UNDER, balance_penalty
    m = Model(parse_spec(TWO_SITES + job("x")))
    # a: 20 wanted of 16 -> 4 over; b: 10 of 16 -> 6 idle; over 32 GPUs
    assert balance_penalty(m, {("a", "H100"): 20, ("b", "H100"): 10}) == \
        pytest.approx((OVER * 4 + UNDER * 6) / 32)
    assert OVER > UNDER
    spec = make_instance(60, 8, seed=6)
    best = plan(spec, "balance", "cpsat", time_limit_s=10)
    greedy = plan(spec, "balance", "greedy")
    assert best.objective_value <= greedy.objective_value
    assert best.max_demand_supply <= 1.0  # supply allows every job here
    assert sum(1 for j in best.jobs if j.sites) == 60


def test_onprem_example_with_explicit_links_plans():
    from geo.spec import load_spec
    spec = load_spec(os.path.join(ROOT, "examples", "geo", "onprem.yaml"))
    p = plan(spec, "cost", "cpsat")
    assert p.status == "optimal" and all(j.sites for j in p.jobs)
    assert Model(spec).wan.get("aws:us-west-2", "dc-west").alpha_s == pytest.approx(0.004)


@pytest.mark.parametrize("objective", ["makespan", "cost"])
def test_cpsat_extreme_but_valid_numbers_still_solve(objective):
    """Weights that would overflow 64-bit integers are scaled, not MODEL_INVALID or a crash."""
    text = open(EXAMPLE).read()
    text = text.replace("mfu: 0.4", "mfu: 0.001").replace("params: 1.3e+9", "params: 1.0e+15")
    text = text.replace("tokens_per_iter: 1.0e+6", "tokens_per_iter: 1.0e+12")
    text = text.replace("iterations: 20000", "iterations: 10000000000")
    text = text.replace("usd_per_hour: 2.20", "usd_per_hour: 1.0e+6")
    spec = parse_spec(text, "extreme.yaml")
    p = plan(spec, objective, "cpsat", time_limit_s=5)
    assert p.status in ("optimal", "feasible", "infeasible")
    assert any(j.sites for j in p.jobs)


def test_decomposed_local_improvement_under_a_fleet_budget():
    """A random spec whose fleet budget binds (geo/instances.py held_out_spec, development seed
    1012): the local improvement used to trade GPUs only, spend past the budget, fail the
    repair and be thrown away (0.89% below the proven bound). Priced in dollars (the budget's
    Lagrangian price, by bisection) and inserting only the waiting jobs the budget can still
    hold, it now keeps an improvement: within 0.5% of the bound, within the budget."""
    from geo.bench import bound_for, gap_to_bound
    from geo.instances import held_out_spec

    spec, shape = held_out_spec(1012, time_limit_s=10)
    assert shape["fleet_budget"] is not None
    model = Model(spec)
    fast = plan(spec, "throughput", "decomposed", model=model)
    assert fast.cost_per_hour <= spec.planner.budget_usd_per_hour * (1 + 1e-9)
    b, W = bound_for(model, [fast], None)
    assert gap_to_bound(spec, fast, b, W)[0] < 0.005
