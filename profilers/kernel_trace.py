"""Trace a model's forward pass into the list of GPU kernels it would launch, without a GPU.

``trace_kernels(module, inputs)`` runs the forward under ``torch.no_grad()`` on the **meta**
device (shapes only: no memory, no arithmetic) inside a ``TorchDispatchMode`` and records one
:class:`KernelProfile` per aten op that launches a kernel in PyTorch eager mode. Ops that only
make a new view or allocate (``view``, ``_unsafe_view``, ``t``, ``transpose``, ``permute``,
``expand``, ``squeeze``, ``slice``, ``select``, ``detach``, ``alias``, ``as_strided``, ``empty``,
``scalar_tensor``, ...) are skipped.

Per kernel:

- ``flops``: ``torch.utils.flop_counter``'s registered formula where there is one (mm, addmm,
  bmm, baddbmm, convolution, sdpa: ``2 * MACs``), otherwise one op per element of the largest
  tensor the op touches (elementwise, norms, reductions, copies).
- ``bytes_read`` / ``bytes_written``: distinct bytes of the tensor inputs / outputs (a broadcast,
  stride-0 dimension counts once). Gathers (``embedding``, ``index_select``) read only the rows
  they return plus the indices, not the whole table. An in-place op writes its input back.
- ``kind``: ``conv``, ``gemm``, ``attention`` (tensor-core math), ``dwconv`` (depthwise conv, a
  memory-bound stencil), ``reduction`` (softmax, norms, pooling, means), ``elementwise``,
  ``copy`` (clone, cat, dtype casts) or ``gather``.
- launch shape, from documented heuristics (the simulator needs one; no real launch is seen):

  * GEMM-like (``conv``, ``gemm``, ``attention``): the output as 128x128 tiles, one 256-thread
    block per tile, ``grid = batch * ceil(M / 128) * ceil(N / 128)`` (conv as implicit GEMM:
    ``M = N_img * H_out * W_out``, ``N = C_out / groups``, times ``groups``; attention: one
    block per 128 query rows per head), 48 KiB shared memory
    (three pipeline stages of 128x32 A and B slabs in FP16), 128 registers per thread;
  * everything else: 256 threads per block, each thread covering 4 elements, so
    ``grid = ceil(numel / (256 * 4))`` over the largest tensor the op touches, 32 registers,
    no shared memory (1 KiB for reductions: one partial sum per thread).

Profiles are traced with FP32 tensors; ``roofline.py`` rescales the bytes for FP16 / INT8.
Batch size enters only through ``inputs``. ``fuse_for_engine`` turns an eager list into what a
TensorRT-style engine would launch (see its docstring).
"""
from __future__ import annotations

import logging
import math

import msgspec
import torch
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

log = logging.getLogger(__name__)

TILE = 128            # GEMM output tile edge (elements)
GEMM_THREADS = 256
GEMM_SMEM = 48 * 1024
GEMM_REGS = 128
EW_THREADS = 256
EW_PER_THREAD = 4     # elements each elementwise thread covers
EW_REGS = 32
REDUCE_SMEM = 1024
MAX_GRID = 2**31 - 1

# ops that make a view or only allocate: no kernel in eager mode (besides every ``is_view`` op)
_NO_KERNEL = frozenset({
    "_unsafe_view", "view", "reshape", "t", "transpose", "permute", "expand", "squeeze",
    "unsqueeze", "slice", "select", "detach", "alias", "as_strided", "split", "split_with_sizes",
    "unbind", "chunk", "narrow", "unfold", "view_as", "expand_as", "_reshape_alias", "empty",
    "empty_like", "empty_strided", "new_empty", "new_empty_strided", "scalar_tensor", "lift_fresh",
    "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim",
    "numel", "is_same_size", "_has_compatible_shallow_copy_type", "resize_", "set_",
})
_GEMM = {"mm", "addmm", "bmm", "baddbmm", "_scaled_mm"}
_CONV = {"convolution", "_convolution", "cudnn_convolution", "convolution_overrideable",
         "_slow_conv2d_forward"}
_REDUCTION = {"_softmax", "_log_softmax", "softmax", "native_layer_norm", "native_batch_norm",
              "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
              "native_group_norm", "mean", "sum", "amax", "amin", "max", "min", "var", "std",
              "var_mean", "norm", "max_pool2d_with_indices", "avg_pool2d", "_adaptive_avg_pool2d",
              "adaptive_max_pool2d", "cumsum", "argmax", "topk", "sort"}
_COPY = {"clone", "cat", "copy_", "_to_copy", "contiguous", "stack", "constant_pad_nd"}
_GATHER = {"embedding", "index_select", "gather", "index"}


class KernelProfile(msgspec.Struct, frozen=True):
    """One traced kernel: what it computes and moves, and the launch shape it is given."""

    name: str           # aten op, e.g. "convolution" or "addmm"
    kind: str           # conv | gemm | attention | dwconv | reduction | elementwise | copy | gather
    flops: int
    bytes_read: int
    bytes_written: int
    grid: int
    block: int
    smem: int
    regs: int

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _distinct_bytes(t: torch.Tensor) -> int:
    """Bytes of the elements ``t`` really holds: a stride-0 (broadcast) dimension counts once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _op_kind(name: str, args) -> str:
    if name in _CONV:
        groups, weight = args[8] if len(args) > 8 else 1, args[1]
        return "dwconv" if groups > 1 and weight.shape[1] == 1 else "conv"
    if name in _GEMM:
        return "gemm"
    if "scaled_dot_product" in name or "attention" in name:
        return "attention"
    if name in _REDUCTION:
        return "reduction"
    if name in _COPY:
        return "copy"
    if name in _GATHER:
        return "gather"
    return "elementwise"


def _gemm_grid(name: str, kind: str, args, out: torch.Tensor) -> int:
    """Number of 128x128 output tiles (times batch, times groups for a grouped conv)."""
    tiles = lambda m, n: math.ceil(m / TILE) * math.ceil(n / TILE)
    if kind == "conv":
        groups = args[8] if len(args) > 8 else 1
        m = out.shape[0] * math.prod(out.shape[2:])
        return groups * tiles(m, out.shape[1] // groups)
    if kind == "attention":  # out [B, H, S, D]: one block per 128 query rows per head
        return math.prod(out.shape[:-2]) * math.ceil(out.shape[-2] / TILE)
    return math.prod(out.shape[:-2]) * tiles(out.shape[-2], out.shape[-1])


def profile_op(func, args, kwargs, out) -> KernelProfile | None:
    """The profile of one dispatched aten op, or ``None`` when it launches no kernel."""
    name = func.overloadpacket.__name__
    if func.is_view or name in _NO_KERNEL:
        return None
    ins, outs = _tensors((args, kwargs)), _tensors(out)
    if not outs:
        return None
    kind = _op_kind(name, args)
    bytes_written = sum(_distinct_bytes(t) for t in outs)
    if kind == "gather":  # the rows returned plus the indices, not the whole table
        bytes_read = bytes_written + sum(_distinct_bytes(t) for t in ins[1:])
    else:
        bytes_read = sum(_distinct_bytes(t) for t in ins)
    touched = outs + (ins[1:] if kind == "gather" else ins)  # a gather's table is not swept
    numel = max(t.numel() for t in touched)
    formula = flop_registry.get(func.overloadpacket)
    flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else numel
    if kind in ("conv", "gemm", "attention"):
        grid = _gemm_grid(name, kind, args, outs[0])
        block, smem, regs = GEMM_THREADS, GEMM_SMEM, GEMM_REGS
    else:
        grid = math.ceil(numel / (EW_THREADS * EW_PER_THREAD))
        block, regs = EW_THREADS, EW_REGS
        smem = REDUCE_SMEM if kind == "reduction" else 0
    return KernelProfile(name, kind, flops, bytes_read, bytes_written,
                         min(max(grid, 1), MAX_GRID), block, smem, regs)


class _KernelRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels: list[KernelProfile] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        p = profile_op(func, args, kwargs, out)
        if p is not None:
            self.kernels.append(p)
        return out


def _to_meta(x):
    return x.to("meta") if isinstance(x, torch.Tensor) and x.device.type != "meta" else x


def trace_kernels(module: torch.nn.Module, inputs: tuple) -> list[KernelProfile]:
    """The kernels of ``module(*inputs)`` in launch order, traced on the meta device.

    Parameters, buffers and inputs not already on meta are swapped for meta copies for the call
    (``functional_call``): the module itself is left untouched.
    """
    if not isinstance(inputs, tuple):
        raise TypeError("inputs must be a tuple of the forward's positional arguments, "
                        "e.g. (images,) - wrap a single tensor as (x,)")
    named = [*module.named_parameters(remove_duplicate=False),
             *module.named_buffers(remove_duplicate=False)]
    state = {k: _to_meta(v) for k, v in named}
    inputs = tree_map(_to_meta, inputs)
    rec = _KernelRecorder()
    with torch.no_grad(), rec:
        functional_call(module, state, inputs, tie_weights=True)
    log.debug("traced %s: %d kernels", type(module).__name__, len(rec.kernels))
    return rec.kernels


# --- inference-engine fusion -------------------------------------------------------------
# ops that are per-element in eval mode (BatchNorm with running statistics is an affine map)
_POINTWISE_NORMS = frozenset({"native_batch_norm", "_native_batch_norm_legit_no_training"})


def _is_pointwise(p: KernelProfile) -> bool:
    return p.kind == "elementwise" or p.name in _POINTWISE_NORMS


def fuse_for_engine(profiles: list[KernelProfile]) -> list[KernelProfile]:
    """The kernel list an inference engine (TensorRT-style layer fusion) would launch instead.

    Generic rules, applied in launch order, never per model:

    1. factory kernels that read nothing (``arange``, ``ones``) are constants: dropped;
    2. copies (``clone`` for a layout change, ``cat``, casts) are dropped: producers write
       straight into the consumer's layout / the concatenated buffer;
    3. a pointwise kernel (elementwise ops, eval-mode BatchNorm) is folded into the previous
       kernel's epilogue: its time disappears, the producer's ``bytes_read`` grows by the
       pointwise kernel's extra inputs, ``max(0, bytes_read_pw - bytes_written_producer)``
       (a residual, a mask), and its ``flops`` are added;
    4. ``bmm -> _softmax -> bmm`` (after 2-3) becomes one fused-attention kernel: flops summed,
       ``bytes_read = read_1 + read_2 - written_softmax`` (the probabilities stay on chip),
       ``bytes_written = written_2``, the second bmm's launch shape.

    Horizontal fusion (Q, K, V projections as one GEMM) is not modelled: the profiles carry
    no tensor identities.
    """
    out: list[KernelProfile] = []
    for p in profiles:
        if p.bytes_read == 0 or p.kind == "copy":
            continue
        if _is_pointwise(p) and out:
            prev = out[-1]
            extra = max(0, p.bytes_read - prev.bytes_written)
            out[-1] = msgspec.structs.replace(prev, flops=prev.flops + p.flops,
                                              bytes_read=prev.bytes_read + extra)
            continue
        if (p.name == "bmm" and len(out) >= 2 and out[-1].name == "_softmax"
                and out[-2].name == "bmm"):
            first, soft = out[-2], out[-1]
            del out[-2:]
            p = msgspec.structs.replace(
                p, name="fused_attention", kind="attention",
                flops=first.flops + soft.flops + p.flops,
                bytes_read=first.bytes_read + p.bytes_read - soft.bytes_written)
        out.append(p)
    return out
