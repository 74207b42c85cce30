"""Placement (issue 5): the workload spec and pool, the estimate of replica configurations, the
fit rule, the solvers and baselines, the replay on simulated GPUs, the daemon's admission and
``gpusched place``. Small workloads only: the whole file runs in well under a minute."""
import dataclasses
import itertools
import json

import pytest

from gpusched.cli import main
from gpusched.placement import spec
from gpusched.placement.admission import Admission, AdmissionError
from gpusched.placement.estimate import configs_for, estimate, model_profile
from gpusched.placement.fit import GpuState, Replica
from gpusched.placement.knobs import DEFAULT
from gpusched.placement.plan import report
from gpusched.placement.pool import DEFAULT_PRICE, GpuType, parse_pool
from gpusched.placement.replay import _batches, _spread, replay
from gpusched.placement.solvers import METHODS, place
from gpusched.placement.spec import SpecError

EXAMPLE = "examples/placement/models.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# six light models: together far below one H100
LIGHT = """\
pool: "H100:8"
models:
  - {name: a-r18, model: resnet18, rate: 50, slo_ms: 20}
  - {name: b-mob, model: mobilenetv2, rate: 50, slo_ms: 20}
  - {name: c-sq, model: squeezenet1.1, rate: 50, slo_ms: 20}
  - {name: d-r34, model: resnet34, rate: 50, slo_ms: 20}
  - {name: e-goog, model: googlenet, rate: 50, slo_ms: 20}
  - {name: f-bert, model: bert-base, rate: 50, slo_ms: 30}
"""

# three heavy models: more busy time than one H100 can take without breaking SLOs
HEAVY = """\
models:
  - {name: dn, model: densenet121, rate: 3000, slo_ms: 24}
  - {name: bert, model: bert-base, rate: 3000, slo_ms: 24}
  - {name: gpt, model: gpt2, rate: 3000, slo_ms: 12}
"""

H100_8 = parse_pool("H100:8")
(H100,) = parse_pool("H100:1")


@pytest.fixture(scope="module")
def light():
    return spec.loads(LIGHT, "light.yaml").models


@pytest.fixture(scope="module")
def heavy():
    return spec.loads(HEAVY, "heavy.yaml").models


@pytest.fixture(scope="module")
def light_plans(light):
    return {m: place(light, H100_8, m, time_limit_s=15) for m in METHODS}


@pytest.fixture(scope="module")
def heavy_plans(heavy):
    return {m: place(heavy, H100_8, m, time_limit_s=15)
            for m in ("one-per-gpu", "mem-packing", "heuristic")}


def _served(plan):
    out = {}
    for g in plan.gpus:
        for r in g.replicas:
            out[r.name] = out.get(r.name, 0.0) + r.rate
    return out


def _refit(plan):
    """Re-add every GPU's replicas to a fresh GpuState: the fit rule must accept each."""
    for g in plan.gpus:
        fresh = GpuState(g.type, g.knobs)
        for r in g.replicas:
            why = fresh.check(r)
            assert why is None, f"{plan.solver}: {r.name} refused on re-check: {why}"
            fresh.add(r)


# ---------------------------------------------------------------- spec and pool

def _spec_error(text):
    with pytest.raises(SpecError) as e:
        spec.loads(text, "m.yaml")
    assert isinstance(e.value, ValueError)
    return str(e.value)


_HEAD = "pool: H100:2\nmodels:\n  - {name: ok, model: resnet18, rate: 10, slo_ms: 10}\n"


@pytest.mark.parametrize("line, needle", [
    ("  - {name: svc, model: resnet999, rate: 10, slo_ms: 10}", "unknown zoo model"),
    ("  - {name: svc, model: resnet50, rate: -5, slo_ms: 10}", "'rate'"),
    ("  - {name: svc, model: resnet50, rate: 0, slo_ms: 10}", "'rate'"),
    ("  - {name: svc, model: resnet50, rate: true, slo_ms: 10}", "'rate'"),
    ("  - {name: svc, model: resnet50, rate: 10, slo_ms: -1}", "'slo_ms'"),
    ("  - {name: svc, model: resnet50, rate: 10, slo_ms: fast}", "'slo_ms'"),
    ("  - {name: svc, model: resnet50, rate: 10, slo_ms: 10, batches: [3]}", "'batches'"),
    ("  - {name: svc, model: resnet50, rate: 10, slo_ms: 10, batches: []}", "'batches'"),
    ("  - {name: svc, model: resnet50, rate: 10, slo_ms: 10, batches: 8}", "'batches'"),
    ("  - {name: svc, model: resnet50, rate: 10, slo_ms: 10, batches: [true]}", "'batches'"),
    ("  - {name: svc, model: resnet50, rate: 10, slo_ms: 10, gpu: H100}", "unknown keys"),
])
def test_model_mistakes_name_file_line_and_model(line, needle):
    msg = _spec_error(_HEAD + line + "\n")
    assert msg.startswith("m.yaml:4:"), msg
    assert "'svc'" in msg and needle in msg


def test_block_style_mistake_points_at_the_models_line():
    text = ("models:\n  - name: fine\n    model: resnet18\n    rate: 10\n    slo_ms: 10\n"
            "  - name: broken\n    model: nosuchnet\n    rate: 10\n    slo_ms: 10\n")
    msg = _spec_error(text)
    assert msg.startswith("m.yaml:6:") and "'broken'" in msg and "nosuchnet" in msg


def test_unnamed_model_is_labelled_by_its_zoo_model():
    msg = _spec_error(_HEAD + "  - {model: gpt2, rate: -1, slo_ms: 10}\n")
    assert msg.startswith("m.yaml:4:") and "'gpt2'" in msg


def test_duplicate_name_names_both_lines():
    msg = _spec_error(_HEAD + "  - {name: ok, model: gpt2, rate: 10, slo_ms: 10}\n")
    assert msg.startswith("m.yaml:4:") and "'ok'" in msg and "line 3" in msg
    # the default name is the zoo model's: two unnamed resnet18s collide too
    msg = _spec_error("models:\n  - {model: resnet18, rate: 1, slo_ms: 9}\n"
                      "  - {model: resnet18, rate: 2, slo_ms: 9}\n")
    assert msg.startswith("m.yaml:3:") and "'resnet18'" in msg


@pytest.mark.parametrize("text, line", [
    (("models:\n  - {name: a, model: resnet18, rate: 5, slo_ms: 5}\n"
      "  - {name: b, model: resnet18, rate: 5 slo_ms: 5}\n"), 3),
    ("models:\n  - name: a\n    model: resnet18\n    rate: [1\n", 5),
    (("pool: H100:1\nmodels:\n  - {name: a, model: resnet18, rate: 5, slo_ms: 5}\n"
      "   bad: indent: here\n"), 4),
])
def test_malformed_yaml_gives_line(text, line):
    msg = _spec_error(text)
    assert msg.startswith(f"m.yaml:{line}: malformed YAML"), msg


@pytest.mark.parametrize("text, needle", [
    ("", "non-empty 'models:'"),
    ("models: []\n", "non-empty 'models:'"),
    ("- {model: resnet18}\n", "non-empty 'models:'"),
    ("models:\n  - resnet18\n", "models[0] must be a mapping"),
    ("pool: 8\nmodels:\n  - {model: resnet18, rate: 1, slo_ms: 9}\n", "'pool' must be a string"),
    ("models:\n  - {model: resnet18, rate: 1, slo_ms: 9}\nextra: 1\n", "unknown top-level"),
])
def test_document_shape_mistakes(text, needle):
    assert needle in _spec_error(text)


def test_good_spec_parses_with_defaults_and_lines():
    w = spec.loads(_HEAD + "  - {model: gpt2, rate: 7.5, slo_ms: 30, batches: [8, 1, 8]}\n",
                   "m.yaml")
    assert w.pool == "H100:2" and w.source == "m.yaml"
    ok, g = w.models
    assert (ok.name, ok.model, ok.rate, ok.slo_ms, ok.line) == ("ok", "resnet18", 10.0, 10.0, 3)
    assert ok.batches == (1, 2, 4, 8, 16, 32)
    assert (g.name, g.rate, g.batches, g.line) == ("gpt2", 7.5, (1, 8), 4)


def test_load_missing_file_is_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        spec.load(str(tmp_path / "nope.yaml"))


def test_example_file_loads():
    w = spec.load(EXAMPLE)
    assert w.pool == "H100:8" and len(w.models) == 12
    assert len({m.name for m in w.models}) == 12
    assert next(m for m in w.models if m.name == "moderation-bert").batches == (1, 2, 4, 8)


@pytest.mark.parametrize("text, want", [
    ("H100:8", [("H100", 8, DEFAULT_PRICE["H100"])]),
    ("h100:2", [("H100", 2, DEFAULT_PRICE["H100"])]),
    ("T4:4@0.5", [("T4", 4, 0.5)]),
    ("T4:16@0.53, H100:2", [("T4", 16, 0.53), ("H100", 2, DEFAULT_PRICE["H100"])]),
    ("A100:1@0,", [("A100", 1, 0.0)]),
])
def test_parse_pool_good(text, want):
    got = parse_pool(text)
    assert [(t.name, t.count, t.price_per_hour) for t in got] == want


def test_pool_memory():
    t4, h = parse_pool("T4:1,H100:1")
    assert t4.memory_mb == 16 * 1024 and h.memory_mb == 80 * 1024


@pytest.mark.parametrize("text, needle", [
    ("X999:2", "unknown GPU type"),
    ("H100", "TYPE:COUNT"),
    ("H100:abc", "TYPE:COUNT"),
    ("H100:2@cheap", "TYPE:COUNT"),
    ("H100:0", "COUNT must be"),
    ("H100:-3", "COUNT must be"),
    ("H100:200000", "COUNT must be"),
    ("H100:2@-1", "PRICE"),
    ("H100:2,T4:1,H100:3", "listed twice"),
    ("", "empty GPU pool"),
    (" , ", "empty GPU pool"),
])
def test_parse_pool_bad(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_pool(text)


# ---------------------------------------------------------------- estimate

def test_slo_below_solo_latency_names_the_model():
    solo = model_profile("resnet50", 1, "H100").latency_ms
    w = spec.loads(_HEAD + f"  - {{name: tight, model: resnet50, rate: 10, slo_ms: {solo / 2:.3f}}}\n")
    with pytest.raises(SpecError) as e:
        estimate(w.models, H100_8)
    msg = str(e.value)
    assert "'tight'" in msg and "line 4" in msg and "solo latency" in msg
    # the solvers refuse it the same way
    for method in ("heuristic", "one-per-gpu"):
        with pytest.raises(SpecError, match="'tight'"):
            place(w.models, H100_8, method)


def test_slo_without_queueing_headroom_is_impossible_too():
    # above the solo latency, but below queue_factor * latency * the smallest budget
    solo = model_profile("bert-base", 1, "H100").latency_ms
    slo = solo * DEFAULT.queue_factor * min(DEFAULT.alphas) * 0.9
    assert slo > solo
    ms = spec.ModelSpec("b", "bert-base", 10.0, slo, line=7)
    with pytest.raises(SpecError, match="'b'"):
        estimate((ms,), H100_8)


@pytest.mark.parametrize("pool", ["H100:1", "T4:1", "A100:1,V100:1"])
def test_configs_respect_their_slo_and_rate_window(pool):
    w = spec.loads(LIGHT)
    table = estimate(w.models, parse_pool(pool))
    assert len(table) == len(w.models)
    types = {t.name for t in parse_pool(pool)}
    for i, (ms, cfgs) in enumerate(zip(w.models, table)):
        assert cfgs, ms.name
        for k in cfgs:
            assert k.model == i and k.gpu in types and k.batch in ms.batches
            assert k.alpha in DEFAULT.alphas
            assert k.timeout_ms >= 0
            assert k.timeout_ms + DEFAULT.queue_factor * k.latency_ms * k.alpha <= ms.slo_ms + 1e-9
            assert 0 <= k.rate_min <= k.rate_max
            assert k.footprint_mb > DEFAULT.context_mb
            assert k.footprint_mb <= GpuType(k.gpu, 1, 0).memory_mb * DEFAULT.mem_frac


def test_larger_batch_costs_less_gpu_time_per_request():
    ms = spec.ModelSpec("m", "resnet50", 100.0, 200.0)
    cfgs = configs_for(0, ms, H100)
    for a in DEFAULT.alphas:
        by_batch = sorted((k.batch, k.tau) for k in cfgs if k.alpha == a)
        assert [b for b, _ in by_batch] == [1, 2, 4, 8, 16, 32]
        taus = [t for _, t in by_batch]
        assert all(x > y for x, y in itertools.pairwise(taus)), taus


def test_bigger_slowdown_budget_leaves_less_timeout_and_rate():
    ms = spec.ModelSpec("m", "gpt2", 100.0, 40.0, (8,))
    cfgs = sorted(configs_for(0, ms, H100), key=lambda k: k.alpha)
    assert [k.alpha for k in cfgs] == sorted(DEFAULT.alphas)
    for lo, hi in itertools.pairwise(cfgs):
        assert hi.timeout_ms < lo.timeout_ms and hi.rate_max < lo.rate_max


def test_allowed_batches_are_respected():
    ms = spec.ModelSpec("m", "resnet18", 100.0, 20.0, (2, 16))
    assert {k.batch for k in configs_for(0, ms, H100)} == {2, 16}


# ---------------------------------------------------------------- the fit rule

def _cfg(model, batch, alpha, slo=40.0):
    ms = spec.ModelSpec(model, model, 100.0, slo, (batch,))
    (k,) = [k for k in configs_for(0, ms, H100) if k.alpha == alpha]
    return k


def _rep(name, model, batch, alpha, busy):
    """A replica of ``model`` kept ``busy`` (solo GPU-seconds per second) by its rate."""
    k = _cfg(model, batch, alpha)
    r = Replica(name, k, busy / k.tau)
    assert k.rate_min <= r.rate <= k.rate_max
    return r


def _NEIGHBOURS():
    """Three busy replicas with a generous (2x) budget: within every cap together."""
    return [_rep("n-gpt", "gpt2", 8, 2.0, 0.22), _rep("n-dn", "densenet121", 8, 2.0, 0.22),
            _rep("n-r50", "resnet50", 8, 2.0, 0.18)]


def test_replica_that_fits_alone_is_refused_among_busy_neighbours():
    new = _rep("victim-bert", "bert-base", 8, 1.25, 0.2)
    assert GpuState(H100).check(new) is None
    g = GpuState(H100)
    for r in _NEIGHBOURS():
        assert g.check(r) is None
        g.add(r)
    why = g.check(new)
    assert why is not None and "victim-bert" in why and "slowed" in why
    # the caps are not what refused it: the same load from a 2x budget replica is accepted
    relaxed = _rep("victim-bert", "bert-base", 8, 2.0, 0.2)
    assert g.check(relaxed) is None


def test_replica_is_refused_when_it_would_slow_a_neighbour_too_much():
    g = GpuState(H100)
    tenant = _rep("tenant", "bert-base", 8, 1.5, 0.1)
    g.add(tenant)
    first = _rep("n-sq", "squeezenet1.1", 8, 2.0, 0.1)
    assert g.check(first) is None
    g.add(first)
    assert g.alpha(tenant) <= 1.5
    last = _rep("n-gpt", "gpt2", 8, 2.0, 0.25)
    assert GpuState(H100).check(last) is None
    why = g.check(last)
    assert why is not None and "tenant" in why and "already here" in why and "slowed" in why


def test_alpha_grows_with_neighbours():
    g = GpuState(H100)
    me = _rep("me", "resnet50", 8, 2.0, 0.2)
    g.add(me)
    seen = [g.alpha(me)]
    assert seen[0] == pytest.approx(1.0)
    for name, model in (("x", "gpt2"), ("y", "densenet121"), ("z", "bert-base")):
        g.add(_rep(name, model, 8, 2.0, 0.15))
        seen.append(g.alpha(me))
    assert all(b > a for a, b in itertools.pairwise(seen)), seen
    # and shrinks back when a neighbour leaves
    assert g.remove("z") == 1
    assert g.alpha(me) == pytest.approx(seen[2])
    assert [r.name for r in g.replicas] == ["me", "x", "y"]


def test_memory_cap_refusal():
    big = dataclasses.replace(_cfg("resnet18", 1, 2.0), footprint_mb=40_000.0)
    g = GpuState(H100)
    assert g.check(Replica("one", big, 1.0)) is None
    g.add(Replica("one", big, 1.0))
    why = g.check(Replica("two", big, 1.0))
    assert why is not None and why.startswith("memory")
    # with a smaller share of memory allowed, not even one
    small = GpuState(H100, dataclasses.replace(DEFAULT, mem_frac=0.3))
    assert small.check(Replica("one", big, 1.0)).startswith("memory")


def test_several_replicas_of_a_model_share_a_gpu_and_matching_type():
    g = GpuState(H100)
    r = _rep("m", "resnet18", 8, 2.0, 0.05)
    g.add(r)
    twin = _rep("m", "resnet18", 8, 2.0, 0.05)
    assert g.check(twin) is None        # a second replica of the same model: its own stream
    g.add(twin)
    assert g.alpha(r) > 1.0 and g.alpha(twin) > 1.0   # and they slow each other
    g.discard(twin)                     # by identity: the first replica stays
    assert g.replicas == [r] and g.alpha(r) == pytest.approx(1.0)
    g.add(twin)
    assert g.remove("m") == 2 and not g.replicas and g.U == 0.0
    t4 = GpuState(GpuType("T4", 1, 0.5))
    assert "configured for H100" in t4.check(r)


def test_budget_one_means_alone():
    """A replica with slowdown budget 1.0 shares its GPU with nothing, not even a twin."""
    g = GpuState(H100)
    strict = _rep("strict", "resnet18", 1, 1.0, 0.05)
    g.add(strict)
    for other in (_rep("x", "squeezenet1.1", 1, 2.0, 0.001), _rep("strict", "resnet18", 1, 1.0, 0.05)):
        why = g.check(other)
        assert why is not None and "slowed" in why and "1.00x" in why, why


def test_tail_and_margin_enter_the_prediction():
    """The predicted slowdown is the mean excess of all neighbours plus one neighbour's p99
    excess with the out-of-sample margin for the share of time that neighbour is busy (the
    margin was measured beside a neighbour busy all the time): above the mean model's."""
    from gpusched.placement.estimate import interference_model
    from gpusched.placement.fit import beta, beta99, tail_extra
    im = interference_model("H100")
    assert im.tail and 0.0 < im.margin < 1.0
    me, nb = _rep("me", "resnet18", 1, 2.0, 0.05), _rep("nb", "gpt2", 32, 2.0, 0.3)
    assert me.cfg.TM == pytest.approx(im.margin) and nb.cfg.TM == pytest.approx(im.margin)
    g = GpuState(H100)
    g.add(me)
    g.add(nb)
    mean_only = 1.0 + nb.u * beta(me, nb)
    # one neighbour: its full p99 excess, the margin for its busy share
    assert g.alpha(me) == pytest.approx(1.0 + beta99(me, nb) - (1.0 - nb.u) * im.margin)
    assert g.alpha(me) >= mean_only + nb.u * im.margin
    assert g.alpha(nb) == pytest.approx(1.0 + beta99(nb, me) - (1.0 - me.u) * im.margin)
    # a neighbour busy all the time (or more): the margin in full, as measured
    busy = Replica("busy", nb.cfg, 1.5 / nb.cfg.tau)
    assert tail_extra(me, busy) == pytest.approx(max(0.0, beta99(me, busy) - 1.5 * beta(me, busy)))
    # gpt2's 0.7 ms LM-head kernel blocks a 0.4 ms model: the blocking term is in the tail
    assert me.cfg.TE > 0 and nb.cfg.longest_ms > 0.5


def test_check_agrees_with_what_add_then_predicts():
    """``check`` writes the tail rule out for speed; it must refuse exactly the replicas whose
    addition would put some replica of the GPU above its budget by ``add`` and ``alpha``."""
    pool = [_rep("a", "resnet18", 1, 1.1, 0.05), _rep("b", "googlenet", 1, 1.1, 0.05),
            _rep("c", "mobilenetv2", 8, 1.25, 0.15), _rep("d", "gpt2", 8, 1.5, 0.2),
            _rep("e", "resnet50", 8, 2.0, 0.25), _rep("f", "densenet121", 8, 1.25, 0.1)]
    seen = {True: 0, False: 0}
    for n in range(len(pool)):
        for base in itertools.combinations(pool, n):
            g = GpuState(H100)
            for r in base:
                g.add(r)
            for new in pool:
                if new in base:
                    continue
                after = GpuState(H100)   # built afresh: ``worst`` is keyed by identity
                for r in (*base, new):
                    after.add(r)
                slowdowns_ok = all(after.alpha(x) <= x.cfg.alpha + 1e-9 for x in after.replicas)
                why = g.check(new)
                if why is None or "slowed" in why:   # the caps are checked apart, above
                    assert (why is None) == slowdowns_ok, (base, new.name, why)
                    seen[slowdowns_ok] += 1
    assert seen[True] > 5 and seen[False] > 5     # both answers were exercised


def test_lightly_loaded_tight_budget_replicas_share_and_replay_within_prediction():
    """Two budget-1.1 replicas of lightly loaded models (5% busy each) share one GPU: the margin
    counts for the neighbour's busy share, not in full (which gave 1.3x, so each ran alone), and
    the replayed p99 latency of each stays within its predicted p99 latency."""
    from gpusched.placement.fit import beta99
    from gpusched.placement.plan import Plan, predicted_latency_ms
    models = []
    for i, z in enumerate(("mobilenetv2", "googlenet")):
        solo = model_profile(z, 1, "H100").latency_ms
        # the SLO a batch-1 replica with budget 1.1 needs: queue_factor * solo * 1.1
        models.append(spec.ModelSpec(f"{z}-{i}", z, round(0.05 / (solo / 1e3), 1),
                                     round(2 * solo * 1.1 * 1.001, 4), (1,), line=i + 1))
    models = tuple(models)
    g = GpuState(H100)
    reps = []
    for i, ms in enumerate(models):
        (k,) = [k for k in configs_for(i, ms, H100) if k.alpha == 1.1]
        r = Replica(ms.name, k, ms.rate)
        assert g.check(r) is None, g.check(r)
        g.add(r)
        reps.append(r)
    a, b = reps
    assert 1.0 + beta99(a, b) > 1.1 and 1.0 + beta99(b, a) > 1.1   # the margin in full: alone
    assert all(1.0 < g.alpha(r) <= 1.1 for r in reps)
    res = replay(Plan("test", [g]), models, horizon_s=1.0, workers=1)
    for r, m in zip(reps, res["models"]):
        assert m["requests"] > 50 and m["slo_attainment"] == 1.0, m
        assert m["p99_ms"] <= predicted_latency_ms(g, r), (m, predicted_latency_ms(g, r))


def test_busy_time_cap():
    g = GpuState(H100, dataclasses.replace(DEFAULT, u_max=0.5))
    g.add(_rep("a", "squeezenet1.1", 8, 2.0, 0.3))
    why = g.check(_rep("b", "squeezenet1.1", 8, 2.0, 0.3))
    assert why is not None and why.startswith("busy time")


# ---------------------------------------------------------------- solvers

def test_unknown_method():
    with pytest.raises(ValueError, match="unknown placement method"):
        place((), H100_8, "magic")


@pytest.mark.parametrize("method", METHODS)
def test_every_plan_serves_every_rate(method, light, light_plans):
    plan = light_plans[method]
    assert plan.solver == method
    served = _served(plan)
    assert set(served) == {m.name for m in light}
    for m in light:
        assert served[m.name] >= m.rate - 1e-6, (method, m.name)
    for g in plan.gpus:
        assert g.replicas and g.type.name == "H100"
        assert len({id(r) for r in g.replicas}) == len(g.replicas)  # several of a model: each its own
        assert g.F <= g.type.memory_mb * DEFAULT.mem_frac
        for r in g.replicas:
            assert r.cfg.rate_min - 1e-6 <= r.rate <= r.cfg.rate_max + 1e-6
    assert plan.gpus_used == len(plan.gpus) <= 8


@pytest.mark.parametrize("method", ["heuristic", "cpsat", "gpulet"])
def test_interference_aware_plans_pass_the_fit_rule(method, light_plans, heavy):
    _refit(light_plans[method])
    if method != "cpsat":
        _refit(place(heavy, H100_8, method))


def test_heavy_cpsat_plan_passes_the_fit_rule(heavy, heavy_plans):
    plan = place(heavy, H100_8, "cpsat", time_limit_s=15, start=heavy_plans["heuristic"])
    _refit(plan)
    served = _served(plan)
    assert all(served[m.name] >= m.rate - 1e-6 for m in heavy)  # a rate split over replicas
    assert plan.gpus_used <= heavy_plans["heuristic"].gpus_used


def test_gpu_counts_order(light_plans, heavy_plans):
    for plans in (light_plans, heavy_plans):
        one = plans["one-per-gpu"]
        assert one.gpus_used == sum(len(g.replicas) for g in one.gpus)
        assert all(len(g.replicas) == 1 for g in one.gpus)
        assert all(g.alpha(g.replicas[0]) == 1.0 for g in one.gpus)
        assert plans["mem-packing"].gpus_used <= plans["heuristic"].gpus_used
        assert plans["heuristic"].gpus_used <= one.gpus_used
    # six light models share a GPU; one-per-gpu needs one each
    assert light_plans["one-per-gpu"].gpus_used >= 6
    assert light_plans["heuristic"].gpus_used < light_plans["one-per-gpu"].gpus_used
    # the heavy set does not fit one GPU by the interference model, but memory packing
    # (blind to it) puts everything on one
    assert heavy_plans["heuristic"].gpus_used >= 2
    assert heavy_plans["mem-packing"].gpus_used == 1


def test_cpsat_is_optimal_and_no_worse_than_the_heuristic(light_plans):
    cp, h = light_plans["cpsat"], light_plans["heuristic"]
    assert cp.optimal is True
    assert cp.gpus_used <= h.gpus_used
    assert cp.cost_per_hour <= h.cost_per_hour + 1e-9


def test_baseline_shapes(light_plans):
    for g in light_plans["gpulet"].gpus:
        assert len(g.replicas) <= 2
    gs = light_plans["gslice"]
    assert "shares" in gs.notes
    assert light_plans["shepherd"].notes["replay_policy"] == "clockwork"
    # the baselines that ignore interference run every replica at budget 1 (alone)
    for m in ("one-per-gpu", "mem-packing", "gslice"):
        assert {r.cfg.alpha for g in light_plans[m].gpus for r in g.replicas} == {1.0}


@pytest.mark.parametrize("method, pool", [
    ("heuristic", "H100:1"), ("cpsat", "H100:1"), ("one-per-gpu", "H100:2"),
    ("gpulet", "H100:1"),
])
def test_pool_too_small_is_a_spec_error_naming_the_pool(method, pool, light, heavy):
    models = light if method == "one-per-gpu" else heavy
    with pytest.raises(SpecError) as e:
        place(models, parse_pool(pool), method, time_limit_s=5)
    msg = str(e.value)
    assert f"pool ({pool})" in msg and "cannot serve" in msg


@pytest.mark.parametrize("method", ["heuristic", "cpsat", "one-per-gpu"])
def test_report_schema_and_predicted_latency(method, light, light_plans):
    plan = light_plans[method]
    out = json.loads(json.dumps(report(plan, light)))
    assert {"gpus_used", "cost_per_hour", "assignments", "solver", "solve_time_s"} <= set(out)
    assert out["solver"] == method and out["gpus_used"] == plan.gpus_used
    assert out["cost_per_hour"] == pytest.approx(out["gpus_used"] * DEFAULT_PRICE["H100"], abs=1e-3)
    assert isinstance(out["solve_time_s"], float) and out["solve_time_s"] > 0
    assert [a["gpu"] for a in out["assignments"]] == list(range(out["gpus_used"]))
    slo = {m.name: m.slo_ms for m in light}
    rate = {}
    for a in out["assignments"]:
        assert a["type"] == "H100" and a["replicas"]
        for r in a["replicas"]:
            assert {"model", "batch", "predicted_latency_ms"} <= set(r)
            assert r["batch"] in (1, 2, 4, 8, 16, 32)
            assert 0 < r["predicted_latency_ms"] <= slo[r["model"]]
            rate[r["model"]] = rate.get(r["model"], 0) + r["rate"]
    assert set(rate) == set(slo)
    if method == "cpsat":
        assert out["optimal"] is True
    else:
        assert "optimal" not in out


def test_price_override_sets_cost(light):
    plan = place(light, parse_pool("H100:8@1.5"), "heuristic")
    assert plan.cost_per_hour == pytest.approx(1.5 * plan.gpus_used)


# ---------------------------------------------------------------- replay

def test_batches_close_at_size_or_timeout():
    times = [0.0, 0.001, 0.002, 0.003, 0.010, 0.050]
    got = _batches(times, 3, 0.005)
    assert got == [(0.002, [0.0, 0.001, 0.002]),     # full: leaves with its 3rd request
                   (pytest.approx(0.008), [0.003]),  # timed out: 5 ms after its first
                   (pytest.approx(0.015), [0.010]),
                   (pytest.approx(0.055), [0.050])]
    # batch size 1 never waits
    assert _batches(times, 1, 0.005) == [(t, [t]) for t in times]
    assert _batches([], 4, 0.01) == []


def test_batches_invariants():
    import random
    rng = random.Random(3)
    t, times = 0.0, []
    for _ in range(500):
        t += rng.expovariate(800.0)
        times.append(t)
    for b, to in ((4, 0.002), (8, 0.004), (32, 0.001)):
        got = _batches(times, b, to)
        assert [x for _, ms in got for x in ms] == times
        for at, ms in got:
            assert 1 <= len(ms) <= b
            assert ms[-1] <= at <= ms[0] + to + 1e-12
            if len(ms) < b:
                assert at == pytest.approx(ms[0] + to)


def test_spread_follows_weights():
    times = [i / 100 for i in range(400)]
    parts = _spread(times, [1.0, 3.0])
    assert [len(p) for p in parts] == [100, 300]
    assert sorted(parts[0] + parts[1]) == times


def test_heuristic_plan_of_light_workload_meets_slos(light, light_plans):
    res = replay(light_plans["heuristic"], light, horizon_s=0.4, workers=1)
    assert [m["model"] for m in res["models"]] == [m.name for m in light]
    for m in res["models"]:
        assert m["requests"] > 0
        assert m["slo_attainment"] >= 0.99, m
        assert m["p99_ms"] <= m["slo_ms"]
    assert res["min_slo_attainment"] >= 0.99


def test_overloaded_plan_misses_slos_where_the_heuristic_meets_them(heavy, heavy_plans):
    bad = replay(heavy_plans["mem-packing"], heavy, horizon_s=0.2, workers=1)
    assert bad["min_slo_attainment"] < 0.9, bad
    assert min(m["slo_attainment"] for m in bad["models"]) == bad["min_slo_attainment"]
    good = replay(heavy_plans["heuristic"], heavy, horizon_s=0.2, workers=1)
    assert good["min_slo_attainment"] >= 0.99, good
    # same arrivals in both
    assert [m["requests"] for m in bad["models"]] == [m["requests"] for m in good["models"]]


# ---------------------------------------------------------------- admission

LIGHT_SET = [("r18", "resnet18", 8, 1500.0, 10.0), ("bert", "bert-base", 8, 800.0, 24.0)]


def test_admission_admits_a_light_set_within_slo():
    adm = Admission("H100")
    got = adm.admit(LIGHT_SET)
    slo = {n: s for n, _, _, _, s in LIGHT_SET}
    assert [g["name"] for g in got] == ["r18", "bert"]
    for g in got:
        assert 0 < g["predicted_latency_ms"] <= slo[g["name"]]
        assert g["predicted_slowdown"] > 1.0   # they do interfere, a little
    assert [r.name for r in adm.state.replicas] == ["r18", "bert"]


def test_admission_refusal_is_all_or_nothing():
    adm = Admission("H100")
    adm.admit(LIGHT_SET)
    before = ([r.name for r in adm.state.replicas], adm.state.U, adm.state.C, adm.state.M)
    # gpt-b at 1,200 req/s: with the margin counted for each neighbour's busy share, a third
    # gpt2 at 800 req/s fits too
    over = [("gpt", "gpt2", 8, 800.0, 20.0), ("dn", "densenet121", 8, 800.0, 40.0),
            ("gpt-b", "gpt2", 8, 1200.0, 20.0)]
    with pytest.raises(AdmissionError) as e:
        adm.admit(over)
    msg = str(e.value)
    assert "gpt-b" in msg and "would break an SLO" in msg
    assert ([r.name for r in adm.state.replicas], adm.state.U, adm.state.C, adm.state.M) == before
    # each of the refused set fits on its own, so it was the co-location that was refused
    for one in over:
        assert Admission("H100").admit([one])[0]["predicted_slowdown"] == 1.0
    # the first two of them are fine together with what is there
    got = adm.admit(over[:2])
    assert [g["name"] for g in got] == ["r18", "bert", "gpt", "dn"]


def test_admission_replace_resets():
    adm = Admission("H100")
    adm.admit(LIGHT_SET)
    got = adm.admit([("gpt", "gpt2", 8, 1400.0, 12.0)], replace=True)
    assert [g["name"] for g in got] == ["gpt"]
    assert got[0]["predicted_slowdown"] == 1.0
    assert [r.name for r in adm.state.replicas] == ["gpt"]
    # replace also allows re-sending a name that was admitted before
    got = adm.admit([("gpt", "gpt2", 8, 1000.0, 20.0)], replace=True)
    assert len(adm.state.replicas) == 1 and adm.state.replicas[0].rate == 1000.0


def test_admission_refuses_duplicates():
    adm = Admission("H100")
    adm.admit(LIGHT_SET)
    with pytest.raises(AdmissionError, match="'r18' is already admitted"):
        adm.admit([("r18", "resnet18", 4, 100.0, 10.0)])
    with pytest.raises(AdmissionError, match="'x' is sent twice with different models"):
        Admission("H100").admit([("x", "resnet18", 1, 10.0, 10.0), ("x", "gpt2", 1, 10.0, 20.0)])
    assert [r.name for r in adm.state.replicas] == ["r18", "bert"]
    # the same name and model twice in one request: two replicas of it (a plan may put several
    # replicas of a model on one GPU)
    got = Admission("H100").admit([("x", "resnet18", 8, 1000.0, 20.0)] * 2)
    assert [g["name"] for g in got] == ["x", "x"]


@pytest.mark.parametrize("wanted, needle", [
    ([("fast", "resnet50", 1, 10.0, 0.5)], "cannot meet its SLO"),
    ([("big", "resnet18", 32, 5.0, 10.0)], "does not fill"),
    ([("flood", "resnet18", 1, 1e6, 10.0)], "cannot meet its SLO"),
    ([("nope", "nosuchnet", 1, 10.0, 10.0)], "'nope'"),
])
def test_admission_refuses_impossible_replicas(wanted, needle):
    with pytest.raises(AdmissionError) as e:
        Admission("H100").admit(wanted)
    assert needle in str(e.value) and wanted[0][0] in str(e.value)


def test_withdraw_frees_room():
    adm = Admission("H100")
    adm.admit(LIGHT_SET + [("gpt", "gpt2", 8, 800.0, 20.0), ("dn", "densenet121", 8, 800.0, 40.0)])
    extra = [("gpt-b", "gpt2", 8, 1200.0, 20.0)]
    with pytest.raises(AdmissionError):
        adm.admit(extra)
    assert adm.withdraw("dn") == 1 and adm.withdraw("dn") == 0
    assert adm.withdraw("gpt") == 1
    assert [g["name"] for g in adm.admit(extra)] == ["r18", "bert", "gpt-b"]


# ---------------------------------------------------------------- gpusched place

def _place_json(capsys, *args):
    rc = main(["place", *args, "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads(cap.out)


def _check_schema(out, models):
    assert {"gpus_used", "cost_per_hour", "assignments", "solver", "solve_time_s"} <= set(out)
    assert isinstance(out["gpus_used"], int) and out["gpus_used"] == len(out["assignments"])
    assert isinstance(out["cost_per_hour"], float)
    assert isinstance(out["solve_time_s"], float)
    slo = {m.name: m for m in models}
    served = {}
    for a in out["assignments"]:
        assert isinstance(a["gpu"], int) and a["type"] in ("T4", "V100", "A100", "H100")
        for r in a["replicas"]:
            assert isinstance(r["batch"], int)
            assert r["predicted_latency_ms"] <= slo[r["model"]].slo_ms
            served[r["model"]] = served.get(r["model"], 0.0) + r["rate"]
    assert set(served) == set(slo)
    for name, m in slo.items():
        assert served[name] >= m.rate - 1e-6


def test_cli_place_json(capsys):
    out = _place_json(capsys, EXAMPLE)
    models = spec.load(EXAMPLE).models
    _check_schema(out, models)
    assert out["solver"] == "heuristic"
    assert out["gpus_used"] < len(models)   # co-location beats one model per GPU
    assert out["cost_per_hour"] == pytest.approx(out["gpus_used"] * DEFAULT_PRICE["H100"])


def test_cli_place_plot_writes_png(capsys, tmp_path):
    png = tmp_path / "p.png"
    out = _place_json(capsys, EXAMPLE, "--plot", str(png))
    assert out["plot"] == str(png)
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_cli_place_table_output(capsys, tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(LIGHT)
    assert main(["place", str(f)]) == 0
    out = capsys.readouterr().out
    assert "heuristic" in out and "a-r18" in out and "f-bert" in out


def test_cli_place_cpsat_and_pool_override(capsys, tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(LIGHT)
    out = _place_json(capsys, str(f), "--solver", "cpsat", "--time-limit", "15",
                      "--pool", "H100:3@2")
    _check_schema(out, spec.loads(LIGHT).models)
    assert out["solver"] == "cpsat" and out["optimal"] is True
    assert out["cost_per_hour"] == pytest.approx(2.0 * out["gpus_used"])


def test_cli_place_validate(capsys, tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("pool: H100:2\nmodels:\n  - {name: a, model: resnet18, rate: 100, slo_ms: 10}\n"
                 "  - {name: b, model: gpt2, rate: 100, slo_ms: 20}\n")
    out = _place_json(capsys, str(f), "--validate", "--horizon", "0.3")
    v = out["validation"]
    assert v["horizon_s"] == 0.3 and [m["model"] for m in v["models"]] == ["a", "b"]
    assert v["min_slo_attainment"] >= 0.99
    assert all(m["requests"] > 0 for m in v["models"])


def _cli_error(capsys, *args):
    rc = main(["place", *args])
    cap = capsys.readouterr()
    assert rc == 2, (cap.out, cap.err)
    assert "Traceback" not in cap.err and cap.err.startswith("gpusched place: error:")
    assert cap.out == ""
    return cap.err


def test_cli_bad_yaml_exit_2_with_line(capsys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(_HEAD + "  - {name: svc, model: resnet999, rate: 10, slo_ms: 10}\n")
    err = _cli_error(capsys, str(f))
    assert f"{f}:4:" in err and "'svc'" in err
    f.write_text("models:\n  - {name: a, model: resnet18, rate: 5, slo_ms: 5\n  - {x: 1}\n")
    err = _cli_error(capsys, str(f), "--json")
    assert f"{f}:3: malformed YAML" in err


def test_cli_missing_pool_exit_2(capsys, tmp_path):
    f = tmp_path / "nopool.yaml"
    f.write_text("models:\n  - {name: a, model: resnet18, rate: 5, slo_ms: 5}\n")
    assert "no GPU pool" in _cli_error(capsys, str(f))
    # --pool supplies it
    out = _place_json(capsys, str(f), "--pool", "H100:1")
    assert out["gpus_used"] == 1


@pytest.mark.parametrize("args, needle", [
    (["--pool", "Z9:1"], "unknown GPU type"),
    (["--pool", "H100:0"], "COUNT must be"),
    (["--pool", "H100:1"], "pool (H100:1)"),
    (["--pool", "H100:8", "--time-limit", "0"], "--time-limit"),
    (["--pool", "H100:8", "--horizon", "-1", "--validate"], "--horizon"),
])
def test_cli_bad_arguments_exit_2(capsys, tmp_path, args, needle):
    f = tmp_path / "heavy.yaml"
    f.write_text(HEAVY)
    assert needle in _cli_error(capsys, str(f), *args)


def test_cli_impossible_slo_and_missing_file(capsys, tmp_path):
    f = tmp_path / "slo.yaml"
    f.write_text(_HEAD + "  - {name: hurry, model: densenet121, rate: 10, slo_ms: 1}\n")
    err = _cli_error(capsys, str(f))
    assert "'hurry'" in err and f"{f}:4: model 'hurry'" in err  # the file, like every mistake
    assert "cannot read" in _cli_error(capsys, str(tmp_path / "absent.yaml"))


def test_cli_place_help_documents_the_yaml(capsys):
    with pytest.raises(SystemExit) as e:
        main(["place", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for needle in ("models.yaml", "pool:", "models:", "model:", "rate:", "slo_ms:", "batches:",
                   "--pool", "--solver", "--validate", "--plot", "--json"):
        assert needle in out, needle


def test_solver_choices_include_every_method(capsys):
    with pytest.raises(SystemExit) as e:
        main(["place", EXAMPLE, "--solver", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err
    for m in METHODS:
        assert m in err
