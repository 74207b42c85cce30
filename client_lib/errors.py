"""Exceptions the client library raises; each message says what happened and what to do."""
from __future__ import annotations


class GpuschedError(Exception):
    """Base class of every client-library error."""


class ConnectError(GpuschedError):
    """The daemon did not answer the handshake (not running, wrong endpoint, refused)."""


class DaemonUnavailable(GpuschedError):
    """The daemon stopped answering while requests were pending."""


class DaemonRestarted(DaemonUnavailable):
    """The daemon restarted; requests sent to the old one are lost. The client reconnects."""


class RequestError(GpuschedError):
    """The daemon refused a request; ``code`` is one of ``scheduler_daemon.wire.protocol.Code``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class JobCancelled(GpuschedError):
    """The job was cancelled (by the client, or because the daemon shut down)."""


class JobShed(GpuschedError):
    """The daemon dropped the job because it could no longer meet its SLO (``--shed``)."""


class JobFailed(GpuschedError):
    """A kernel of the job failed on the device; ``str(e)`` carries the device's message."""
