"""Placement edge cases found in review: YAML numbers and encodings, which pool is wrong and how
many GPUs a method needs, mixed GPU pools (the heuristic's single-type tries, CP-SAT's per-type
GPU bound), CP-SAT's own search when the heuristic finds no plan, the offered rate of a replica
planned above its share, and a table that fits 80 columns."""
import re

import pytest
from test_placement import LIGHT

from gpusched.cli import main
from gpusched.placement import cpsat, spec
from gpusched.placement.estimate import estimate
from gpusched.placement.fit import GpuState
from gpusched.placement.plan import report
from gpusched.placement.pool import parse_pool
from gpusched.placement.solvers import place
from gpusched.placement.spec import SpecError
from gpusched.placement.workloads import make_workload

EXAMPLE = "examples/placement/models.yaml"
# the six light models of test_placement.py at four times the rate: two T4s, or one H100
LIGHT4 = LIGHT.replace("rate: 50,", "rate: 200,")


def _one(rate="10", slo="10"):
    return f"models:\n  - {{name: svc, model: resnet50, rate: {rate}, slo_ms: {slo}}}\n"


@pytest.mark.parametrize("rate, slo, want", [("1e3", "1.5e1", (1000.0, 15.0)),
                                             ("2E+2", "10", (200.0, 10.0)),
                                             ("1_000", "10", (1000.0, 10.0))])
def test_exponent_numbers_are_numbers(rate, slo, want):
    (m,) = spec.loads(_one(rate, slo)).models
    assert (m.rate, m.slo_ms) == want


@pytest.mark.parametrize("rate, slo, needle", [
    (".nan", "10", "'rate'"), (".inf", "10", "'rate'"), ("-.inf", "10", "'rate'"),
    ("10", ".nan", "'slo_ms'"), ("10", "1e400", "'slo_ms'"), ("1.1e7", "10", "'rate'"),
    ("10", "0", "'slo_ms'"), ('"100"', "10", "drop the quotes"),
])
def test_non_finite_and_quoted_numbers_are_refused(rate, slo, needle):
    with pytest.raises(SpecError, match=needle) as e:
        spec.loads(_one(rate, slo), "m.yaml")
    assert str(e.value).startswith("m.yaml:2:")


def test_non_utf8_file_names_file_and_line(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_bytes(b"models:\n  - {name: caf\xe9, model: resnet50, rate: 1, slo_ms: 9}\n")
    with pytest.raises(SpecError, match=rf"^{f}:2: not UTF-8"):
        spec.load(str(f))
    with pytest.raises(SpecError, match="cannot read"):
        spec.load(str(tmp_path))  # a directory


@pytest.mark.parametrize("text, needle", [("H100:0", "COUNT must be 1..100000, got 0"),
                                          ("H100:8@-1", "PRICE must be 0..10000 $/h, got -1"),
                                          ("H100:2@nan", "PRICE must be")])
def test_pool_names_the_bad_number(text, needle):
    with pytest.raises(ValueError) as e:
        parse_pool(text)
    assert needle in str(e.value)


def _cli_error(capsys, *args):
    assert main(["place", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpusched place: error:") and "Traceback" not in err
    return err


def test_pool_error_says_where_the_pool_came_from(capsys, tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("pool: H100:0\n" + _one())
    assert f"{f}: pool 'H100:0'" in _cli_error(capsys, str(f))
    assert "--pool: pool 'T4:1@x'" in _cli_error(capsys, str(f), "--pool", "T4:1@x")


def test_too_small_pool_names_the_gpus_the_method_needs(capsys):
    # one-per-gpu needs a GPU per model (12): busy time alone would fit 8 GPUs
    err = _cli_error(capsys, EXAMPLE, "--solver", "one-per-gpu")
    assert "pool (H100:8) cannot serve" in err and "one-per-gpu needs 12 H100 GPUs" in err
    err = _cli_error(capsys, EXAMPLE, "--solver", "heuristic", "--pool", "H100:1")
    assert re.search(r"heuristic needs [2-9] H100 GPUs, the pool has 1 H100", err), err


def test_cpsat_searches_on_its_own_when_the_heuristic_finds_no_plan(monkeypatch):
    """With no plan from the heuristic, CP-SAT searches every GPU of a small pool itself: it
    returns a plan that passes the fit rule, or the heuristic's pool-too-small error."""
    from gpusched.placement import cpsat as cp
    models = spec.loads(LIGHT).models
    pool = parse_pool("H100:2")

    def refuse(*a, **k):
        raise SpecError("the pool (H100:2) cannot serve these rates: heuristic found no plan")
    monkeypatch.setattr(cp, "heuristic_solve", refuse)
    plan = cp.solve(models, estimate(models, pool), pool, time_limit_s=20)
    assert plan.gpus_used == 1 and plan.optimal
    fresh = GpuState(pool[0], plan.gpus[0].knobs)
    for r in plan.gpus[0].replicas:
        assert fresh.check(r) is None
        fresh.add(r)
    assert all(r.rate > 0 for r in plan.gpus[0].replicas)  # no idle replicas
    heavy = spec.loads(LIGHT.replace("rate: 50,", "rate: 5000,")).models
    # proven infeasible by CP-SAT, or (out of time first) the heuristic's error
    with pytest.raises(SpecError, match=r"cannot serve these rates: (cpsat \(proven\)|heuristic) "
                       "found no plan"):
        cp.solve(heavy, estimate(heavy, pool), pool, time_limit_s=5)


def test_heuristic_on_a_mixed_pool_is_no_worse_than_on_one_type():
    # each model on its cheapest type per request gives 7 T4 + 2 H100 ($28.29/h) here; the
    # H100s alone take 2 ($24.58/h); some SLOs are too tight for a T4, so no all-T4 plan
    models = make_workload(8, "H100", 3, 200).models
    mixed = place(models, parse_pool("T4:40,H100:8"), "heuristic").cost_per_hour
    assert mixed <= place(models, parse_pool("H100:8"), "heuristic").cost_per_hour + 1e-9


def test_cpsat_may_use_more_cheap_gpus_than_the_start_used():
    """Started from a 1-H100 plan ($12.29/h), CP-SAT must still reach an all-T4 plan: its GPUs
    of a type are bounded by the start's cost, not by the start's GPU count; and it is never
    dearer than the heuristic on the same pool."""
    models = spec.loads(LIGHT4).models
    mixed = parse_pool("T4:16,H100:2")
    start = place(models, parse_pool("H100:2"), "heuristic")
    assert start.gpus_used == 1
    plan = cpsat.solve(models, estimate(models, mixed), mixed, time_limit_s=10, start=start)
    assert {g.type.name for g in plan.gpus} == {"T4"} and len(plan.gpus) > start.gpus_used
    assert plan.cost_per_hour < start.cost_per_hour
    assert plan.cost_per_hour <= place(models, mixed, "heuristic").cost_per_hour + 1e-9


def test_offered_rate_is_the_models_share_and_sets_the_batching_delay():
    models = spec.loads(LIGHT4).models
    plan = place(models, parse_pool("H100:2"), "heuristic")
    g = plan.gpus[0]
    r = g.replicas[0]
    r.rate *= 2  # planned at twice its share (as CP-SAT does to keep a batch filling)
    out = report(plan, models)
    row = next(x for x in out["assignments"][0]["replicas"] if x["model"] == r.name)
    assert row["rate"] == pytest.approx(r.rate, rel=1e-3)
    assert row["offered_rate"] == pytest.approx(models[r.cfg.model].rate, rel=1e-3)
    k = r.cfg
    fill = min(k.timeout_ms, (k.batch - 1) / row["offered_rate"] * 1000) if k.batch > 1 else 0
    assert row["predicted_latency_ms"] == pytest.approx(fill + k.latency_ms * g.alpha(r),
                                                        abs=2e-3)


def test_table_fits_80_columns_without_cutting_numbers(monkeypatch, capsys):
    from rich.console import Console

    monkeypatch.setattr("rich.console.Console", lambda *a, **k: Console(
        width=80, force_terminal=True, color_system=None, **{x: v for x, v in k.items()
                                                            if x != "width"}))
    assert main(["place", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for name in ("thumbs-mobilenet", "moderation-bert", "edge-squeezenet"):
        assert name in out  # never folded at 80 columns



@pytest.mark.parametrize("wanted, needle", [
    (("odd", "resnet50", 3, 10.0, 10.0), "batch 3 is not one of the profiled sizes"),
    (("huge", "resnet50", 1024, 10.0, 10.0), "batch 1024 is not one of the profiled sizes"),
    (("nan", "resnet50", 1, float("nan"), 10.0), "rate must be in"),
    (("inf", "resnet50", 1, 10.0, float("inf")), "slo_ms in"),
    (("neg", "resnet50", 1, -5.0, 10.0), "rate must be in"),
])
def test_admission_refuses_unprofiled_batches_and_bad_numbers(wanted, needle):
    """An unprofiled batch would be traced inside the daemon (seconds, at batch 1024 much more)."""
    from gpusched.placement.admission import Admission, AdmissionError
    with pytest.raises(AdmissionError, match=needle):
        Admission("H100").admit([wanted])
