"""Client library of the gpusched daemon: ``from client_lib import Client``."""
from client_lib._common import JobResult
from client_lib.client import Client, JobFuture
from client_lib.errors import (
    ConnectError,
    DaemonRestarted,
    DaemonUnavailable,
    GpuschedError,
    JobCancelled,
    JobFailed,
    JobShed,
    RequestError,
)
from scheduler_daemon.wire.kernels import KernelSpec

__all__ = ["Client", "AsyncClient", "JobFuture", "JobResult", "KernelSpec", "ConnectError",
           "DaemonRestarted", "DaemonUnavailable", "GpuschedError", "JobCancelled",
           "JobFailed", "JobShed", "RequestError"]


def __getattr__(name):
    if name == "AsyncClient":  # imported lazily: it pulls in asyncio
        from client_lib.aio import AsyncClient
        return AsyncClient
    raise AttributeError(name)
