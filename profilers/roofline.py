"""Roofline duration of one traced kernel on a GPU preset.

    t_c        = flops / (peak(precision, kind) * 1e6 * eff_c * derate)   # us; peak in TFLOP/s
    t_m        = bytes * scale(precision) / (bw * 1e3 * eff_m)             # us; bw in GB/s
    duration   = max(t_c, t_m) + spec.launch_floor_us
    mem_frac   = t_m / duration                                           # clamped to [0, 1]

    eff_c      = EFF_C[precision]                                         # gemm, attention
               = EFF_C[precision] * conv_factor * w / (w + CONV_W_HALF)    # conv
               = EFF_VEC                                                  # everything else
    w          = flops / spec.sms / 1e6                                   # MFLOP per SM

``mem_frac`` is the share of the solo duration the kernel's DRAM traffic fills at its achieved
bandwidth: near 1 for a large elementwise kernel, small for a compute-bound GEMM and for a tiny
kernel (its time is the launch floor, not bandwidth).

Peaks (``peak``): tensor-core math (``conv``, ``gemm``, ``attention``) runs at ``fp16_tflops``
in FP16, ``int8_tops`` in INT8, and in FP32 at ``fp32_tflops`` on T4/V100 but at the TF32 rate,
``fp16_tflops / 2``, on A100/H100 (cuDNN convolutions use TF32 by default there; we assume the
matmuls do too, as NVIDIA's FP32 figures on Ampere/Hopper do). Everything else (elementwise,
norms, depthwise conv, copies) runs on the CUDA cores: ``fp32_tflops``, twice that in FP16 /
INT8 (packed half2 / int8x4). INT8 means what TensorRT builds with INT8 and FP16 both enabled:
each kernel takes the faster of its INT8 and FP16 rooflines (on V100, with no INT8 tensor
cores, GEMMs stay FP16).

Bytes were traced with FP32 tensors, so ``scale = bytes_per_element(precision) / 4``
(FP32 1, FP16 1/2, INT8 1/4; the few integer index tensors are scaled alike).

Constants. ``EFF_M`` and ``EFF_C["fp32"]`` are read off measured kernels; the others were fitted
together (0.05 steps, least squares on log ratios) to the rows of ``gpusched.bench.calibrate``
(shared/docs/calibration.md: TensorRT ResNet-50 / BERT-base GPU times, the V100 FP32 Orion
traces, the H100 TF32 trace summaries), with its host+GPU figures as upper bounds; one value per
precision and op class, never per model:

- ``EFF_M`` 0.80: large memory-bound kernels of the V100 ResNet-50 / MobileNetV2 traces
  (BatchNorm, ReLU, add, pooling, 5-40 MB) take ``MB / 0.73`` us: 730 GB/s = 0.81 of 900 GB/s.
- ``EFF_C``: share of the peak that GEMMs reach. FP32 0.75: the V100 BERT-large trace's SGEMMs
  run at 12 TFLOP/s = 0.77 of 15.7. FP16 0.45, INT8 0.50: TensorRT BERT-base on T4/V100/A100.
- ``CONV_W_HALF`` 3 MFLOP per SM: a convolution reaches half its peak share with that much work
  per SM (prologue, filter transforms and tail waves are not amortised below it). It is what
  makes small-batch convolutions slow (MLPerf ResNet-50 batch 1) while keeping batch 8 under
  the host+GPU figures of NVIDIA's DeepLearningExamples.
- ``CONV_FACTOR_TC`` 0.55: on tensor cores (FP16, INT8, TF32) convolutions reach a smaller share
  of the peak than GEMMs; on the CUDA cores (FP32 on T4/V100) the fit gives 1.0 (no penalty).
- ``EFF_VEC`` 0.5: CUDA-core math outside GEMMs (depthwise conv, norms); it rarely binds.
- ``GPU_DERATE``: T4 0.8, its 70 W power cap: under sustained load it clocks at ~1.25 GHz, not
  the 1.59 GHz boost the data-sheet peaks assume (compute only; bandwidth unchanged). A device
  fact that belongs in ``GpuSpec``; kept here until that class has a field for it.
"""
from __future__ import annotations

from profilers.kernel_trace import KernelProfile
from scheduler_daemon.core.gpu_specs import GpuSpec

PRECISIONS = ("fp16", "fp32", "int8")
BYTES_SCALE = {"fp32": 1.0, "fp16": 0.5, "int8": 0.25}
TENSOR_KINDS = frozenset({"conv", "gemm", "attention"})
TF32_GPUS = frozenset({"A100", "H100"})  # Ampere and later: FP32 matmul/conv run as TF32

EFF_C = {"fp32": 0.75, "fp16": 0.45, "int8": 0.50}
CONV_W_HALF = 3.0        # MFLOP per SM at which a convolution reaches half its peak share
CONV_FACTOR_TC = 0.55    # convolutions on tensor cores (FP16, INT8, TF32)
CONV_FACTOR_SIMT = 1.0   # FP32 convolutions on the CUDA cores (T4, V100)
EFF_M = {"fp32": 0.80, "fp16": 0.80, "int8": 0.80}
EFF_VEC = 0.5
GPU_DERATE = {"T4": 0.8}  # sustained / boost clock of power-capped parts


def _tensor_cores(spec: GpuSpec, precision: str) -> bool:
    return precision != "fp32" or spec.name in TF32_GPUS


def peak_tflops(spec: GpuSpec, precision: str, kind: str) -> float:
    """Data-sheet peak (TFLOP/s, TOP/s for INT8) for a kernel class at a precision."""
    if kind in TENSOR_KINDS:
        if precision == "fp16":
            return spec.fp16_tflops
        if precision == "int8":
            return spec.int8_tops or spec.fp16_tflops
        return spec.fp16_tflops / 2 if spec.name in TF32_GPUS else spec.fp32_tflops
    vec = spec.fp32_tflops or spec.fp16_tflops / 8
    return vec if precision == "fp32" else 2 * vec


def _check(precision: str) -> None:
    if precision not in BYTES_SCALE:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def compute_us(p: KernelProfile, spec: GpuSpec, precision: str) -> float:
    """``t_c = flops / (peak * 1e6 * eff_c * derate)`` in microseconds (``eff_c`` as above)."""
    _check(precision)
    if p.kind in TENSOR_KINDS:
        eff_c = EFF_C[precision]
        if p.kind == "conv":
            w = p.flops / spec.sms / 1e6
            eff_c *= CONV_FACTOR_TC if _tensor_cores(spec, precision) else CONV_FACTOR_SIMT
            eff_c *= w / (w + CONV_W_HALF)
    else:
        eff_c = EFF_VEC
    derate = GPU_DERATE.get(spec.name, 1.0)
    return p.flops / (peak_tflops(spec, precision, p.kind) * 1e6 * eff_c * derate)


def memory_us(p: KernelProfile, spec: GpuSpec, precision: str) -> float:
    """``t_m = bytes * scale / (bw * 1e3 * eff_m)`` in microseconds."""
    _check(precision)
    return p.bytes * BYTES_SCALE[precision] / (spec.mem_bw_gbs * 1e3 * EFF_M[precision])


def _roofline(p: KernelProfile, spec: GpuSpec, precision: str) -> tuple[float, float, float]:
    t_c, t_m = compute_us(p, spec, precision), memory_us(p, spec, precision)
    duration = max(t_c, t_m) + spec.launch_floor_us
    return duration, min(1.0, t_m / duration), min(1.0, t_c / duration)


def kernel_time_fracs(p: KernelProfile, spec: GpuSpec, precision: str) -> tuple[float, float, float]:
    """``(duration_us, mem_frac, comp_frac)``: ``duration = max(t_c, t_m) + launch_floor_us``,
    ``mem_frac = t_m / duration``, ``comp_frac = t_c / duration``; INT8 takes the faster of
    the INT8 and FP16 rooflines."""
    best = _roofline(p, spec, precision)
    if precision == "int8":
        fp16 = _roofline(p, spec, "fp16")
        if fp16[0] < best[0]:
            best = fp16
    return best


def kernel_time_us(p: KernelProfile, spec: GpuSpec, precision: str) -> tuple[float, float]:
    """``(duration_us, mem_frac)`` of ``kernel_time_fracs``."""
    return kernel_time_fracs(p, spec, precision)[:2]
