"""``gpusched place``: plan which GPUs run which model replicas, validate and apply the plan."""
from __future__ import annotations

import argparse
import json

from gpusched.cli import choices
from gpusched.cli.common import UsageError, check_output_file
from gpusched.cli.interrupt import note

PLACE_HELP = """\
Plan batch sizes, replica counts and GPUs for a list of models (USHER-style: compute and
memory demand from profiles on the simulated GPU, co-location slowdown from the fitted
interference model), minimising cost subject to every model's SLO and rate.

models.yaml:
  pool: "H100:8"               # optional; --pool wins
  models:
    - name: web-resnet         # optional, unique
      model: resnet50          # zoo model
      rate: 400                # requests/s
      slo_ms: 25
      batches: [1, 4, 8, 16]   # optional

examples:
  gpusched place examples/placement/models.yaml --pool H100:8
  gpusched place models.yaml --pool "T4:16,H100:2" --solver cpsat --json
  gpusched place models.yaml --validate --plot plan.png
  gpusched place models.yaml --apply ipc:///tmp/gpu0.sock,ipc:///tmp/gpu1.sock
  gpusched place examples/placement/models.yaml --cluster   # after 'gpusched cluster up'
"""


def add_parser(sub) -> None:
    p = sub.add_parser("place", help="place models onto GPUs (batch, replicas, co-location)",
                       description=PLACE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", help="the models YAML")
    p.add_argument("--pool", help="GPU pool TYPE:COUNT[@PRICE],... (default: the file's pool:)")
    p.add_argument("--solver", default="heuristic", choices=choices.PLACE_SOLVERS,
                   help="heuristic (USHER, fast), heuristic-trial (the heuristic's plan, then GPUs "
                   "closed while a simulated 1 s trial keeps every SLO at >= 99%%; not for "
                   "--apply), cpsat (exact, OR-Tools) or a baseline")
    p.add_argument("--time-limit", type=float, default=60.0, help="cpsat: seconds")
    p.add_argument("--validate", action="store_true",
                   help="replay the plan on simulated GPUs and report each model's SLO attainment")
    p.add_argument("--horizon", type=float, default=2.0, help="--validate: seconds replayed")
    p.add_argument("--plot", metavar="PNG", help="write the placement picture here")
    p.add_argument("--apply", metavar="ENDPOINTS",
                   help="send GPU i's replicas to the i-th daemon (comma-separated endpoints); "
                   "each daemon admits them only if its interference model predicts every SLO holds")
    p.add_argument("--cluster", action="store_true",
                   help="plan for the live GPUs of the cluster ('gpusched cluster up') and admit "
                   "each GPU's replicas on its daemon; --pool or the file's pool: then only "
                   "picks GPU types (and prices)")
    p.add_argument("--address", help="--cluster: the Ray cluster (default: the cluster file's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _cluster_pool(args, w, parse_pool):
    """(ray, controller, pool to plan with, live GPUs per type) for --cluster."""
    from gpusched.cluster import ops
    from gpusched.placement.pool import DEFAULT_PRICE, GpuType

    ray = ops.connect(args.address)
    h = ops.controller(ray)
    live = ops.call(ray, h.pool.remote(), 60)
    if not live:
        raise ValueError("the cluster has no live daemon: see 'gpusched cluster status'")
    text = args.pool or w.pool
    wanted = {t.name: t for t in parse_pool(text)} if text else {}
    types = [t for t in sorted(live) if t in DEFAULT_PRICE and (not wanted or t in wanted)]
    if not types:
        have = ", ".join(f"{t}: {n}" for t, n in sorted(live.items()))
        what = ", ".join(wanted) if wanted else "a known GPU type"
        raise ValueError(f"the plan is for {what} but the cluster has {have}: drop --pool (and "
                         f"the file's pool:) to plan for the cluster's GPUs, or add {what} nodes")
    # as many as it takes: the count missing is then said exactly
    pool = tuple(GpuType(t, live[t] + 64, wanted[t].price_per_hour if t in wanted
                         else DEFAULT_PRICE[t]) for t in types)
    return ray, h, pool, live


def _apply_cluster(args, w, out, ray, h, live) -> list[dict]:
    from gpusched.cluster import ops
    need: dict[str, int] = {}
    for a in out["assignments"]:
        need[a["type"]] = need.get(a["type"], 0) + 1
    short = {t: n - live.get(t, 0) for t, n in need.items() if n > live.get(t, 0)}
    if short:
        raise ValueError("the plan needs " + ", ".join(
            f"{need[t]} {t} GPUs but the cluster has {live.get(t, 0)} live: {n} missing"
            for t, n in sorted(short.items())) + "; add GPUs (nodes) or lower the rates")
    models = [{"name": m.name, "model": m.model, "rate": m.rate, "slo_ms": m.slo_ms,
               "batches": list(m.batches)} for m in w.models]
    return ops.call(ray, h.apply.remote(out, models, args.solver), 600)["applied"]


def run(args) -> int:
    from gpusched.placement import spec
    from gpusched.placement.plan import report
    from gpusched.placement.pool import parse_pool
    from gpusched.placement.solvers import place

    w = spec.load(args.models)
    pool_text = args.pool or w.pool
    if args.cluster and args.apply:
        raise ValueError("--cluster and --apply exclude each other: --cluster finds the daemons")
    if args.solver == "heuristic-trial" and (args.cluster or args.apply):
        raise UsageError("a heuristic-trial plan cannot be applied: the daemons admit by the "
                         "interference model, which refuses the replicas a trial added to a "
                         "GPU; apply the model's plan (--solver heuristic)")
    if not pool_text and not args.cluster:
        raise ValueError("no GPU pool: pass --pool H100:8 (or write pool: in the YAML)")
    for flag, v in (("--time-limit", args.time_limit), ("--horizon", args.horizon)):
        if not v > 0:
            raise UsageError(f"{flag} must be > 0 seconds (got {v:g})")
    if args.plot:   # before the work: a bad path must not cost a plan and a replay
        check_output_file(args.plot, "--plot")
    note("planning", "nothing was printed or written")
    def parse(text):
        try:
            return parse_pool(text)
        except ValueError as e:
            raise ValueError(f"--pool: {e}" if args.pool else f"{args.models}: {e}") from None

    if args.cluster:
        ray, ctl, pool, live = _cluster_pool(args, w, parse)
    else:
        pool = parse(pool_text)
    try:
        plan = place(w.models, pool, args.solver, time_limit_s=args.time_limit)
    except spec.SpecError as e:  # "line 4: model 'x': ..." -> "models.yaml:4: model 'x': ..."
        msg = str(e)
        if msg.startswith("line "):
            raise spec.SpecError(f"{args.models}:{msg[len('line '):]}") from None
        raise
    out = report(plan, w.models)
    if args.validate:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from gpusched.placement.replay import replay
        note(f"replaying the plan on {plan.gpus_used} simulated GPUs (--validate)",
             "nothing was printed or written: the plan is printed after its replay (without "
             "--validate at once)")
        with Progress(SpinnerColumn(), "[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), "requests", TimeElapsedColumn(), "eta",
                      TimeRemainingColumn(), transient=True, disable=args.json) as bar:
            task = bar.add_task(f"replaying {args.horizon:g} s on {plan.gpus_used} simulated "
                                "GPUs", total=None)
            out["validation"] = replay(plan, w.models, args.horizon,
                                       progress=lambda n: bar.advance(task, n),
                                       on_total=lambda n: bar.update(task, total=n))
    if args.plot:
        from gpusched.placement.plot import plot_plan
        note("drawing the plan", "nothing was printed; the picture may be incomplete")
        out["plot"] = plot_plan(plan, args.plot)
    if args.apply:
        out["applied"] = apply_plan(out, args.apply)
    if args.cluster:
        out["applied"] = _apply_cluster(args, w, out, ray, ctl, live)
    if args.json:
        print(json.dumps(out, indent=2, default=_no_inf))
    else:
        print_plan(out)
    return 0


def _no_inf(v):
    return None


def apply_plan(out: dict, endpoints: str) -> list[dict]:
    from client_lib import Client

    eps = [e for e in endpoints.split(",") if e]
    if len(eps) != len(out["assignments"]):
        raise ValueError(f"the plan uses {len(out['assignments'])} GPUs but --apply names "
                         f"{len(eps)} daemons: give one endpoint per GPU, in plan order")
    res = []
    for ep, a in zip(eps, out["assignments"]):
        note(f"applying GPU {a['gpu']}'s replicas at {ep}",
             f"{len(res)} of {len(eps)} daemons admitted their replicas before it"
             + (f" ({', '.join(r['endpoint'] for r in res)})" if res else ""))
        with Client(ep, tenant="gpusched-place", timeout=5) as c:
            admitted = c.admit([(r["model"], r["zoo_model"], r["batch"], r["rate"], r["slo_ms"])
                                for r in a["replicas"]], replace=True)
        res.append({"endpoint": ep, "gpu": a["gpu"], "admitted": admitted})
    return res


def print_plan(out: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from gpusched.placement.knobs import DEFAULT

    t = Table(title=f"{out['solver']}: {out['gpus_used']} GPUs, ${out['cost_per_hour']:.2f}/h, "
                    f"solved in {out['solve_time_s']:.3f} s"
                    + ("" if "optimal" not in out else
                       (" (optimal)" if out["optimal"] else " (not proven optimal)")))
    t.box, t.padding = box.SIMPLE_HEAD, (0, 1, 0, 1)  # no vertical rules: fits 80 columns
    t.collapse_padding = True
    t.caption = ("busy: solo GPU-seconds per second (kernels overlap: cap "
                 f"{DEFAULT.u_max:g}); C, M: the GPU's compute and memory-bandwidth share "
                 f"(cap {DEFAULT.c_max:g})")
    for c in ("GPU", "model", "batch", "req/s", "pred. ms", "SLO ms", "busy", "C", "M"):
        # numbers never wrap or get cut; a long model name folds onto a second line
        t.add_column(c, justify="left" if c in ("GPU", "model") else "right",
                     overflow="fold" if c == "model" else None, no_wrap=c != "model",
                     min_width=12 if c == "model" else None)
    for a in out["assignments"]:
        for j, r in enumerate(a["replicas"]):
            first = j == 0
            t.add_row(f"{a['gpu']} {a['type']}" if first else "", r["model"],
                      str(r["batch"]), f"{r['rate']:g}", f"{r['predicted_latency_ms']:.2f}",
                      f"{r['slo_ms']:g}", f"{a['busy']:.2f}" if first else "",
                      f"{a['compute']:.2f}" if first else "", f"{a['memory']:.2f}" if first else "",
                      end_section=j == len(a["replicas"]) - 1)
    con = Console()
    con.print(t)
    if "trial" in out:
        tr = out["trial"]
        tried = [f"GPU {a['gpu']} {100 * a['trial_attainment']:.1f}%" for a in out["assignments"]
                 if "trial_attainment" in a]
        con.print(f"trial consolidation closed {tr['closed']} GPUs in {tr['trials']} trials "
                  f"({tr['stopped']}); the predictions above are the model's, over budget "
                  "where a trial held instead: " + (", ".join(tried) or "none"))
    if "validation" in out:
        v = out["validation"]
        vt = Table(title=f"replayed {v['horizon_s']:g} s on simulated GPUs ({v['policy']}): "
                         f"lowest SLO attainment {100 * v['min_slo_attainment']:.2f}%")
        for c in ("model", "requests", "SLO met", "p99 ms", "SLO ms"):
            vt.add_column(c, justify="left" if c == "model" else "right")
        for m in v["models"]:
            p99 = "-" if m["p99_ms"] in (None, float("inf")) else f"{m['p99_ms']:.2f}"
            vt.add_row(m["model"], str(m["requests"]), f"{100 * m['slo_attainment']:.2f}%",
                       p99, f"{m['slo_ms']:g}")
        con.print(vt)
    if "plot" in out:
        con.print(f"wrote {out['plot']}")
    for a in out.get("applied", []):
        where = f"{a['daemon']} ({a['endpoint']})" if "daemon" in a else a["endpoint"]
        con.print(f"GPU {a['gpu']}: {where} admitted {len(a['admitted'])} replicas")
