"""Errors of the raw-CUDA path, each with a message that says what to do.

``CudaCompileError`` and ``CudaLaunchError`` are ``ValueError``s: the tenant's model is wrong and
the daemon answers it as a bad model. ``CudaUnavailable`` means this machine lacks the pieces
(cuda-python, libnvrtc, a driver); ``CudaError`` is a failing driver call, named by its CUresult.
"""
from __future__ import annotations

INSTALL_HINT = "install the cuda extra: pip install 'gpusched[cuda]'"
LOG_LIMIT = 8 * 1024  # compiler log bytes kept in an error message


class CudaUnavailable(RuntimeError):
    """cuda-python, libnvrtc or the CUDA driver is missing."""


class CudaCompileError(ValueError):
    """The source did not compile; ``log`` is NVRTC's full log."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


class CudaError(RuntimeError):
    """A CUDA driver call failed; ``code`` is the CUresult name (e.g. CUDA_ERROR_OUT_OF_MEMORY)."""

    def __init__(self, call: str, code: str, detail: str = ""):
        super().__init__(f"{call} failed: {code}" + (f" ({detail})" if detail else ""))
        self.call = call
        self.code = code


def truncate_log(log: str, limit: int = LOG_LIMIT) -> str:
    log = log.rstrip("\0").rstrip()
    if len(log) <= limit:
        return log
    return log[:limit] + f"\n... ({len(log) - limit} more characters of compiler log cut)"
