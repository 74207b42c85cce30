"""The device interface every backend implements: launch a kernel, report its completion.

What a backend can run beyond kernel lists is declared in ``Capabilities``, a typed value the
daemon reads, never probed with ``hasattr``: registered torch graphs, intercepted eager ops, raw
CUDA modules, and whether a job's kernels may be on the device at once (the experiment
baselines hand a job's whole kernel list to the hardware queues).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from scheduler_daemon.clock import Environment
from scheduler_daemon.core.gpu_specs import GpuSpec
from scheduler_daemon.core.jobs import Job

# on_complete(job, now, duration_s[, per_kernel: each kernel's duration, for a run])
# on_fail(job, now, message[, ran: kernels of the run that finished before the failure])
# on_started(job, now)
CompleteFn = Callable[..., None]
FailFn = Callable[..., None]
StartedFn = Callable[[Job, float], None]


@dataclass(frozen=True)
class Capabilities:
    graphs: bool = False        # REGISTER_GRAPH: captured torch models (load_graph)
    eager: bool = False         # EAGER_OPS: intercepted aten ops (tensor_from, torch_device)
    cuda: bool = False          # REGISTER_CUDA launched for real (load_cuda)
    # a job's kernels may run concurrently (false where they share tensors: torch)
    concurrent_kernels: bool = True
    # runs: one launch may be several consecutive kernels of a job, back to back, reported as
    # one completion with each kernel's duration (the core's quantum; see core/scheduler.py)
    runs: bool = False


class Unsupported(ValueError):
    """The backend cannot do what was asked (the message names the backend to use)."""


class Device(ABC):
    """A place to run kernels. ``launch`` must not block; completions are reported through the
    callbacks given to ``start``: from environment events (simulated devices) or from
    ``collect`` when ``wake_fd`` becomes readable (devices with worker threads)."""

    name: str = "device"
    spec: GpuSpec
    caps: Capabilities = Capabilities()
    # the scheduling quantum where ``caps.runs`` and the operator gives none: about ten times
    # the daemon's cost of one dispatch on this device, so that cost stays under ~10% of a run
    default_quantum_s: float = 0.0
    # it reads ``job.stop`` before each kernel of a run and ends the run there when set
    stops_runs: bool = False

    def start(self, env: Environment, on_complete: CompleteFn, on_fail: FailFn,
              on_started: StartedFn | None = None) -> None:
        """``on_started``: all blocks of the job's kernel have been dispatched (devices that
        cannot tell never call it: completion implies it)."""
        self.env = env
        self.on_complete = on_complete
        self.on_fail = on_fail
        self.on_started = on_started

    def fits_now(self, kernel) -> bool | None:
        """Whether all blocks of ``kernel`` (a KernelSpec; a full wave of a multi-wave one)
        could start now, from what the device observes per SM; None where it cannot tell
        (the core then counts resources summed over the GPU)."""
        return None

    @abstractmethod
    def launch(self, job: Job) -> None:
        """Start ``job.model.kernels[job.cur]`` on stream ``job.stream`` (with ``caps.runs``,
        kernels ``cur`` to ``cur + job.run_len - 1``, one after the other)."""

    def validate(self, kernels: list) -> None:
        """Reject kernels this backend cannot run (raise ``ValueError`` naming the kernel)."""

    def prepare(self, job: Job) -> None:
        """Turn the job's raw input payload into what the backend runs on (may raise
        ``ValueError`` with a message for the client)."""

    def outputs(self, job: Job) -> list:
        """Output tensors of a finished job, as (TensorMeta, buffer) pairs."""
        return []

    # -- what only some backends do (see ``caps``) ---------------------------------------------
    def load_graph(self, key, graph_bytes: bytes, weights: list, quota=None,
                   shared=None) -> list:
        """A captured torch model -> one KernelSpec per op (``caps.graphs``); ``quota``: its
        tenant's Ledger, which counts every request's intermediates as they are made;
        ``shared``: (key of a loaded graph, for each weight the index of that graph's weight
        it reuses or -1 for the next of ``weights``), a graph of the same model captured at
        other shapes."""
        raise Unsupported(f"backend {self.name!r} cannot run registered torch models: start "
                          "the daemon with --backend torch")

    def compile_target(self) -> str | None:
        """The NVRTC target a tenant's CUDA source is compiled for (None: NVRTC's default)."""
        return None

    def load_cuda(self, key, model, compiled=None) -> list:
        """A raw CUDA model, compiled for ``compile_target()`` (``compiled``, or here when
        None), -> one KernelSpec per launch (``caps.cuda``)."""
        raise Unsupported(f"backend {self.name!r} cannot launch CUDA kernels: start the daemon "
                          "with --backend cuda on a GPU node")

    def tensor_from(self, layout, buf):
        """An intercepted tensor's bytes as a tensor on this device (``caps.eager``)."""
        raise Unsupported(f"backend {self.name!r} cannot run intercepted torch ops: start the "
                          "daemon with --backend torch")

    def forget(self, key) -> None:
        """Drop whatever was loaded for model ``key`` (a graph's weights, a CUDA module)."""

    def set_alloc_limit(self, nbytes: int) -> None:
        """No single op may allocate more than this (a tenant's quota)."""

    def set_work_limit(self, work: float) -> None:
        """No single op of a registered graph may do more work (FLOPs or elements)."""

    def finish(self, job: Job) -> None:
        """``job`` ended (answered, failed, cancelled, shed): let go of what it holds."""

    def job_device_bytes(self, model) -> int:
        """Device memory one job of ``model`` (a ``ModelEntry``) holds from its submit until it
        is answered, where the backend allocates it per job (the cuda backend: every buffer);
        the daemon counts it against the tenant's quota. 0 where memory is per op."""
        return 0

    def progress(self, job: Job) -> tuple[int, int] | None:
        """(blocks finished, blocks) of the job's kernel in flight where the backend counts
        them (instrumented CUDA kernels); None elsewhere."""
        return None

    # -- completions from worker threads -------------------------------------------------------
    def wake_fd(self) -> int | None:
        return None

    def collect(self) -> None:
        """Deliver completions that worker threads have queued."""

    def utilisation(self) -> float:
        return 0.0

    def describe(self) -> str:
        return f"{self.name} ({self.spec.name})"

    def close(self) -> None:
        pass
