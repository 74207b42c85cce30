"""One definition of latency and SLO attainment (docs/protocol.md): the client summary, STATUS
and the metrics agree on the same jobs, and the client's clock differs from the daemon's by the
transport only (issue 20, finding 2)."""
import json
import subprocess
import sys

import pytest

from gpusched.report import status_json, status_table
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.latency import attainment, missed_slo, percentile

GPUSCHED = [sys.executable, "-m", "gpusched.cli"]


def test_percentile_is_nearest_rank():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(xs, 0.5) == 3.0
    assert percentile(xs, 0.99) == 5.0
    assert percentile(xs, 0.2) == 1.0          # rank ceil(0.2 * 5) = 1
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0   # rank 2, not an interpolation
    assert percentile([], 0.5) is None


def test_who_misses_an_slo():
    assert not missed_slo("done", 4.9, 5.0)
    assert missed_slo("done", 5.1, 5.0)
    assert missed_slo("shed", 0.0, 5.0) and missed_slo("failed", 0.0, 5.0)
    assert not missed_slo("cancelled", 99.0, 5.0)
    assert not missed_slo("done", 1e9, 0.0)     # no SLO: never missed
    assert attainment(1, 4) == 0.75 and attainment(0, 0) is None


def test_daemon_percentiles_use_the_definition():
    from scheduler_daemon.server.sessions import Tenant
    t = Tenant("a")
    t.latencies_ms.extend([4.0, 1.0, 3.0, 2.0])
    assert t.percentile(0.5) == 2.0 and t.percentile(0.99) == 4.0


def _reply(*tenants):
    return P.StatusReply(req_id=1, daemon_id="d", device="simulated T4", policy="slo-srpt",
                         uptime_s=1.0, queued=0, inflight=0, utilisation=0.0,
                         tenants=list(tenants))


def test_status_leaves_out_its_own_connection_and_adds_attainment():
    st = _reply(P.TenantStatus(tenant="short", completed=8, failed=1, shed=1, slo_missed=3,
                               cancelled=5),
                P.TenantStatus(tenant="gpusched-status", clients=1),
                P.TenantStatus(tenant="gpusched-top", clients=1))
    out = status_json(st)
    assert [t["tenant"] for t in out["tenants"]] == ["short"]
    assert out["tenants"][0]["slo_attainment"] == pytest.approx(1 - 3 / 10)


@pytest.mark.slow
def test_client_summary_status_and_daemon_agree_on_the_same_jobs(daemon):
    r = subprocess.run([*GPUSCHED, "submit", "--endpoint", daemon, "--rate", "40",
                        "--duration", "2", "--json"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    sub = json.loads(r.stdout)
    s = subprocess.run([*GPUSCHED, "status", "--endpoint", daemon, "--json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert s.returncode == 0, s.stderr
    st = {t["tenant"]: t for t in json.loads(s.stdout)["tenants"]}
    assert set(st) == {"short", "medium", "long"}     # not the status command's own connection
    for row in sub["tenants"]:
        d = st[row["tenant"]]
        assert d["completed"] == row["completed"] > 0
        # the daemon's clock: the same numbers from STATUS and from the DONEs
        assert d["p50_ms"] == pytest.approx(row["daemon_p50_ms"], abs=1e-6)
        assert d["p99_ms"] == pytest.approx(row["daemon_p99_ms"], abs=1e-6)
        assert d["slo_attainment"] == pytest.approx(row["daemon_slo_attainment"])
        # the client's clock = the daemon's + the transport: never shorter, and longer by at
        # most the largest gap of any job (the arrival used to be stamped before the loop's
        # idle wait, which made the daemon's span the longer one)
        assert row["gap_min_ms"] >= -0.05, row
        for q in ("p50", "p99"):
            assert row[f"daemon_{q}_ms"] - 0.05 <= row[f"client_{q}_ms"] \
                <= row[f"daemon_{q}_ms"] + row["gap_max_ms"] + 0.05, row
        assert row["client_slo_attainment"] <= row["daemon_slo_attainment"] + 1e-9
        assert row["gap_p50_ms"] < 50, row      # generous: a loaded 2-core machine


def test_status_table_fits_80_columns_with_long_names_and_big_numbers():
    from rich.console import Console
    st = _reply(P.TenantStatus(tenant="a-rather-long-tenant-name-for-a-table", clients=12,
                               queued=12345, running=99, completed=123456789, cancelled=1234,
                               failed=5678, shed=91011, slo_missed=10, p50_ms=1234.5,
                               p99_ms=98765.4),
                P.TenantStatus(tenant="short", completed=10, p50_ms=1.5, p99_ms=3.25))
    with open("/dev/null", "w") as null:
        con = Console(width=80, record=True, file=null)
        con.print(status_table(st, width=80))
    text = con.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text                            # nothing cut
    assert "123456789" in text and "98765" in text
    assert "not shown at 80 columns" in text          # what was dropped is named
