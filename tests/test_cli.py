"""The command line: JSON outputs, --help, and clear errors with exit code 2."""
import json
import subprocess
import sys

import pytest

GPUSCHED = [sys.executable, "-m", "gpusched.cli"]


def run(*args, timeout=120):
    return subprocess.run([*GPUSCHED, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("daemon", "submit", "status", "bench", "demo"):
        assert cmd in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["daemon", "--gpu-spec", "X999"], "invalid choice"),
    (["daemon", "--endpoint", "http://nope"], "bad endpoint"),
    (["status", "--endpoint", "ipc:///tmp/gpusched-test-none/x.sock"], "does not exist"),
    (["submit", "--workload", "nope"], "invalid choice"),
    (["bench"], "name a benchmark"),
    (["status", "--endpoint", "tcp://127.0.0.1:abc"], "bad endpoint"),
    (["demo", "--policies", "bogus"], "unknown policies"),
    (["daemon", "--metrics-port", "99999"], "--metrics-port"),
])
@pytest.mark.slow
def test_mistakes_exit_2_without_traceback(args, needle):
    r = run(*args)
    assert r.returncode == 2, r
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_submit_and_status_json(daemon):
    r = run("submit", "--endpoint", daemon, "--workload", "mixed", "--clients", "3",
            "--rate", "30", "--duration", "1.5", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {t["tenant"] for t in res["tenants"]} == {"short", "medium", "long"}
    for row in [*res["tenants"], res["overall"]]:
        for key in ("completed", "failed", "client_p50_ms", "client_p99_ms",
                    "client_slo_attainment", "daemon_p50_ms", "daemon_p99_ms",
                    "daemon_slo_attainment"):
            assert key in row
        assert row["completed"] == row["submitted"] and row["failed"] == 0
        assert 0.0 <= row["client_slo_attainment"] <= 1.0
    assert res["overall"]["client_p99_ms"] >= res["overall"]["client_p50_ms"] > 0
    s = run("status", "--endpoint", daemon, "--json")
    assert s.returncode == 0, s.stderr
    st = json.loads(s.stdout)
    done = {t["tenant"]: t["completed"] for t in st["tenants"]}
    assert done["short"] == next(t["submitted"] for t in res["tenants"] if t["tenant"] == "short")


def test_second_daemon_on_same_endpoint_is_refused(daemon):
    r = run("daemon", "--endpoint", daemon, "--backend", "sim", timeout=30)
    assert r.returncode == 2
    assert "already serving" in r.stderr
    s = run("status", "--endpoint", daemon, "--json")  # the first one is untouched
    assert s.returncode == 0, s.stderr


@pytest.mark.slow
def test_daemon_refuses_paths_and_ports_it_cannot_use(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    r = run("daemon", "--endpoint", f"ipc://{f}", timeout=30)
    assert r.returncode == 2 and "not a socket" in r.stderr
    assert f.read_text() == "keep me"             # never deleted
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run("daemon", "--endpoint", f"tcp://127.0.0.1:{port}", timeout=30)
    assert r.returncode == 2 and "cannot bind" in r.stderr and "Traceback" not in r.stderr
    r = run("daemon", "--backend", "torch", "--policy", "cuda-ms",
            "--endpoint", f"ipc://{tmp_path}/t.sock", timeout=60)
    assert r.returncode == 2 and "baseline" in r.stderr


@pytest.mark.slow
def test_sigterm_to_a_bench_stops_the_daemon_it_started():
    """A benchmark killed with SIGTERM unwinds like Ctrl-C: the daemon it started goes too
    (it used to be left running, reparented to init)."""
    import os
    import signal
    import time
    bench = subprocess.Popen(GPUSCHED + ["bench", "fuzz", "--messages", "100000000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children_file = f"/proc/{bench.pid}/task/{bench.pid}/children"
    try:
        deadline, kids = time.monotonic() + 60, []
        while not kids and time.monotonic() < deadline:   # its daemon is up
            time.sleep(0.2)
            with open(children_file) as f:
                kids = [int(p) for p in f.read().split()]
        assert kids, "the bench started no daemon"
        time.sleep(1.0)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(30) != 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{k}") and
                                                  _not_zombie(k) for k in kids):
            time.sleep(0.2)
        assert not any(os.path.exists(f"/proc/{k}") and _not_zombie(k) for k in kids), \
            "the bench's daemon outlived it"
    finally:
        if bench.poll() is None:
            bench.kill()


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_demo_says_what_it_does_between_tables():
    """Finding 7: the demo was silent for half a minute between its tables."""
    r = run("demo", "--duration", "0.5", "--policies", "fifo", timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    steps = [out.find("policy fifo (1/1): starting a daemon"), out.find("daemon up at"),
             out.find("policy fifo (daemon exited with 0)")]
    assert -1 not in steps and steps == sorted(steps), out
