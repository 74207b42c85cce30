"""A raw-CUDA model's code -> a compiled module: PTX as given, or source (instrumented when the
model asks) compiled with NVRTC for the target architecture, then checked against the limits."""
from __future__ import annotations

import dataclasses

from scheduler_daemon.cuda.checks import kernel_specs, validate_model
from scheduler_daemon.cuda.instrument import instrument
from scheduler_daemon.cuda.limits import LaunchLimits
from scheduler_daemon.cuda.nvrtc import Compiled, compile_source, load_ptx_text
from scheduler_daemon.wire.cuda import CudaModel


def compile_model(model: CudaModel, arch: str | None = None, name: str = "kernel.cu") -> Compiled:
    if bool(model.source) == bool(model.ptx):
        raise ValueError("a CUDA model needs exactly one of source (CUDA C++) or ptx")
    if model.ptx:
        if model.instrument:
            raise ValueError("instrument needs CUDA source: PTX given directly cannot be "
                             "instrumented")
        if model.options:
            raise ValueError("options are NVRTC's, for source; PTX takes none")
        return load_ptx_text(model.ptx)
    src = instrument(model.source) if model.instrument else model.source
    return dataclasses.replace(compile_source(src, name, model.options, arch),
                               instrumented=model.instrument)


def build_model(model: CudaModel, limits: LaunchLimits | None = None, arch: str | None = None,
                name: str = "kernel.cu") -> tuple[Compiled, list]:
    """Compile and validate: (module, one KernelSpec per launch). Raises ``ValueError`` (bad
    model, ``CudaCompileError`` included) or ``CudaUnavailable``."""
    compiled = compile_model(model, arch, name)
    validate_model(model, compiled, limits)
    return compiled, kernel_specs(model)
