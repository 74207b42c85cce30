"""gpusched on a real Ray cluster made in the test session: 3 nodes x 2 logical T4s (region
labels), the controller and 6 simulated-GPU daemons, all from one session fixture. Discovery,
placement applied cluster-wide, routing, a daemon restart, and a node removed mid-load (last:
it takes a third of the cluster away). Skipped, naming the reason, where Ray is not installed.
"""
import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

MODELS = """\
models:
  - {name: web-resnet18, model: resnet18, rate: 1200, slo_ms: 60}
  - {name: nlp-bert, model: bert-base, rate: 500, slo_ms: 150}
  - {name: thumbs-mobilenet, model: mobilenetv2, rate: 1500, slo_ms: 40}
"""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]' or "
                        "make setup)")
    from gpusched.bench.cluster import LocalCluster
    with LocalCluster(regions=("eu", "us", "ap")) as lc:
        d = tmp_path_factory.mktemp("cluster")
        lc.file = str(d / "cluster.json")
        with open(lc.file, "w") as f:
            json.dump({"ray_address": lc.cluster.address, "namespace": "gpusched",
                       "directory": lc.directory, "server_key": lc.server_key,
                       "local": None}, f)
        lc.models = d / "models.yaml"
        lc.models.write_text(MODELS)
        yield lc


def _cli(lc, *argv, timeout=120):
    env = {**os.environ, "GPUSCHED_CLUSTER": lc.file}
    return subprocess.run([sys.executable, "-m", "gpusched.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def _wait(cond, timeout=30.0, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = cond()
        if out:
            return out
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s")


def _placed(lc) -> dict[str, list[str]]:
    """model -> the live daemons holding a replica of it."""
    out: dict[str, list[str]] = {}
    for d in lc.call("directory")["daemons"]:
        for r in d["replicas"]:
            out.setdefault(r["model"], [])
            if d["alive"]:
                out[r["model"]].append(d["key"])
    return out


def test_discovery_lists_nodes_gpus_and_daemons(cluster):
    r = _cli(cluster, "cluster", "up", "--address", cluster.cluster.address, "--json")
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)
    with open(up["cluster_file"]) as f:
        assert json.load(f)["server_key"] == cluster.server_key
    r = _cli(cluster, "cluster", "status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    nodes = {n["node_id"]: n for n in st["nodes"] if n["alive"]}
    assert len(nodes) == 3
    assert sorted(n["labels"]["region"] for n in nodes.values()) == ["ap", "eu", "us"]
    daemons = st["daemons"]
    assert len(daemons) == 6 and all(d["alive"] for d in daemons)   # 'up' again added none
    assert {d["gpu_type"] for d in daemons} == {"T4"}
    assert {d["gpu_memory_mb"] for d in daemons} == {16 * 1024}
    # two per node, each on the GPU Ray gave its actor, on tcp with its own port
    per_node = {}
    for d in daemons:
        per_node.setdefault(d["node_id"], []).append(d["gpu_visible"])
    assert set(per_node) == set(nodes)
    assert all(sorted(v) == ["0", "1"] for v in per_node.values())
    assert len({d["endpoint"] for d in daemons}) == 6
    assert all(d["endpoint"].startswith("tcp://") for d in daemons)


def test_placement_applied_cluster_wide(cluster, capsys):
    from gpusched.cli import main
    assert main(["place", str(cluster.models), "--cluster", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    applied = out["applied"]
    assert len(applied) == out["gpus_used"] >= 2
    placed = _placed(cluster)
    assert set(placed) == {"web-resnet18", "nlp-bert", "thumbs-mobilenet"}
    for a in applied:      # each GPU's replicas went to one daemon, which admitted them all
        want = {r["model"] for r in out["assignments"][a["gpu"]]["replicas"]}
        assert all(a["daemon"] in placed[m] for m in want)
        assert len(a["admitted"]) == len(out["assignments"][a["gpu"]]["replicas"])

    # a plan for GPU types the cluster lacks, and one that needs more GPUs than it has
    assert main(["place", str(cluster.models), "--cluster", "--pool", "H100:8"]) == 2
    err = capsys.readouterr().err
    assert "the plan is for H100 but the cluster has T4: 6" in err and err.count("\n") == 1
    big = cluster.models.parent / "big.yaml"
    big.write_text("models:\n  - {name: huge, model: resnet50, rate: 20000, slo_ms: 200}\n")
    assert main(["place", str(big), "--cluster"]) == 2
    err = capsys.readouterr().err
    assert "GPUs but the cluster has 6 live" in err and "missing" in err
    assert _placed(cluster) == placed       # refused plans changed nothing


def test_a_refused_admission_leaves_every_daemon_as_it_was(cluster):
    from gpusched.cluster.ops import ClusterError
    before = cluster.call("directory")["daemons"]
    ok = {"model": "ok", "zoo_model": "resnet18", "batch": 8, "rate": 100.0, "slo_ms": 80.0}
    bad = {"model": "bad", "zoo_model": "resnet50", "batch": 8, "rate": 1e6, "slo_ms": 5.0}
    report = {"assignments": [{"gpu": i, "type": "T4", "replicas": [ok if i < 3 else bad]}
                              for i in range(4)]}
    with pytest.raises(ClusterError, match="refused: ADMISSION.*placement is unchanged"):
        cluster.call("apply", report)
    after = cluster.call("directory")["daemons"]
    assert [d["replicas"] for d in after] == [d["replicas"] for d in before]


def test_routing_by_model_name(cluster):
    from gpusched.cluster.route import NoReplica
    with cluster.client("expected-completion") as c:
        names = sorted(c.models())
        futs = [c.submit(names[i % len(names)]) for i in range(60)]
        res = [f.result(30) for f in futs]
        assert all(r.latency_ms > 0 for r in res)
        assert len({f.daemon for f in futs}) >= len(names)
        with pytest.raises(NoReplica, match="no daemon serves model 'nope'"):
            c.run("nope", timeout=10)
    # the command line: client processes, a router each
    r = _cli(cluster, "submit", "--cluster", "--clients", "1", "--rate", "20", "--duration",
             "2", "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["overall"]["submitted"] > 10
    assert out["overall"]["completed"] == out["overall"]["submitted"]
    # gpusched submit's summary (wire/latency.py): both clocks
    o = out["overall"]
    assert 0 < o["daemon_p50_ms"] <= o["client_p50_ms"] and o["gap_p50_ms"] > 0
    assert 0 <= o["client_slo_attainment"] <= 1 and 0 <= o["daemon_slo_attainment"] <= 1
    r = _cli(cluster, "submit", "--cluster", "--models", "nope", "--duration", "1")
    assert r.returncode == 2 and "no daemon serves 'nope'" in r.stderr


def test_a_killed_daemon_restarts_and_its_models_stay_served(cluster):
    placed = _placed(cluster)
    victim = placed["nlp-bert"][0]
    old = next(d for d in cluster.call("directory")["daemons"] if d["key"] == victim)
    cluster.call("kill_daemon", victim)

    def back():
        ds = {d["key"]: d for d in cluster.call("directory")["daemons"]}
        d = ds[victim]
        ok = d["alive"] and d["restarts"] >= 1 and d["endpoint"] != old["endpoint"]
        return ok and all(_placed(cluster)[m] for m in placed) and ds
    ds = _wait(back, 60)
    assert ds[victim]["daemon_id"] != old["daemon_id"]
    assert set(_placed(cluster)) == set(placed)      # re-admitted, or moved to a spare
    with cluster.client() as c:                       # the new endpoint, looked up again
        assert c.run("nlp-bert", timeout=30).latency_ms > 0


def test_a_named_address_is_checked_even_when_this_process_is_connected(cluster):
    import socket

    from gpusched.cluster import ops
    ray = ops.connect(cluster.cluster.address)          # the cluster it is connected to: fine
    assert ray.is_initialized() and ops.connect(None) is ray
    with socket.socket() as s:                          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ops.ClusterError, match=f"no Ray cluster answers at 127.0.0.1:{closed}"):
        ops.connect(f"127.0.0.1:{closed}")
    with socket.create_server(("127.0.0.1", 0)) as srv:   # something answers: another cluster
        other = f"127.0.0.1:{srv.getsockname()[1]}"
        with pytest.raises(ops.ClusterError, match=f"already connected to the Ray cluster at "
                           f"{cluster.cluster.address}, not {other}"):
            ops.connect(other)
    assert ray.is_initialized()                         # and the connection is kept


def test_a_node_removed_mid_load_loses_no_job(cluster):
    """Every model on every daemon, load from one router; a worker node (2 daemons) removed a
    second in: nothing unanswered, only acknowledged jobs on the lost daemons fail (with
    DaemonRestarted), the rest went elsewhere; the controller marks them down and places their
    replicas on the survivors."""
    from gpusched.bench.cluster import everywhere
    from gpusched.cluster.workload import bench_services
    services = bench_services("T4")
    # routes only (admit=False): placement's interference model decides co-location, and may
    # refuse this one; what is tested here is routing and recovery
    cluster.call("apply", everywhere(cluster, services, 60.0), None, "heuristic", False,
                 timeout=300)
    node = cluster.workers[0].node_id
    lost = [d["key"] for d in cluster.call("directory")["daemons"]
            if d["node_id"] == node and d["alive"]]
    assert lost
    errors: dict[str, int] = {}
    with cluster.client("expected-completion") as c:
        futs, start, removed = [], time.time(), False
        while time.time() - start < 5.0:
            if not removed and time.time() - start > 1.0:
                cluster.remove_worker(0)
                removed = True
            s = services[len(futs) % len(services)]
            futs.append(c.submit(s.name, slo_ms=s.slo_ms))
            time.sleep(1 / 40)
        for f in futs:
            try:
                f.result(30)
            except Exception as e:  # noqa: BLE001 (each kind counted, then checked)
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        stats = dict(c.stats)
        _wait(lambda: all(c._conns[k].down_since for k in lost), 10)   # routes moved
    assert set(errors) <= {"DaemonRestarted"}, errors
    assert errors.get("DaemonRestarted", 0) == stats["failed_running"]

    def settled():
        d = cluster.call("directory")
        gone = [x for x in d["daemons"] if x["key"] in lost]
        return not d["unserved"] and all(not x["alive"] and not x["replicas"] for x in gone)
    _wait(settled, 30)
    with cluster.client() as c:                      # served again, by the survivors
        for s in services:
            assert c.submit(s.name).result(30).latency_ms > 0

