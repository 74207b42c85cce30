"""``gpusched geo ...`` and ``gpusched bench geo``: parsers and entry points (issue 6).

The only module of the package that prints; mistakes raise ValueError (exit 2 in gpusched.cli).
Building the parsers imports nothing but the standard library (every ``gpusched`` command
builds them): the planner, solver, service and rich are imported by the functions that run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# the choices, as plain names (tests/test_cli_startup.py checks them against geo's own)
OBJECTIVES = ("throughput", "cost", "makespan", "balance")    # geo.spec.Planner.objective
PLAN_SOLVERS = ("cpsat", "decomposed", "greedy", "single-region")  # geo.bench.METHODS
SERVE_SOLVERS = ("auto", "cpsat", "decomposed")
EVENT_KINDS = ("site-down", "site-up", "capacity", "preempt", "price", "job-finished")

EVENT_HELP = ("site-down SITE | site-up SITE | capacity SITE TYPE COUNT | preempt SITE [TYPE] | "
              "price SITE TYPE USD_PER_HOUR | job-finished JOB")


GEO_EXAMPLES = """examples:
  gpusched geo plan examples/geo/spec.yaml            # the plan's tables
  gpusched geo serve --spec examples/geo/spec.yaml &  # the service, state on disk
  gpusched geo submit examples/geo/job.yaml
  gpusched geo event site-down aws:us-east-1
  gpusched geo status --json"""


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=None, help="geo service endpoint (default: "
                   "$GPUSCHED_GEO_ENDPOINT or ipc://<runtime dir>/geo.sock)")
    p.add_argument("--token", default=None, help="shared token (default $GPUSCHED_TOKEN)")
    p.add_argument("--server-key", default=None, metavar="KEY",
                   help="the service's CURVE public key (40 characters or a file)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true", help="print JSON instead of text and tables")


def add_geo_parser(sub) -> None:
    g = sub.add_parser("geo", help="geo-distributed training planner (plan, serve, submit, "
                       "event, status)", epilog=GEO_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    gs = g.add_subparsers(dest="geo_cmd", metavar="{plan,serve,submit,event,status}")
    p = gs.add_parser("plan", help="plan a spec YAML: print the plan (and, with --out or --plot, "
                      "write its picture)",
                      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=
                      "examples:\n  gpusched geo plan examples/geo/spec.yaml\n"
                      "  gpusched geo plan examples/geo/spec.yaml --objective cost --json\n"
                      "  gpusched geo plan spec.yaml --solver decomposed --out plots/\n"
                      "  gpusched geo plan spec.yaml --plot plan.png --log-level INFO\n"
                      "exit 2: a bad spec (file:line: field: problem) or an infeasible job "
                      "(the constraint that rules it out)")
    p.add_argument("spec", help="spec YAML (see examples/geo/spec.yaml)")
    p.add_argument("--objective", choices=OBJECTIVES,
                   default=None, help="default: the spec's planner.objective (throughput); "
                   "balance: MAST's asymmetric demand/supply penalty (CP-SAT)")
    p.add_argument("--solver", choices=PLAN_SOLVERS,
                   default="cpsat", help="cpsat (default): optimal up to a few hundred jobs; "
                   "decomposed: MAST-style, for thousands; greedy, single-region: baselines")
    p.add_argument("--time-limit", type=float, default=None,
                   help="CP-SAT seconds (default: the spec's planner.time_limit_s)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write the plan's picture as DIR/<spec>-plan.png (default: no "
                   "picture)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also write the plan's picture to this file (default: no picture)")
    p.add_argument("--place-data", type=int, default=0, metavar="N",
                   help="also add up to N dataset replicas where jobs read over the WAN, under "
                   "storage capacity (a slower pass: it re-plans after each)")
    s = gs.add_parser("serve", help="run the geo service (ZeroMQ ROUTER, state on disk)",
                      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=
                      "examples:\n  gpusched geo serve --spec examples/geo/spec.yaml\n"
                      "  gpusched geo serve --state /srv/geo/state.json "
                      "--endpoint ipc:///run/geo.sock\n"
                      "a restart with the same --state resumes where it stopped")
    s.add_argument("--spec", default=None, help="the fleet (sites/links/datasets) to start from; "
                   "ignored when --state already holds one")
    s.add_argument("--endpoint", default=None, metavar="URL", help="where clients reach the "
                   "service: ipc:///path or tcp://HOST:PORT (default: $GPUSCHED_GEO_ENDPOINT or "
                   "ipc://<runtime dir>/geo.sock); refused when another service serves it")
    s.add_argument("--state", default=None, help="state file (default: $XDG_STATE_HOME or "
                   "~/.local/state, then gpusched/geo-state.json); one service per state: "
                   "locked while it runs")
    s.add_argument("--token", default=None, help="require this token (default $GPUSCHED_TOKEN)")
    s.add_argument("--curve-secret", default=None, metavar="FILE",
                   help="encrypt with this CURVE secret key (see 'gpusched keys')")
    s.add_argument("--max-connections", type=int, default=256, metavar="N",
                   help="live client connections; more are refused at the handshake")
    s.add_argument("--solver", choices=SERVE_SOLVERS, default="auto",
                   help="auto: CP-SAT up to 200 jobs, decomposed above")
    su = gs.add_parser("submit", help="submit a job YAML to the geo service",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  gpusched geo submit examples/geo/job.yaml --json")
    su.add_argument("job", help="job YAML (see examples/geo/job.yaml)")
    _client_args(su)
    ev = gs.add_parser("event", help="tell the geo service what changed: " + EVENT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=
                       "examples:\n  gpusched geo event site-down aws:us-east-1\n"
                       "  gpusched geo event capacity gcp:europe-west4-a A100 32\n"
                       "  gpusched geo event price aws:us-west-2 H100 2.9\n"
                       "  gpusched geo event job-finished llm-7b")
    ev.add_argument("kind", choices=EVENT_KINDS, help="what changed")
    ev.add_argument("args", nargs="*", help=EVENT_HELP)
    _client_args(ev)
    st = gs.add_parser("status", help="the geo service's current plan",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  gpusched geo status --json")
    _client_args(st)


def add_geo_bench_parser(bsub) -> None:
    b = bsub.add_parser("geo", help="geo planner: CP-SAT vs decomposed vs baselines on instances "
                        "built from the measured cloud regions")
    b.add_argument("--json", action="store_true", help="print JSON instead of tables")
    b.add_argument("--quick", action="store_true", help="small sizes only (about a minute)")
    b.add_argument("--sizes", default=None, help="JOBSxSITES list, e.g. 50x10,200x20,10000x50 "
                   "(default: 50x10,200x20,1000x50,10000x50; --quick 30x6,100x10,1000x50)")
    b.add_argument("--cpsat-max-jobs", type=int, default=200,
                   help="run CP-SAT on instances up to this many jobs")
    b.add_argument("--time-limit", type=float, default=30.0, help="CP-SAT seconds per case")
    b.add_argument("--seed", type=int, default=1, help="random seed of the instances")
    b.add_argument("--sweep", type=int, default=None,
                   help="more seeds (at <= 200 jobs) for the CP-SAT gap; default 9, --quick 3")
    b.add_argument("--held-out", type=int, default=None, metavar="N",
                   help="held-out specs (shapes and seeds no development run used) against the "
                   "bound; default 12, --quick 3")
    b.add_argument("--invariant-steps", type=int, default=None, metavar="N",
                   help="random event steps with the plan invariants checked after each; "
                   "default 10000, --quick 500, 0 to skip")
    b.add_argument("--bound-time", type=float, default=600.0, metavar="SECONDS",
                   help="stop the bound's column generation after this long per case (the "
                   "bound holds, but may be above the LP optimum; default 600)")


def run_geo(args: argparse.Namespace) -> int:
    cmd = getattr(args, "geo_cmd", None)
    if cmd is None:
        raise ValueError("name a sub-command: plan, serve, submit, event or status")
    return {"plan": _plan, "serve": _serve, "submit": _submit, "event": _event,
            "status": _status}[cmd](args)


def _plan(args) -> int:
    from geo.planner import plan
    from geo.plot import plot_plan
    from geo.spec import load_spec

    if args.time_limit is not None and not args.time_limit > 0:
        raise ValueError(f"--time-limit must be > 0 seconds (got {args.time_limit:g})")
    if args.place_data < 0:
        raise ValueError(f"--place-data N needs N >= 0 (got {args.place_data})")
    _quiet_unless_asked()
    if args.out is not None:   # before the work: a bad folder must not cost a solve
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {args.out}: cannot make that folder "
                             f"({(e.strerror or str(e)).lower()}): pass another --out") from None
    if args.plot is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        raise ValueError(f"--plot {args.plot}: the folder "
                         f"{os.path.dirname(os.path.abspath(args.plot))} does not exist: "
                         "create it or pass another --plot")
    spec = load_spec(args.spec)
    added = []
    if args.place_data:
        from geo.data_placement import place_data
        p, added = place_data(spec, args.objective or spec.planner.objective,
                              lambda sp: plan(sp, args.objective, args.solver,
                                              time_limit_s=args.time_limit), args.place_data)
    else:
        p = plan(spec, args.objective, args.solver, time_limit_s=args.time_limit)
    pngs = []
    if args.out is not None:
        pngs.append(os.path.join(args.out, os.path.splitext(os.path.basename(args.spec))[0] +
                                 "-plan.png"))
    if args.plot is not None:
        pngs.append(args.plot)
    for png in pngs:
        try:
            plot_plan(p, png)
        except OSError as e:
            raise ValueError(f"cannot write the picture {png}: {e.strerror or e}: pass "
                             f"another --out/--plot") from None
    if args.json:
        print(p.to_json().decode())
    else:
        for ds, site, gain in added:
            print(f"data placement: replica of {ds} added at {site} (objective +{gain:,.3g})")
        _print_plan(p)
        for png in pngs:
            print(f"picture: {png}")
    for bad in p.infeasible:
        print(f"gpusched geo: infeasible: {bad.reason}", file=sys.stderr)
    return 2 if p.infeasible else 0


def _quiet_unless_asked() -> None:
    """The planner's own INFO lines (solver progress) only with an explicit --log-level: the
    command prints its plan, and the default level of every gpusched command is INFO."""
    import logging
    if not any(a == "--log-level" or a.startswith("--log-level=") for a in sys.argv[1:]):
        logging.getLogger("geo").setLevel(logging.WARNING)


def _print_plan(p) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:
        con = Console(width=80)   # a pipe or a file: 80 columns; long names fold, never cut
    t = Table(title=f"{p.solver} plan ({p.status}), objective {p.objective} = "
              f"{p.objective_value:,.3f}, solved in {p.solve_time_s:.2f} s")
    for col in ("job", "mode", "sites: GPUs", "iter s", "$/h", "start h", "end h"):
        left = col in ("job", "sites: GPUs")  # fold long names, never cut them
        t.add_column(col, justify="left" if left else "right", overflow="fold" if left else None,
                     no_wrap=not left, ratio=3 if col == "sites: GPUs" else None)
    for j in p.jobs:
        where = ", ".join(f"{s}: {n} {j.gpu_type}" for s, n in j.sites.items()) or j.reason
        if j.sites and not j.running and j.start_h == 0:
            where += " (waits for the fleet budget)"
        name = j.name + (" (at risk)" if getattr(j, "at_risk", "") else "")
        t.add_row(name, j.mode, where, f"{j.iteration_s:.3f}" if j.iteration_s else "-",
                  f"{j.cost_per_hour:,.1f}", f"{j.start_h:.1f}",
                  f"{j.finish_h:.2f}" if j.finish_h is not None else "-")
    con.print(t)
    for r in getattr(p, "at_risk", []) or []:
        con.print(f"at risk: {r.reason}", markup=False)
    s = Table(title=f"sites: ${p.cost_per_hour:,.1f}/h, makespan {p.makespan_h:.2f} h, "
              f"max demand/supply {p.max_demand_supply:.2f}")
    for col in ("site", "GPUs used", "GPUs total", "demand/supply"):
        s.add_column(col, justify="left" if col == "site" else "right")
    for site in p.sites:
        s.add_row(site.name, str(site.gpus_used), str(site.gpus_total),
                  f"{site.demand_supply_ratio:.2f}")
    con.print(s)


def _token(args) -> str:
    return args.token if args.token is not None else os.environ.get("GPUSCHED_TOKEN", "")


def _serve(args) -> int:
    from geo.service import GeoService, claim_endpoint, default_geo_endpoint, default_state_path
    from scheduler_daemon.transport.keys import read_key
    from scheduler_daemon.transport.sockets import check_endpoint

    if args.max_connections < 1:
        raise ValueError("--max-connections must be >= 1")
    endpoint = check_endpoint(args.endpoint or default_geo_endpoint())
    claim_endpoint(endpoint)  # before any work: a served endpoint is refused at once
    svc = GeoService(endpoint=endpoint,
                     state_path=args.state or default_state_path(), spec_path=args.spec,
                     token=_token(args), solver=args.solver,
                     curve_secret=read_key(args.curve_secret) if args.curve_secret else None,
                     max_connections=args.max_connections)
    svc.install_signal_handlers()
    print(f"geo service on {svc.endpoint}, state {svc.state_path}", file=sys.stderr)
    svc.serve_forever()
    return 0


def _client(args):
    from geo.service import GeoClient, default_geo_endpoint
    from scheduler_daemon.transport.keys import read_key
    from scheduler_daemon.transport.sockets import check_endpoint

    return GeoClient(check_endpoint(args.endpoint or default_geo_endpoint()), token=_token(args),
                     server_key=read_key(args.server_key) if args.server_key else None,
                     timeout_s=args.timeout)


def _show_reply(args, reply, status: bool = False) -> int:
    from geo.protocol import to_builtins

    if args.json:
        print(json.dumps(to_builtins(reply)))
        return 0
    if status:
        print(f"{reply.events} events applied so far; the plan now (each event's changes were "
              f"printed when it was sent):")
    for d in getattr(reply, "diff", []) or []:
        print(f"{d.job}: {d.change} {d.before or '-'} -> {d.after or '-'}  ({d.reason})")
    path = getattr(reply, "path", "")
    if path:
        print({"arrival": "planned by the arrival fast path (placed in free GPUs, nobody else "
                          "moved)", "replan": "planned by a full re-plan"}.get(path, path))
    if getattr(reply, "plan", None) is not None:
        _print_plan(reply.plan)
    return 0


def _submit(args) -> int:
    from geo.service import GeoRefused
    from geo.spec import GeoSpecError, load_yaml, parse_job

    try:
        with open(args.job, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the job file {args.job}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{args.job}: not UTF-8 text (byte {e.start})") from None
    job = parse_job(text, args.job)
    with _client(args) as c:
        try:
            reply = c.submit(job)
        except GeoRefused as e:  # the service's checks against its fleet: name the line
            _, lines = load_yaml(text, args.job)
            raise GeoSpecError(e.at_line(args.job, job.name, lines)) from None
    return _show_reply(args, reply)


def _event(args) -> int:
    from geo.protocol import event_from_args

    ev = event_from_args(args.kind, args.args)
    with _client(args) as c:
        return _show_reply(args, c.event(ev))


def _status(args) -> int:
    with _client(args) as c:
        return _show_reply(args, c.status(), status=True)


def run_geo_bench(args: argparse.Namespace) -> int:
    from geo.bench import run_bench

    for name in ("held_out", "invariant_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0 "
                             f"(got {getattr(args, name)})")
    if args.bound_time <= 0:
        raise ValueError(f"--bound-time must be > 0 seconds (got {args.bound_time:g})")
    result = run_bench(quick=args.quick, sizes=args.sizes, cpsat_max_jobs=args.cpsat_max_jobs,
                       time_limit_s=args.time_limit, seed=args.seed, progress=not args.json,
                       sweep=args.sweep, held_out=args.held_out,
                       invariant_steps=args.invariant_steps, bound_time_s=args.bound_time)
    if args.json:
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()

    def table(title, rows, cols):
        t = Table(title=title)
        for c in cols:
            t.add_column(c, justify="left" if c == "method" else "right")
        for r in rows:
            t.add_row(*(_fmt(r.get(c)) for c in cols))
        con.print(t)

    table("gpusched bench geo (objective: weighted throughput; gap_to_bound: against the "
          "proven bound)", result["cases"],
          ("jobs", "sites", "method", "solve_time_s", "objective", "gap_to_bound", "served",
           "gap", "max_demand_supply", "cost_per_hour", "makespan_h"))
    if result.get("gap_sweep"):
        table("gap sweep: decomposed vs CP-SAT and the bound on more seeds", result["gap_sweep"],
              ("jobs", "sites", "seed", "cpsat_status", "cpsat_s", "cpsat_objective",
               "decomposed_s", "decomposed_objective", "gap", "bound", "gap_to_bound",
               "cpsat_gap_to_bound"))
    if result.get("held_out"):
        rows = [{"seed": h["seed"], "jobs": h["jobs"], "sites": h["sites"], "load": h["load"],
                 **r} for h in result["held_out"] for r in h["methods"]]
        table("held-out specs against the bound", rows,
              ("seed", "jobs", "sites", "load", "method", "objective", "served", "gap_to_bound",
               "solve_time_s"))
    for k, v in result.items():
        if k not in ("cases", "gap_sweep", "held_out"):
            con.print(f"{k}: {json.dumps(v)}")
    return 0


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
