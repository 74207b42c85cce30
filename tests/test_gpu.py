"""Tests that need an NVIDIA GPU: skipped elsewhere; `make test-gpu` runs them."""
import numpy as np
import pytest

from client_lib import Client, KernelSpec

pytestmark = pytest.mark.gpu


def test_default_device_is_the_gpu(daemon_factory):
    _, ep = daemon_factory()  # --backend auto: NVML sees the GPU
    with Client(ep, tenant="g") as c:
        assert "cuda" in c.welcome.device


def test_torch_cuda_backend_matches_cpu(daemon_factory):
    import torch
    from scheduler_daemon.devices.torch_ops import linear_weight
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cuda")
    ks = [KernelSpec(name="fc", est_us=20, op="linear:64,3"), KernelSpec(name="act", est_us=5, op="relu")]
    x = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)
    t = torch.from_numpy(x).cuda()
    want = torch.relu(t @ linear_weight(32, 64, 3, t.device, t.dtype).T).cpu().numpy()
    with Client(ep, tenant="a") as a, Client(ep, tenant="b") as b:
        a.register_model("mlp", ks)
        b.register_model("mlp", ks)
        futs = [c.submit("mlp", [x]) for c in (a, b) for _ in range(4)]
        for f in futs:
            r = f.result(30)
            assert np.array_equal(r.outputs[0], want)  # same CUDA kernels, same result
            assert r.exec_ms > 0
