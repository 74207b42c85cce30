"""Rich tables for the CLI (library code returns data; only the CLI prints).

Every table fits the console (80 columns in a pipe): compact boxes without vertical rules,
short headers explained in the caption, and, where that is not enough, columns dropped by
priority with the caption naming them (``--json`` has everything). Latency and SLO attainment
follow the one definition in docs/protocol.md (scheduler_daemon/wire/latency.py).
"""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from scheduler_daemon.wire.latency import attainment

# the CLI's own connections: not tenants of the user's (filtered from status and top)
OBSERVERS = ("gpusched-status", "gpusched-top")

DAEMON_SPAN = "daemon: SUBMIT read -> last kernel done"
CLIENT_SPAN = "client: submit() -> answer"


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def ms(x) -> str:
    """A latency in ms with three significant digits or so: short columns."""
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def compact(title: str | None = None, caption: str | None = None) -> Table:
    """A table without vertical rules and with one space of padding: fits 80 columns."""
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False,
                 collapse_padding=True, padding=(0, 1), caption_justify="left")


def fit(table: Table, width: int, drop: tuple[str, ...] = ()) -> Table:
    """Drop the columns named in ``drop`` (first named, first dropped) until ``table`` fits
    ``width`` columns, and say in the caption which ones are hidden."""
    from rich.measure import Measurement
    hidden = []
    con = Console()
    wide = con.options.update_width(10_000)
    for name in drop:
        if Measurement.get(con, wide, table).maximum <= width:
            break
        col = next((c for c in table.columns if str(c.header) == name), None)
        if col is not None and len(table.columns) > 1:
            table.columns.remove(col)
            hidden.append(name.replace("\n", " "))
    if hidden:
        note = f"not shown at {width} columns: {', '.join(hidden)} (--json has every column)"
        table.caption = f"{table.caption}\n{note}" if table.caption else note
    return table


def load_table(res: dict, title: str | None = None, width: int | None = None) -> Table:
    """The client summary of ``gpusched submit`` and the demo: both clocks per tenant."""
    t = compact(title or f"workload {res['workload']}: {res['clients']} clients, "
                f"{res['rate']:g} req/s for {res['duration']:g}s",
                caption=f"latency in ms: {CLIENT_SPAN}; {DAEMON_SPAN} (docs/protocol.md). "
                "SLO met = 1 - missed/ended; failed: shed, failed or unanswered")
    for col in ("tenant", "jobs", "failed", "client\np50", "client\np99", "client\nSLO met",
                "daemon\np50", "daemon\np99", "daemon\nSLO met"):
        t.add_column(col, justify="left" if col == "tenant" else "right",
                     overflow="fold" if col == "tenant" else None, no_wrap=col != "tenant",
                     min_width=6 if col == "tenant" else None)
    for row in [*res["tenants"], res["overall"]]:
        t.add_row(row["tenant"], str(row["submitted"]), str(row["failed"]),
                  ms(row["client_p50_ms"]), ms(row["client_p99_ms"]),
                  pct(row["client_slo_attainment"]), ms(row["daemon_p50_ms"]),
                  ms(row["daemon_p99_ms"]), pct(row["daemon_slo_attainment"]),
                  style="bold" if row["tenant"] == "overall" else None)
    return fit(t, width or Console().width, drop=("failed",))


def tenant_attainment(x) -> float | None:
    """A STATUS tenant row's SLO attainment (wire/latency.py): cancelled jobs aside."""
    return attainment(x.slo_missed, x.completed + x.failed + x.shed)


def own_tenants(st) -> list:
    """The tenants of a STATUS reply without the CLI's own observer connections."""
    return [x for x in st.tenants if not (x.tenant in OBSERVERS and x.completed + x.queued +
                                          x.running + x.failed + x.cancelled + x.shed == 0)]


def status_table(st, width: int | None = None) -> Table:
    """``gpusched status`` and ``top``: the daemon's view (its clock)."""
    t = compact(f"daemon {st.daemon_id} on {st.device}, policy {st.policy}, up "
                f"{st.uptime_s:.0f}s, {st.queued} queued, {st.inflight} kernels in flight",
                caption=f"cl: clients, run: running, canc: cancelled; latency in ms, "
                f"{DAEMON_SPAN}, last 10,000 jobs; SLO met = 1 - missed/ended "
                "(docs/protocol.md)")
    for col in ("tenant", "cl", "queued", "run", "done", "failed", "shed", "canc", "SLO met",
                "p50 ms", "p99 ms"):
        t.add_column(col, justify="left" if col == "tenant" else "right",
                     overflow="fold" if col == "tenant" else None, no_wrap=col != "tenant",
                     min_width=6 if col == "tenant" else None)
    for x in own_tenants(st):
        done = x.completed > 0
        t.add_row(x.tenant, str(x.clients), str(x.queued), str(x.running), str(x.completed),
                  str(x.failed), str(x.shed), str(x.cancelled), pct(tenant_attainment(x)),
                  ms(x.p50_ms) if done else "-", ms(x.p99_ms) if done else "-")
    return fit(t, width or Console().width, drop=("canc", "shed", "cl", "queued", "failed"))


def status_json(st) -> dict:
    """STATUS as JSON for ``status --json``: the CLI's own connection left out, and each
    tenant's SLO attainment by the one definition."""
    import msgspec
    out = msgspec.to_builtins(st)
    keep = {x.tenant for x in own_tenants(st)}
    out["tenants"] = [dict(t, slo_attainment=tenant_attainment(x))
                      for t, x in zip(out["tenants"], st.tenants) if x.tenant in keep]
    return out


def print_table(table: Table) -> None:
    Console().print(table)
