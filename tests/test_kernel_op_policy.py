"""A kernel list's ops follow one rule on every backend (issue 20, finding 8: the simulated GPU
accepted any ``op`` a torch daemon refuses). The rule is wire/ops.py's, applied through the op
policy (devices/op_policy.check_kernel_ops) at registration, whatever the device."""
import pytest

from scheduler_daemon.devices import torch_ops
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.kernels import KernelSpec
from scheduler_daemon.wire.ops import KERNEL_OPS, kernel_op_refusal
from tests.server_harness import Harness

SPECS = ["", "identity", "relu", "relu:1", "tanh", "sigmoid", "softmax", "softmax:2", "conv9d",
         "scale", "scale:2", "scale:x", "scale:1,2", "add:-1.5", "add:", "linear:10",
         "linear:10,3", "linear:0", "linear:70000", "linear:1.5", "linear:10,x",
         "linear:10,3,4", "sleep:150", "sleep:0", "sleep:-1", "sleep:2e7", "sleep:abc",
         "sleep", "fail", "fail:boom", "fail:a,b", "RELU", "relu :", "aten::relu"]


def test_the_rule_names_the_torch_backends_ops():
    assert set(KERNEL_OPS) == set(torch_ops.OPS)


@pytest.mark.parametrize("spec", SPECS)
def test_the_rule_accepts_exactly_what_the_torch_backend_builds(spec):
    """Built directly from torch_ops' factories (not through resolve, which applies the rule):
    the rule and the torch backend agree on every spec."""
    name, _, rest = spec.partition(":")
    args = [a for a in rest.split(",") if a] if rest else []
    try:
        torch_ops.OPS[name](*args)
        builds = True
    except (KeyError, TypeError, ValueError):
        builds = False
    assert (kernel_op_refusal(spec) is None) == builds, spec


def test_the_simulated_gpu_refuses_what_a_torch_daemon_refuses():
    h = Harness()          # the simulated GPU: it ignores ops, and used to accept any
    h.hello(b"a", "t")
    bad = h.call(b"a", P.Register(req_id=1, model="m", kernels=[
        KernelSpec(name="k0", est_us=5, op="relu"), KernelSpec(name="k1", est_us=5,
                                                               op="conv9d")]))
    assert isinstance(bad, P.Error) and bad.code == "BAD_MODEL"
    assert "kernel 1 (k1)" in bad.message and "unknown op 'conv9d'" in bad.message
    bad = h.call(b"a", P.Register(req_id=2, model="m", kernels=[
        KernelSpec(name="k0", est_us=5, op="sleep:2e7")]))
    assert isinstance(bad, P.Error) and "sleep" in bad.message
    ok = h.call(b"a", P.Register(req_id=3, model="m", kernels=[
        KernelSpec(name="k0", est_us=5, op="sleep:150"), KernelSpec(name="k1", est_us=5)]))
    assert isinstance(ok, P.Registered)
