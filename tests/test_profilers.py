"""Profiles, the profile store, and the interference model (issue 5, first part)."""
import json
import sqlite3
import subprocess
import sys

import pytest

from profilers.interference import colocated_latencies, evaluate, fit, run_pairs
from profilers.profile import profile
from profilers.store import ProfileStore


def test_roofline_and_simulated_profiles_agree_and_scale_with_batch():
    r1, s1 = profile("resnet50", 1, "roofline:T4"), profile("resnet50", 1, "sim:T4")
    assert s1.latency_ms == pytest.approx(r1.latency_ms, rel=0.1)  # same kernels, alone
    assert s1.compute_demand == pytest.approx(r1.compute_demand, abs=0.1)
    r8 = profile("resnet50", 8, "roofline:T4")
    assert r8.flops == pytest.approx(8 * r1.flops, rel=0.02)
    assert r8.latency_ms > r1.latency_ms
    assert r8.occupancy > r1.occupancy          # bigger grids fill more of the GPU
    for p in (r1, s1, r8):
        assert 0 < p.compute_demand <= 1 and 0 < p.memory_demand <= 1
        assert p.footprint_mb > 25 * 2 * 0.9    # ~25.6 M parameters in FP16


def test_torch_profile_measures_real_latency_on_cpu():
    p = profile("squeezenet1.1", 1, "torch:cpu")
    assert p.latency_ms > 0 and p.kernels > 10
    assert p.compute_demand is None             # needs hardware counters


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="unknown model"):
        profile("alexnet", 1, "sim:T4")
    with pytest.raises(ValueError, match="bad device"):
        profile("resnet18", 1, "gpu0")
    with pytest.raises(ValueError, match="unknown GPU"):
        profile("resnet18", 1, "sim:K80")


def test_store_round_trip_and_version_check(tmp_path):
    db = str(tmp_path / "p.sqlite")
    st = ProfileStore(db)
    p = profile("resnet18", 1, "roofline:A100")
    st.put(p)
    st.put_interference("sim:T4", {"weights": [1.0]})
    st.close()
    st = ProfileStore(db)
    assert st.get("resnet18", 1, "roofline:A100") == p
    assert st.get("resnet18", 2, "roofline:A100") is None
    assert st.get_interference("sim:T4") == {"weights": [1.0]}
    st.close()
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    with pytest.raises(ValueError, match="store version 99"):
        ProfileStore(db)


def test_colocation_slows_models_down():
    solo_a = profile("resnet50", 8, "sim:T4").latency_ms
    solo_b = profile("densenet121", 8, "sim:T4").latency_ms
    la, lb = colocated_latencies("resnet50", 8, "densenet121", 8, "T4", jobs=3)
    assert la * 1e3 > solo_a * 1.05 and lb * 1e3 > solo_b * 1.05


def test_interference_model_beats_assuming_none_on_held_out_pairs():
    res = run_pairs(["mobilenetv2", "resnet50", "bert-base", "squeezenet1.1"], [1, 8], "T4",
                    jobs=3, seed=1)
    assert res["held_out"]["samples"] > 0 and len(res["weights"]) == len(res["features"])
    assert res["held_out"]["mape"] < res["held_out_if_no_interference"]["mape"]
    assert res["held_out"]["mape"] < 0.2


def test_fit_recovers_a_known_linear_model():
    w_true = [1.0, 0.2, 0.5, 0.1, 0.7, 0.3, 0.9]
    import random
    rng = random.Random(0)
    samples = []
    for _ in range(60):
        c, cj, m, mj = (rng.random() for _ in range(4))
        x = [1.0, c, cj, m, mj, c * cj, m * mj]
        alpha = sum(a * b for a, b in zip(w_true, x))
        samples.append({"x": x, "solo_ms": 2.0, "measured_ms": 2.0 * alpha})
    w = fit(samples)
    assert w == pytest.approx(w_true, abs=1e-6)
    assert evaluate(w, samples)["mape"] < 1e-9


@pytest.mark.slow
def test_profile_cli_json_and_errors(tmp_path):
    db = str(tmp_path / "p.sqlite")
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "profile", "resnet18",
                        "--device", "roofline:V100", "--batch", "1,4", "--db", db, "--json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["batch"] for x in rows] == [1, 4]
    assert ProfileStore(db).get("resnet18", 4, "roofline:V100") is not None
    bad = subprocess.run([sys.executable, "-m", "gpusched.cli", "profile", "nope", "--db", db],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "unknown model" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cpu_pairs_measure_fit_and_store(tmp_path):
    """--pairs on the real device of these machines: torch on the CPU, two models at once."""
    import json
    import subprocess
    import sys

    from profilers.store import ProfileStore
    db = tmp_path / "p.sqlite"
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "profile", "--pairs", "--device",
                        "torch:cpu", "--batch", "1", "squeezenet1.1", "resnet18", "--json",
                        "--db", str(db)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["device"] == "torch:cpu" and res["pairs"] == 3   # (a,a), (a,b), (b,b)
    assert len(res["slowdowns"]) == 6 and all(s > 0 for s in res["slowdowns"])
    assert res["peak_gflops"] > 0 and res["peak_gbs"] > 0
    from profilers.interference import FEATURES
    assert len(res["weights"]) == len(FEATURES)
    assert ProfileStore(str(db)).get_interference("torch:cpu")["weights"] == res["weights"]


# --- per-kernel rows and NVML sampling ---------------------------------------------------
@pytest.fixture
def one_thread():
    """One intra-op thread: on two shared cores two OpenMP teams spin against each other and
    both the whole-model and the per-op timings turn to noise (seen: 0.25x-4.9x apart)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_torch_per_op_profile_is_measured_on_cpu(one_thread):
    """torch.profiler times every aten op of the real forward pass: one row per traced kernel,
    same op names in the same order, positive times that add up to about the whole model."""
    from profilers import zoo
    for model in ("squeezenet1.1", "resnet18"):
        p = profile(model, 1, "torch:cpu")
        traced = zoo.load_profiles(model, 1)
        assert len(p.ops) == len(traced) == p.kernels
        assert [o.name for o in p.ops] == [k.name for k in traced]
        assert [o.index for o in p.ops] == list(range(len(traced)))
        assert all(o.time_us > 0 for o in p.ops)
        assert {"convolution", "relu_"} <= {o.name for o in p.ops}
        # counted on the real tensors: the same FLOPs as the meta-device trace
        assert [o.flops for o in p.ops] == pytest.approx([float(k.flops) for k in traced])
        total_ms = sum(o.time_us for o in p.ops) / 1e3
        assert p.latency_ms / 3 < total_ms < p.latency_ms * 3, (model, total_ms, p.latency_ms)
        assert p.util_samples == 0 and p.compute_demand is None   # no GPU: NVML not used


def test_torch_per_op_profile_of_a_transformer(one_thread):
    from profilers import zoo
    from profilers.op_profile import summarise
    p = profile("bert-base", 1, "torch:cpu")
    assert [o.name for o in p.ops] == [k.name for k in zoo.load_profiles("bert-base", 1)]
    s = summarise(list(p.ops))
    assert s["addmm"]["calls"] == 12 * 6 + 1      # q, k, v, out, ffn x2 per layer + pooler
    assert s["bmm"]["calls"] == 24 and s["addmm"]["time_us"] > s["bmm"]["time_us"]


def test_roofline_and_sim_profiles_have_per_kernel_rows():
    r, s = profile("resnet50", 4, "roofline:T4"), profile("resnet50", 4, "sim:T4")
    assert len(r.ops) == len(s.ops) == r.kernels
    assert sum(o.time_us for o in r.ops) / 1e3 == pytest.approx(r.latency_ms, rel=1e-3)
    assert sum(o.time_us for o in s.ops) / 1e3 == pytest.approx(s.latency_ms, rel=0.02)
    assert sum(o.flops for o in s.ops) == pytest.approx(s.flops)
    assert all(o.time_us > 0 for o in s.ops)


def test_store_keeps_per_kernel_rows(tmp_path, one_thread):
    db = str(tmp_path / "p.sqlite")
    st = ProfileStore(db)
    p = profile("squeezenet1.1", 1, "torch:cpu")
    st.put(p)
    st.put(profile("squeezenet1.1", 1, "sim:T4"))
    st.put(p)                                     # replacing keeps one set of rows
    assert st.get("squeezenet1.1", 1, "torch:cpu") == p
    assert st.kernels("squeezenet1.1", 1, "torch:cpu") == list(p.ops)
    st.close()
    con = sqlite3.connect(db)
    n = con.execute("SELECT COUNT(*), MIN(time_us) FROM kernels WHERE device='torch:cpu'").fetchone()
    assert n[0] == len(p.ops) and n[1] > 0
    assert con.execute("SELECT COUNT(DISTINCT device) FROM kernels").fetchone()[0] == 2
    con.close()


def test_store_upgrades_a_version_1_store(tmp_path):
    db = str(tmp_path / "old.sqlite")
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE profiles (model TEXT, batch INTEGER, device TEXT, json TEXT NOT NULL,
            created REAL, PRIMARY KEY (model, batch, device));
        CREATE TABLE interference (device TEXT PRIMARY KEY, json TEXT NOT NULL, created REAL);
        PRAGMA user_version = 1;""")
    old = ('{"model":"resnet18","batch":1,"device":"roofline:T4","latency_ms":1.0,"kernels":3,'
           '"flops":1.0,"bytes":1.0,"compute_demand":0.5,"memory_demand":0.5,"occupancy":0.5,'
           '"footprint_mb":1.0,"version":1}')
    con.execute("INSERT INTO profiles VALUES ('resnet18', 1, 'roofline:T4', ?, 0)", (old,))
    con.commit()
    con.close()
    st = ProfileStore(db)
    got = st.get("resnet18", 1, "roofline:T4")
    assert got.latency_ms == 1.0 and got.ops == () and got.version == 1
    st.put(profile("resnet18", 1, "roofline:T4"))
    assert len(st.kernels("resnet18", 1, "roofline:T4")) > 10


class _FakeNvml:
    """pynvml's calls that the sampler makes, with utilisation figures that change over time."""

    def __init__(self, figures, fail_init=False):
        self.figures, self.fail_init, self.calls = list(figures), fail_init, 0
        self.shut = False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetUtilizationRates(self, handle):
        from types import SimpleNamespace
        gpu, mem = self.figures[min(self.calls, len(self.figures) - 1)]
        self.calls += 1
        return SimpleNamespace(gpu=gpu, memory=mem)

    def nvmlShutdown(self):
        self.shut = True


def test_nvml_sampler_records_the_sampled_figures(monkeypatch):
    import time as _time

    import profilers.profile as pp
    from profilers.op_profile import NvmlSampler
    fake = _FakeNvml([(90, 40), (70, 20), (80, 30)])
    monkeypatch.setattr(pp, "NVML_MIN_S", 0.15)
    runs = []

    def run_once():
        _time.sleep(0.01)
        runs.append(1)
        return 10.0
    times, comp, mem, n = pp._timed_with_nvml(run_once, NvmlSampler(0, interval_s=0.01, nvml=fake))
    assert n >= 3 and n == fake.calls and fake.shut      # sampled on its thread, then shut down
    assert len(times) == len(runs) >= 10                  # runs went on while it sampled
    want = [(90, 40), (70, 20)] + [(80, 30)] * (n - 2)
    assert comp == pytest.approx(sum(g for g, _ in want) / n / 100)
    assert mem == pytest.approx(sum(m for _, m in want) / n / 100)
    assert 0.7 < comp < 0.9 and 0.2 < mem < 0.4


def test_nvml_sampler_without_nvml_is_skipped_cleanly(monkeypatch):
    import sys as _sys

    import profilers.profile as pp
    from profilers.op_profile import NvmlSampler
    s = NvmlSampler(0, nvml=_FakeNvml([(1, 1)], fail_init=True))
    times, comp, mem, n = pp._timed_with_nvml(lambda: 1.0, s)
    assert (comp, mem, n) == (None, None, 0) and len(times) == 5   # no waiting for samples
    assert not s.available and "NVML Shared Library Not Found" in s.error
    monkeypatch.setitem(_sys.modules, "pynvml", None)             # pynvml not installed
    with NvmlSampler(0) as s:
        pass
    assert s.samples == [] and not s.available and "pynvml" in s.error


@pytest.mark.gpu
def test_torch_cuda_profile_per_op_and_nvml():
    p = profile("resnet50", 8, "torch:cuda")
    assert len(p.ops) == p.kernels > 50 and all(o.time_us > 0 for o in p.ops)
    total_ms = sum(o.time_us for o in p.ops) / 1e3
    assert p.latency_ms / 3 < total_ms < p.latency_ms * 3
    assert p.util_samples > 0 and 0 < p.compute_demand <= 1 and 0 <= p.memory_demand <= 1


# ---------------------------------------------------------------- out of sample (issue 16)

def _synthetic(models=("a", "b", "c", "d"), odd="d", seed=0):
    """Pair samples from a known linear model, except that every pair with ``odd`` on either
    side is 3x slower than it says (so a fit that saw ``odd`` is pulled away from it)."""
    import random
    rng = random.Random(seed)
    demand = {m: (rng.random(), rng.random()) for m in models}
    w_true = [1.0, 0.2, 0.5, 0.1, 0.7, 0.3, 0.9, 0.0]
    samples = []
    for me in models:
        for other in models:
            for b in (1, 8):
                (c, m), (cj, mj) = demand[me], demand[other]
                x = [1.0, c, cj, m, mj, c * cj, m * mj, 0.0]
                alpha = sum(a * v for a, v in zip(w_true, x)) * (3.0 if odd in (me, other) else 1)
                samples.append({"me": [me, b], "other": [other, 8], "x": x, "solo_ms": 2.0,
                                "measured_ms": 2.0 * alpha, "measured_p99_ms": 2.4 * alpha})
    return samples, w_true


def test_leave_one_model_out_really_excludes_the_model():
    from profilers.interference import leave_one_out
    samples, _ = _synthetic()
    res = leave_one_out(samples, "model")
    with_d = [s for s in samples if "d" in (s["me"][0], s["other"][0])]
    assert res["folds"]["d"] == {"train": len(samples) - len(with_d), "test": len(with_d),
                                 "mape": pytest.approx(res["folds"]["d"]["mape"])}
    # fitted without d, the model is exactly w_true: every d pair is under-predicted 3x
    assert res["folds"]["d"]["mape"] == pytest.approx(2.0 / 3.0)
    # the in-sample fit, which saw d, is pulled towards it and errs less on d's pairs
    assert evaluate(fit(samples), with_d)["mape"] < res["folds"]["d"]["mape"]
    assert res["predictions"] == sum(len([s for s in samples if g in (s["me"][0], s["other"][0])])
                                     for g in "abcd")


def test_tail_fit_predicts_the_p99_and_the_margin_is_its_out_of_sample_quantile():
    from profilers.interference import leave_one_out, tail_margin
    samples, w_true = _synthetic(odd="none")
    w99 = fit(samples, tail=True)
    assert w99 == pytest.approx([1.2 * v for v in w_true], abs=1e-6)   # p99 = 1.2 x the mean
    assert evaluate(w99, samples, tail=True)["mape"] < 1e-9
    assert evaluate(fit(samples), samples, tail=True)["mape"] == pytest.approx(1 - 1 / 1.2)
    lomo = leave_one_out(samples, "model", tail=True)
    assert tail_margin(lomo["under"]) == pytest.approx(0.0, abs=1e-9)  # exact: no margin
    skewed, _ = _synthetic(odd="d")
    under = leave_one_out(skewed, "model", tail=True)["under"]
    assert tail_margin(under) > 0 and tail_margin(under, 0.5) <= tail_margin(under)
    assert tail_margin([-1.0, -2.0]) == 0.0


def test_shipped_fit_reports_out_of_sample_errors_and_the_tail():
    """The shipped H100 fit carries its samples, both fits and the three error reports; refit
    from its own samples it gives back its weights (so the report can be checked)."""
    import json as _json

    from gpusched.placement.estimate import WEIGHTS_DIR
    from profilers.interference import summarize
    shipped = _json.loads((WEIGHTS_DIR / "H100.json").read_text())
    assert shipped["policy"] == "slo" and shipped["pairs"] == len(shipped["samples"]) // 2
    for target in ("mean", "p99"):
        for view in ("leave_one_model_out", "leave_one_batch_out"):
            assert 0 < shipped[target][view]["mape"] < shipped[target][view][
                "mape_if_no_interference"]
    again = summarize(shipped["samples"], "sim:H100")
    assert again["weights_p99"] == pytest.approx(shipped["weights_p99"])
    assert again["margin"] == pytest.approx(shipped["margin"])
    # the tail is what it says: p99 slowdowns above the mean ones
    assert all(s["measured_p99_ms"] >= s["measured_ms"] - 1e-9 for s in shipped["samples"])


def test_pairs_run_under_the_serving_policy_and_see_the_tail():
    """A 0.4 ms model beside gpt2 at batch 32 (a 0.7 ms kernel): its p99 is well above its mean."""
    from profilers.interference import colocated_runs
    a, b = colocated_runs("resnet18", 1, "gpt2", 32, "H100", jobs=8)
    assert len(a) >= 8 and len(b) >= 8 and len(a) > len(b)   # the faster side ran more
    solo = profile("resnet18", 1, "sim:H100").latency_ms / 1e3
    import numpy as np
    assert np.percentile(a, 99) > 1.5 * solo and np.percentile(a, 99) > 1.2 * np.mean(a)
