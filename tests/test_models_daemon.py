"""Registered torch models through a real daemon (--backend torch): two tenants at once get
bit-identical outputs, tenants cannot name each other's models, and bad models/quotas are refused."""
import threading

import pytest

torch = pytest.importorskip("torch")

import tiny_models  # noqa: E402

from client_lib import Client  # noqa: E402
from client_lib.errors import RequestError  # noqa: E402
from profilers.zoo_models import build  # noqa: E402

_mlp, _encoder, _local = tiny_models.mlp, tiny_models.encoder, tiny_models.local


def test_two_tenants_concurrently_bit_identical(daemon_factory):
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu", "--client-timeout", "10")
    resnet, resnet_inputs = build("resnet18")
    cases = {"a": [("mlp", _mlp(), lambda: [torch.randn(3, 16)]),
                   ("resnet18", resnet, lambda: list(resnet_inputs(1)))],
             "b": [("encoder", _encoder(), lambda: [torch.randn(2, 5, 32)]),
                   ("mlp", _mlp(), lambda: [torch.randn(5, 16)])]}
    errors = []

    def tenant(name):
        try:
            with Client(ep, tenant=name) as c:
                handles = [(c.register_model(m, mod, mk(), slo_ms=1000), mod, mk)
                           for m, mod, mk in cases[name]]
                for _ in range(2):
                    jobs = []
                    for h, mod, mk in handles:
                        xs = mk()
                        jobs.append((h.submit(*xs), mod, xs))
                    for fut, mod, xs in jobs:
                        got = torch.from_numpy(fut.result(60).outputs[0].copy())
                        assert torch.equal(got, _local(mod, *xs)), f"{name}: output differs"
                h, mod, mk = handles[0]
                xs = mk()
                assert torch.equal(h(*xs), _local(mod, *xs))     # the synchronous call
        except Exception as e:  # reported by the main thread
            errors.append(e)
    threads = [threading.Thread(target=tenant, args=(n,)) for n in cases]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors


def test_isolation_unknown_op_and_quota(daemon_factory):
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu", "--client-timeout", "10",
                           "--max-tenant-bytes", "10000")
    with Client(ep, tenant="a") as a, Client(ep, tenant="b") as b:
        small = torch.nn.Linear(4, 4).eval()
        a.register_model("secret", small, [torch.randn(1, 4)])
        with pytest.raises(RequestError, match="not registered for tenant 'b'"):
            b.run("secret", [torch.randn(1, 4).numpy()])
        big = torch.nn.Linear(100, 100).eval()           # 40 KB of weights > 10 KB quota
        with pytest.raises(RequestError, match="quota"):
            a.register_model("big", big, [torch.randn(1, 100)])

        class Noisy(torch.nn.Module):
            def forward(self, x):
                return x + torch.rand_like(x)
        with pytest.raises(RequestError, match="aten::rand_like.*random"):
            a.register_model("noisy", Noisy(), [torch.randn(8)])
        h = a.register_model("small", small, [torch.randn(1, 4)])   # the daemon is still fine
        x = torch.randn(2, 4)
        assert torch.equal(h(x), _local(small, x))


def test_registered_graph_is_replayed_after_daemon_restart(daemon_factory):
    import signal
    import time

    from client_lib.errors import DaemonUnavailable
    args = ("--backend", "torch", "--torch-device", "cpu")
    proc, ep = daemon_factory(*args)
    mlp, x = _mlp(), torch.randn(2, 16)
    with Client(ep, tenant="t", timeout=1.0) as c:
        h = c.register_model("mlp", mlp, [x])
        assert torch.equal(h(x), _local(mlp, x))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        daemon_factory(*args, endpoint=ep)
        deadline = time.time() + 15
        while True:  # the client says HELLO again and re-sends graph and weights
            try:
                y = h(x, timeout=3)
                break
            except (DaemonUnavailable, RequestError, TimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert torch.equal(y, _local(mlp, x))
