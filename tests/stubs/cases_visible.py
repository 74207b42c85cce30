"""CUDA_VISIBLE_DEVICES on the stand-ins: the child runs with CUDA_VISIBLE_DEVICES=GPU-a1 (the
A100's UUID prefix), so CUDA device 0 is the A100 while NVML, which ignores the variable, still
sees both GPUs with the H100 first. Run by tests/test_cuda_stub.py; skipped anywhere else."""
from __future__ import annotations

import os
import time

import pytest

from tests.stubs import stub_env

pytestmark = pytest.mark.skipif(not (stub_env.on_stub() and os.environ.get(
    "CUDA_VISIBLE_DEVICES") == "GPU-a1"), reason="tests/test_cuda_stub.py runs these")

A100, H100 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"


def test_finding5_cuda_visible_devices_by_uuid(monkeypatch):
    import pynvml

    from profilers.op_profile import NvmlSampler
    from scheduler_daemon.cuda.detect import cuda_bus_id, cuda_gpus
    from scheduler_daemon.devices import factory, torch_device
    from scheduler_daemon.devices.cuda_driver import CudaDriverDevice
    gpus, _, _ = cuda_gpus()
    assert [(g.ordinal, g.name, g.pci_bus_id) for g in gpus] == [(0, A100, "0000:81:00.0")]
    assert cuda_bus_id(0) == "0000:81:00.0" and cuda_bus_id(1) == ""
    assert factory.visible_gpus() == [H100, A100]           # NVML sees every GPU
    made = []

    class Recorder:
        def __init__(self, spec, device):
            made.append((spec.name, device))
    monkeypatch.setattr(torch_device, "TorchDevice", Recorder)
    monkeypatch.setattr(factory, "_torch_has_cuda", lambda: True)
    factory.make_device("auto")
    assert made == [("A100", "cuda")]                       # not NVML's GPU 0 (the H100)
    with NvmlSampler(0, interval_s=0.005) as s:
        time.sleep(0.02)
    assert s.samples and s.sm_mean == 81                    # the A100's utilisation
    dev = CudaDriverDevice(0, streams=1)
    assert A100 in dev.describe() and dev.utilisation() == pytest.approx(0.81)
    dev.close()
    with pytest.raises(ValueError, match="CUDA device 1 does not exist: the driver sees 1"):
        factory.make_device("cuda", cuda_device=1)
    assert pynvml._stub_state()["inits"] == 0
    rep = stub_env.report()
    assert rep["violations"] == [] and [d["name"] for d in rep["devices"]] == [A100]
