"""Prometheus metrics and the live view."""
import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from client_lib import Client, KernelSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_count_jobs_latency_and_errors(daemon_factory):
    pytest.importorskip("prometheus_client")
    port = _free_port()
    _, ep = daemon_factory("--backend", "sim", "--metrics-port", str(port))
    with Client(ep, tenant="metered") as c:
        c.register_model("m", [KernelSpec(name="k", est_us=200)] * 3)
        for _ in range(5):
            c.run("m", slo_ms=1000, timeout=5)
        with pytest.raises(Exception):
            c.run("nope", timeout=5)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'gpusched_jobs_total{status="done",tenant="metered"} 5.0' in text
    assert 'gpusched_job_latency_seconds_count{model="m",tenant="metered"} 5.0' in text
    assert 'gpusched_request_errors_total{code="UNKNOWN_MODEL"} 1.0' in text
    for gauge in ("gpusched_queue_depth", "gpusched_inflight_kernels",
                  "gpusched_device_utilisation", "gpusched_clients"):
        assert gauge in text


def test_top_once_shows_tenants(daemon):
    with Client(daemon, tenant="watched") as c:
        c.register_model("m", [KernelSpec(name="k", est_us=100)])
        c.run("m", timeout=5)
        r = subprocess.run([sys.executable, "-m", "gpusched.cli", "top", "--endpoint", daemon,
                            "--once"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "watched" in r.stdout and "policy" in r.stdout


@pytest.mark.slow
def test_debug_log_has_one_line_per_job_event_with_ids(tmp_path):
    from gpusched.procs import start_daemon, stop_daemon
    log = open(tmp_path / "debug.log", "w")
    p, ep2 = start_daemon("--backend", "sim", endpoint=f"ipc://{tmp_path}/dbg.sock",
                          log_level="DEBUG", stderr=log)
    try:
        with Client(ep2, tenant="traced") as c:
            c.register_model("m", [KernelSpec(name="k", est_us=10)])
            r = c.submit("m", slo_ms=50).result(5)
            job_id = c.submit("m").result(5).job_id
    finally:
        stop_daemon(p)
        log.close()
    text = (tmp_path / "debug.log").read_text()
    assert f"daemon: job queued job={job_id} tenant=traced model=m" in text
    assert f"daemon: job done job={job_id} tenant=traced model=m" in text
    assert r.slo_met
