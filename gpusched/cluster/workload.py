"""The services a cluster serves in the benchmark and the simulation, and the kernels a client
registers for a placed model.

A placed replica names a zoo model and a batch size; on a daemon of GPU type ``T`` one job is one
batch: that model's kernels at that batch on ``T`` (``profilers.zoo``, PyTorch's eager kernels,
whose solo latency is the profile placement and admission use), merged into ``STEPS``
consecutive steps (durations summed, the launch shape of each step's longest kernel): the same
work with a few kernel notices per job, so six live daemons and a load generator fit on a
two-core machine and a thousand simulated GPUs fit in a minute.

Two SLOs: a job's (one batch, from submit to answer: ``SLO_FACTOR`` times its solo latency,
what goodput counts) and a placed replica's (a request's, which also waits for its batch to
fill: the job's SLO plus the fill time at the replica's rate, what admission checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from scheduler_daemon.wire.kernels import KernelSpec

STEPS = 6
SLO_FACTOR = 5.0   # a service's SLO: this many times its solo latency (Paella's default)

# (name, zoo model, batch, share of the requests): long and short jobs, one GPU type (T4)
BENCH_SERVICES = (("vision-resnet50", "resnet50", 32, 0.3),
                  ("nlp-bert", "bert-base", 16, 0.3),
                  ("thumbs-resnet18", "resnet18", 32, 0.4))
BENCH_GPU = "T4"


@lru_cache(maxsize=64)
def model_kernels(zoo_model: str, batch: int, gpu: str, steps: int = STEPS) -> tuple[KernelSpec, ...]:
    """The kernels one job of ``zoo_model`` at ``batch`` runs on a ``gpu`` (a preset name)."""
    from profilers import zoo
    ks = zoo.zoo_kernels(zoo_model, batch, gpu, "fp16", engine="eager")
    return coarsen(ks, steps, prefix=f"{zoo_model}-b{batch}")


def coarsen(kernels, steps: int, prefix: str = "step") -> tuple[KernelSpec, ...]:
    """Merge consecutive kernels into ``steps`` steps: durations summed, the launch shape of
    the step's longest kernel, memory/compute fractions weighted by duration."""
    ks = list(kernels)
    steps = max(1, min(steps, len(ks)))
    out = []
    for s in range(steps):
        group = ks[s * len(ks) // steps:(s + 1) * len(ks) // steps]
        est = sum(k.est_us for k in group)
        big = max(group, key=lambda k: k.est_us)
        w = est or 1.0
        out.append(KernelSpec(name=f"{prefix}-s{s}", est_us=est, grid=big.grid, block=big.block,
                              smem=big.smem, regs=big.regs, op=f"sleep:{est:g}",
                              mem_frac=min(1.0, sum(k.mem_frac * k.est_us for k in group) / w),
                              comp_frac=min(1.0, sum(k.comp_frac * k.est_us for k in group) / w)))
    return tuple(out)


@dataclass(frozen=True)
class Service:
    name: str
    zoo_model: str
    batch: int
    share: float
    kernels: tuple[KernelSpec, ...]

    @property
    def solo_s(self) -> float:
        return sum(k.est_us for k in self.kernels) * 1e-6

    @property
    def slo_ms(self) -> float:
        """A job's SLO (one batch, submit to answer)."""
        return round(self.solo_s * 1e3 * SLO_FACTOR, 3)

    def replica(self, jobs_per_s: float):
        """The replica to admit for ``jobs_per_s`` jobs (batches) a second: its request rate,
        and its request SLO (the job's plus the time a batch takes to fill at that rate)."""
        from gpusched.cluster.recovery import Rep
        rate = jobs_per_s * self.batch
        fill_ms = (self.batch - 1) / rate * 1e3 if rate > 0 else 0.0
        return Rep(self.name, self.zoo_model, self.batch, round(rate, 3),
                   round(self.slo_ms + fill_ms, 3))


def bench_services(gpu: str = BENCH_GPU) -> tuple[Service, ...]:
    return tuple(Service(n, m, b, s, model_kernels(m, b, gpu)) for n, m, b, s in BENCH_SERVICES)


def capacity_per_gpu(gpu: str, services) -> float:
    """Jobs/s one GPU sustains for the mix at most: the inverse of the mean job's GPU-seconds
    (each kernel's duration times the share of the GPU it occupies; a fluid GPU that never
    idles). Loads are laid out against it, as in the other benchmarks."""
    from gpusched.experiments.runner import capacity_rps
    return capacity_rps(gpu, services)   # it reads name, share and kernels, as a Service has
