"""Rich tables for the CLI (library code returns data; only the CLI prints)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def load_table(res: dict, title: str | None = None) -> Table:
    t = Table(title=title or f"workload {res['workload']}: {res['clients']} clients, "
              f"{res['rate']:g} req/s for {res['duration']:g}s")
    for col in ("tenant", "submitted", "completed", "failed", "p50 ms", "p99 ms", "SLO met"):
        t.add_column(col, justify="left" if col == "tenant" else "right")
    for row in [*res["tenants"], res["overall"]]:
        t.add_row(row["tenant"], str(row["submitted"]), str(row["completed"]), str(row["failed"]),
                  _f(row["p50_ms"]), _f(row["p99_ms"]),
                  _f(row["slo_attainment"] and row["slo_attainment"] * 100, "{:.1f}%")
                  if row["slo_attainment"] is not None else "-",
                  style="bold" if row["tenant"] == "overall" else None)
    return t


def status_table(st) -> Table:
    t = Table(title=f"daemon {st.daemon_id} on {st.device}, policy {st.policy}, up "
              f"{st.uptime_s:.0f}s, {st.queued} queued, {st.inflight} kernels in flight")
    for col in ("tenant", "clients", "queued", "running", "completed", "cancelled", "failed",
                "shed", "SLO missed", "p50 ms", "p99 ms"):
        t.add_column(col, justify="left" if col == "tenant" else "right")
    for x in st.tenants:
        t.add_row(x.tenant, str(x.clients), str(x.queued), str(x.running), str(x.completed),
                  str(x.cancelled), str(x.failed), str(x.shed), str(x.slo_missed),
                  _f(x.p50_ms), _f(x.p99_ms))
    return t


def print_table(table: Table) -> None:
    Console().print(table)
