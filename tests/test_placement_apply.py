"""A placement applied to live daemons: each admits its GPU's replicas, refuses a co-location
its interference model says would break an SLO, and answers bad ADMIT bodies with an error."""
import json
import subprocess
import sys

import pytest

from client_lib import Client
from client_lib.errors import RequestError

EXAMPLE = "examples/placement/models.yaml"


def _plan():
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "place", EXAMPLE, "--json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_apply_plan_to_daemons_then_refuse_an_overload(daemon_factory):
    plan = _plan()
    eps = [daemon_factory("--backend", "sim", "--gpu-spec", "H100", "--policy", "slo")[1]
           for _ in plan["assignments"]]
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "place", EXAMPLE, "--json",
                        "--apply", ",".join(eps)], capture_output=True, text=True, timeout=180,
                       check=False)
    assert r.returncode == 0, r.stderr
    applied = json.loads(r.stdout)["applied"]
    assert [len(a["admitted"]) for a in applied] == [len(a["replicas"]) for a in plan["assignments"]]
    for a, asg in zip(applied, plan["assignments"]):
        slo = {x["model"]: x["slo_ms"] for x in asg["replicas"]}
        for got in a["admitted"]:
            assert got["predicted_latency_ms"] <= slo[got["name"]]
    busiest = max(range(len(eps)), key=lambda i: plan["assignments"][i]["busy"])
    with Client(eps[busiest], tenant="ops", timeout=10) as c:
        # an extra heavy replica on the busiest GPU: refused, naming why; nothing changes
        with pytest.raises(RequestError) as e:
            c.admit([("extra-densenet", "densenet121", 8, 900.0, 30.0)])
        assert e.value.code == "ADMISSION"
        assert "extra-densenet" in str(e.value) or "slowed" in str(e.value) or "busy" in str(e.value)
        # a tiny one still fits, and the earlier replicas are all still there
        got = c.admit([("tiny", "squeezenet1.1", 1, 5.0, 20.0)])
        names = {g["name"] for g in got}
        assert "tiny" in names
        assert {x["model"] for x in plan["assignments"][busiest]["replicas"]} <= names
        # duplicate name and an impossible SLO: refused with a clear error
        with pytest.raises(RequestError, match="already admitted"):
            c.admit([("tiny", "squeezenet1.1", 1, 5.0, 20.0)])
        with pytest.raises(RequestError, match="cannot meet its SLO"):
            c.admit([("fast", "gpt2", 1, 10.0, 0.5)])


@pytest.mark.slow
def test_apply_needs_one_endpoint_per_gpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpusched.cli", "place", EXAMPLE,
                        "--apply", f"ipc://{tmp_path}/only-one.sock"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2
    assert "one endpoint per GPU" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_bad_admit_bodies_get_one_error_each(daemon):
    import msgspec

    from scheduler_daemon.wire import protocol as P
    from tests.wire import RawPeer
    peer = RawPeer(daemon)
    try:
        peer.hello("fuzzy")
        bad = [{"req_id": 1, "replicas": []},                                   # empty
               {"req_id": 2, "replicas": [{"name": "a", "model": "resnet50", "batch": 0,
                                           "rate": 1.0, "slo_ms": 5.0}]},       # batch 0
               {"req_id": 3, "replicas": [{"name": "a", "model": "resnet50", "batch": 1,
                                           "rate": -1.0, "slo_ms": 5.0}]},      # negative rate
               {"req_id": 4, "replicas": [{"name": "a", "model": "no-such-model", "batch": 1,
                                           "rate": 1.0, "slo_ms": 5.0}]}]       # unknown model
        for body in bad:
            peer.send(b"ADMIT", msgspec.msgpack.encode(body))
        replies = [peer.recv(20_000)[0] for _ in bad]
        assert all(isinstance(m, P.Error) for m in replies), replies
        assert [m.code for m in replies] == ["BAD_MESSAGE"] * 3 + ["ADMISSION"]
        assert "no-such-model" in replies[3].message
        assert peer.recv_all(300) == []  # exactly one answer each
        # the daemon still serves
        peer.send_msg(P.Ping(seq=7))
        assert isinstance(peer.recv()[0], P.Pong)
    finally:
        peer.close()
