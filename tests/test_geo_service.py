"""The geo service over a real ipc socket: submit/event/status round trip, bad frames answered
with an error, SIGTERM exits cleanly, and a restart keeps the state."""
import json
import os
import signal
import subprocess
import sys
import time

import msgspec
import pytest

from geo.protocol import REPLIES, Error, Event, decode
from geo.service import GeoClient
from geo.spec import parse_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "examples", "geo", "spec.yaml")
JOB = os.path.join(ROOT, "examples", "geo", "job.yaml")


def start(tmp_path, *extra):
    ep = f"ipc://{tmp_path}/geo.sock"
    state = tmp_path / "state.json"
    log = open(tmp_path / "serve.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "gpusched.cli", "geo", "serve", "--spec", SPEC,
                             "--endpoint", ep, "--state", str(state), *extra],
                            stdout=log, stderr=log, cwd=ROOT)
    deadline = time.time() + 60
    while not os.path.exists(f"{tmp_path}/geo.sock"):
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        assert time.time() < deadline, "geo service did not start"
        time.sleep(0.05)
    return proc, ep, state


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gpusched.cli", "geo", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture
def service(tmp_path):
    proc, ep, state = start(tmp_path)
    yield proc, ep, state
    if proc.poll() is None:
        stop(proc)


def test_round_trip_bad_input_and_restart(service, tmp_path):
    proc, ep, state = service
    with GeoClient(ep) as c:
        st = c.status()
        assert st.events == 0 and len(st.plan.jobs) == 7
        with open(JOB) as f:
            r = c.submit(parse_job(f.read()))
        assert r.events == 1 and r.plan.job("llm-3b-new")
        assert any(d.job == "llm-3b-new" for d in r.diff)
        busiest = max(r.plan.sites, key=lambda s: s.gpus_used).name
        on_it = {j.name for j in r.plan.jobs if busiest in j.sites and j.start_h == 0}
        r = c.event(Event("site-down", site=busiest))
        assert r.events == 2
        assert all(busiest not in j.sites or j.start_h > 0 for j in r.plan.jobs)
        assert {d.job for d in r.diff if d.change in ("moved", "stopped")} == on_it
        # bad input: each answered with an error, and the service keeps serving
        for frames, code in [([b"NOPE", b"x"], "BAD_FRAME"),
                             ([b"SUBMIT", b"\xff\x00garbage"], "BAD_MESSAGE"),
                             ([b"STATUS"], "BAD_FRAME"),
                             ([b"EVENT", msgspec.msgpack.encode({"req_id": 5, "event": {
                                 "kind": "teleport"}})], "BAD_MESSAGE"),
                             ([b"SUBMIT", msgspec.msgpack.encode({"req_id": 6, "job": {
                                 "name": "x", "params": 1e9, "tokens_per_iter": 1e6,
                                 "iterations": 10, "gpu_types": ["H100"], "min_gpus": 9,
                                 "max_gpus": 2}})], "BAD_REQUEST"),
                             ([b"EVENT", msgspec.msgpack.encode({"req_id": 7, "event": {
                                 "kind": "site-down", "site": "mars:base-1"}})], "BAD_REQUEST")]:
            ans = decode(c.raw(frames), REPLIES)
            assert isinstance(ans, Error) and ans.code == code, (frames, ans)
        with open(JOB) as f:  # a duplicate is refused and changes nothing
            dup = parse_job(f.read())
        with pytest.raises(ValueError, match="exists already"):
            c.submit(dup)
        assert c.status().events == 2
    stop(proc)
    # restart: nothing lost
    proc2, ep, _ = start(tmp_path)
    try:
        with GeoClient(ep) as c:
            st = c.status()
            assert st.events == 2 and st.plan.job("llm-3b-new")
            assert all(busiest not in j.sites or j.start_h > 0 for j in st.plan.jobs)
            r = c.event(Event("site-up", site=busiest))
            assert r.events == 3
    finally:
        stop(proc2)


def test_cli_submit_event_status(service, tmp_path):
    proc, ep, _ = service
    r = cli("submit", JOB, "--endpoint", ep, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["events"] == 1
    r = cli("event", "price", "aws:us-west-2", "H100", "1.5", "--endpoint", ep)
    assert r.returncode == 0, r.stderr
    r = cli("status", "--endpoint", ep, "--json")
    d = json.loads(r.stdout)
    assert d["events"] == 2 and {"status", "jobs", "sites"} <= set(d["plan"])
    r = cli("event", "capacity", "aws:us-west-2", "H100", "lots", "--endpoint", ep)
    assert r.returncode == 2 and "COUNT" in r.stderr
    r = cli("event", "site-down", "nowhere:1", "--endpoint", ep)
    assert r.returncode == 2 and "'nowhere:1' is not a site" in r.stderr


@pytest.mark.slow
def test_token_and_curve(tmp_path):
    from scheduler_daemon.transport.keys import make_keys, read_key
    secret, public = make_keys(str(tmp_path / "keys"))
    proc, ep, _ = start(tmp_path, "--token", "s3cret", "--curve-secret", secret)
    try:
        with GeoClient(ep, token="wrong", server_key=read_key(public)) as c:
            with pytest.raises(ValueError, match="DENIED"):
                c.status()
        with GeoClient(ep, token="s3cret", server_key=read_key(public)) as c:
            assert c.status().plan is not None
        r = cli("status", "--endpoint", ep, "--token", "s3cret", "--server-key", public, "--json")
        assert r.returncode == 0, r.stderr
        with GeoClient(ep, token="s3cret", timeout_s=1.0) as c:  # no CURVE: no answer
            with pytest.raises(TimeoutError):
                c.status()
    finally:
        stop(proc)


@pytest.mark.slow
def test_no_service_is_a_clear_error(tmp_path):
    r = cli("status", "--endpoint", f"ipc://{tmp_path}/none.sock", "--timeout", "0.5")
    assert r.returncode == 2 and "no geo service" in r.stderr


@pytest.mark.slow
def test_fuzzed_frames_always_get_one_answer(tmp_path):
    """Random and half-valid frames straight into the request handler: every one gets a REPLY
    or an ERROR, nothing raises, and the state only changes through valid requests."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from geo.service import GeoService

    svc = GeoService(f"ipc://{tmp_path}/unused.sock", str(tmp_path / "state.json"), SPEC)
    events0 = svc.state.events
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                        st.text(max_size=20), st.binary(max_size=20))
    values = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
        max_leaves=12)
    fields = st.sampled_from(["req_id", "job", "event", "token", "kind", "site", "name",
                              "params", "min_gpus", "gpu_types", "count"])
    bodies = st.one_of(st.binary(max_size=64), st.builds(
        msgspec.msgpack.encode, st.dictionaries(fields, values, max_size=5)))
    tags = st.one_of(st.sampled_from([b"SUBMIT", b"EVENT", b"STATUS", b"REPLY"]),
                     st.binary(max_size=8))
    frames = st.one_of(st.lists(st.binary(max_size=32), max_size=3),
                       st.tuples(tags, bodies).map(list))

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frames)
    def one(fr):
        ans = decode(svc.handle(fr), REPLIES)
        assert isinstance(ans, (Error,)) or ans.plan is not None

    one()
    # nothing random was a valid job or event: the state is untouched and still served
    assert svc.state.events == events0
    ans = decode(svc.handle([b"STATUS", msgspec.msgpack.encode({"req_id": 1})]), REPLIES)
    assert not isinstance(ans, Error) and len(ans.plan.jobs) == 7


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["ipc:///nonexistent-dir/geo.sock", "tcp://127.0.0.1:1"])
def test_client_without_service_fails_fast_exit_2(endpoint):
    t0 = time.monotonic()
    r = cli("status", "--endpoint", endpoint, "--timeout", "30")
    assert r.returncode == 2, r.stderr
    assert "no geo service at" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 8  # not the 30 s answer timeout


@pytest.mark.slow
def test_sigkill_loses_no_answered_change(service, tmp_path):
    """An answer means the change is on disk: killed without a chance to clean up (SIGKILL),
    the restarted service (on the stale socket path) still has every answered submit/event."""
    proc, ep, state = service
    with GeoClient(ep) as c:
        with open(JOB) as f:
            assert c.submit(parse_job(f.read())).events == 1
        assert c.event(Event("price", site="aws:us-west-2", gpu_type="H100",
                             usd_per_hour=1.5)).events == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=20)
    log = open(tmp_path / "serve.log", "a")
    proc2 = subprocess.Popen([sys.executable, "-m", "gpusched.cli", "geo", "serve", "--endpoint",
                              ep, "--state", str(state)], stdout=log, stderr=log, cwd=ROOT)
    try:
        deadline = time.time() + 60
        while True:  # the old socket file is still there: poll until the new service answers
            assert proc2.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with GeoClient(ep, timeout_s=1.0) as c:
                    st = c.status()
                break
            except (TimeoutError, ValueError, OSError):
                assert time.time() < deadline, "restarted geo service did not answer"
                time.sleep(0.2)
        assert st.events == 2 and st.plan.job("llm-3b-new")
        site = next(s for s in json.loads(state.read_text())["spec"]["sites"]
                    if s["name"] == "aws:us-west-2")
        assert site["gpus"][0]["usd_per_hour"] == 1.5
    finally:
        stop(proc2)


def _fleet_state(tmp_path, objective="throughput"):
    """A state file: 60 jobs planned on 10 sites, then 10 finished (free GPUs), re-planned;
    and 10 more jobs of the same kind to submit."""
    from geo.instances import make_instance
    from geo.replan import initial_plan, replan
    from geo.state import GeoState, save_state

    spec = make_instance(70, 10, seed=2)
    late = spec.jobs[60:]
    spec.jobs = spec.jobs[:60]
    initial_plan(spec, objective, "decomposed")
    spec.jobs = spec.jobs[10:]
    plan, diff = replan(spec, objective, "10 jobs finished", improve=False)
    path = str(tmp_path / "state.json")
    save_state(GeoState(spec=spec, objective=objective, solver="decomposed", plan=plan,
                        diff=diff), path)
    return path, late


def _submit(svc, req_id, job):
    from geo.protocol import Submit, encode
    return decode(svc.handle(encode(Submit(req_id, job))), REPLIES)


@pytest.mark.parametrize("objective", ["throughput", "cost", "makespan", "balance"])
def test_submit_takes_the_arrival_fast_path_and_its_plan_is_exact(tmp_path, objective):
    """A job that fits in the free GPUs is placed alone (path "arrival", no re-plan); the plan
    the answer carries is the one a full evaluation of the same placement gives: site rows,
    demand/supply, objective, cost, makespan. A job that does not fit gets a re-plan."""
    from geo.replan import clone, replan
    from geo.service import GeoService
    from geo.state import load_state

    path, late = _fleet_state(tmp_path, objective)
    svc = GeoService(f"ipc://{tmp_path}/unused.sock", path)
    paths = []
    for k, job in enumerate(late[:6]):
        before = {j.name: j.running for j in svc.state.spec.jobs}
        r = _submit(svc, k + 1, job)
        assert not isinstance(r, Error), r
        paths.append(r.path)
        assert r.events == k + 1 and r.plan.job(job.name)
        if r.path != "arrival":
            continue
        assert [d.job for d in r.diff] == [job.name] and r.diff[0].change == "placed"
        assert r.plan.solver == "arrival"
        # nobody else moved
        assert {j.name: j.running for j in svc.state.spec.jobs if j.name != job.name} == before
        # the same placement evaluated from scratch: every job kept where it runs
        ref = clone(svc.state.spec)
        full, diff = replan(ref, objective, "check", improve=False)
        assert not [d for d in diff if d.change != "waiting"], diff
        assert [(s.name, s.gpus_used, s.gpus_total, s.gpus_wanted, s.demand_supply_ratio)
                for s in r.plan.sites] == \
            [(s.name, s.gpus_used, s.gpus_total, s.gpus_wanted, s.demand_supply_ratio)
             for s in full.sites]
        assert r.plan.max_demand_supply == pytest.approx(full.max_demand_supply)
        assert r.plan.objective_value == pytest.approx(full.objective_value, rel=1e-9)
        assert r.plan.cost_per_hour == pytest.approx(full.cost_per_hour, rel=1e-9)
        assert r.plan.makespan_h == pytest.approx(full.makespan_h, rel=1e-9)
        jp, fj = r.plan.job(job.name), full.job(job.name)
        assert (jp.sites, jp.gpu_type, jp.start_h) == (fj.sites, fj.gpu_type, 0.0)
    assert paths.count("arrival") >= 3
    # on disk before the answer: the journal replays into the state
    disk = load_state(path)
    assert disk.events == svc.state.events
    assert [j.name for j in disk.spec.jobs] == [j.name for j in svc.state.spec.jobs]
    assert disk.plan == svc.state.plan
    # a job bigger than any free pool of its type (not than the pools): a full re-plan
    free, m = svc._free[1], svc._fleet_model()
    t = next(t for t in ("H100", "A100", "L4") if max(m.capacity(s, t) for s in m.sites) >
             max(n for (s, tt), n in free.items() if tt == t))
    n = max(n for (s, tt), n in free.items() if tt == t) + 1
    big = msgspec.structs.replace(late[6], name="big", gpu_types=[t], min_gpus=n, max_gpus=n,
                                  deadline_h=None, modes=["single-site"])
    r = _submit(svc, 50, big)
    assert r.path == "replan" and r.plan.job("big")


def test_journal_replay_skips_what_the_state_holds_and_drops_a_torn_record(tmp_path):
    from geo.service import GeoService
    from geo.state import journal_path, load_state

    path, late = _fleet_state(tmp_path)
    svc = GeoService(f"ipc://{tmp_path}/unused.sock", path)
    trail = 0  # arrivals since the last re-plan (which saves the whole state)
    for k, job in enumerate(late[:7]):
        trail = trail + 1 if _submit(svc, k + 1, job).path == "arrival" else 0
        if trail and k >= 2:
            break  # a few submits, the last ones on the fast path
    assert trail and svc._journal == trail
    assert len(open(journal_path(path), "rb").read().splitlines()) == trail
    with open(journal_path(path), "ab") as f:
        f.write(b'{"events": 99, "job": {"na')  # a crash mid-write: never answered
    disk = load_state(path)
    assert disk.events == svc.state.events and disk.plan == svc.state.plan
    svc.compact()  # the state file holds everything; the journal is emptied
    assert os.path.getsize(journal_path(path)) == 0 and load_state(path) == disk
    # a restart finds its jobs; a record the state holds already is skipped, not applied twice
    with open(journal_path(path), "wb") as f:
        f.write(b"")
    svc.close()  # a restart: the first service let go of the state
    svc2 = GeoService(f"ipc://{tmp_path}/unused.sock", path)
    assert [j.name for j in svc2.state.spec.jobs] == [j.name for j in svc.state.spec.jobs]
    r = _submit(svc2, 99, late[7])
    assert not isinstance(r, Error)
    if r.path == "arrival":
        rec = open(journal_path(path), "rb").read()
        svc2.compact()
        with open(journal_path(path), "wb") as f:
            f.write(rec)  # left by a crash between the state's save and the journal's reset
        again = load_state(path)
        assert [j.name for j in again.spec.jobs].count(late[7].name) == 1
        assert again.events == svc2.state.events


@pytest.mark.slow
def test_sigkill_after_a_fast_path_submit_loses_nothing(service, tmp_path):
    proc, ep, state = service
    with GeoClient(ep) as c:
        with open(JOB) as f:
            r = c.submit(parse_job(f.read()))
    assert r.path == "arrival" and r.events == 1
    proc.send_signal(signal.SIGKILL)  # before the idle save folds the journal in (likely)
    proc.wait(timeout=20)
    os.unlink(f"{tmp_path}/geo.sock")
    proc2, ep, _ = start(tmp_path)
    try:
        with GeoClient(ep) as c:
            st = c.status()
        assert st.events == 1 and st.plan.job("llm-3b-new").sites == r.plan.job("llm-3b-new").sites
    finally:
        stop(proc2)


@pytest.mark.slow
def test_whole_messages_and_connections_are_bounded(tmp_path):
    """Issue 14 for the geo service: a message of too many parts or bytes is answered TOO_LARGE
    without being kept, and connections past --max-connections are refused at the handshake
    (a new one is let in once another closes)."""
    import zmq
    proc, ep, _ = start(tmp_path, "--max-connections", "2")
    ctx = zmq.Context()

    def dealer():
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(ep)
        return s

    def ask(s, frames, timeout_ms=5000):
        s.send_multipart(frames)
        return decode(s.recv_multipart(), REPLIES) if s.poll(timeout_ms) else None

    status = [b"STATUS", msgspec.msgpack.encode({"req_id": 7})]
    try:
        a, b = dealer(), dealer()
        many = ask(a, status + [b"x"] * 1000)
        assert isinstance(many, Error) and many.code == "TOO_LARGE" and "1002 parts" in many.message
        big = ask(a, [b"STATUS"] + [b"x" * (3 << 20)] * 3)
        assert isinstance(big, Error) and big.code == "TOO_LARGE"
        assert ask(a, status).req_id == 7 and ask(b, status).req_id == 7
        c = dealer()                      # the third live connection
        assert ask(c, status, timeout_ms=1500) is None
        b.close()                         # room again for a new connection
        time.sleep(0.2)
        assert ask(dealer(), status).req_id == 7
        assert "refused a connection: 3 live (limit 2)" in (tmp_path / "serve.log").read_text()
    finally:
        ctx.destroy(0)
        stop(proc)
