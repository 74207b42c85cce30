"""numpy arrays and torch tensors <-> (TensorMeta, raw frame), zero-copy where contiguous."""
from __future__ import annotations

from scheduler_daemon.wire.tensors import DTYPES, TensorMeta


def to_frame(x) -> tuple[TensorMeta, memoryview]:
    """numpy array or torch tensor (CPU) -> (meta, buffer) without copying when contiguous."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        name = str(x.dtype).removeprefix("torch.")
        x = x.contiguous().numpy()
    else:
        import numpy as np
        x = np.ascontiguousarray(x)
        name = x.dtype.name
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; use one of {', '.join(DTYPES)}")
    return TensorMeta(dtype=name, shape=list(x.shape)), memoryview(x).cast("B")


def from_frame(meta: TensorMeta, buf) -> "object":
    """(meta, buffer) -> numpy array (read-only view of the received frame)."""
    import numpy as np
    return np.frombuffer(buf, dtype=meta.dtype).reshape(meta.shape)
