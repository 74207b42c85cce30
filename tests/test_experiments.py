"""Tests of the virtual-time experiments: arrival processes, workload mixes and the runner."""
from __future__ import annotations

import math
import statistics

import pytest

from gpusched.experiments import arrivals, mixes, runner
from scheduler_daemon.core.jobs import JobState

TRACE = str(arrivals.PACKAGED_TRACES["azure-code"])

KEYS = {"completed", "jobs", "p50_ms", "p99_ms", "slo_attainment", "jain", "per_model_p99_ms",
        "throughput_rps", "offered_rps", "kernels"}


def gaps_of(times):
    return [b - a for a, b in zip([0.0] + times[:-1], times)]


def cv(xs):
    return statistics.pstdev(xs) / statistics.fmean(xs)


# -- arrival processes -----------------------------------------------------------------------
@pytest.mark.parametrize("spec,n,tol", [("poisson", 50_000, 0.03),
                                        ("lognormal:1", 50_000, 0.05),
                                        ("lognormal:1.5", 100_000, 0.08),
                                        ("lognormal:2", 200_000, 0.15)])
@pytest.mark.parametrize("rate", [50.0, 2000.0])
def test_mean_inter_arrival_is_one_over_rate(spec, n, tol, rate):
    times = arrivals.arrival_times(spec, rate, n, seed=3)
    assert len(times) == n
    assert all(b >= a for a, b in zip(times, times[1:]))       # non-decreasing
    assert times[0] > 0
    mean_gap = times[-1] / n
    assert mean_gap == pytest.approx(1.0 / rate, rel=tol)


def test_poisson_gaps_are_exponential():
    g = gaps_of(arrivals.arrival_times("poisson", 100.0, 50_000, seed=1))
    assert cv(g) == pytest.approx(1.0, abs=0.05)
    # P(gap > mean) = 1/e for an exponential
    frac = sum(x > 0.01 for x in g) / len(g)
    assert frac == pytest.approx(math.exp(-1), abs=0.01)


def test_lognormal_is_burstier_than_poisson():
    n = 50_000
    cvs = {s: cv(gaps_of(arrivals.arrival_times(s, 100.0, n, seed=5)))
           for s in ("poisson", "lognormal:1", "lognormal:2")}
    assert cvs["lognormal:2"] > 2 * cvs["poisson"]
    assert cvs["lognormal:2"] > cvs["lognormal:1"] > cvs["poisson"] * 0.9
    # lognormal:2 gaps: the median sits far below the mean (bursts of short gaps)
    g = sorted(gaps_of(arrivals.arrival_times("lognormal:2", 100.0, n, seed=5)))
    median = g[n // 2]
    assert median == pytest.approx(0.01 * math.exp(-2.0), rel=0.05)   # exp(mu) = mean*e^-s^2/2


def test_arrivals_are_seeded():
    a = arrivals.arrival_times("lognormal:1.5", 10.0, 100, seed=7)
    assert arrivals.arrival_times("lognormal:1.5", 10.0, 100, seed=7) == a
    assert arrivals.arrival_times("lognormal:1.5", 10.0, 100, seed=8) != a
    # the rate only rescales: the same seed at twice the rate gives half the times
    b = arrivals.arrival_times("poisson", 20.0, 100, seed=7)
    c = arrivals.arrival_times("poisson", 10.0, 100, seed=7)
    assert b == pytest.approx([x / 2 for x in c], rel=1e-12)


def test_trace_rescaled_to_rate():
    src = arrivals.trace_gaps(TRACE)
    assert len(src) > 1000
    assert all(g >= 0 for g in src)
    n = len(src)
    for rate, seed in [(100.0, 0), (1234.5, 9)]:
        times = arrivals.arrival_times(f"trace:{TRACE}", rate, n, seed)
        # exactly one cycle of the trace: the mean gap is exactly 1/rate
        assert times[-1] / n == pytest.approx(1.0 / rate, rel=1e-9)
        # the trace's gaps, rescaled (rotated by the seed's start)
        scale = (1.0 / rate) / (sum(src) / n)
        assert sorted(gaps_of(times)) == pytest.approx(sorted(g * scale for g in src),
                                                       rel=1e-6, abs=1e-12)
    # the trace is bursty: far from a Poisson process
    assert cv(src) > 1.2
    # a short window of a long trace, and a long run that cycles it
    short = arrivals.arrival_times(f"trace:{TRACE}", 100.0, 500, seed=1)
    assert len(short) == 500
    long_ = arrivals.arrival_times(f"trace:{TRACE}", 100.0, 2 * n + 17, seed=1)
    assert len(long_) == 2 * n + 17
    assert long_[-1] / len(long_) == pytest.approx(0.01, rel=0.02)
    g = gaps_of(long_)
    # cycled (differences of cumulative times: absolute float error ~1e-14 s)
    assert g[1:n + 1] == pytest.approx(g[n + 1:2 * n + 1], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("spec", ["", "uniform", "poisson:2", "Poisson", "lognormal",
                                  "lognormal:", "lognormal:abc", "lognormal:0",
                                  "lognormal:-1", "lognormal:5.5", "lognormal:nan",
                                  "lognormal:inf"])
def test_bad_specs_raise_value_error(spec):
    with pytest.raises(ValueError, match="bad arrivals"):
        arrivals.parse(spec)
    with pytest.raises(ValueError):
        arrivals.arrival_times(spec, 10.0, 5, 0)


def test_good_specs_parse():
    assert arrivals.parse("poisson") == ("poisson", None)
    assert arrivals.parse("lognormal:2") == ("lognormal", 2.0)
    assert arrivals.parse("lognormal:5") == ("lognormal", 5.0)
    assert arrivals.parse("trace:/x/y.csv") == ("trace", "/x/y.csv")


def test_bad_traces_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        arrivals.arrival_times(f"trace:{tmp_path}/missing.csv", 10.0, 5, 0)
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("time,x\n2023-11-16 18:17:03,1\n2023-11-16 18:17:04,1\n")
    with pytest.raises(ValueError, match="TIMESTAMP"):
        arrivals.arrival_times(f"trace:{no_col}", 10.0, 5, 0)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError):
        arrivals.arrival_times(f"trace:{empty}", 10.0, 5, 0)
    one = tmp_path / "one.csv"
    one.write_text("TIMESTAMP\n2023-11-16 18:17:03.9799600\n")
    with pytest.raises(ValueError, match="fewer than two"):
        arrivals.arrival_times(f"trace:{one}", 10.0, 5, 0)
    same = tmp_path / "same.csv"
    same.write_text("TIMESTAMP\n2023-11-16 18:17:03.5\n2023-11-16 18:17:03.5\n")
    with pytest.raises(ValueError, match="fewer than two"):
        arrivals.arrival_times(f"trace:{same}", 10.0, 5, 0)


def test_small_trace_file(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("TIMESTAMP,x\n2023-11-16 18:17:03.0000000,1\n2023-11-16 18:17:01.0000000,1\n"
                 "2023-11-16 18:17:04.0000000,1\n")        # unsorted: gaps 2 s and 1 s
    t = arrivals.arrival_times(f"trace:{p}", 2.0, 4, seed=0)   # mean gap 0.5 s: 2/3, 1/3
    g = gaps_of(t)
    assert sorted(g) == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert g[0] != g[1] and g[0] == pytest.approx(g[2])   # cycled


# -- mixes -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t4_mix():
    return tuple(mixes.mix("paella-mix", "T4"))


def test_paella_mix(t4_mix):
    assert [m.name for m in t4_mix] == list(mixes.PAELLA_SHARES)
    assert sum(m.share for m in t4_mix) == pytest.approx(1.0)
    for m in t4_mix:
        assert m.kernels and m.solo_s > 0
    with pytest.raises(ValueError, match="unknown workload"):
        mixes.mix("nope", "T4")


# -- runner ----------------------------------------------------------------------------------
N_JOBS = 60
POLICIES = ("srpt", "cuda-ms", "clockwork", "ideal")


@pytest.fixture(scope="module")
def scenario(t4_mix):
    # about 0.8 of what the T4 sustains on this mix (saturation ~1350 jobs/s)
    arr = runner.make_arrivals(t4_mix, "lognormal:1.5", 1000.0, N_JOBS, seed=11)
    return runner.Scenario("T4", t4_mix, arr)


@pytest.fixture(scope="module")
def results(scenario):
    return {p: runner.run_point(scenario, p) for p in POLICIES}


def test_make_arrivals(t4_mix):
    arr = runner.make_arrivals(t4_mix, "poisson", 500.0, N_JOBS, seed=2)
    assert len(arr) == N_JOBS
    assert [t for t, _ in arr] == arrivals.arrival_times("poisson", 500.0, N_JOBS, 2)
    assert all(0 <= mi < len(t4_mix) for _, mi in arr)
    assert runner.make_arrivals(t4_mix, "poisson", 500.0, N_JOBS, seed=2) == arr
    # the model sequence does not depend on the rate or on the arrival process
    other = runner.make_arrivals(t4_mix, "lognormal:2", 50.0, N_JOBS, seed=2)
    assert [mi for _, mi in other] == [mi for _, mi in arr]


@pytest.mark.parametrize("policy", POLICIES)
def test_run_point_keys_and_ranges(results, scenario, policy):
    r = results[policy]
    assert set(r) == KEYS
    assert r["jobs"] == N_JOBS
    assert 0 < r["completed"] <= r["jobs"]
    assert 0.0 <= r["slo_attainment"] <= r["completed"] / r["jobs"]
    assert 0.0 < r["jain"] <= 1.0 + 1e-12
    assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert r["throughput_rps"] > 0
    names = {m.name for m in scenario.mix}
    assert set(r["per_model_p99_ms"]) <= names
    assert all(v > 0 for v in r["per_model_p99_ms"].values())
    # jobs do not finish much faster than the fastest model alone
    fastest = min(m.solo_s for m in scenario.mix) * 1e3
    assert r["p50_ms"] >= fastest * 0.9
    if policy == "ideal":
        assert r["kernels"] == 0 and r["completed"] == N_JOBS
    elif policy == "clockwork":
        assert 0 < r["kernels"]
    else:
        assert r["completed"] == N_JOBS
        total = sum(len(scenario.mix[mi].kernels) for _, mi in scenario.arrivals)
        assert r["kernels"] == total


def test_clockwork_sheds(results):
    cw = results["clockwork"]
    assert cw["completed"] <= cw["jobs"]
    assert cw["completed"] < N_JOBS            # at this load it refuses some jobs
    # shed jobs never ran: fewer kernels than the others
    assert cw["kernels"] < results["srpt"]["kernels"]


def test_ideal_is_a_lower_bound_on_median(results):
    assert results["ideal"]["p50_ms"] <= min(results[p]["p50_ms"] for p in ("srpt", "cuda-ms"))
    assert results["ideal"]["slo_attainment"] >= results["srpt"]["slo_attainment"] - 1e-9


def test_every_policy_sees_the_same_arrivals(scenario):
    seen = {}
    for policy in ("srpt", "cuda-ss", "clockwork"):
        jobs, dev = runner.simulate(scenario, policy)
        assert len(jobs) == N_JOBS
        by_id = {j.id: j for j in jobs}
        assert sorted(by_id) == list(range(N_JOBS))
        seen[policy] = [(by_id[i].arrival, by_id[i].model.name) for i in range(N_JOBS)]
        for j in jobs:
            assert j.state in (JobState.DONE, JobState.SHED)
            if j.state is JobState.DONE:
                assert j.finish > j.arrival
                assert j.first_start is not None and j.first_start >= j.arrival
    expect = [(t, scenario.mix[mi].name) for t, mi in scenario.arrivals]
    assert all(v == expect for v in seen.values())


def test_run_point_is_deterministic(t4_mix, results):
    arr = runner.make_arrivals(t4_mix, "lognormal:1.5", 1000.0, N_JOBS, seed=11)
    sc = runner.Scenario("T4", t4_mix, arr)
    assert runner.run_point(sc, "srpt") == results["srpt"]
    assert runner.run_point(sc, "ideal") == results["ideal"]


def test_ideal_latencies_at_least_solo(scenario):
    recs = runner.ideal(scenario)
    assert len(recs) == N_JOBS
    for mi, lat in recs:
        assert lat >= scenario.mix[mi].solo_s - 1e-15


def test_ideal_single_job_is_solo(t4_mix):
    sc = runner.Scenario("T4", t4_mix, ((0.0, 2),))
    r = runner.run_point(sc, "ideal")
    assert r["completed"] == 1
    assert r["p50_ms"] == pytest.approx(t4_mix[2].solo_s * 1e3)
    assert r["slo_attainment"] == 1.0


def test_saturation_rate_positive(t4_mix):
    rate = runner.saturation_rate("T4", t4_mix, n=30)
    assert math.isfinite(rate) and rate > 0
    # a T4 runs these CNNs (0.7-4.2 ms alone) at hundreds to a few thousand per second
    assert 100 < rate < 20_000


# -- what Paella's experiment adds: caps, host costs, the absolute axis ----------------------
from gpusched.experiments.host import HostCosts  # noqa: E402
from scheduler_daemon.wire.kernels import KernelSpec  # noqa: E402

K = KernelSpec("k", est_us=100.0, grid=4, block=256)


def _mix(n_kernels=5, name="m"):
    return (mixes.MixModel(name, 1.0, tuple(K for _ in range(n_kernels))),)


def test_client_caps_hold_extra_jobs_in_the_client_and_latency_counts_from_arrival():
    mix = _mix(1)
    sc = runner.Scenario("T4", mix, tuple((0.0, 0) for _ in range(10)), caps={"m": 2})
    out = runner.run_scenario(sc, "cuda-ms")
    starts = sorted(j.first_start for j in out.jobs)
    # two at a time: pairs start together, 100 us apart
    assert starts == pytest.approx([i // 2 * 100e-6 for i in range(10)])
    res = runner.run_point(sc, "cuda-ms")
    assert res["p99_ms"] == pytest.approx(0.5, rel=0.05)   # the last pair waited 400 us


def test_our_dispatcher_pays_a_notice_and_a_launch_per_kernel():
    mix = _mix(5)
    free = runner.run_point(runner.Scenario("T4", mix, ((0.0, 0),)), "srpt")
    costs = HostCosts(launch_us=4.0, notice_us=10.0, rpc_us=0.0, poll_us=0.0)
    paid = runner.run_point(runner.Scenario("T4", mix, ((0.0, 0),), costs=costs), "srpt")
    # each kernel waits a launch (4 us); each kernel after the first also its predecessor's
    # completion notice (10 us); the last completion's notice ends the job
    assert free["p50_ms"] == pytest.approx(0.5)
    assert paid["p50_ms"] == pytest.approx(0.5 + (5 * 4 + 5 * 10) / 1e3)
    # the hardware baseline launches everything at once: one launch, no notices
    hw = runner.run_point(runner.Scenario("T4", mix, ((0.0, 0),), costs=costs), "cuda-ms")
    assert hw["p50_ms"] == pytest.approx(0.5 + 4 / 1e3)


def test_a_run_pays_one_notice_and_its_launches_back_to_back():
    """A model's second job, alone, with a 500 us quantum: its five 100 us kernels go as one
    run, the i-th in its queue (i + 1) * 4 us after the dispatch, one notice at the end; the
    first job (estimates not yet measured) and `paella` (no runs) go kernel by kernel."""
    mix = _mix(5)
    costs = HostCosts(launch_us=4.0, notice_us=10.0, rpc_us=0.0, poll_us=0.0, quantum_us=500.0)
    sc = runner.Scenario("T4", mix, ((0.0, 0), (1.0, 0)), costs=costs)
    first, second = runner.run_scenario(sc, "srpt").jobs
    assert first.finish == pytest.approx((5 * 4 + 5 * 100 + 5 * 10) * 1e-6)
    assert second.finish - 1.0 == pytest.approx((4 + 5 * 100 + 10) * 1e-6)
    p1, p2 = runner.run_scenario(sc, "paella").jobs
    assert p2.finish - 1.0 == pytest.approx(p1.finish)
    assert costs.for_policy("cuda-ms").quantum_us == 0 and costs.for_policy("srpt").quantum_us == 500


def test_the_stream_baselines_notice_a_finished_job_at_their_next_poll():
    mix = _mix(1)
    costs = HostCosts(launch_us=0.0, notice_us=0.0, rpc_us=0.0, poll_us=30.0)
    res = runner.run_point(runner.Scenario("T4", mix, ((0.0, 0),), costs=costs), "cuda-ms")
    assert res["p50_ms"] == pytest.approx(0.12)          # done at 100 us, seen at 120 us
    assert costs.for_policy("srpt").poll_us == 0.0 and costs.for_policy("cuda-ms").notice_us == 0


def test_each_system_pays_its_familys_host_costs_a_variant_its_parents():
    from scheduler_daemon.core import policies
    c = HostCosts(launch_us=1.0, notice_us=2.0, rpc_us=3.0, poll_us=4.0)
    got = {p: (c.for_policy(p).notice_us, c.for_policy(p).rpc_us, c.for_policy(p).poll_us)
           for p in ("srpt", "paella", "fifo-kbk", "cuda-ms", "clockwork", "triton")}
    assert got == {"srpt": (2, 3, 0), "paella": (2, 3, 0), "fifo-kbk": (2, 3, 0),
                   "cuda-ms": (0, 0, 4), "clockwork": (0, 0, 4), "triton": (0, 3, 0)}

    class Variant(policies.ALL_POLICIES["srpt"]):   # tools/run_ahead.py registers such
        per_job_outstanding = 4
    policies.ALL_POLICIES["srpt-variant"] = Variant
    try:
        assert c.for_policy("srpt-variant") == c.for_policy("srpt")
    finally:
        del policies.ALL_POLICIES["srpt-variant"]


def test_triton_runs_as_many_instances_as_the_caps_each_on_its_own_stream():
    mix = _mix(3)
    sc = runner.Scenario("T4", mix, tuple((0.0, 0) for _ in range(6)), caps={"m": 3})
    out = runner.run_scenario(sc, "triton")
    starts = sorted(j.first_start for j in out.jobs)
    assert starts[:3] == [0.0, 0.0, 0.0] and starts[3] > 0      # three instances at once
    assert len({j.stream for j in out.jobs}) == 3


def test_rates_scale_one_arrival_draw():
    unit = runner.make_arrivals(_mix(), "lognormal:2", 1.0, 50, seed=3)
    for rate in (10.0, 1234.0):
        fast = runner.scaled(unit, rate)
        assert [m for _, m in fast] == [m for _, m in unit]
        assert [t for t, _ in fast] == pytest.approx([t / rate for t, _ in unit])


def test_knee_is_the_most_throughput_within_the_p99_limit():
    from gpusched.bench.fig11 import _headline, knee
    rows = [{"throughput_rps": 100, "p99_ms": 10, "slo_attainment": 1.0},
            {"throughput_rps": 500, "p99_ms": 60, "slo_attainment": 0.995},
            {"throughput_rps": 800, "p99_ms": 90, "slo_attainment": 0.5},
            {"throughput_rps": 700, "p99_ms": None, "slo_attainment": 0.0}]
    assert knee(rows, lambda r: r["p99_ms"] is not None and r["p99_ms"] <= 75) == 500
    h = _headline({"x": rows}, ["x"])
    assert h == {"knee_rps": {"x": 500}, "slo99_rps": {"x": 500}}


def test_rate_grid_resolves_a_policy_far_below_the_best():
    """A policy with a burst under half the best gets its own points: on the H100 ours saturate
    at ~1,500 jobs/s and the 10%-150% grid of cuda-ms's 26,000 started above that (knee 0)."""
    from gpusched.bench.fig11 import rate_grid
    near = rate_grid([1000.0, 1700.0], 15)
    assert len(near) == 15 and near[0] == pytest.approx(170) and near[-1] == pytest.approx(2550)
    far = rate_grid([1500.0, 26000.0], 15)
    assert len(far) == 30 and far == sorted(far)
    below = [r for r in far if r <= 1500.0]
    assert len(below) >= 10 and far[0] == pytest.approx(150)   # the slow curve's knee is inside
    assert far[-1] == pytest.approx(39000)


def test_fig11_end_to_end_small():
    from gpusched.bench.fig11 import run_fig11
    res = run_fig11(("T4",), (2.0,), 1, 60, 3, ("cuda-ms", "srpt"), workers=1,
                    costs=HostCosts(4.5, 12.0, 175.0, 20.0))
    (case,) = res["cases"]
    assert {"gpu", "sigma", "seeds", "knee_rps", "slo99_rps", "p99_ratio_at_80pct"} <= set(case)
    assert set(case["knee_rps"]) == {"cuda-ms", "srpt"}
    assert case["knee_rps"]["cuda-ms"] > 0 and case["knee_rps"]["srpt"] > 0
    rates = case["rates_rps"]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(15 * rates[0])
    for rows in case["curves"].values():
        assert [r["offered_rps"] for r in rows] == rates
