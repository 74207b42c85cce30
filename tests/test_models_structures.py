"""Issue 17: any input/output structure, dynamic shapes, token generation and their errors,
through the real client on the in-process server (tests/inproc_client.py; no process)."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import pytest

torch = pytest.importorskip("torch")

from client_lib.capture import CaptureError
from client_lib.errors import RequestError
from client_lib.generate import generate
from client_lib.intercept import InterceptError
from client_lib.structure import flatten, unflatten
from tests.inproc_client import InProcClient, torch_harness


@dataclasses.dataclass
class Out:
    scores: torch.Tensor
    extra: object = None


class Pair(NamedTuple):
    first: torch.Tensor
    second: torch.Tensor


class Nested(torch.nn.Module):
    """Nested inputs (a dict with a tensor list, a keyword mask, a None, a constant) and an
    output of every kind: a dict, a dataclass, a named tuple, a structseq, None, a constant,
    an input handed back unchanged, a buffer returned as it is."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = torch.nn.Linear(8, 4)
        self.register_buffer("table", torch.arange(6.0))

    def forward(self, x, extras, mask=None, scale=2.0, unused=None):
        h = self.lin(x) * scale
        if mask is not None:
            h = h.masked_fill(~mask, 0.0)
        a, b = extras["pair"]
        return {"out": Out(scores=h, extra=None), "pair": Pair(a + b, a * b),
                "max": torch.max(h, dim=-1), "none": None, "const": 7, "echo": x,
                "table": self.table, "list": [h.sum(-1), (h.mean(),)]}


def _same(a, b):
    """Equal structure, types and values (tensors bit-identical)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), (a, b)
        return
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name))
    else:
        assert a == b


@pytest.fixture
def client():
    h = torch_harness()
    c = InProcClient(h, tenant="a")
    yield c
    c.close()
    h.close()


def _inputs(batch: int):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 8, generator=g)
    extras = {"pair": [torch.randn(batch, 3, generator=g), torch.randn(batch, 3, generator=g)]}
    mask = torch.rand(batch, 4, generator=g) > 0.3
    return x, extras, mask


def test_flatten_unflatten_round_trip_keeps_types():
    m = Nested().eval()
    x, extras, mask = _inputs(2)
    with torch.no_grad():
        y = m(x, extras, mask=mask)
    leaves, spec = flatten(y)
    assert all(isinstance(t, torch.Tensor) for t in leaves)
    _same(unflatten(spec, leaves), y)


def test_every_output_structure_and_keyword_inputs_registered(client):
    m = Nested().eval()
    x, extras, mask = _inputs(2)
    h = client.register_model("nested", m, (x, extras), example_kwargs={"mask": mask})
    x2, extras2, mask2 = _inputs(2)       # other values, same shapes: the same graph
    with torch.no_grad():
        want = m(x2, extras2, mask=mask2)
    got = h(x2, extras2, mask=mask2)
    _same(got, want)
    assert got["echo"] is x2                 # an input handed back is the caller's own tensor
    assert len(h.signatures) == 1
    # a keyword changing the constants (mask=None, scale) is another signature: captured anew
    with torch.no_grad():
        want = m(x2, extras2, scale=3.0)
    _same(h(x2, extras2, scale=3.0), want)
    assert len(h.signatures) == 2


def test_other_batch_sizes_are_captured_once_each_and_share_the_weights(client):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    m.eval()
    ledger = client.harness.server.tenants["a"].ledger
    h = client.register_model("mlp", m, (torch.randn(1, 64),))
    weights = ledger.used
    assert weights >= 4 * (64 * 256 + 256 * 8)
    for b in (8, 3, 8):
        x = torch.randn(b, 64)
        with torch.no_grad():
            assert torch.equal(h(x), m(x))
    assert len(h.signatures) == 3            # batch 8 twice: captured once
    assert ledger.used < weights + 4096      # the new graphs reuse the daemon's weights
    # the raw submit path is refused at submit, naming the model and both shapes
    with pytest.raises(RequestError) as e:
        client.run("mlp", [torch.randn(5, 64)])
    assert e.value.code == "BAD_INPUT"
    assert "'mlp' was captured for inputs (float32[1, 64]); got (float32[5, 64])" in str(e.value)
    # the limit of signatures per handle: a clear error naming what it has
    h.max_shapes = 3
    with pytest.raises(ValueError, match=r"captured for inputs float32\[1, 64\] \| .*got "
                       r"float32\[2, 64\]"):
        h(torch.randn(2, 64))
    # registering the model again drops the graphs that shared its old weights
    client.register_model("mlp", m, (torch.randn(1, 64),))
    assert set(client.harness.server.tenants["a"].models) == {"mlp"}
    assert set(client._s.models) == {"mlp"}          # and they are not replayed either
    assert ledger.used == weights


def test_a_forward_that_fails_under_capture_names_the_model_and_why(client):
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("shape trouble")
    with pytest.raises(CaptureError, match="model 'bad'.*forward failed.*shape trouble"):
        client.register_model("bad", Bad(), (torch.randn(2),))
    # a refused op (random numbers with randomness on) names the model and the op
    drop = torch.nn.Dropout(0.5).train()
    with pytest.raises(RequestError, match="model 'drop'.*aten::.*random"):
        client.register_model("drop", drop, (torch.randn(4, 4),))
    ok = client.register_model("ok", torch.nn.ReLU(), (torch.randn(3),))   # serves on
    assert torch.equal(ok(torch.tensor([-1.0, 0.0, 2.0])), torch.tensor([0.0, 0.0, 2.0]))


# -- transformers -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf():
    from gpusched.bench.compat_env import ensure_torchvision
    ensure_torchvision()
    return pytest.importorskip("transformers")


def _gpt2(hf):
    torch.manual_seed(0)
    cfg = hf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    return hf.GPT2LMHeadModel(cfg).eval()


def _llama(hf):
    torch.manual_seed(0)
    cfg = hf.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    return hf.LlamaForCausalLM(cfg).eval()


def test_a_transformers_model_output_with_its_cache_registered_and_intercepted(client, hf):
    m = _gpt2(hf)
    ids = torch.randint(0, 97, (1, 6))
    mask = torch.ones(1, 6, dtype=torch.long)
    h = client.register_model("gpt2", m, (ids,), example_kwargs={"attention_mask": mask})
    ids8, mask8 = torch.randint(0, 97, (8, 5)), torch.ones(8, 5, dtype=torch.long)
    with torch.no_grad():
        want = m(ids8, attention_mask=mask8)
    got = h(ids8, attention_mask=mask8)      # batch 1 registered, batch 8 submitted
    assert type(got) is type(want)
    assert torch.equal(got.logits, want.logits)
    assert type(got.past_key_values) is type(want.past_key_values)
    for a, b in zip(got.past_key_values.layers, want.past_key_values.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    with client.intercept():
        y = m(ids8, attention_mask=mask8)
    assert torch.equal(y.logits.cpu(), want.logits)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generation_through_the_daemon_makes_the_local_greedy_tokens(client, hf, arch):
    m = (_gpt2 if arch == "gpt2" else _llama)(hf)
    ids = torch.randint(1, 97, (2, 5))
    srv = client.harness.server
    jobs_before = next(srv._job_ids)
    g = client.generate(m, ids, max_new_tokens=16, ttft_slo_ms=1e6, tpot_slo_ms=1e6)
    jobs = next(srv._job_ids) - jobs_before - 1
    local = generate(None, m, ids, 16)
    with torch.no_grad():
        hf_greedy = m.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=[],
                               pad_token_id=0)
    assert g.tokens.shape == (2, 16)
    assert torch.equal(g.tokens, local.tokens)
    assert torch.equal(g.tokens, hf_greedy[:, 5:])
    assert 16 <= jobs <= 17        # each token step one job of the core (+ the first check)
    (t,) = client.status().tenants
    assert t.tokens == 16 and t.ttft_slo_missed == 0 and t.tpot_slo_missed == 0
    assert len(g.tpot_ms) == 15


def test_generation_past_the_tenant_quota_fails_clearly_and_others_carry_on(hf):
    m = _gpt2(hf)
    weights = sum(p.numel() * 4 for p in m.parameters())
    h = torch_harness(max_tenant_bytes=weights + 40_000)
    a, b = InProcClient(h, "a", b"a"), InProcClient(h, "b", b"b")
    try:
        ids = torch.randint(1, 97, (4, 40))
        with pytest.raises(InterceptError) as e:
            a.generate(m, ids, max_new_tokens=16)
        assert e.value.code == "TOO_LARGE"
        assert "generate: token" in str(e.value) and "quota" in str(e.value)
        small = torch.randint(1, 97, (1, 3))
        assert torch.equal(b.generate(m, small, 4).tokens, generate(None, m, small, 4).tokens)
    finally:
        a.close()
        b.close()
        h.close()
