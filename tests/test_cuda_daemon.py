"""Raw CUDA kernels through a daemon without a GPU: REGISTER_CUDA compiles with NVRTC and
checks launches on every backend, so each mistake comes back to that client, with the
compiler's log for a compile error; the launch itself needs --backend cuda (tests/test_gpu*)."""
import pytest

from client_lib import Client, KernelSpec
from client_lib.errors import RequestError

pytest.importorskip("cuda.bindings", reason="cuda-python is installed by 'make setup'")

SRC = r'''extern "C" __global__ void vec_add(const float* a, const float* b, float* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}'''
BUFS = [{"name": "a", "dtype": "float32", "shape": [1024], "role": "input"},
        {"name": "b", "dtype": "float32", "shape": [1024], "role": "input"},
        {"name": "c", "dtype": "float32", "shape": [1024], "role": "output"}]
ARGS = [{"type": "buf", "index": 0}, {"type": "buf", "index": 1}, {"type": "buf", "index": 2},
        {"type": "scalar", "dtype": "int32", "value": 1024}]


def _launch(**kw):
    d = {"kernel": "vec_add", "grid": [4], "block": [256], "args": ARGS}
    d.update(kw)
    return d


@pytest.mark.parametrize("source,launch,match", [
    (SRC.replace("c[i] = a[i]", "c[i] = zz + a[i]"), _launch(),
     r"(?s)did not compile.*kernel\.cu\(3\): error: identifier \"zz\" is undefined"),
    (SRC, _launch(block=[2048]), r"launch 0 \(vec_add\): block 2048x1x1 = 2048 threads.*1024"),
    (SRC, _launch(block=[1, 1, 65]), r"launch 0 \(vec_add\).*64"),
    (SRC, _launch(grid=[1, 70000]), r"launch 0 \(vec_add\).*65535"),
    (SRC, _launch(smem=10 << 20), r"launch 0 \(vec_add\).*shared memory"),
    (SRC, _launch(kernel="nope"), r"nope"),
    (SRC, _launch(args=ARGS[:3] + [{"type": "buf", "index": 9}]), r"buffer|index"),
    (SRC, _launch(), r"compiled \(1 launches\), but backend 'sim' cannot launch CUDA kernels"),
])
def test_register_cuda_errors_go_to_that_client_only(daemon, source, launch, match):
    with Client(daemon, tenant="cuda") as c, Client(daemon, tenant="other") as other:
        with pytest.raises(RequestError, match=match) as e:
            c.register_cuda("va", source, BUFS, [launch])
        assert e.value.code == "BAD_MODEL"
        other.register_model("m", [KernelSpec(name="k", est_us=10)])   # the daemon serves on
        assert other.run("m", timeout=5).exec_ms > 0
        c.register_model("m", [KernelSpec(name="k", est_us=10)])       # and so does c
        assert c.run("m", timeout=5).exec_ms > 0


def test_buffers_over_the_quota_are_refused(daemon_factory):
    _, ep = daemon_factory("--backend", "sim", "--max-tenant-bytes", "8192", "--client-timeout", "10")
    with Client(ep, tenant="cuda") as c:
        with pytest.raises(RequestError, match=r"12288 bytes.*quota of 8192") as e:
            c.register_cuda("va", SRC, BUFS, [_launch()])
        assert e.value.code == "TOO_LARGE"


def test_bad_model_description_is_a_clear_client_error(daemon):
    with Client(daemon, tenant="cuda") as c:
        with pytest.raises(ValueError, match=r"CUDA model 'va'.*role"):
            c.register_cuda("va", SRC, [dict(BUFS[0], role="weird")], [_launch()])
