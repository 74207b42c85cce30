"""Fit the interference model shipped for each simulated GPU (placement's default).

    python tools/fit_interference.py H100 T4     # writes profilers/data/interference/<GPU>.json

Every zoo model at batch 1, 8 and 32, all pairs co-located on the simulated GPU, 30% of the
pairs held out (``profilers/interference.py``); ``gpusched profile --pairs`` fits one into the
profile store instead, which placement prefers when present.
"""
import json
import sys
from pathlib import Path

from profilers.interference import run_pairs
from profilers.zoo import ZOO_MODELS

OUT = Path(__file__).resolve().parents[1] / "profilers" / "data" / "interference"

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for gpu in sys.argv[1:] or ["H100", "T4"]:
        res = run_pairs(list(ZOO_MODELS), [1, 8, 32], gpu)
        (OUT / f"{gpu}.json").write_text(json.dumps(res, indent=1))
        print(f"{gpu}: {res['pairs']} pairs, held-out MAPE {100 * res['held_out']['mape']:.1f}%, "
              f"p90 {100 * res['held_out']['p90_rel_error']:.1f}%")
