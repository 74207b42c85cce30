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
    for _ in range(5000):
        frames, _ = fuzz_message(rng)
        if len(frames) >= 2:
            try:
                P.decode(frames[0], frames[1], P.REQUESTS)
            except P.ProtocolError:
                pass


def test_live_daemon_answers_every_fuzzed_message_and_keeps_serving():
    res = run_fuzz(messages=4000, seed=11)
    assert res["crashes"] == 0
    assert res["lost_answers"] == 0 and res["extra_answers"] == 0
    assert res["served_after"] is True


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
    for i in range(5000):
        head = rng.randrange(256) | (0x40 if i % 2 else 0)
        atheris_one_input(bytes([head]) + rng.randbytes(rng.randrange(0, 48)))


def test_atheris_coverage_guided_decoders():
    pytest.importorskip("atheris")  # optional: pip install atheris (wheels for x86_64 Linux)
    r = subprocess.run([sys.executable, "-m", "gpusched.bench.fuzz", "atheris", "30000"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done 30000 runs" in r.stderr


def test_soak_client_past_its_grace_is_killed_and_counted_not_a_traceback():
    # the clients need about a second to start; a 0.05 s grace kills them: reported, counted
    res = run_soak(duration=0.2, clients=2, jobs=50, grace_s=0.05)
    assert len(res["client_errors"]) == 2 and "killed" in res["client_errors"][0]
    assert res["lost_answers"] == 100 and res["crashes"] == 0
