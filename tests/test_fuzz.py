"""Hostile input: the decoder and a live daemon under random and mutated frames, and load."""
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusched.bench.fuzz import answer_counts, atheris_one_input, fuzz_message, run_fuzz
from gpusched.bench.soak import run_soak
from scheduler_daemon.wire import protocol as P


@settings(max_examples=400, deadline=None)
@given(tag=st.one_of(st.sampled_from(list(P.REQUESTS)), st.binary(max_size=12)),
       body=st.binary(max_size=200))
def test_decoder_rejects_garbage_with_protocol_errors_only(tag, body):
    try:
        msg = P.decode(tag, body, P.REQUESTS)
    except P.ProtocolError as e:
        assert e.code in (P.Code.BAD_FRAME, P.Code.BAD_MESSAGE) and e.message
    else:
        assert type(msg) is P.REQUESTS[tag]


def test_mutated_valid_messages_decode_or_fail_cleanly():
    rng = random.Random(3)
    accepted, rejected = 0, 0
    for _ in range(5000):
        frames, _ = fuzz_message(rng)
        if len(frames) < 2:
            continue
        try:
            msg = P.decode(frames[0], frames[1], P.REQUESTS)
        except P.ProtocolError as e:
            assert e.code in (P.Code.BAD_FRAME, P.Code.BAD_MESSAGE) and e.message
            rejected += 1
        else:
            assert type(msg) is P.REQUESTS[bytes(frames[0])]
            assert P.decode(*P.encode(msg), P.REQUESTS) == msg   # what decodes round-trips
            accepted += 1
    # the mix reaches both sides of every check, not only the msgpack framing
    assert accepted > 1000 and rejected > 1000, (accepted, rejected)


def test_server_answers_every_fuzzed_message_exactly_once_in_process():
    """The same fuzzed messages through the daemon's Server (no socket): one answer each
    (DONE for a submit that was queued; ACCEPTED notices aside), never INTERNAL."""
    from scheduler_daemon.core.gpu_specs import gpu_spec
    from scheduler_daemon.devices.fluid import FluidDevice
    from tests.server_harness import Harness
    rng = random.Random(7)
    h = Harness(device=FluidDevice(gpu_spec("T4"), speed=0.0))
    peers = [b"hello", b"stranger", b"rehello"]
    for p in (b"hello", b"rehello"):
        h.hello(p, p.decode())
        h.call(p, P.Register(req_id=1, model="m", kernels=[P.KernelSpec(name="k", est_us=0.0)]))
    expected, got = 0, []
    for _ in range(3000):
        peer = rng.choice(peers)
        frames, answers = fuzz_message(rng)
        expected += answers
        got += h.send_frames(peer, *frames)
    h.run()
    got += [r for p in peers for r in h.take(p)]
    replies = [m for m, _ in got if not isinstance(m, P.Accepted)]
    errors = [m for m in replies if isinstance(m, P.Error)]
    assert len(replies) == expected
    assert not [m for m in errors if m.code == P.Code.INTERNAL]
    assert 0 < len(errors) < len(replies)         # both refused and served requests


@pytest.mark.slow
def test_live_daemon_answers_every_fuzzed_message_and_keeps_serving():
    res = run_fuzz(messages=4000, seed=11)
    assert res["crashes"] == 0
    assert res["lost_answers"] == 0 and res["extra_answers"] == 0
    assert res["served_after"] is True


@pytest.mark.slow
def test_soak_every_submit_answered_exactly_once():
    res = run_soak(duration=4.0, clients=6, jobs=150)
    assert res["client_errors"] == [] and res["crashes"] == 0
    assert res["messages"] == 6 * 150
    assert res["lost_answers"] == 0 and res["duplicate_answers"] == 0
    assert res["completed"] == res["messages"]  # answered as done, not cancelled
    assert res["p99_ms"] < res["slo_ms"]


def test_answer_counts_are_never_negative():
    assert answer_counts(10, 10) == {"lost_answers": 0, "extra_answers": 0}
    assert answer_counts(10, 7) == {"lost_answers": 3, "extra_answers": 0}
    assert answer_counts(10, 12) == {"lost_answers": 0, "extra_answers": 2}


def test_atheris_harness_inputs_fail_only_with_protocol_errors():
    """The atheris harness's own check, on random inputs (runs without atheris too)."""
    rng = random.Random(5)
    seen = {True: 0, False: 0}
    for i in range(5000):
        head = rng.randrange(256) | (0x40 if i % 2 else 0)
        seen[atheris_one_input(bytes([head]) + rng.randbytes(rng.randrange(0, 48)))] += 1
    assert seen[True] > 100 and seen[False] > 100, seen


@pytest.mark.slow
def test_atheris_coverage_guided_decoders():
    pytest.importorskip("atheris")  # optional: pip install atheris (wheels for x86_64 Linux)
    r = subprocess.run([sys.executable, "-m", "gpusched.bench.fuzz", "atheris", "30000"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 30000 runs" in r.stderr


@pytest.mark.slow
def test_soak_client_past_its_grace_is_killed_and_counted_not_a_traceback():
    """Clients still running at the deadline are killed and reported; the others' rows kept.
    (Processes that sleep stand in for slow clients: no timing race with their start-up.)"""
    import time

    from gpusched.bench.soak import collect_clients
    slow = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    quick = subprocess.Popen([sys.executable, "-c", "print('{\"submitted\": 3}')"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    quick.wait(30)
    rows, errors, failed = collect_clients([quick] + slow, time.monotonic() + 0.5, 0.5)
    assert rows == [{"submitted": 3}] and failed == 2
    assert len(errors) == 2 and all("killed" in e for e in errors)
    assert all(p.poll() is not None for p in slow)
