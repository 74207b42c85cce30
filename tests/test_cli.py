"""The command line: JSON outputs, --help, and clear errors with exit code 2."""
import json
import subprocess
import sys

import pytest

GPUSCHED = [sys.executable, "-m", "gpusched.cli"]


def run(*args, timeout=120):
    return subprocess.run([*GPUSCHED, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("daemon", "submit", "status", "bench", "demo"):
        assert cmd in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["daemon", "--gpu-spec", "X999"], "invalid choice"),
    (["daemon", "--endpoint", "http://nope"], "bad endpoint"),
    (["status", "--endpoint", "ipc:///tmp/gpusched-test-none/x.sock"], "no daemon answered"),
    (["submit", "--workload", "nope"], "invalid choice"),
    (["bench"], "name a benchmark"),
])
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
        for key in ("completed", "failed", "p50_ms", "p99_ms", "slo_attainment"):
            assert key in row
        assert row["completed"] == row["submitted"] and row["failed"] == 0
        assert 0.0 <= row["slo_attainment"] <= 1.0
    assert res["overall"]["p99_ms"] >= res["overall"]["p50_ms"] > 0
    s = run("status", "--endpoint", daemon, "--json")
    assert s.returncode == 0, s.stderr
    st = json.loads(s.stdout)
    done = {t["tenant"]: t["completed"] for t in st["tenants"]}
    assert done["short"] == next(t["submitted"] for t in res["tenants"] if t["tenant"] == "short")


def test_second_daemon_on_same_endpoint_is_refused(daemon):
    r = run("daemon", "--endpoint", daemon, "--backend", "sim", timeout=30)
    assert r.returncode == 2
    assert "already serving" in r.stderr
