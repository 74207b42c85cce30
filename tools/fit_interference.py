"""Fit the interference model shipped for each simulated GPU (placement's default).

    python tools/fit_interference.py H100 T4     # writes profilers/data/interference/<GPU>.json

Every zoo model at batch 1, 8 and 32, all pairs co-located on the simulated GPU under the
serving policy (``slo``), at least 20 jobs per side (``profilers/interference.py``): the mean
and the p99 (tail) model fitted on every pair, their errors on a random 30% of the pairs, with
each model left out and with each batch size left out, the tail margin placement adds, and the
samples themselves (so the fits can be redone and checked without measuring again).
``gpusched profile --pairs`` fits one into the profile store instead, which placement prefers
when present.
"""
import json
import sys
from pathlib import Path

from profilers.interference import default_workers, run_pairs
from profilers.zoo import ZOO_MODELS

OUT = Path(__file__).resolve().parents[1] / "profilers" / "data" / "interference"
BATCHES = [1, 8, 32]
JOBS = 20

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for gpu in sys.argv[1:] or ["H100", "A100", "V100", "T4"]:
        res = run_pairs(list(ZOO_MODELS), BATCHES, gpu, jobs=JOBS, workers=default_workers())
        (OUT / f"{gpu}.json").write_text(json.dumps(res, separators=(",", ":")) + "\n")
        lomo = res["p99"]["leave_one_model_out"]
        print(f"{gpu}: {res['pairs']} pairs; mean model in-sample MAPE "
              f"{100 * res['held_out']['mape']:.1f}%, leave-one-model-out "
              f"{100 * res['mean']['leave_one_model_out']['mape']:.1f}%; p99 model "
              f"leave-one-model-out {100 * lomo['mape']:.1f}% (p99 error "
              f"{100 * lomo['p99_rel_error']:.1f}%); margin {res['margin']:.3f}", flush=True)
