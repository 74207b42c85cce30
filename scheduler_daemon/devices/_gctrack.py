"""``untrack(obj)``: stop the cyclic garbage collector from tracking ``obj``.

Interpreted, nothing happens. Compiled (``simgpu.pxd`` cimports ``_gctrack.pxd``, whose inline C
version calls ``PyObject_GC_UnTrack``), the simulated GPU untracks its kernel records: the
hardware-queue baselines hold every kernel of every queued job at once, tens of thousands, and a
full collection walked them all. A kernel record refers only to its job, its block shape and an
older kernel of its stream, so it closes no cycle of its own.
"""


def untrack(obj) -> None:
    """Interpreted: nothing."""
