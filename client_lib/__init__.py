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

__all__ = ["AsyncClient", "AsyncJobFuture", "Client", "ConnectError", "DaemonRestarted",
           "DaemonUnavailable", "GpuschedError", "JobCancelled", "JobFailed", "JobFuture",
           "JobResult", "JobShed", "KernelSpec", "RequestError"]


def __getattr__(name):
    if name in ("AsyncClient", "AsyncJobFuture"):  # imported lazily: they pull in asyncio
        from client_lib import aio
        return getattr(aio, name)
    raise AttributeError(name)
