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


def test_profile_cli_json_and_errors(tmp_path):
    db = str(tmp_path / "p.sqlite")
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "profile", "resnet18",
                        "--device", "roofline:V100", "--batch", "1,4", "--db", db, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["batch"] for x in rows] == [1, 4]
    assert ProfileStore(db).get("resnet18", 4, "roofline:V100") is not None
    bad = subprocess.run([sys.executable, "-m", "gpusched.cli", "profile", "nope", "--db", db],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown model" in bad.stderr and "Traceback" not in bad.stderr


def test_cpu_pairs_measure_fit_and_store(tmp_path):
    """--pairs on the real device of these machines: torch on the CPU, two models at once."""
    import json
    import subprocess
    import sys

    from profilers.store import ProfileStore
    db = tmp_path / "p.sqlite"
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "profile", "--pairs", "--device",
                        "torch:cpu", "--batch", "1", "squeezenet1.1", "resnet18", "--json",
                        "--db", str(db)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["device"] == "torch:cpu" and res["pairs"] == 3   # (a,a), (a,b), (b,b)
    assert len(res["slowdowns"]) == 6 and all(s > 0 for s in res["slowdowns"])
    assert res["peak_gflops"] > 0 and res["peak_gbs"] > 0
    assert len(res["weights"]) == 7
    assert ProfileStore(str(db)).get_interference("torch:cpu")["weights"] == res["weights"]
