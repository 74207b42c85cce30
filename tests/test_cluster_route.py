"""The cluster's pure parts, in-process: the router's decision and bookkeeping, the recovery of
a dead daemon's replicas, the directory protocol, GPU discovery, the virtual-time cluster, and
the bad-input paths of the cluster commands that need no Ray cluster."""
import sys

import pytest

from gpusched.cli import choices, main
from gpusched.cluster import protocol as CP
from gpusched.cluster.gpu import node_gpu_type, owned_gpu, preset_of
from gpusched.cluster.recovery import Rep, recover, served
from gpusched.cluster.route import POLICIES, NoReplica, Router


def _router(policy="expected-completion", n=3, window=2, models=("m",), est=0.01):
    r = Router(policy, window=window)
    r.set_routes({m: {f"d{i}": est for i in range(n)} for m in models})
    return r


def test_route_policies_are_the_cli_choices():
    assert choices.ROUTE_POLICIES == POLICIES


def test_expected_completion_picks_the_daemon_that_finishes_first():
    r = _router(n=3, window=10)
    # d0 gets the first job; the next goes where nothing waits, and so on
    assert [r.submit(i, "m")[0][0] for i in range(3)] == ["d0", "d1", "d2"]
    r.finished(1, service_s=0.01)        # d1 is free again
    assert r.submit(3, "m") == [("d1", 3)]
    r.set_external("d2", 0)
    r.set_external("d0", 50)             # other routers loaded d0
    r.finished(0)
    r.finished(2)
    r.finished(3)
    assert r.submit(4, "m")[0][0] in ("d1", "d2")
    assert r.submit(5, "m")[0][0] != "d0"


def test_expected_completion_weighs_learned_service_times():
    r = _router(n=2, window=10)
    for i in range(20):                  # d0 turns out 10x slower for this model
        r.submit(("a", i), "m")
    for i in range(20):
        key = r.daemon_of(("a", i))
        r.finished(("a", i), service_s=0.1 if key == "d0" else 0.01)
    assert r.estimate("m", "d0") > 5 * r.estimate("m", "d1")
    picks = [r.submit(i, "m")[0][0] for i in range(6)]
    assert picks.count("d1") >= 5


def test_random_and_round_robin_ignore_load():
    rr = _router("round-robin", n=3, window=100)
    assert [rr.submit(i, "m")[0][0] for i in range(6)] == ["d0", "d1", "d2"] * 2
    rnd = _router("random", n=3, window=1000)
    keys = [rnd.submit(i, "m")[0][0] for i in range(300)]
    assert min(keys.count(k) for k in ("d0", "d1", "d2")) > 60


def test_window_holds_jobs_and_finishing_sends_them():
    r = _router("round-robin", n=1, window=2)
    assert r.submit(1, "m") == [("d0", 1)]
    assert r.submit(2, "m") == [("d0", 2)]
    assert r.submit(3, "m") == []        # held by the router
    assert r.held_count() == 1 and not r.is_sent(3)
    assert r.finished(1, 0.01) == [("d0", 3)]
    assert r.is_sent(3)
    assert r.withdraw(2) == [] and r.finished(3) == []
    assert not r.jobs and r.work[0] == pytest.approx(0.0)


def test_a_dead_daemon_resends_not_started_jobs_and_fails_started_ones():
    r = _router("round-robin", n=2, window=2)
    for i in range(6):                   # d0: 0, 2 sent, 4 held; d1: 1, 3 sent, 5 held
        r.submit(i, "m")
    r.accepted(0)                        # the daemon queued job 0; job 2 it never saw
    send, failed, unroutable = r.mark_down("d0")
    assert failed == [0] and send == [] and unroutable == []
    # 2 (sent, never acknowledged) and 4 (held) now wait on d1, whose window is full
    assert sorted(j.token for j in r.held[r.index["d1"]]) == [2, 4, 5]
    assert r.mark_down("d0") == ([], [], [])       # said twice: nothing more
    send, failed, unroutable = r.mark_down("d1")  # nothing acknowledged there: none failed
    assert failed == [] and sorted(t for t, _e in unroutable) == [1, 2, 3, 4, 5]
    assert all(isinstance(e, NoReplica) for _t, e in unroutable)
    with pytest.raises(NoReplica, match="no live replica of model 'm'"):
        r.submit(9, "m")
    r.mark_up("d0")
    assert r.submit(10, "m") == [("d0", 10)]


def test_no_replica_says_whether_the_model_was_never_placed():
    r = _router(n=1)
    with pytest.raises(NoReplica, match="no daemon serves model 'x'.*served: m.*gpusched place"):
        r.submit(1, "x")
    r.submit(2, "m")
    r.mark_down("d0")
    with pytest.raises(NoReplica, match="no live replica of model 'm': its daemons \\(d0\\) "
                       "are down"):
        r.submit(3, "m")


def test_set_routes_keeps_learned_times_and_drops_unplaced_models():
    r = _router(n=2, models=("a", "b"), window=10)
    r.submit(1, "a")
    r.finished(1, service_s=0.5)
    learned = r.estimate("a", r.keys[0])
    r.set_routes({"a": {"d0": 0.01, "d1": 0.01, "d2": 0.01}})
    assert r.estimate("a", "d0") == pytest.approx(learned)
    assert r.estimate("a", "d2") == pytest.approx(0.01)
    with pytest.raises(NoReplica):
        r.submit(2, "b")


def test_a_thousand_daemons_route_by_one_argmin():
    r = Router("expected-completion", window=4)
    r.set_routes({"m": {f"g{i:04d}": 0.01 for i in range(1000)}})
    keys = [r.submit(i, "m")[0][0] for i in range(1000)]
    assert len(set(keys)) == 1000        # each to an idle GPU while there is one


def test_bad_router_arguments():
    with pytest.raises(ValueError, match="unknown routing policy"):
        Router("fastest")
    with pytest.raises(ValueError, match="window"):
        Router(window=0)


# -- recovery -----------------------------------------------------------------------------------
A, B = Rep("a", "resnet50", 8, 100.0, 50.0), Rep("b", "resnet18", 8, 200.0, 30.0)
TYPES = {"g0": "T4", "g1": "T4", "g2": "T4", "h0": "H100"}


def test_recovery_moves_a_dead_gpus_set_to_a_spare_of_its_type():
    rec = recover({"g0": [A, B], "g1": [A], "g2": [], "h0": []}, TYPES, {"g1", "g2", "h0"})
    assert rec.moves == {"g0": "g2"}
    assert rec.changed == {"g2": [A, B], "g0": []} and rec.lost == []


def test_recovery_spreads_over_live_replicas_in_proportion_and_keeps_what_nobody_takes():
    pl = {"g0": [A, B], "g1": [Rep("a", "resnet50", 8, 300.0, 50.0)], "h0": [A]}
    rec = recover(pl, {**TYPES, "g2": "V100"}, {"g1", "h0"})
    assert rec.moves == {}
    assert rec.changed["g1"][0].rate == pytest.approx(300 + 100 * 0.75)
    assert rec.changed["h0"][0].rate == pytest.approx(100 + 100 * 0.25)
    assert rec.lost == [B] and rec.changed["g0"] == [B]   # b stays for when g0 restarts
    assert served(pl, {"g1", "h0"}) == {"a": 400.0, "b": 0.0}


def test_recovery_with_nothing_dead_does_nothing():
    assert recover({"g0": [A]}, TYPES, {"g0"}).empty
    assert recover({"g0": [A]}, TYPES, set()).changed == {}   # nowhere to go: kept


# -- directory protocol and GPU discovery -------------------------------------------------------
def test_directory_round_trip_and_bad_requests():
    d = CP.Directory(req_id=3, epoch=7, cluster="c", unserved=["x"], daemons=[CP.DaemonInfo(
        key="k", endpoint="tcp://10.0.0.1:5000", alive=True, node_labels={"region": "eu"},
        replicas=[CP.ReplicaInfo("a", "resnet50", 8, 100.0, 50.0, 12.5)])])
    tag, body = CP.encode(d)
    assert CP.decode(tag, body, CP.REPLIES) == d
    with pytest.raises(CP.ProtocolError, match="unknown message type"):
        CP.decode(b"NOPE", body, CP.REQUESTS)
    with pytest.raises(CP.ProtocolError, match="LOOKUP"):
        CP.decode(b"LOOKUP", b"\x93", CP.REQUESTS)


def test_gpu_types_and_the_gpu_a_daemon_owns():
    assert preset_of("NVIDIA H100 80GB HBM3") == "H100" and preset_of("Tesla T4") == "T4"
    assert preset_of("Radeon") is None
    assert node_gpu_type({"accelerator_type:A100": 1}, {"gpu-type": "T4"}, "H100") == "A100"
    assert node_gpu_type({}, {"gpu-type": "T4"}, "H100") == "T4"
    assert node_gpu_type({}, {}, "H100") == "H100"
    g = owned_gpu("T4", env={})
    assert g["type"] == "T4" and g["memory_mb"] == 16 * 1024 and not g["physical"]
    g = owned_gpu("V100", env={"CUDA_VISIBLE_DEVICES": "1"})   # logical here: no driver
    assert g["visible"] == "1" and (g["type"] == "V100" or g["physical"])


# -- the virtual-time cluster -------------------------------------------------------------------
def test_simulated_cluster_routes_by_expected_completion_better_than_random():
    from gpusched.cluster.sim import SimConfig, simulate
    ec = simulate(SimConfig(gpus=8, jobs=1500, policy="expected-completion"))
    rnd = simulate(SimConfig(gpus=8, jobs=1500, policy="random"))
    assert ec["completed"] == rnd["completed"] == 1500
    assert ec["slo_attainment"] > rnd["slo_attainment"]


def test_simulated_failure_loses_no_job():
    from gpusched.cluster.sim import SimConfig, simulate
    res = simulate(SimConfig(gpus=8, jobs=1500, fail_at=0.1, fail_gpus=2, detect_s=0.2))
    f = res["failure"]
    assert f["lost"] == 0 and f["lost_models"] == 0
    # every job has an outcome: done, or failed where it had been acknowledged
    assert res["completed"] + f["failed_running"] + f["failed_not_started"] == 1500
    assert f["resent"] > 0            # jobs sent into the black hole went elsewhere


# -- bad input without a cluster ----------------------------------------------------------------
def test_cluster_commands_without_ray_say_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)      # import ray -> ImportError
    assert main(["cluster", "status", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Ray is not installed" in err and "[cluster]" in err


def test_no_cluster_at_the_address_says_how_to_start_one(capsys, tmp_path):
    pytest.importorskip("ray")
    models = tmp_path / "m.yaml"
    models.write_text("models:\n  - {model: resnet18, rate: 100, slo_ms: 50}\n")
    assert main(["place", str(models), "--cluster", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no Ray cluster answers at 127.0.0.1:1" in err
    assert "gpusched cluster up" in err


def test_submit_without_a_cluster_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUSCHED_CLUSTER", str(tmp_path / "none.json"))
    assert main(["submit", "--cluster", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no cluster file" in err and "gpusched cluster up" in err
    assert main(["cluster"]) == 2
    assert "up|status|down" in capsys.readouterr().err


def test_submit_cluster_counts_jobs_by_the_shared_latency_definition(capsys):
    """submit --cluster's summary is gpusched submit's (wire/latency.py): both clocks, nearest
    rank; a job without an answer misses by the client's clock only, a cancelled one by none."""
    from client_lib import JobResult
    from client_lib.errors import DaemonRestarted, JobCancelled, JobShed
    from gpusched.cluster.load import print_load
    from gpusched.loadgen import new_row, summarize, tally

    row = new_row("m", 10.0)
    for client_ms, daemon_ms in ((2.0, 1.0), (4.0, 3.0), (12.0, 9.0), (30.0, 20.0)):
        tally(row, JobResult("j", 0.0, 0.0, daemon_ms, True, client_ms))
    tally(row, exc=DaemonRestarted("lost"))
    tally(row, exc=NoReplica("none"))
    tally(row, exc=JobShed("shed"))
    tally(row, exc=JobCancelled("cancelled"))
    s = summarize("m", [row])
    assert (s["submitted"], s["completed"], s["failed"]) == (8, 4, 4)
    assert s["client_p50_ms"] == 4.0 and s["daemon_p50_ms"] == 3.0    # rank 2 of 4
    assert s["client_p99_ms"] == 30.0 and s["gap_min_ms"] == 1.0
    # client: 2 met of 7 ended (the cancelled job aside); daemon: 3 met of 5 it answered
    assert s["client_slo_attainment"] == pytest.approx(2 / 7)
    assert s["daemon_slo_attainment"] == pytest.approx(3 / 5)
    print_load({"route": "expected-completion", "clients": 1, "rate": 8, "duration": 1,
                "tenants": [{**s, "errors": row["errors"]}], "overall": summarize("overall", [row]),
                "routing": {"submitted": 8, "resent": 1}})
    out = capsys.readouterr().out
    # both clocks' attainment in the table (2 of 7 = 28.6%, 3 of 5 = 60.0%)
    assert "28.6%" in out and "60.0%" in out and "DaemonRestarted 1" in out
