"""``gpusched bench compat``: do unmodified models run through the daemon, and how fast?

Each architecture of ``compat_models`` (built from a config, random weights, small) goes
through a ``--backend torch`` daemon both ways, as a user would use them:

- registered: ``client.register_model(name, model, args, example_kwargs=kwargs)`` at batch 1,
  then the handle called with the batch-1 inputs and again with batch-8 inputs (captured
  again by the handle: dynamic shapes);
- intercepted: ``with client.intercept(): y = model(*args, **kwargs)``, every tensor of ``y``
  fetched.

Each output structure and every tensor in it is compared with the local forward
(``max_abs_err``, the larger of the two paths; ok means the same structure and an error of at
most 1e-5). Decoder-only models also generate 16 tokens greedily through the daemon
(``client.generate``: KV cache in the daemon, one job per token) against ``transformers``'
own local greedy ``generate``. Times are medians of ``--reps`` interleaved runs:
``registered_ratio`` = registered / local at batch 1 (``registered_ratio_b8`` at batch 8),
``intercept_ratio`` likewise. A failure is recorded with its message, never hidden; nothing
here is tuned per model.
"""
from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time

log = logging.getLogger("gpusched.bench.compat")

TOL = 1e-5
GEN_TOKENS = 16


def _leaves(y):
    from client_lib.structure import flatten
    leaves, spec = flatten(y)
    return leaves, spec


def _compare(got, want) -> tuple[bool, float, str]:
    """(same structure and values within TOL, max abs error, what differs)."""
    import torch

    from client_lib.structure import _skey
    g, gs = _leaves(got)
    w, ws = _leaves(want)
    if _skey(gs) != _skey(ws) or len(g) != len(w):
        return False, None, (f"structure differs: {type(got).__name__} with {len(g)} "
                                     f"tensors vs {type(want).__name__} with {len(w)}")
    err = 0.0
    for a, b in zip(g, w):
        a = a.cpu() if hasattr(a, "_gs_hid") else a
        if a.shape != b.shape or a.dtype != b.dtype:
            return False, None, f"tensor {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        if a.numel():
            d = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else \
                float(not torch.equal(a, b))
            err = max(err, d)
    return err <= TOL, err, "" if err <= TOL else f"max abs error {err:.3g}"


def _median_times(fns, reps: int, settle_s: float) -> list[float]:
    times = [[] for _ in fns]
    for fn in fns:
        fn()                      # warm-up (uploads weights on the intercept path)
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            time.sleep(settle_s)  # the other process's OpenMP threads go back to sleep
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def check_model(client, name: str, reps: int = 5, settle_s: float = 0.1) -> dict:
    """One architecture through both paths (and generation); a row of the table."""
    import torch

    from gpusched.bench.compat_models import build
    row = {"name": name, "family": "", "registered_ok": False, "intercept_ok": False,
           "max_abs_err": None, "generate_ok": None, "registered_ratio": None,
           "registered_ratio_b8": None, "intercept_ratio": None, "ops": None,
           "intercept_ops": None, "registered_err": None, "intercept_err": None,
           "local_ms": None, "errors": []}
    try:
        case = build(name)
    except Exception as e:   # a model that does not build here is a miss, reported
        row["errors"].append(f"build: {_error(e)}")
        return row
    row["family"] = case.family
    m = case.module
    args, kw = case.inputs(1)
    args8, kw8 = case.inputs(8)
    with torch.no_grad():
        want, want8 = m(*args, **kw), m(*args8, **kw8)
    tname = f"compat-{name}"
    handle = None
    try:
        handle = client.register_model(tname, m, args, example_kwargs=kw)
        row["ops"] = handle.n_ops
        ok1, e1, why1 = _compare(handle(*args, **kw), want)
        ok8, e8, why8 = _compare(handle(*args8, **kw8), want8)
        row["registered_ok"] = ok1 and ok8
        row["registered_err"] = None if None in (e1, e8) else max(e1, e8)
        for why in (why1, why8):
            if why:
                row["errors"].append(f"registered: {why}")
    except Exception as e:
        row["errors"].append(f"registered: {_error(e)}")
    sess_ops = None
    try:
        with client.intercept():
            y = m(*args, **kw)
        ok, err, why = _compare(y, want)
        del y
        sess = client._eager
        before = sess.ops_sent
        with client.intercept():
            y = m(*args, **kw)
        sess.flush()
        sess_ops = sess.ops_sent - before
        del y
        row["intercept_ok"], row["intercept_err"] = ok, err
        row["intercept_ops"] = sess_ops
        if why:
            row["errors"].append(f"intercept: {why}")
    except Exception as e:
        row["errors"].append(f"intercept: {_error(e)}")
    errs = [e for e in (row["registered_err"], row["intercept_err"]) if e is not None]
    row["max_abs_err"] = max(errs) if errs else None

    def local():
        with torch.no_grad():
            m(*args, **kw)

    def local8():
        with torch.no_grad():
            m(*args8, **kw8)

    def intercepted():
        with client.intercept():
            y = m(*args, **kw)
        _leaves(y)[0][0].cpu()
    fns = [local]
    if row["registered_ok"]:
        fns += [lambda: handle(*args, **kw), local8, lambda: handle(*args8, **kw8)]
    if row["intercept_ok"]:
        fns.append(intercepted)
    try:
        t = _median_times(fns, reps, settle_s)
        row["local_ms"] = t[0] * 1e3
        if row["registered_ok"]:
            row["registered_ratio"] = t[1] / t[0]
            row["registered_ratio_b8"] = t[3] / t[2]
        if row["intercept_ok"]:
            row["intercept_ratio"] = t[-1] / t[0]
    except Exception as e:
        row["errors"].append(f"timing: {_error(e)}")
    if case.generator:
        row.update(_generation(client, case))
    return row


def _generation(client, case) -> dict:
    import torch
    m = case.module
    ids = case.inputs(1)[1]["input_ids"]
    out = {"generate_ok": False, "ttft_ms": None, "tpot_ms": None, "generate_errors": ""}
    try:
        with torch.no_grad():
            # transformers' greedy decoding, never stopping early (eos_token_id=[]; its
            # min_new_tokens would instead forbid the end token, changing the tokens)
            ref = m.generate(ids, max_new_tokens=GEN_TOKENS, do_sample=False, eos_token_id=[],
                             pad_token_id=0)[:, ids.shape[1]:]
        g = client.generate(m, ids, GEN_TOKENS)
        out["generate_ok"] = bool(torch.equal(g.tokens, ref))
        out["ttft_ms"] = g.ttft_ms
        out["tpot_ms"] = statistics.median(g.tpot_ms) if g.tpot_ms else None
        if not out["generate_ok"]:
            out["generate_errors"] = f"tokens differ: {g.tokens.tolist()} vs {ref.tolist()}"
    except Exception as e:
        out["generate_errors"] = _error(e)
    return out


def run_compat(names, reps: int = 5, settle_s: float = 0.1, progress=None,
               daemon_args=()) -> dict:
    """Every model in ``names`` through one ``--backend torch`` daemon (a tenant each)."""
    from client_lib import Client
    from gpusched.bench.compat_env import ensure_torchvision
    from gpusched.procs import start_daemon, stop_daemon
    ensure_torchvision()
    rows = []
    with tempfile.TemporaryFile("w+") as err:
        proc, ep = start_daemon("--backend", "torch", "--torch-device", "cpu", *daemon_args,
                                stderr=err)
        try:
            for name in names:
                t0 = time.perf_counter()
                with Client(ep, tenant=f"compat-{name}", timeout=30.0) as c:
                    row = check_model(c, name, reps, settle_s)
                row["seconds"] = time.perf_counter() - t0
                log.debug("bench compat: %s registered=%s intercept=%s err=%s gen=%s", name,
                         row["registered_ok"], row["intercept_ok"], row["max_abs_err"],
                         row["generate_ok"])
                rows.append(row)
                if progress:
                    progress(name)
        finally:
            stop_daemon(proc)
    return {"models": rows, "summary": summarize(rows), "reps": reps}


def summarize(rows: list[dict]) -> dict:
    gens = [r for r in rows if r["generate_ok"] is not None]
    ratios = [r["registered_ratio"] for r in rows if r["registered_ratio"] is not None]
    return {"models": len(rows),
            "registered_ok": sum(r["registered_ok"] for r in rows),
            "intercept_ok": sum(r["intercept_ok"] for r in rows),
            "both_ok": sum(r["registered_ok"] and r["intercept_ok"] for r in rows),
            "generators": len(gens), "generate_ok": sum(bool(r["generate_ok"]) for r in gens),
            "registered_ratio_median": statistics.median(ratios) if ratios else None,
            "families": sorted({r["family"] for r in rows if r["family"]})}


def print_compat(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    def yes(v):
        return "-" if v is None else ("yes" if v else "NO")
    t = Table(title=f"bench compat: {res['summary']['both_ok']}/{res['summary']['models']} "
                    f"models pass both paths; generation {res['summary']['generate_ok']}/"
                    f"{res['summary']['generators']} (medians of {res['reps']})")
    for col in ("model", "family", "reg.", "icpt", "max err", "gen", "ops", "reg/local b1",
                "b8", "icpt/local"):
        t.add_column(col, justify="left" if col in ("model", "family") else "right")
    for r in res["models"]:
        t.add_row(r["name"], r["family"], yes(r["registered_ok"]), yes(r["intercept_ok"]),
                  f(r["max_abs_err"], ".1e"), yes(r["generate_ok"]), f(r["ops"], "d"),
                  f(r["registered_ratio"], ".2f"), f(r["registered_ratio_b8"], ".2f"),
                  f(r["intercept_ratio"], ".2f"))
    con = Console()
    con.print(t)
    for r in res["models"]:
        for e in r["errors"] + ([r["generate_errors"]] if r.get("generate_errors") else []):
            con.print(f"{r['name']}: {e}", markup=False)


def to_json(res: dict) -> str:
    return json.dumps(res, indent=2, default=float)
