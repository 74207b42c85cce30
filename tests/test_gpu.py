"""Tests that need an NVIDIA GPU: skipped elsewhere; `make test-gpu` runs them."""
import numpy as np
import pytest

from client_lib import Client, KernelSpec

pytestmark = pytest.mark.gpu


def _torch_cuda():
    import torch
    if not torch.cuda.is_available():
        pytest.skip("torch here is a CPU build: install a CUDA build of torch 2.13.0 for the "
                    "torch-on-CUDA tests")
    return torch


def test_default_device_is_the_gpu(daemon_factory):
    _torch_cuda()
    _, ep = daemon_factory()  # --backend auto: NVML sees the GPU
    with Client(ep, tenant="g") as c:
        assert "cuda" in c.welcome.device


def test_torch_cuda_backend_matches_cpu(daemon_factory):
    torch = _torch_cuda()
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


def test_registered_model_on_cuda_matches_local_cuda(daemon_factory):
    """A registered torch model runs op by op on the daemon's CUDA streams (issue 4)."""
    torch = _torch_cuda()
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cuda")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(3, 16)
    with Client(ep, tenant="g") as c:
        h = c.register_model("mlp", mlp, [x])
        got = h(x)
    with torch.no_grad():
        want = mlp.cuda()(x.cuda()).cpu()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_intercepted_model_on_cuda_matches_local_cuda(daemon_factory):
    """The intercept path with the daemon's tensors on the GPU (issue 4)."""
    torch = _torch_cuda()
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cuda")
    torch.manual_seed(0)
    enc = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    x = torch.randn(2, 5, 32)
    with Client(ep, tenant="g") as c:
        with c.intercept():
            y = enc(x)
        got = y.cpu()
    with torch.no_grad():
        want = enc.cuda()(x.cuda()).cpu()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_short_job_overtakes_long_one_on_real_hardware(daemon_factory):
    """Software scheduling on the GPU: under srpt a 2-op job submitted after a 400-op job of
    another tenant finishes first, because the daemon picks the next kernel."""
    torch = _torch_cuda()
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cuda", "--policy", "srpt")
    long_model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(200)]).eval()
    short_model = torch.nn.Sequential(torch.nn.Linear(512, 512)).eval()
    x = torch.randn(64, 512)
    with Client(ep, tenant="long") as a, Client(ep, tenant="short") as b:
        hl = a.register_model("long", long_model, [x])
        hs = b.register_model("short", short_model, [x])
        for _ in range(2):                       # warm up: the estimates are learned
            hl(x), hs(x)
        fl = hl.submit(x)
        fs = hs.submit(x)
        rs, rl = fs.result(60), fl.result(60)
    assert rs.total_ms < rl.total_ms
    assert rs.exec_ms < rl.exec_ms


def test_raw_cuda_kernel_through_the_daemon(daemon_factory):
    """REGISTER_CUDA on --backend cuda: NVRTC compiles, the driver launches on the daemon's
    streams, events report completion, outputs come back; two tenants interleave."""
    pytest.importorskip("cuda.bindings")
    src = r'''extern "C" __global__ void vec_add(const float* a, const float* b, float* c, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) c[i] = a[i] + b[i];
    }'''
    n = 1 << 16
    bufs = [{"name": "a", "dtype": "float32", "shape": [n], "role": "input"},
            {"name": "b", "dtype": "float32", "shape": [n], "role": "input"},
            {"name": "c", "dtype": "float32", "shape": [n], "role": "output"}]
    args = [{"type": "buf", "index": i} for i in range(3)] + [
        {"type": "scalar", "dtype": "int32", "value": n}]
    launch = {"kernel": "vec_add", "grid": [n // 256], "block": [256], "args": args}
    _, ep = daemon_factory("--backend", "cuda")
    rng = np.random.default_rng(0)
    with Client(ep, tenant="a") as a, Client(ep, tenant="b") as b:
        assert a.register_cuda("va", src, bufs, [launch] * 3) == 3
        assert b.register_cuda("va", src, bufs, [launch], instrument=True) == 1
        jobs = []
        for c in (a, b, a, b):
            x, y = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
            jobs.append((c.submit("va", [x, y]), x + y))
        for fut, want in jobs:
            r = fut.result(60)
            assert np.array_equal(r.outputs[0], want) and r.exec_ms > 0
