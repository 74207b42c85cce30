"""A user's first hour with geo (issue 20): one service per endpoint and per state, a job that
can never run refused at submit naming its line, strict types, errors in the user's words,
status that does not repeat the last diff, and `geo plan` without a PNG or INFO lines unless
asked. In-process where possible; the tests that start processes are marked slow."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from geo.protocol import (
    REPLIES,
    Error,
    EventReq,
    StatusReq,
    Submit,
    decode,
    encode,
    event_from_args,
)
from geo.service import GeoRefused, GeoService, GeoServiceError, claim_endpoint
from geo.spec import GeoSpecError, load_yaml, parse_job, parse_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "examples", "geo", "spec.yaml")
JOB = os.path.join(ROOT, "examples", "geo", "job.yaml")
H200_JOB = open(JOB).read().replace("gpu_types: [H100, A100]", "gpu_types: [H200]")


# -- (a) one service per state, one per endpoint ------------------------------------------------
def test_a_second_service_on_the_same_state_is_refused(tmp_path):
    state = str(tmp_path / "state.json")
    first = GeoService(f"ipc://{tmp_path}/a.sock", state, SPEC)
    try:
        with pytest.raises(GeoServiceError, match=r"another geo service uses the state .*"
                                                   r"stop it first, or pass another --state"):
            GeoService(f"ipc://{tmp_path}/b.sock", state)
    finally:
        first.close()
    GeoService(f"ipc://{tmp_path}/b.sock", state).close()  # free again once it stopped


def test_a_served_endpoint_is_refused_and_a_stale_one_reused(tmp_path):
    path = str(tmp_path / "geo.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(GeoServiceError, match="already serving .* pass another --endpoint"):
            claim_endpoint(f"ipc://{path}")
        assert os.path.exists(path)  # never removed from under the one who serves it
    finally:
        live.close()
    claim_endpoint(f"ipc://{path}")  # nobody accepts there any more: a stale file, removed
    assert not os.path.exists(path)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(GeoServiceError, match="is not a socket"):
        claim_endpoint(f"ipc://{tmp_path}/plain")


def _serve(tmp_path, name, state, log):
    return subprocess.Popen([sys.executable, "-m", "gpusched.cli", "geo", "serve", "--spec", SPEC,
                             "--endpoint", f"ipc://{tmp_path}/{name}", "--state", str(state)],
                            stdout=log, stderr=log, cwd=ROOT)


@pytest.mark.slow
def test_second_geo_serve_refused_and_the_first_keeps_serving(tmp_path):
    """The finding: a second `geo serve` on the same endpoint took it over, and when it
    stopped it deleted the socket file; two services on one --state both started."""
    from geo.service import GeoClient

    log = open(tmp_path / "first.log", "w")
    first = _serve(tmp_path, "geo.sock", tmp_path / "s1.json", log)
    try:
        deadline = time.time() + 60
        while not os.path.exists(tmp_path / "geo.sock"):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        for name, state, needle in (("geo.sock", tmp_path / "s2.json", "already serving"),
                                    ("other.sock", tmp_path / "s1.json",
                                     "another geo service uses the state")):
            r = subprocess.run([sys.executable, "-m", "gpusched.cli", "geo", "serve", "--spec",
                                SPEC, "--endpoint", f"ipc://{tmp_path}/{name}", "--state",
                                str(state)], capture_output=True, text=True, timeout=120,
                               cwd=ROOT)
            assert r.returncode == 2, r.stderr
            assert needle in r.stderr and "Traceback" not in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert os.path.exists(tmp_path / "geo.sock")
        with GeoClient(f"ipc://{tmp_path}/geo.sock") as c:
            assert c.status().plan is not None
        # (b) through the CLI: a job no site can ever run is refused, naming its file's line
        bad = tmp_path / "h200.yaml"
        bad.write_text(H200_JOB)
        r = subprocess.run([sys.executable, "-m", "gpusched.cli", "geo", "submit", str(bad),
                            "--endpoint", f"ipc://{tmp_path}/geo.sock"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 2
        assert r.stderr.startswith(f"gpusched geo: error: {bad}:6: gpu_types: no site has "
                                   f"H200 GPUs"), r.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
    assert not os.path.exists(tmp_path / "geo.sock")  # its own file, removed when it stops


# -- (b) a job that can never run; strict types ------------------------------------------------
def test_a_job_on_gpu_types_nowhere_in_the_fleet_is_a_spec_error_with_its_line():
    text = open(SPEC).read().replace("gpu_types: [H100]\n    min_gpus: 16",
                                     "gpu_types: [H200]\n    min_gpus: 16")
    with pytest.raises(GeoSpecError, match=r"^spec.yaml:37: jobs\[0\].gpu_types: no site has "
                                           r"H200 GPUs, so job 'llm-7b' could never run"):
        parse_spec(text, "spec.yaml")


def test_submit_of_a_job_that_can_never_run_is_refused_naming_its_line(tmp_path):
    svc = GeoService(f"ipc://{tmp_path}/x.sock", str(tmp_path / "s.json"), SPEC)
    try:
        job = parse_job(H200_JOB, "job.yaml")
        ans = decode(svc.handle(encode(Submit(1, job))), REPLIES)
        assert isinstance(ans, Error) and ans.code == "BAD_REQUEST"
        assert "gpu_types: no site has H200 GPUs" in ans.message
        assert all(j.name != job.name for j in svc.state.spec.jobs)  # nothing changed
        # the client turns it into the file's line (geo submit)
        _, lines = load_yaml(H200_JOB, "job.yaml")
        msg = GeoRefused(ans.code, ans.message).at_line("job.yaml", job.name, lines)
        assert msg.startswith("job.yaml:6: gpu_types: no site has H200 GPUs"), msg
    finally:
        svc.close()


@pytest.mark.parametrize("old, new, needle", [
    ("min_gpus: 8", 'min_gpus: "8"', r"job.yaml:7: min_gpus: Expected `int`, got `str`"),
    ("priority: 2", "priority: 'high'", r"job.yaml:9: priority: Expected `float`, got `str`"),
    ("iterations: 4000", "iterations: 4000.5", r"job.yaml:5: iterations: Expected `int`"),
])
def test_types_are_strict(old, new, needle):
    """A quoted number is a string, refused (as `place` does); 7e9 is still a number."""
    with pytest.raises(GeoSpecError, match=needle):
        parse_job(open(JOB).read().replace(old, new), "job.yaml")
    assert parse_job(open(JOB).read().replace("3.0e+9", "3e9"), "job.yaml").params == 3e9


# -- (c) errors in the user's words; status; plan's PNG and log lines ---------------------------
@pytest.mark.parametrize("kind, args, needle", [
    ("capacity", ["a", "H100", "-4"],
     r"^event capacity SITE TYPE COUNT: COUNT must be a whole number of GPUs, 0 or more .*"
     r"\(got -4\)$"),
    ("price", ["a", "H100", "-1"], r"USD_PER_HOUR must be a price .*\(got -1\)$"),
    ("capacity", ["a", "H100", "x"], r"takes SITE TYPE COUNT \(a number where"),
])
def test_event_arguments_are_named_in_the_users_words(kind, args, needle):
    with pytest.raises(ValueError, match=needle):
        event_from_args(kind, args)


@pytest.mark.parametrize("argv, needle", [
    (["geo", "submit", "/nonexistent.yaml"],
     "gpusched geo: error: cannot read the job file /nonexistent.yaml: No such file or "
     "directory"),
    (["geo", "plan", SPEC, "--time-limit", "-1"],
     "gpusched geo: error: --time-limit must be > 0 seconds (got -1)"),
    (["geo", "event", "capacity", "a", "H100", "-4"],
     "gpusched geo: error: event capacity SITE TYPE COUNT: COUNT must be"),
])
def test_cli_mistakes_exit_2_with_one_line(argv, needle, capsys):
    from gpusched.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(needle) and "\n" not in err and "Errno" not in err, err


def test_status_does_not_repeat_the_last_events_diff(tmp_path):
    svc = GeoService(f"ipc://{tmp_path}/x.sock", str(tmp_path / "s.json"), SPEC)
    try:
        ev = event_from_args("site-down", ["aws:us-west-2"])
        r = decode(svc.handle(encode(EventReq(1, ev))), REPLIES)
        assert r.diff and r.events == 1
        st = decode(svc.handle(encode(StatusReq(2))), REPLIES)
        assert st.diff == [] and st.events == 1 and st.plan == r.plan
    finally:
        svc.close()


@pytest.mark.slow
def test_geo_plan_writes_no_png_and_no_info_lines_unless_asked(tmp_path):
    def run(*extra):
        return subprocess.run([sys.executable, "-m", "gpusched.cli", "geo", "plan", SPEC,
                               *extra], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
    r = run()
    assert r.returncode == 0 and "llm-7b" in r.stdout
    assert list(tmp_path.iterdir()) == [] and " INFO " not in r.stderr, r.stderr
    r = run("--plot", str(tmp_path / "p.png"), "--log-level", "INFO")
    assert r.returncode == 0 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert " INFO geo." in r.stderr
