"""Admission by the interference model: a daemon (one GPU) accepts a set of model replicas only
if every replica's predicted latency stays within its SLO (``placement/fit.py``'s rule, the same
the placer used). Pure: no I/O, no clock; the daemon calls it for ADMIT requests.
"""
from __future__ import annotations

import logging

from gpusched.placement.estimate import configs_for
from gpusched.placement.fit import GpuState, Replica
from gpusched.placement.plan import predicted_latency_ms
from gpusched.placement.pool import DEFAULT_PRICE, GpuType
from gpusched.placement.spec import ModelSpec
from profilers.zoo import BATCHES

log = logging.getLogger("gpusched.admission")


class AdmissionError(ValueError):
    pass


class Admission:
    def __init__(self, gpu: str):
        self.gpu = GpuType(gpu, 1, DEFAULT_PRICE.get(gpu, 0.0))
        self.state = GpuState(self.gpu)

    def admit(self, wanted: list[tuple[str, str, int, float, float]], replace: bool = False) -> list[dict]:
        """``wanted``: (name, zoo model, batch, rate, slo_ms) per replica (a name sent several
        times with the same model: that many replicas of it, as a plan may place them). All or
        nothing: on refusal nothing changes and the error names the replica and the SLO that
        would break."""
        state = GpuState(self.gpu) if replace else self.state.copy()
        before = {r.name for r in state.replicas}
        sent: dict[str, str] = {}
        for name, model, batch, rate, slo_ms in wanted:
            if name in before:
                raise AdmissionError(f"{name!r} is already admitted on this GPU; send it with "
                                     "replace to re-plan")
            if sent.setdefault(name, model) != model:  # several replicas: same name and model
                raise AdmissionError(f"{name!r} is sent twice with different models "
                                     f"({sent[name]} and {model}); name each model once")
            if batch not in BATCHES:  # profiled sizes only: any other would be traced here, slowly
                raise AdmissionError(f"{name!r}: batch {batch} is not one of the profiled sizes "
                                     f"{list(BATCHES)}")
            if not (0 < rate <= 1e7 and 0 < slo_ms <= 1e6):  # also NaN and infinity
                raise AdmissionError(f"{name!r}: rate must be in (0, 1e7] req/s and slo_ms in "
                                     f"(0, 1e6], got {rate!r} and {slo_ms!r}")
            try:
                ms = ModelSpec(name, model, rate, slo_ms, (batch,))
                cfgs = configs_for(0, ms, self.gpu)
            except ValueError as e:
                raise AdmissionError(f"{name!r}: {e}") from None
            # the largest slowdown budget whose replica can carry the rate
            fits = [k for k in cfgs if k.rate_min <= rate <= k.rate_max]
            if not fits:
                what = f"{name!r} ({model}, batch {batch}, {rate:g} req/s)"
                if cfgs and rate < min(k.rate_min for k in cfgs):
                    raise AdmissionError(f"{what}: at this rate a batch of {batch} does not fill "
                                         f"within its SLO {slo_ms:g} ms; use a smaller batch")
                raise AdmissionError(
                    f"{what} cannot meet its SLO {slo_ms:g} ms on a {self.gpu.name} even alone: "
                    "spread it over more replicas, use a smaller batch, or raise the SLO")
            best = max(fits, key=lambda k: k.alpha)
            rep = Replica(name, best, rate)
            why = state.check(rep)
            if why:
                raise AdmissionError(f"admitting {name!r} ({model}, batch {batch}, {rate:g} req/s)"
                                     f" would break an SLO: {why}")
            state.add(rep)
        self.state = state
        log.info("admission: %d replicas on %s", len(state.replicas), self.gpu.name)
        return [{"name": r.name, "predicted_slowdown": round(state.alpha(r), 4),
                 "predicted_latency_ms": round(predicted_latency_ms(state, r), 3)}
                for r in state.replicas]

    def withdraw(self, name: str) -> int:
        return self.state.remove(name)

