"""The device interface every backend implements: launch a kernel, report its completion."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

from scheduler_daemon.clock import Environment
from scheduler_daemon.core.gpu_specs import GpuSpec
from scheduler_daemon.core.jobs import Job

# on_complete(job, now, duration_s) / on_fail(job, now, message)
CompleteFn = Callable[[Job, float, float], None]
FailFn = Callable[[Job, float, str], None]


class Device(ABC):
    """A place to run kernels. ``launch`` must not block; completions are reported through the
    callbacks given to ``start``: from environment events (simulated devices) or from
    ``collect`` when ``wake_fd`` becomes readable (devices with worker threads)."""

    name: str = "device"
    spec: GpuSpec

    def start(self, env: Environment, on_complete: CompleteFn, on_fail: FailFn) -> None:
        self.env = env
        self.on_complete = on_complete
        self.on_fail = on_fail

    @abstractmethod
    def launch(self, job: Job) -> None:
        """Start ``job.model.kernels[job.cur]`` on stream ``job.stream``."""

    def validate(self, kernels: list) -> None:
        """Reject kernels this backend cannot run (raise ``ValueError`` naming the kernel)."""

    def prepare(self, job: Job) -> None:
        """Turn the job's raw input payload into what the backend runs on (may raise
        ``ValueError`` with a message for the client)."""

    def outputs(self, job: Job) -> list:
        """Output tensors of a finished job, as (TensorMeta-like dict, buffer) pairs."""
        return []

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
