"""A kernel as the client describes it: name, launch shape and estimated duration."""
from __future__ import annotations

from typing import Annotated

import msgspec

_Pos = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class KernelSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One kernel of a model: name, launch shape and estimated duration.

    ``op`` names what the torch backend runs for it (see ``devices/torch_ops.py``); the
    simulated device only needs the shape and the estimate.
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    est_us: Annotated[float, msgspec.Meta(ge=0.0, le=60e6)]
    grid: _Pos = 1
    block: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 256
    smem: Annotated[int, msgspec.Meta(ge=0, le=256 * 1024)] = 0
    regs: Annotated[int, msgspec.Meta(ge=1, le=255)] = 32
    op: Annotated[str, msgspec.Meta(max_length=256)] = ""
    # fraction of the solo duration bound by DRAM bandwidth (0: compute/latency bound); the
    # simulated GPU slows this part down when co-running kernels oversubscribe bandwidth
    mem_frac: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    # fraction of the solo duration bound by the SMs' arithmetic throughput (likewise)
    comp_frac: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
