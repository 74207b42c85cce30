"""Client library of the gpusched daemon: ``from client_lib import Client``."""
from scheduler_daemon.jobs import KernelSpec

from ._common import JobResult
from .client import Client, JobFuture
from .errors import (ConnectError, DaemonRestarted, DaemonUnavailable, GpuschedError,
                     JobCancelled, JobFailed, JobShed, RequestError)

__all__ = ["Client", "AsyncClient", "JobFuture", "JobResult", "KernelSpec", "ConnectError",
           "DaemonRestarted", "DaemonUnavailable", "GpuschedError", "JobCancelled",
           "JobFailed", "JobShed", "RequestError"]


def __getattr__(name):
    if name == "AsyncClient":  # imported lazily: it pulls in asyncio
        from .aio import AsyncClient
        return AsyncClient
    raise AttributeError(name)
