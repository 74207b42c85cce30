"""decomposed's packing at the LP's prices (geo/decomposed.py, step 4): a flexible job that
density packing puts on the scarce GPU type moves off it so that a job that runs only there
starts; a flexible job whose value ties across two pools takes the one a pinned job does
not need; on random fleets the pass never makes a plan worse (priority served, then objective)
and the plans keep every invariant (geo/invariants.py ``check_plan``)."""
import random

import numpy as np
import pytest

from geo import decomposed
from geo.bench import served
from geo.bound import throughput_bound
from geo.candidates import Model
from geo.decomposed import solve_decomposed
from geo.invariants import check_plan, random_spec
from geo.planner import plan
from geo.replan import initial_plan
from geo.spec import parse_spec

# one site, 8 H100 (fast, scarce) and 8 L4; "flex" runs on either and is denser (priority 2
# per 8 GPUs), so step 2 places it first, where it scores best (H100), and "h100-only"
# (priority 1.5) finds no H100 left; moving flex to L4 alone gains nothing, so step 3 keeps it
SCARCE = """\
sites:
  - name: a
    gpus: [{type: H100, count: 8, usd_per_hour: 4.0}, {type: L4, count: 8, usd_per_hour: 1.0}]
jobs:
  - {name: flex, params: 1.0e+9, tokens_per_iter: 1.0e+6, iterations: 1000, priority: 2,
     gpu_types: [H100, L4], min_gpus: 8, max_gpus: 8}
  - {name: h100-only, params: 1.0e+9, tokens_per_iter: 1.0e+6, iterations: 1000,
     priority: 1.5, gpu_types: [H100], min_gpus: 8, max_gpus: 8}
"""


def where(chosen):
    return {n: c.gpu_type for n, c in chosen.items()}


def test_priced_pass_moves_the_flexible_job_off_the_scarce_type():
    model = Model(parse_spec(SCARCE))
    _, without, queued = solve_decomposed(model, "throughput", priced=False)
    assert where(without) == {"flex": "H100"} and list(queued) == ["h100-only"]
    _, chosen, queued = solve_decomposed(model, "throughput", priced=True)
    assert where(chosen) == {"flex": "L4", "h100-only": "H100"} and not queued


def test_priced_plan_serves_more_and_keeps_the_invariants(monkeypatch):
    spec = parse_spec(SCARCE)
    monkeypatch.setattr(decomposed, "PRICED_MAX_JOBS", 1)  # the guard: pass skipped
    before = plan(spec, "throughput", "decomposed")
    monkeypatch.undo()
    after, _ = initial_plan(spec, "throughput", "decomposed")
    assert served(spec, before) == 2 and served(spec, after) == 3.5
    assert after.objective_value > before.objective_value
    assert check_plan(spec, after, fresh=True) == []


# two sites of 11 H100 each; "flex" (priority 2) runs at either and scores the same at both,
# "pinned" (1.5) only at a (its budget_usd pays a's price, not b's), "filler" (0.5) at either.
# Step 2 puts flex at a (first row) and pinned waits; the LP, with the filler fractional in
# both pools, prices a and b alike, so flex's V ties across them and the priced round in row
# order puts it at a again; best fit (b: a's room is claimed by pinned) serves both
TIED = """\
sites:
  - name: a
    gpus: [{type: H100, count: 11, usd_per_hour: 2.0}]
  - name: b
    gpus: [{type: H100, count: 11, usd_per_hour: 4.0}]
links:
  - {src: a, dst: b, rtt_ms: 10, gbps: 100}
jobs:
  - {name: flex, params: 1.0e+9, tokens_per_iter: 1.0e+6, iterations: 1000, priority: 2,
     gpu_types: [H100], min_gpus: 8, max_gpus: 8}
  - {name: pinned, params: 1.0e+9, tokens_per_iter: 1.0e+6, iterations: 1000, priority: 1.5,
     gpu_types: [H100], min_gpus: 8, max_gpus: 8, budget_usd: 10}
  - {name: filler, params: 1.0e+9, tokens_per_iter: 1.0e+6, iterations: 1000, priority: 0.5,
     gpu_types: [H100], min_gpus: 8, max_gpus: 8}
"""


def sites(chosen):
    return {n: c.sites for n, c in chosen.items()}


def test_priced_ties_best_fit_frees_the_pool_a_pinned_job_needs(monkeypatch):
    model = Model(parse_spec(TIED))
    lam, _, _ = throughput_bound(model, served=2.5).duals
    assert lam[0] == pytest.approx(lam[1]) and lam[0] > 0  # the premise: a and b priced alike
    with monkeypatch.context() as m:  # ties in row order only (before the tie rule)
        m.setattr(decomposed, "PRICED_ROUNDS", ("priced",))
        _, chosen, queued = solve_decomposed(model, "throughput")
    assert sites(chosen) == {"flex": {"a": 8}, "filler": {"b": 8}} and list(queued) == ["pinned"]
    _, chosen, queued = solve_decomposed(model, "throughput")
    assert sites(chosen) == {"flex": {"b": 8}, "pinned": {"a": 8}} and list(queued) == ["filler"]
    # the round itself: flex's tied rows (a, b) tried b first, a's room being pinned's claim
    fleet = decomposed._Fleet(model)
    types = sorted(fleet.cap)
    pools = np.arange(2).reshape(1, 2)
    jobs = model.spec.jobs
    data = [decomposed._job_rows(fleet, j, "throughput", 1.0, pools, types, 0.0) for j in jobs]
    V = np.array([[3.0, 3.0], [2.0, -np.inf], [-np.inf, -np.inf]])
    old, _, _ = decomposed._round(jobs, data, V, fleet, types, "priced", [0, 1])
    new, _, _ = decomposed._round(jobs, data, V, fleet, types, "priced_fit", [0, 1])
    assert {n: v[0] for n, v in old.items()} == {"flex": 0}
    assert {n: v[0] for n, v in new.items()} == {"flex": 1, "pinned": 0}


def test_bound_exposes_its_duals():
    """The prices the pass uses: the H100 pool is the one the LP prices (both jobs want it)."""
    model = Model(parse_spec(SCARCE))
    b = throughput_bound(model, served=2.0)
    lam, mu, sigma = b.duals
    assert lam.shape == (2,) and mu == 0.0 and sigma >= 0.0
    types = sorted(model.spec.sites[0].gpus, key=lambda g: g.type)  # pool = type x sites + site
    h100 = [g.type for g in types].index("H100")
    assert lam[h100] > 0 and lam[1 - h100] == pytest.approx(0.0)


def test_priced_pass_never_worse_on_random_fleets(monkeypatch):
    """60 random fleets (2-9 jobs, a fleet budget in a third), and two found by a review where
    the pass made the plan worse (it was compared with the plan of step 3 before the waiting
    jobs were placed across sites): the plan with the pass serves at least as much priority,
    then scores at least as much, as without it, better on some, and breaks no invariant."""
    better = 0
    for seed in [*range(60), 431, 556]:
        spec = random_spec(random.Random(seed))
        with monkeypatch.context() as m:
            m.setattr(decomposed, "PRICED_MAX_JOBS", 1)
            a = plan(spec, "throughput", "decomposed")
        b, _ = initial_plan(spec, "throughput", "decomposed")
        va = (served(spec, a), round(a.objective_value, 9))
        vb = (served(spec, b), round(b.objective_value, 9))
        assert vb >= va, (seed, va, vb)
        better += vb > va
        assert check_plan(spec, b, fresh=True) == [], seed
    assert better >= 3


def test_priced_values_drop_rows_not_above_zero():
    """Step 4's estimate: V = S - N (lambda + mu c) + sigma p, -inf where <= 0."""
    model = Model(parse_spec(SCARCE))
    fleet = decomposed._Fleet(model)
    types = sorted(fleet.cap)
    pools = np.arange(len(types)).reshape(len(types), 1)
    jobs = model.spec.jobs
    data = [decomposed._job_rows(fleet, j, "throughput", 1.0, pools, types, 0.0) for j in jobs]
    S, _, _ = decomposed._matrix(data)
    h100 = types.index("H100")
    lam = np.zeros(2)
    lam[h100] = 1e6  # the H100 pool priced out: only flex's L4 rows stay
    V = decomposed._priced_values(fleet, jobs, data, types, (lam, 0.0, 0.0), S.shape)
    for r, d in enumerate(data):
        m = len(d[0])
        want = np.where(d[4] == h100, -np.inf, d[0])
        assert np.array_equal(V[r, :m], want)
    assert np.isfinite(V[0]).any() and not np.isfinite(V[1]).any()
