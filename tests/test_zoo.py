"""The model zoo: traced kernel lists, the roofline, trace replay and the calibration bench."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from gpusched.bench.calibrate import run_calibrate
from profilers import zoo
from profilers.kernel_trace import KernelProfile, fuse_for_engine, trace_kernels
from profilers.roofline import EFF_C, kernel_time_us
from profilers.zoo_models import build
from scheduler_daemon.core.gpu_specs import PRESETS, gpu_spec
from scheduler_daemon.wire.kernels import KernelSpec
from tests.shared_data import needs_shared

TENSOR = ("conv", "gemm", "attention")


def _tensor_flops(profiles: list[KernelProfile]) -> int:
    return sum(p.flops for p in profiles if p.kind in TENSOR)


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _one(fn, *shapes) -> KernelProfile:
    (p,) = trace_kernels(_Fn(fn), tuple(torch.empty(s, device="meta") for s in shapes))
    return p


# --- the zoo's cached profiles -----------------------------------------------------------
def test_zoo_names_and_data_files_exist():
    assert zoo.ZOO_MODELS == ("mobilenetv2", "resnet18", "resnet34", "resnet50", "squeezenet1.1",
                              "densenet121", "googlenet", "inceptionv3", "bert-base", "gpt2")
    missing = [str(zoo.data_path(m, b)) for m in zoo.ZOO_MODELS for b in zoo.BATCHES
               if not zoo.data_path(m, b).exists()]
    assert not missing, f"run 'python tools/build_zoo.py': missing {missing}"


@pytest.mark.parametrize("name", zoo.ZOO_MODELS)
def test_every_model_loads_at_batch_1_and_8(name):
    for batch in (1, 8):
        profiles = zoo.load_profiles(name, batch)
        assert len(profiles) > 0 and _tensor_flops(profiles) > 0
        kernels = zoo.zoo_kernels(name, batch, "T4")
        assert len(kernels) == len(profiles)
        assert all(isinstance(k, KernelSpec) and k.est_us > 0 and 0 <= k.mem_frac <= 1
                   for k in kernels)


def test_cached_file_matches_a_fresh_trace():
    assert zoo.trace_profiles("resnet18", 2) == zoo.load_profiles("resnet18", 2)


def test_resnet50_flops_are_2x_4_1_gmacs():
    flops = _tensor_flops(zoo.load_profiles("resnet50", 1))
    assert flops == pytest.approx(8.2e9, rel=0.10)
    kinds = [p.kind for p in zoo.load_profiles("resnet50", 1)]
    assert kinds.count("conv") == 53 and kinds.count("gemm") == 1


def test_bert_base_flops_match_2_params_tokens():
    model, _ = build("bert-base", device="meta")
    embed = sum(p.numel() for n, p in model.named_parameters()
                if n.startswith(("word", "pos", "token")))
    params = sum(p.numel() for p in model.parameters()) - embed
    assert 85e6 < params < 88e6  # 12 x 7.1M + pooler
    tokens = 128
    flops = _tensor_flops(zoo.load_profiles("bert-base", 1))
    assert flops == pytest.approx(2 * params * tokens, rel=0.10)


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2", "bert-base", "gpt2", "densenet121"])
def test_batch_8_has_8x_the_flops_of_batch_1(name):
    f1 = _tensor_flops(zoo.load_profiles(name, 1))
    f8 = _tensor_flops(zoo.load_profiles(name, 8))
    assert f8 / f1 == pytest.approx(8.0, rel=0.02)


def test_missing_file_is_traced_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(zoo, "DATA_DIR", tmp_path)
    zoo._profiles.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="profilers.zoo"):
            profiles = zoo.load_profiles("squeezenet1.1", 3)
        assert len(profiles) > 0 and "tracing squeezenet1.1 at batch 3" in caplog.text
    finally:
        zoo._profiles.cache_clear()


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        zoo.load_profiles("resnet51", 1)
    with pytest.raises(ValueError, match="positive int"):
        zoo.load_profiles("resnet50", 0)
    with pytest.raises(ValueError, match="fp16, fp32, int8"):
        zoo.zoo_kernels("resnet50", 1, "T4", precision="bf16")
    with pytest.raises(ValueError, match="unknown GPU spec"):
        zoo.zoo_kernels("resnet50", 1, "K80")


# --- the tracer --------------------------------------------------------------------------
def test_view_ops_launch_no_kernel_and_shapes_follow_the_heuristics():
    def fn(x, w):
        y = x.view(4, 64, 32).transpose(1, 2).permute(0, 2, 1).reshape(256, 32)  # views only
        return torch.relu(y.t().contiguous().t() @ w).unsqueeze(0).squeeze(0)

    inputs = (torch.empty(256, 32, device="meta"), torch.empty(32, 512, device="meta"))
    ks = trace_kernels(_Fn(fn), inputs)
    assert [k.name for k in ks] == ["clone", "mm", "relu"]
    mm = ks[1]
    assert mm.flops == 2 * 256 * 32 * 512
    assert (mm.grid, mm.block, mm.smem, mm.regs) == (2 * 4, 256, 48 * 1024, 128)
    assert ks[2].grid == 256 * 512 // 1024 and ks[2].block == 256 and ks[2].regs == 32
    assert mm.bytes_read == (256 * 32 + 32 * 512) * 4 and mm.bytes_written == 256 * 512 * 4


def test_fusion_folds_pointwise_kernels_and_attention():
    eager = zoo.load_profiles("bert-base", 1)
    fused = fuse_for_engine(eager)
    assert len(fused) < len(eager)
    assert sum(p.name == "fused_attention" for p in fused) == 12
    assert not any(p.kind in ("elementwise", "copy") for p in fused[1:])
    assert sum(p.flops for p in fused) == sum(p.flops for p in eager if p.bytes_read > 0
                                              and p.kind != "copy")


# --- the roofline ------------------------------------------------------------------------
def test_duration_is_at_least_the_launch_floor():
    for gpu, spec in PRESETS.items():
        for precision in ("fp16", "fp32", "int8"):
            for p in zoo.load_profiles("mobilenetv2", 1):
                us, mem_frac = kernel_time_us(p, spec, precision)
                assert us >= spec.launch_floor_us and 0.0 <= mem_frac <= 1.0


def test_gemm_is_compute_bound_and_elementwise_memory_bound_on_h100():
    h100 = gpu_spec("H100")
    gemm = _one(torch.mm, (4096, 4096), (4096, 4096))
    us, mem_frac = kernel_time_us(gemm, h100, "fp16")
    assert gemm.kind == "gemm" and mem_frac < 0.5
    t_c = 2 * 4096**3 / (h100.fp16_tflops * 1e6 * EFF_C["fp16"])
    assert us == pytest.approx(t_c + h100.launch_floor_us, rel=1e-6)
    add = _one(torch.add, (64, 1024, 1024), (64, 1024, 1024))
    us, mem_frac = kernel_time_us(add, h100, "fp16")
    assert add.kind == "elementwise" and mem_frac > 0.5


def test_small_convolutions_reach_a_smaller_share_of_the_peak():
    v100 = gpu_spec("V100")
    small, big = (zoo.load_profiles("resnet50", b)[0] for b in (1, 32))
    assert small.kind == big.kind == "conv" and big.flops == 32 * small.flops
    t_small = kernel_time_us(small, v100, "fp16")[0] - v100.launch_floor_us
    t_big = kernel_time_us(big, v100, "fp16")[0] - v100.launch_floor_us
    assert t_big < 32 * t_small * 0.8  # saturation: 32x the work, well under 32x the time


def test_lower_precision_is_not_slower():
    for p in zoo.load_profiles("bert-base", 8):
        for gpu in ("T4", "A100"):
            spec = gpu_spec(gpu)
            assert kernel_time_us(p, spec, "int8")[0] <= kernel_time_us(p, spec, "fp16")[0] + 1e-9


# --- trace replay ------------------------------------------------------------------------
@needs_shared
def test_replay_resnet50_v100_trace():
    kernels = zoo.trace_kernels_v100("resnet50-v100")
    assert len(kernels) == 175
    assert sum(k.est_us for k in kernels) / 1e3 == pytest.approx(6.5, rel=0.01)
    assert kernels[0].name == "Conv" and kernels[0].grid == 98 and kernels[0].mem_frac == 0.2
    assert kernels[1].name == "BatchNorm" and kernels[1].mem_frac == 0.8
    assert zoo.trace_kernels_v100("resnet50_4_fwd") == kernels


@needs_shared
def test_every_orion_trace_replays():
    for name in zoo.ORION_TRACES:
        assert len(zoo.trace_kernels_v100(name)) > 100


def test_missing_shared_dir_names_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUSCHED_SHARED", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="GPUSCHED_SHARED"):
        zoo.trace_kernels_v100("resnet50-v100")


# --- the calibration bench ---------------------------------------------------------------
@needs_shared
def test_calibrate_returns_rows_with_ratios():
    res = run_calibrate()
    rows = res["rows"]
    assert len(rows) >= 17
    keys = {"model", "gpu", "precision", "batch", "source", "published_ms", "simulated_ms",
            "ratio", "within_25pct"}
    for r in rows:
        assert keys <= r.keys()
        assert r["ratio"] == pytest.approx(r["simulated_ms"] / r["published_ms"], rel=1e-2)
        assert r["within_25pct"] == (abs(r["ratio"] - 1) <= 0.25)
    by = {(r["model"], r["gpu"], r["precision"], r["batch"]): r for r in rows}
    assert by[("resnet50", "V100", "fp32", 4)]["sim_kernels"] == 174
    assert by[("resnet50", "V100", "fp32", 4)]["within_25pct"]
    assert res["within_25pct"] >= 12  # the tuned constants keep most rows within 25%
    assert res["bounds"] and all(b["below_bound"] for b in res["bounds"])
