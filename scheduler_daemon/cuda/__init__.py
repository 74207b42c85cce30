"""Raw CUDA kernels through the daemon: compile (NVRTC), instrument, describe, run (driver API).

- ``nvrtc``: CUDA C++ -> PTX/cubin in process (no GPU needed); PTX given directly.
- ``instrument``: Paella's per-block progress counter as a source transformation.
- ``spec``: the wire structs of a raw-CUDA model and their checks against a device's limits.
- ``build``: a model's source or PTX -> a compiled module, instrumented if asked.
- ``detect``: the GPUs the CUDA driver (and NVML) see.
- ``driver``: ``CudaDriverDevice``, the daemon backend on the CUDA driver API (cuda-python).

Importing this package needs only msgspec; cuda-python is imported when something is compiled
or a device is opened, and its absence is a ``CudaUnavailable`` naming the pip extra.

Raw kernels of all tenants share one CUDA context: a kernel can read or overwrite any device
memory of that context, other tenants' buffers included. Serve raw CUDA to trusted tenants.
"""
from scheduler_daemon.cuda.errors import CudaCompileError, CudaError, CudaUnavailable

__all__ = ["CudaCompileError", "CudaError", "CudaUnavailable"]
