"""The intercept path: an unmodified eager model under ``client.intercept()`` runs in a
``--backend torch`` daemon, op by op, with outputs bit-identical to local execution; sync
points, unsupported ops, failing ops, quotas and isolation each behave as documented."""
import threading

import pytest

torch = pytest.importorskip("torch")

import tiny_models  # noqa: E402

from client_lib import Client  # noqa: E402
from client_lib.errors import RequestError  # noqa: E402
from client_lib.intercept import InterceptError, RemoteTensor, UnsupportedOp  # noqa: E402
from profilers.zoo_models import build  # noqa: E402

_mlp, _encoder, _local = tiny_models.mlp, tiny_models.encoder, tiny_models.local


@pytest.fixture
def torch_daemon(daemon_factory):
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu", "--client-timeout", "10")
    return ep


def test_two_tenants_intercepted_bit_identical(torch_daemon):
    """MLP, ResNet-18 and a Transformer encoder from two processes' worth of clients at once."""
    resnet, resnet_inputs = build("resnet18")
    cases = {"a": [(_mlp(), lambda: [torch.randn(3, 16)]),
                   (resnet, lambda: list(resnet_inputs(1)))],
             "b": [(_encoder(), lambda: [torch.randn(2, 5, 32)]),
                   (_mlp(), lambda: [torch.randn(5, 16)])]}
    errors = []

    def tenant(name):
        try:
            with Client(torch_daemon, tenant=name) as c:
                for _ in range(2):
                    for mod, mk in cases[name]:
                        xs = mk()
                        with c.intercept():
                            y = mod(*xs)
                        assert isinstance(y, RemoteTensor)
                        got = y.cpu()
                        assert type(got) is torch.Tensor
                        assert torch.equal(got, _local(mod, *xs)), f"{name}: output differs"
        except Exception as e:  # reported by the main thread
            errors.append(e)
    threads = [threading.Thread(target=tenant, args=(n,)) for n in cases]
    [t.start() for t in threads]
    [t.join(180) for t in threads]
    assert not errors, errors


def test_sync_points_values_and_control_flow(torch_daemon):
    x = torch.randn(4, 8)
    with Client(torch_daemon, tenant="t") as c:
        with c.intercept() as sess:
            y = torch.relu(x) * 2 + 1
            sent_before = sess.syncs
            assert y.shape == (4, 8) and y.dtype == torch.float32   # metadata: no sync
            assert sess.syncs == sent_before
            total = y.sum().item()                                  # a value: a sync
            assert sess.syncs == sent_before + 1
            branch = "pos" if (y > 1).any() else "neg"              # bool(): control flow
            nz = torch.nonzero(y > 2)                               # data-dependent shape
        ref = torch.relu(x) * 2 + 1
        assert total == pytest.approx(ref.sum().item(), abs=0)
        assert branch == ("pos" if (ref > 1).any() else "neg")
        assert torch.equal(nz.cpu(), torch.nonzero(ref > 2))
        assert repr(y) == repr(ref)                                  # printing fetches values
        assert y.numpy().tolist() == ref.numpy().tolist()
        # tensors outlive the block; ops on them outside it still go to the daemon
        z = y + 1
        assert isinstance(z, RemoteTensor) and torch.equal(z.cpu(), ref + 1)


def test_in_place_op_on_a_local_tensor_is_written_back(torch_daemon):
    with Client(torch_daemon, tenant="t") as c:
        x = torch.zeros(3)
        with c.intercept():
            x.add_(2.5)
            y = x * 2
        assert type(x) is torch.Tensor and x.tolist() == [2.5, 2.5, 2.5]
        assert y.cpu().tolist() == [5.0, 5.0, 5.0]


def test_weights_are_uploaded_once_and_again_after_a_change(torch_daemon):
    mlp = _mlp()
    with Client(torch_daemon, tenant="t") as c:
        x = torch.randn(2, 16)
        with c.intercept() as sess:
            mlp(x).cpu()
        first = sess.uploaded_bytes
        with c.intercept():
            mlp(x).cpu()
        assert sess.uploaded_bytes == first        # same weights, same input object
        with torch.no_grad():
            mlp[0].weight.mul_(2)                    # a new version of one weight
        with c.intercept():
            y = mlp(x)
        assert sess.uploaded_bytes == first + mlp[0].weight.numel() * 4
        assert torch.equal(y.cpu(), _local(mlp, x))


def test_refused_ops_fail_at_once_naming_op_and_reason(torch_daemon, tmp_path):
    with Client(torch_daemon, tenant="t") as c:
        x = torch.randn(8)
        with pytest.raises(UnsupportedOp, match=r"aten::from_file.*filesystem"):
            with c.intercept():
                torch.from_file(str(tmp_path / "f"), size=4)
        with pytest.raises(UnsupportedOp, match=r"aten::randn.*random"):
            with c.intercept():
                torch.randn(3)
        with c.intercept():                          # the client keeps working
            assert torch.equal((x * 3).cpu(), x * 3)
            # ops come from torch's registry, not a hand list: an FFT runs too
            assert torch.equal(torch.fft.rfft(x).abs().cpu(), torch.fft.rfft(x).abs())


def test_failing_op_reported_at_the_next_sync_to_that_client_only(torch_daemon):
    emb = torch.nn.Embedding(10, 4)
    with Client(torch_daemon, tenant="bad") as bad, Client(torch_daemon, tenant="good") as good:
        with bad.intercept():
            y = emb(torch.tensor([3, 42]))           # index 42 out of range: only the daemon sees it
        with pytest.raises(InterceptError, match=r"aten::embedding.*(index|out of range)") as e:
            y.cpu()
        assert e.value.code == "OP_FAILED"
        x = torch.randn(3, 3)
        with good.intercept():
            assert torch.equal((x @ x).cpu(), x @ x)
        with bad.intercept():                        # the failing client recovers too
            assert torch.equal(emb(torch.tensor([1, 2])).cpu(), _local(emb, torch.tensor([1, 2])))


def test_tensor_over_the_tenant_quota_is_refused(daemon_factory):
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu",
                           "--max-tenant-bytes", "100000", "--client-timeout", "10")
    with Client(ep, tenant="small") as c:
        big = torch.randn(100, 1000)                 # 400,000 bytes
        with c.intercept():
            y = big + 1
        with pytest.raises(InterceptError, match=r"quota of 100000 bytes") as e:
            y.cpu()
        assert e.value.code == "TOO_LARGE"
        with c.intercept():
            assert torch.equal((torch.ones(10) * 2).cpu(), torch.full((10,), 2.0))


def test_handles_are_per_client(torch_daemon):
    """A client can only name its own tensors: a raw EAGER_OPS naming a handle it never made
    is refused at its next sync."""
    from scheduler_daemon.wire import protocol as P
    from scheduler_daemon.wire.eager import EagerOp, H
    with Client(torch_daemon, tenant="a") as a, Client(torch_daemon, tenant="b") as b:
        with a.intercept():
            secret = torch.arange(5.0) * 7
        b._send_raw(P.encode(P.EagerOps(seq=1, ops=[EagerOp("aten::neg.default",
                                                            [H(secret._gs_hid)], {}, [99])])))
        with pytest.raises(RequestError, match=r"handle .* does not have"):
            b._call("eager", P.EagerSync(req_id=1, fetch=[99]), timeout=10)
        assert torch.equal(secret.cpu(), torch.arange(5.0) * 7)


def test_simulated_gpu_refuses_intercept_clearly(daemon):
    with Client(daemon, tenant="t") as c:
        with pytest.raises(RequestError, match=r"--backend torch"):
            with c.intercept():
                pass


def test_an_op_that_would_allocate_past_the_quota_is_refused_before_it_runs(daemon_factory):
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu",
                           "--max-tenant-bytes", "1000000", "--client-timeout", "10")
    with Client(ep, tenant="t") as c:
        col = torch.ones(20000, 1)                   # 80 KB each, an outer product of 1.6 GB
        with c.intercept():
            y = col @ col.T
        with pytest.raises(InterceptError, match=r"aten::mm.*would allocate 1600000000 bytes"):
            y.cpu()
        with c.intercept():
            assert torch.equal((col[:3] * 2).cpu(), torch.full((3, 1), 2.0))


def test_random_eager_messages_never_kill_the_daemon_and_each_sync_is_answered_once(torch_daemon):
    """Random op names (allowed or not), argument trees, handles, uploads whose frames lie and
    frees, each followed by an EAGER_SYNC: every sync gets exactly one answer, and afterwards a
    well-behaved client still gets bit-identical results."""
    import random

    from scheduler_daemon.wire import protocol as P
    from scheduler_daemon.wire.eager import EL, EagerOp, H, S, TensorLayout, Upload
    from scheduler_daemon.wire.graph import C, D
    from tests.wire import RawPeer
    rng = random.Random(7)
    names = ["add", "mul", "mm", "relu", "sum", "view", "expand", "cat", "softmax", "zeros",
             "empty", "resize_", "index_select", "_fft_r2c", "as_strided", "set_", "nonzero",
             "_local_scalar_dense", "from_file", "randn", "relu.__setattr__", "rand_like"]

    def arg(depth=0):
        r = rng.random()
        if r < 0.35:
            return H(rng.randint(1, 12))
        if r < 0.6:
            return C(rng.choice([0, 1, -1, 2, 3, 1.5, -0.0, True, None, 10**6, float("nan")]))
        if r < 0.7:
            return S(rng.choice(["none", "tanh", "floor", "x" * 64]))
        if r < 0.8:
            return D(rng.choice(["float32", "int64", "bool", "nope"]))
        if depth < 2:
            return EL([arg(depth + 1) for _ in range(rng.randint(0, 4))])
        return C(rng.randint(-3, 64))

    peer = RawPeer(torch_daemon)
    peer.hello("fuzz")
    answered = 0
    for i in range(1, 201):
        uploads, frames = [], []
        for _ in range(rng.randint(0, 2)):
            n = rng.randint(0, 6)
            lay = TensorLayout("float32", [n], [1], 0)
            nbytes = 4 * n if rng.random() < 0.8 else rng.randint(0, 40)
            uploads.append(Upload(rng.randint(1, 12), lay, nbytes, 1))
            frames.append(bytes(4 * n))
        ops = [EagerOp(f"aten::{rng.choice(names)}.{rng.choice(['default', 'Tensor', 'Scalar'])}",
                       [arg() for _ in range(rng.randint(0, 4))], {},
                       [rng.randint(0, 12) for _ in range(rng.randint(0, 2))])
               for _ in range(rng.randint(0, 5))]
        peer.send_msg(P.EagerOps(seq=i, ops=ops, uploads=uploads,
                                 free=[rng.randint(1, 12)] if rng.random() < 0.3 else []), *frames)
        peer.send_msg(P.EagerSync(req_id=i, fetch=[rng.randint(1, 12)] if rng.random() < 0.5 else []))
        msg, _ = peer.recv(timeout_ms=10000)
        assert isinstance(msg, (P.EagerResult, P.Error)) and msg.req_id == i, msg
        assert getattr(msg, "code", "") != "INTERNAL", msg.message   # a bug, not bad input
        answered += 1
    assert answered == 200 and peer.recv_all(300) == []       # none twice
    peer.close()
    mlp = _mlp()
    with Client(torch_daemon, tenant="good") as c:
        x = torch.randn(4, 16)
        with c.intercept():
            y = mlp(x)
        assert torch.equal(y.cpu(), _local(mlp, x))


_PROC = r'''
import sys, torch
from client_lib import Client
from profilers.zoo_models import build
ep, tenant, name = sys.argv[1], sys.argv[2], sys.argv[3]
if name == "encoder":
    torch.manual_seed(2)
    model = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2).eval()
    inputs = lambda b: (torch.randn(b, 12, 64),)
else:
    model, inputs = build(name)
with Client(ep, tenant=tenant, timeout=30) as c:
    h = c.register_model(name, model, list(inputs(1)))
    for i in range(2):
        xs = list(inputs(1))
        first = lambda y: y[0] if isinstance(y, (tuple, list)) else y
        with torch.no_grad():
            want = first(model(*xs))
        with c.intercept():
            y = first(model(*xs))
        assert torch.equal(y.cpu(), want), "intercepted output differs"
        assert torch.equal(first(h(*xs)), want), "registered output differs"
print("identical", flush=True)
'''


def test_unmodified_models_from_two_processes_identical(torch_daemon):
    """The issue's 'done when': two model processes, both paths, one daemon, same outputs."""
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-c", _PROC, torch_daemon, t, m],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t, m in (("vision", "resnet18"), ("nlp", "encoder"))]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "identical", err[-2000:]
