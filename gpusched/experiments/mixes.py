"""Workload mixes: which models, with what share of the requests and what SLO."""
from __future__ import annotations

from dataclasses import dataclass

from scheduler_daemon.wire.kernels import KernelSpec

# Paella's evaluation mix (anchors.md): the share of requests per model
PAELLA_SHARES = {"mobilenetv2": 0.257, "resnet18": 0.272, "resnet34": 0.168,
                 "squeezenet1.1": 0.0895, "resnet50": 0.0745, "densenet121": 0.0706,
                 "googlenet": 0.0546, "inceptionv3": 0.0138}


@dataclass(frozen=True)
class MixModel:
    name: str
    share: float
    kernels: tuple[KernelSpec, ...]

    @property
    def solo_s(self) -> float:
        return sum(k.est_us for k in self.kernels) * 1e-6


def mix(workload: str, gpu: str, batch: int = 1, precision: str = "fp16",
        engine: str = "eager") -> list[MixModel]:
    """``engine``: ``eager`` (PyTorch's kernels) or ``fused`` (a compiler's: convolution, bias,
    normalisation and activation in one kernel, as TVM, which Paella's models were built with,
    and TensorRT do)."""
    from profilers import zoo

    if workload == "paella-mix":
        total = sum(PAELLA_SHARES.values())
        return [MixModel(m, s / total, tuple(zoo.zoo_kernels(m, batch, gpu, precision,
                                                             engine=engine)))
                for m, s in PAELLA_SHARES.items()]
    if workload == "orion-v100":  # the five measured V100 traces, equal shares
        names = list(zoo.ORION_TRACES)
        return [MixModel(n, 1.0 / len(names), tuple(zoo.trace_kernels_v100(n))) for n in names]
    raise ValueError(f"unknown workload {workload!r}: choose paella-mix or orion-v100")


WORKLOADS = ("paella-mix", "orion-v100")
