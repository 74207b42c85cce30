"""The daemon's request handling in-process (tests/server_harness.py): handlers, limits, answers,
sessions and the drain, on a virtual clock. What only a live process can show (sockets, signals,
killed processes, restarts) is in test_daemon_e2e.py."""
import numpy as np
import pytest

from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.devices.fluid import FluidDevice
from scheduler_daemon.server.server import ConfigError
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.kernels import KernelSpec
from tests.server_harness import Harness


def kernels(n, us, grid=40, block=1024, op=None):
    return [KernelSpec(name=f"k{i}", est_us=us, grid=grid, block=block, op=op or f"sleep:{us:g}")
            for i in range(n)]


def f32(n):
    return P.TensorMeta(dtype="float32", shape=[n])


def done_of(replies):
    return {m.req_id: m for m, _ in replies if isinstance(m, P.Done)}


def test_each_submit_gets_exactly_one_answer_with_cancels_in_between():
    h = Harness()
    h.hello(b"a", "exact")
    assert isinstance(h.call(b"a", P.Register(req_id=1, model="m", kernels=kernels(3, 50))),
                      P.Registered)
    ids = list(range(10, 310))
    replies = []
    for rid in ids:
        replies += h.send(b"a", P.Submit(req_id=rid, model="m", slo_ms=1000.0))
    for rid in ids[::10]:  # cancel some; their SUBMIT still gets exactly one DONE
        replies += h.send(b"a", P.Cancel(req_id=rid + 100000, target=rid))
    h.run()
    replies += h.take(b"a")
    done = sorted(m.req_id for m, _ in replies if isinstance(m, P.Done))
    assert done == ids  # one terminal answer per submit, no duplicates, none lost
    cancels = [m for m, _ in replies if isinstance(m, P.CancelReply)]
    assert len(cancels) == len(ids[::10])
    statuses = {m.req_id: m.status for m, _ in replies if isinstance(m, P.Done)}
    assert sum(c.cancelled for c in cancels) >= 1
    for c in cancels:
        assert (statuses[c.target] == "cancelled") == c.cancelled


BAD_FRAMES = [([b"SUBMIT"], "BAD_FRAME"), ([b"NOPE", b"\x80"], "BAD_FRAME"),
              ([b"SUBMIT", b"\xc1\xc1garbage"], "BAD_MESSAGE"),
              ([b"SUBMIT", b"\x81\xa6req_id\xa3abc"], "BAD_MESSAGE"),
              ([b"REGISTER", b"\x80"], "BAD_MESSAGE"),
              ([b"SUBMIT", b"\x81\xa6req_id\x07"], "BAD_MESSAGE")]


def test_bad_requests_are_answered_once_and_name_the_problem():
    h = Harness()
    m = h.call(b"x", P.Submit(req_id=5, model="m"))        # before HELLO
    assert m.code == "NOT_CONNECTED" and m.req_id == 5
    assert h.call(b"x", P.Hello(version=99, tenant="x")).code == "VERSION"
    h.hello(b"x", "hostile")
    for frames, code in BAD_FRAMES:
        (m, _), = h.send_frames(b"x", *frames)
        assert isinstance(m, P.Error) and m.code == code, (frames, m)
    (m, _), = h.send_frames(b"x", *BAD_FRAMES[-1][0])
    assert m.req_id == 7   # read out of a body that failed validation
    m = h.call(b"x", P.Submit(req_id=7, model="ghost"))
    assert m.code == "UNKNOWN_MODEL" and "ghost" in m.message
    h.call(b"x", P.Register(req_id=8, model="m", kernels=kernels(1, 10)))
    assert h.call(b"x", P.Submit(req_id=9, model="m", inputs=[f32(4)])).code == "BAD_INPUT"
    assert h.call(b"x", P.Submit(req_id=10, model="m", inputs=[f32(4)]),
                  b"\0" * 15).code == "BAD_INPUT"
    assert h.call(b"x", P.Submit(req_id=11, model="m",
                                 inputs=[P.TensorMeta(dtype="complex64", shape=[1])]),
                  b"\0" * 8).code == "BAD_INPUT"
    m = h.call(b"x", P.Register(req_id=12, model="huge",
                                kernels=[KernelSpec(name="k", est_us=1)] * 100_001))
    assert m.code == "TOO_LARGE"
    h.call(b"x", P.Register(req_id=13, model="slow", kernels=kernels(20, 5000)))
    assert h.send(b"x", P.Submit(req_id=14, model="slow")) == []
    assert h.call(b"x", P.Submit(req_id=14, model="slow")).code == "DUPLICATE"
    # another tenant is served correctly afterwards
    h.hello(b"good", "good")
    h.call(b"good", P.Register(req_id=1, model="m", kernels=kernels(2, 100)))
    h.send(b"good", P.Submit(req_id=2, model="m", slo_ms=100))
    h.run()
    assert done_of(h.take(b"good"))[2].slo_met


def test_cancel_is_idempotent_and_scoped_to_the_client():
    h = Harness()
    h.hello(b"c", "c")
    h.hello(b"o", "other")
    h.call(b"c", P.Register(req_id=1, model="long", kernels=kernels(50, 2000)))
    h.send(b"c", P.Submit(req_id=2, model="long", slo_ms=10_000))
    h.run(until=0.01)
    assert h.call(b"c", P.Cancel(req_id=3, target=2)).cancelled is True
    assert done_of(h.take(b"c"))[2].status == "cancelled"
    assert h.call(b"c", P.Cancel(req_id=4, target=2)).cancelled is False  # already ended
    h.send(b"c", P.Submit(req_id=5, model="long", slo_ms=10_000))
    assert h.call(b"o", P.Cancel(req_id=1, target=5)).cancelled is False  # not its job
    assert h.call(b"o", P.Status(req_id=2, target=5)).code == "UNKNOWN_JOB"
    assert h.call(b"c", P.Status(req_id=6, target=5)).job.state in ("queued", "running")
    assert h.call(b"c", P.Cancel(req_id=7, target=5)).cancelled is True


def test_slo_policy_sheds_a_job_that_cannot_make_its_slo():
    h = Harness(policy="slo", shed=True)
    h.hello(b"s", "s")
    h.call(b"s", P.Register(req_id=1, model="slow", kernels=kernels(10, 1000)))  # 10 ms
    replies = h.send(b"s", P.Submit(req_id=2, model="slow", slo_ms=2.0))
    replies += h.send(b"s", P.Submit(req_id=3, model="slow", slo_ms=500.0))
    h.run()
    d = done_of(replies + h.take(b"s"))
    assert d[2].status == "shed" and not d[2].slo_met
    assert d[3].status == "done" and d[3].slo_met and d[3].exec_ms >= 9.0


def test_tenant_limits_refuse_and_release():
    h = Harness(max_queued=3, max_tenant_bytes=1000)
    h.hello(b"g", "greedy")
    h.hello(b"o", "other")
    h.call(b"g", P.Register(req_id=1, model="slow", kernels=kernels(5, 100_000)))
    for rid in (2, 3, 4):
        assert h.send(b"g", P.Submit(req_id=rid, model="slow")) == []
    m = h.call(b"g", P.Submit(req_id=5, model="slow"))
    assert m.code == "LIMIT" and "unfinished jobs" in m.message
    h.call(b"o", P.Register(req_id=1, model="m", kernels=kernels(1, 10, op="relu")))
    m = h.call(b"o", P.Submit(req_id=2, model="m", inputs=[f32(300)]), b"\0" * 1200)
    assert m.code == "LIMIT" and "input bytes" in m.message
    h.send(b"o", P.Submit(req_id=3, model="m", inputs=[f32(200)]), b"\0" * 800)
    st = {t.tenant: t for t in h.call(b"o", P.Status(req_id=4)).tenants}
    assert st["other"].bytes_held == 800
    h.run()
    assert done_of(h.take(b"o"))[3].status == "done"
    st = {t.tenant: t for t in h.call(b"o", P.Status(req_id=5)).tenants}
    assert st["other"].bytes_held == 0                   # released when the job ended
    for rid in (2, 3, 4):
        h.send(b"g", P.Cancel(req_id=100 + rid, target=rid))
    h.call(b"g", P.Register(req_id=6, model="quick", kernels=kernels(1, 10)))
    assert h.send(b"g", P.Submit(req_id=7, model="quick")) == []   # the count was released


def test_drain_cancels_queued_jobs_lets_started_ones_finish_and_answers_all():
    h = Harness(drain_grace_s=10.0)
    h.hello(b"t", "t")
    h.call(b"t", P.Register(req_id=1, model="m", kernels=kernels(5, 2000)))
    for rid in range(2, 32):
        h.send(b"t", P.Submit(req_id=rid, model="m"))
    h.run(until=0.005)
    replies = h.server.begin_drain(h.env.now)
    assert h.call(b"t", P.Submit(req_id=99, model="m")).code == "DRAINING"
    h.run()
    assert h.server.drained()
    h.server.end_drain(h.env.now)
    for ident, m, raw in replies:
        h.inbox[ident].append((m, raw))
    d = done_of(h.take(b"t"))
    assert sorted(d) == list(range(2, 32))
    states = [m.status for m in d.values()]
    assert states.count("done") >= 1 and states.count("cancelled") >= 1
    assert set(states) == {"done", "cancelled"}


def test_drain_past_its_grace_stops_started_jobs_with_an_answer():
    h = Harness(drain_grace_s=0.001)
    h.hello(b"t", "t")
    h.call(b"t", P.Register(req_id=1, model="m", kernels=kernels(50, 5000)))
    h.send(b"t", P.Submit(req_id=2, model="m"))
    h.run(until=0.01)
    h.server.begin_drain(h.env.now)
    assert not h.server.drained()
    for ident, m, raw in h.server.end_drain(h.env.now + 1):
        h.inbox[ident].append((m, raw))
    d = done_of(h.take(b"t"))
    assert d[2].status == "cancelled" and "daemon stopped" in d[2].error


def test_drain_cancels_jobs_parked_behind_a_gate():
    h = Harness(policy="triton")   # one job per model on the GPU; the others wait parked
    h.hello(b"t", "t")
    h.call(b"t", P.Register(req_id=1, model="m", kernels=kernels(5, 5000)))
    for rid in range(2, 12):
        h.send(b"t", P.Submit(req_id=rid, model="m"))
    h.run(until=0.001)
    replies = h.server.begin_drain(h.env.now)
    cancelled = [m for _, m, _ in replies if isinstance(m, P.Done) and m.status == "cancelled"]
    assert len(cancelled) == 9      # all but the running one, answered at once
    h.run()
    assert h.server.drained()


def test_silent_client_is_dropped_and_its_jobs_answered_as_cancelled():
    h = Harness(client_timeout_s=1.0)
    h.hello(b"s", "sleepy")
    h.hello(b"w", "awake")
    h.call(b"s", P.Register(req_id=1, model="long", kernels=kernels(200, 10_000)))
    h.send(b"s", P.Submit(req_id=2, model="long"))
    h.run(until=0.5)
    h.call(b"w", P.Ping(seq=1))
    h.run(until=1.2)
    for ident, m, raw in h.server.reap_silent(h.env.now):
        h.inbox[ident].append((m, raw))
    d = done_of(h.take(b"s"))
    assert d[2].status == "cancelled" and "silent" in d[2].error
    assert h.routing_id(b"s") not in h.server.sessions
    assert h.routing_id(b"w") in h.server.sessions
    assert h.call(b"s", P.Ping(seq=2)).code == "NOT_CONNECTED"


def test_closed_connection_ends_its_session_at_once_and_cancels_its_jobs():
    h = Harness(client_timeout_s=5.0)
    h.hello(b"k", "k")
    h.hello(b"l", "l")
    h.call(b"k", P.Register(req_id=1, model="long", kernels=kernels(200, 10_000)))
    h.send(b"k", P.Submit(req_id=2, model="long"))
    h.close_connection(b"k")
    assert h.routing_id(b"k") not in h.server.sessions
    assert h.routing_id(b"l") in h.server.sessions
    # nobody reads answers on a closed connection: none are sent (its routing id may be
    # someone else's by now); the jobs are cancelled and counted
    assert h.take(b"k") == []
    st = {t.tenant: t for t in h.call(b"l", P.Status(req_id=1)).tenants}
    assert st["k"].queued == st["k"].running == 0 and st["k"].clients == 0
    assert st["k"].cancelled == 1


def test_tenant_tokens_make_tenants_identities_and_status_shows_only_itself():
    toks = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}
    h = Harness(tenant_tokens=toks)
    h.hello(b"a", "alice", toks["alice"])
    for tenant, token in (("alice", toks["bob"]), ("alice", ""), ("mallory", toks["alice"])):
        m = h.call(b"m", P.Hello(version=P.PROTOCOL_VERSION, tenant=tenant, token=token))
        assert m.code == "AUTH" and "unknown tenant or wrong token" in m.message
    h.hello(b"b", "bob", toks["bob"])
    h.call(b"a", P.Register(req_id=1, model="secret", kernels=kernels(1, 50)))
    assert h.call(b"b", P.Submit(req_id=1, model="secret")).code == "UNKNOWN_MODEL"
    assert [t.tenant for t in h.call(b"b", P.Status(req_id=2)).tenants] == ["bob"]
    assert [t.tenant for t in h.call(b"a", P.Status(req_id=2)).tenants] == ["alice"]


def test_shared_token_is_checked_in_hello():
    h = Harness(token="s3cret")
    assert h.call(b"x", P.Hello(version=P.PROTOCOL_VERSION, tenant="t", token="no")).code == "AUTH"
    h.hello(b"x", "t", "s3cret")


def test_admit_without_admission_control_is_refused_clearly():
    h = Harness()
    h.hello(b"a", "ops")
    m = h.call(b"a", P.Admit(req_id=1, replicas=[P.AdmitReplica("r", "resnet18", 1, 10.0,
                                                                50.0)]))
    assert m.code == "ADMISSION" and "gpusched daemon" in m.message


def test_admit_uses_the_admission_factory_for_its_gpu_type():
    seen = []

    class Fake:
        def __init__(self, gpu):
            seen.append(gpu)

        def admit(self, replicas, replace):
            if replicas[0][3] > 1000:
                raise ValueError("resnet18 would miss its SLO")
            return [{"name": r[0], "predicted_slowdown": 1.5, "predicted_latency_ms": 3.0}
                    for r in replicas]
    h = Harness(admission=Fake, gpu_spec="H100")
    h.hello(b"a", "ops")
    ok = h.call(b"a", P.Admit(req_id=1, replicas=[P.AdmitReplica("r", "resnet18", 1, 10.0, 50)]))
    assert ok.replicas[0].predicted_slowdown == 1.5 and seen == ["H100"]
    bad = h.call(b"a", P.Admit(req_id=2, replicas=[P.AdmitReplica("r", "resnet18", 1, 5000, 50)]))
    assert bad.code == "ADMISSION" and "miss its SLO" in bad.message
    assert seen == ["H100"]   # built once


def test_baseline_policies_are_refused_where_a_jobs_kernels_cannot_overlap():
    class Sequential(FluidDevice):
        caps = FluidDevice.caps.__class__(concurrent_kernels=False)
    with pytest.raises(ConfigError, match="cuda-ms.*experiment baseline"):
        Harness(device=Sequential(gpu_spec("T4")), policy="cuda-ms")


def test_quantum_is_the_devices_default_and_refused_where_kernels_go_one_at_a_time():
    with pytest.raises(ConfigError, match="one kernel at a time.*--backend torch or sim"):
        Harness(device=FluidDevice(gpu_spec("T4")), quantum_us=500.0)
    assert Harness(device=FluidDevice(gpu_spec("T4"))).server.core.quantum_s == 0.0
    assert Harness(quantum_us=0.0).server.core.quantum_s == 0.0
    # the simulated GPU chains a run on the job's stream; it cannot stop one (CUDA cannot)
    sim = Harness().server.core
    assert sim.quantum_s == pytest.approx(120e-6) and not sim.stoppable
    assert Harness(quantum_us=500.0).server.core.quantum_s == pytest.approx(500e-6)
    pytest.importorskip("torch")
    from scheduler_daemon.devices.torch_device import TorchDevice
    h = Harness(device=TorchDevice(gpu_spec("T4"), "cpu"))
    try:
        assert h.server.core.quantum_s == pytest.approx(1e-3) and h.server.core.stoppable
    finally:
        h.close()
    h = Harness(device=TorchDevice(gpu_spec("T4"), "cpu"), quantum_us=250.0)
    try:
        assert h.server.core.quantum_s == pytest.approx(250e-6)
    finally:
        h.close()


def test_graph_and_eager_requests_on_the_simulated_gpu_name_the_backend_to_use():
    h = Harness()
    h.hello(b"a", "a")
    m = h.call(b"a", P.RegisterGraph(req_id=1, model="g", graph=b"\x80"))
    assert m.code == "BAD_MODEL" and "--backend torch" in m.message
    m = h.call(b"a", P.EagerSync(req_id=2))
    assert m.code == "BAD_MODEL" and "--backend torch" in m.message


def test_torch_backend_in_process_outputs_match_local_and_a_failing_kernel_fails_only_its_job():
    torch = pytest.importorskip("torch")
    from scheduler_daemon.devices.torch_device import TorchDevice
    from scheduler_daemon.devices.torch_ops import linear_weight
    h = Harness(device=TorchDevice(gpu_spec("T4"), "cpu"))
    try:
        ks = [KernelSpec(name="fc1", est_us=50, op="linear:32,1"),
              KernelSpec(name="act", est_us=5, op="relu"),
              KernelSpec(name="fc2", est_us=50, op="linear:10,2"),
              KernelSpec(name="sm", est_us=5, op="softmax")]
        x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        t = torch.from_numpy(x) @ linear_weight(16, 32, 1, torch.device("cpu"), torch.float32).T
        t = torch.relu(t) @ linear_weight(32, 10, 2, torch.device("cpu"), torch.float32).T
        want = torch.softmax(t, dim=-1).numpy()
        h.hello(b"a", "a")
        h.call(b"a", P.Register(req_id=1, model="mlp", kernels=ks))
        h.call(b"a", P.Register(req_id=2, model="bad",
                                kernels=[KernelSpec(name="boom", est_us=1, op="fail:kaput")]))
        meta = P.TensorMeta(dtype="float32", shape=[4, 16])
        for rid in range(10, 15):
            h.send(b"a", P.Submit(req_id=rid, model="mlp", inputs=[meta]), x.tobytes())
        h.send(b"a", P.Submit(req_id=20, model="bad", inputs=[meta]), x.tobytes())
        h.run()
        d = {m.req_id: (m, raw) for m, raw in h.take(b"a") if isinstance(m, P.Done)}
        for rid in range(10, 15):
            m, raw = d[rid]
            out = np.frombuffer(raw[0], np.float32).reshape(m.outputs[0].shape)
            assert np.array_equal(out, want)     # bit-identical to local execution
        assert d[20][0].status == "failed" and "kaput" in d[20][0].error
        m = h.call(b"a", P.Register(req_id=3, model="nope",
                                    kernels=[KernelSpec(name="x", est_us=1, op="conv9d")]))
        assert m.code == "BAD_MODEL" and "conv9d" in m.message
    finally:
        h.close()


def test_torch_backend_a_lone_jobs_run_stops_at_the_next_op_when_another_job_arrives():
    """Alone, a job's remaining ops go to the worker as one run (no per-op round trip); an
    arrival stops it at the next op boundary, so the newcomer waits one op, not the job."""
    pytest.importorskip("torch")
    import time

    from scheduler_daemon.devices.torch_device import TorchDevice
    h = Harness(device=TorchDevice(gpu_spec("T4"), "cpu"), policy="srpt")
    try:
        h.hello(b"a", "a")
        h.call(b"a", P.Register(req_id=1, model="long", kernels=[
            KernelSpec(name=f"s{i}", est_us=30_000, op="sleep:30000") for i in range(10)]))
        h.call(b"a", P.Register(req_id=2, model="short", kernels=[
            KernelSpec(name="id", est_us=10, op="identity")]))
        h.send(b"a", P.Submit(req_id=10, model="long", inputs=[]))
        job, = [j for s in h.server.sessions.values() for j in s.jobs.values()]
        assert job.run_len == 10 and not job.stop   # alone: the whole job is one run
        time.sleep(0.045)                 # the worker is inside the second op
        h.send(b"a", P.Submit(req_id=20, model="short", inputs=[]))
        assert job.stop
        h.run()
        done = [m.req_id for m, _ in h.take(b"a") if isinstance(m, P.Done)]
        # the short job was answered first: the long job's run was cut after its second op
        # (without the stop it would have run all 10, 300 ms, before the short one)
        assert done == [20, 10]
        assert job.state.value == "done" and job.done_kernels == 10
    finally:
        h.close()
