"""The daemon's operator policy: torch's registry, refusals with reasons, zero-filled memory,
random ops only with their randomness off, bounds on bytes and work before an op runs."""
import pytest

torch = pytest.importorskip("torch")

from scheduler_daemon.devices.op_guard import OpGuard, TooLarge, TooMuchWork  # noqa: E402
from scheduler_daemon.devices.op_policy import OpRefused, resolve  # noqa: E402


@pytest.mark.parametrize("name,why", [
    ("aten::relu.__setattr__", "no overload '__setattr__'"),   # once: getattr on torch itself
    ("aten::__class__.default", "no aten operator"),
    ("aten::relu.x.y", "not an operator name"),
    ("aten::relu.Tensor_nope", "no overload"),
    ("aten::from_file.default", "filesystem"),
    ("aten::set_.source_Storage", "another storage"),
    ("aten::set_.source_Tensor", "another storage"),
    ("aten::record_stream.default", "stream"),
    ("aten::_pin_memory.default", "page-locked"),
    ("aten::_print.default", "output"),
    ("aten::_cufft_set_plan_cache_max_size.default", "process-wide"),
    ("foo::bar.default", "aten operators only"),
])
def test_refused_names_say_why(name, why):
    with pytest.raises(OpRefused, match=why):
        resolve(name)


def test_every_registered_aten_op_resolves_or_is_refused_with_a_reason():
    ok = refused = 0
    for n in torch._C._dispatch_get_all_op_names():
        if not n.startswith("aten::"):
            continue
        try:
            resolve(n if "." in n[6:] else n + ".default")
            ok += 1
        except OpRefused as e:
            assert "refused" in str(e) or "no overload" in str(e), (n, e)
            refused += 1
    assert ok > 2500 and 10 < refused < 200, (ok, refused)


def test_uninitialised_allocations_are_zero_filled():
    # garbage first: freed memory the allocator will hand out again
    for _ in range(20):
        torch.full((4096,), 7.0)
    for name, args in [("aten::empty.memory_format", ([4096],)),
                       ("aten::empty_like.default", (torch.ones(4096),)),
                       ("aten::new_empty.default", (torch.ones(2), [4096])),
                       ("aten::empty_strided.default", ([64, 64], [64, 1]))]:
        assert torch.count_nonzero(resolve(name)(*args)) == 0, name
    t = torch.full((4,), 5.0)
    resolve("aten::resize_.default")(t, [4096])
    assert t[:4].tolist() == [5.0] * 4 and torch.count_nonzero(t[4:]) == 0


def test_random_ops_run_only_with_randomness_off():
    x = torch.ones(8)
    with pytest.raises(OpRefused, match="random"):
        resolve("aten::randn.default")([3])
    with pytest.raises(OpRefused, match="random"):
        resolve("aten::dropout.default")(x, 0.5, True)
    assert torch.equal(resolve("aten::dropout.default")(x, 0.5, False), x)
    q = torch.randn(1, 2, 4, 8)
    out = resolve("aten::_scaled_dot_product_flash_attention_for_cpu.default")(q, q, q)
    assert out[0].shape == q.shape        # dropout_p defaults to 0: deterministic


def test_guard_refuses_bytes_and_work_before_running():
    g = OpGuard(max_work=1e9)
    zeros = resolve("aten::zeros.default")
    with pytest.raises(TooLarge):
        g.check(zeros, [[100_000, 100_000]], {}, room=1 << 30)
    # a device given as a string must not make the trial run allocate for real
    with pytest.raises(TooLarge):
        g.check(zeros, [[100_000, 100_000]], {"device": "cpu"}, room=1 << 30)
    big = torch.zeros(1).expand(2**38)     # 4 bytes stored, 2**38 elements viewed
    with pytest.raises(TooMuchWork):
        g.check(resolve("aten::sum.default"), [big], {}, room=1 << 30)
    a = torch.zeros(4096, 4096)
    with pytest.raises(TooMuchWork):       # 2 * 4096**3 FLOPs
        g.check(resolve("aten::mm.default"), [a, a], {}, room=1 << 30)
    assert g.check(resolve("aten::mm.default"), [a[:8], a], {}, room=1 << 30) == 8 * 4096 * 4


def test_data_dependent_outputs_are_bounded_from_their_inputs():
    g = OpGuard()
    x = torch.ones(1000)
    assert g.check(resolve("aten::nonzero.default"), [x], {}, room=1 << 20) >= 1000 * 8
    with pytest.raises(TooLarge):
        g.check(resolve("aten::nonzero.default"), [x], {}, room=100)
    reps = torch.tensor([10**9])
    with pytest.raises(TooLarge):          # repeats read from the data
        g.check(resolve("aten::repeat_interleave.Tensor"), [reps], {}, room=1 << 30)
