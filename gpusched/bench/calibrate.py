"""``gpusched bench calibrate``: the simulated GPU's solo latencies against published figures.

Simulated solo latency = the sum of a job's kernel ``est_us`` (alone, the simulated GPU runs one
job's kernels back to back), from the model zoo's traced kernels and the roofline
(``profilers/roofline.py``). Two groups of references, from shared/docs/calibration.md:

- GPU-time rows of TensorRT engines (MLPerf ResNet-50 INT8, NVIDIA's BERT-base seq 128 demo):
  compared with the zoo's ``engine="fused"`` kernel lists (TensorRT-style fusion);
- measured PyTorch-eager kernel traces (V100 FP32, Orion; H100 TF32 summaries): compared with
  the ``engine="eager"`` lists, kernel counts included. BERT-large (24 layers, hidden 1024,
  seq 384) is traced here with ``build_bert``; it is not a zoo model.

``ratio = simulated_ms / published_ms``; ``within_25pct = |ratio - 1| <= 0.25``.

``bounds``: calibration.md's host+GPU figures (TensorFlow / MXNet end-to-end latencies) include
host time, so they only bound the GPU time from above: ``below_bound = simulated_ms <=
bound_ms`` for the eager kernel list.
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass

from profilers.kernel_trace import KernelProfile, trace_kernels
from profilers.zoo import load_profiles, profiles_to_kernels
from profilers.zoo_models import build_bert

TOLERANCE = 0.25
BERT_LARGE = "bert-large"  # 24 layers, hidden 1024, seq 384 (not a zoo model)


@dataclass(frozen=True)
class Reference:
    model: str
    gpu: str
    precision: str
    batch: int
    published_ms: float
    source: str
    engine: str = "fused"
    ref_kernels: int | None = None


_TRT_BERT = "TensorRT BERT demo"
_BERT_ROWS = {  # gpu: (INT8 b1, FP16 b1, INT8 b8, FP16 b8), ms
    "A100": (0.58, 0.67, 0.95, 1.38),
    "T4": (1.69, 1.95, 4.66, 9.09),
    "V100": (1.39, 1.23, 3.65, 3.32),
}
REFERENCES: tuple[Reference, ...] = (
    Reference("resnet50", "T4", "int8", 1, 1.00, "MLPerf v0.7 TensorRT"),
    Reference("resnet50", "A100", "int8", 1, 0.497, "MLPerf v1.0 TensorRT"),
    *(Reference("bert-base", gpu, prec, batch, ms[i], _TRT_BERT)
      for gpu, ms in _BERT_ROWS.items()
      for i, (prec, batch) in enumerate((("int8", 1), ("fp16", 1), ("int8", 8), ("fp16", 8)))),
    Reference("resnet50", "V100", "fp32", 4, 6.50, "V100 trace resnet50_4_fwd", "eager", 175),
    Reference("mobilenetv2", "V100", "fp32", 4, 2.26, "V100 trace mobilenetv2_4_fwd", "eager",
              152),
    Reference(BERT_LARGE, "V100", "fp32", 2, 48.6, "V100 trace bert_2_fwd (seq 384)", "eager", 572),
    Reference("resnet50", "H100", "fp32", 4, 2.62, "H100 TF32 trace summary", "eager", 174),
    Reference("mobilenetv2", "H100", "fp32", 4, 1.43, "H100 TF32 trace summary", "eager", 151),
)


_DLE = "TF, NVIDIA DLE"
_DLE_RN50 = {  # gpu: ((FP32 or TF32 b1, AMP b1), (FP32 or TF32 b8, AMP b8)), ms, host+GPU
    "A100": ((5.26, 4.51), (8.31, 5.40)),
    "V100": ((5.79, 4.25), (10.22, 5.57)),
    "T4": ((7.34, 4.77), (23.41, 10.16)),
}
BOUNDS: tuple[Reference, ...] = (
    *(Reference("resnet50", gpu, prec, batch, ms[bi][pi], _DLE, "eager")
      for gpu, ms in _DLE_RN50.items()
      for bi, batch in enumerate((1, 8)) for pi, prec in enumerate(("fp32", "fp16"))),
    Reference("inceptionv3", "V100", "fp16", 1, 8.79, "MXNet, DLInf", "eager"),
    Reference("resnet50", "V100", "fp16", 1, 4.27, "MXNet, DLInf", "eager"),
    Reference("resnet50", "V100", "fp16", 8, 7.31, "MXNet, DLInf", "eager"),
)


@functools.lru_cache(maxsize=4)
def _bert_large(batch: int) -> tuple[KernelProfile, ...]:
    model, inputs = build_bert(24, 1024, 16, 384, device="meta")
    return tuple(trace_kernels(model, inputs(batch, device="meta")))


def _profiles(model: str, batch: int) -> list[KernelProfile]:
    return list(_bert_large(batch)) if model == BERT_LARGE else load_profiles(model, batch)


def _simulate(r: Reference) -> tuple[float, int]:
    """(solo latency in ms, kernel count) of a reference's model on the simulated GPU."""
    kernels = profiles_to_kernels(_profiles(r.model, r.batch), r.gpu, r.precision, r.engine)
    return sum(k.est_us for k in kernels) / 1e3, len(kernels)


def run_calibrate() -> dict:
    """One row per reference: simulated vs published milliseconds, ratio, within 25%; and the
    host+GPU upper bounds."""
    rows = []
    for r in REFERENCES:
        sim, n = _simulate(r)
        ratio = sim / r.published_ms
        rows.append({"model": r.model, "gpu": r.gpu, "precision": r.precision, "batch": r.batch,
                     "engine": r.engine, "source": r.source, "published_ms": r.published_ms,
                     "simulated_ms": round(sim, 4), "ratio": round(ratio, 3),
                     "within_25pct": abs(ratio - 1.0) <= TOLERANCE,
                     "sim_kernels": n, "ref_kernels": r.ref_kernels})
    bounds = []
    for r in BOUNDS:
        sim, _ = _simulate(r)
        bounds.append({"model": r.model, "gpu": r.gpu, "precision": r.precision,
                       "batch": r.batch, "engine": r.engine, "source": r.source,
                       "bound_ms": r.published_ms, "simulated_ms": round(sim, 4),
                       "ratio": round(sim / r.published_ms, 3),
                       "below_bound": sim <= r.published_ms})
    within = sum(row["within_25pct"] for row in rows)
    return {"rows": rows, "within_25pct": within, "total": len(rows), "bounds": bounds}


def print_calibrate(res: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    c = Console()
    wide = c.width >= 120  # the source column only where it fits
    t = Table(title="simulated solo latency vs published (ms)", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)
    for col, just in (("model", "left"), ("gpu", "left"), ("prec", "left"), ("b", "right"),
                      ("engine", "left"), ("pub ms", "right"), ("sim ms", "right"),
                      ("ratio", "right"), ("ok", "center"), ("kernels", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    if wide:
        t.add_column("source", overflow="fold")
    for r in res["rows"]:
        ok = "[green]yes[/]" if r["within_25pct"] else "[red]no[/]"
        ref = r["ref_kernels"] if r["ref_kernels"] is not None else "-"
        t.add_row(r["model"], r["gpu"], r["precision"], str(r["batch"]), r["engine"],
                  f"{r['published_ms']:.3f}", f"{r['simulated_ms']:.3f}", f"{r['ratio']:.2f}", ok,
                  f"{r['sim_kernels']}/{ref}", *([r["source"]] if wide else []))
    c.print(t)
    c.print(f"{res['within_25pct']} of {res['total']} rows within 25% (ok); kernels = "
            "simulated / reference ('-': not published)")
    b = Table(title="host+GPU figures: upper bounds on GPU time (ms)", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    for col, just in (("model", "left"), ("gpu", "left"), ("prec", "left"), ("b", "right"),
                      ("bound ms", "right"), ("sim ms", "right"), ("sim/bound", "right"),
                      ("ok", "center"), ("source", "left")):
        b.add_column(col, justify=just, no_wrap=col != "source")
    for r in res["bounds"]:
        ok = "[green]yes[/]" if r["below_bound"] else "[red]no[/]"
        b.add_row(r["model"], r["gpu"], r["precision"], str(r["batch"]), f"{r['bound_ms']:.2f}",
                  f"{r['simulated_ms']:.3f}", f"{r['ratio']:.2f}", ok, r["source"])
    c.print(b)


if __name__ == "__main__":
    result = run_calibrate()
    print(json.dumps(result, indent=2)) if "--json" in sys.argv[1:] else print_calibrate(result)
