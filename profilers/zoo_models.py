"""The model zoo's architectures in plain torch, laid out as torchvision / HuggingFace lay them out.

Only the shapes matter here (the profiler traces them on the meta device), so weights are left
at their initial values and nothing is downloaded. Choices that change the kernel list:

- every CNN runs in eval mode: BatchNorm uses running statistics, dropout is a no-op;
- GoogLeNet has no auxiliary heads and ``transform_input=False``; InceptionV3 likewise, 299x299;
- BERT is ``BertModel`` (embeddings, encoder, pooler) with HF's "eager" attention (explicit
  ``matmul -> softmax -> matmul``, as in the measured PyTorch traces) and an all-ones mask;
- GPT-2 is ``GPT2LMHeadModel`` (tied LM head, logits for every position), eager causal
  attention, and ``gelu_new`` computed as ``F.gelu(approximate="tanh")`` (same function).

``build(name)`` returns ``(module in eval mode, example_inputs_fn)``; ``example_inputs_fn(batch,
device="cpu")`` returns the forward's positional inputs as a tuple.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

InputsFn = Callable[..., tuple]


# --- building blocks ---------------------------------------------------------------------
def cbr(cin: int, cout: int, k=1, s=1, p=0, groups: int = 1, eps: float = 1e-5,
        act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias), BatchNorm, activation: torchvision's Conv2dNormActivation."""
    layers = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=eps)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class Cat(nn.Module):
    """Parallel branches on the same input, concatenated along channels (Inception, Fire)."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


def _head(features: nn.Module, cout: int, classes: int = 1000) -> nn.Sequential:
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(cout, classes))


# --- MobileNetV2 -------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hid = cin * expand
        layers = [cbr(cin, hid, act=nn.ReLU6)] if expand != 1 else []
        layers += [cbr(hid, hid, 3, stride, 1, groups=hid, act=nn.ReLU6), cbr(hid, cout, act=None)]
        self.conv = nn.Sequential(*layers)
        self.res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.res else self.conv(x)


def mobilenet_v2() -> nn.Module:
    layers, cin = [cbr(3, 32, 3, 2, 1, act=nn.ReLU6)], 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(cbr(cin, 1280, act=nn.ReLU6))
    return _head(nn.Sequential(*layers), 1280)


# --- ResNet ------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """BasicBlock (``bottleneck=False``: 3x3, 3x3) or Bottleneck (1x1, 3x3 stride, 1x1 x4)."""

    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool):
        super().__init__()
        cout = width * 4 if bottleneck else width
        if bottleneck:
            self.body = nn.Sequential(cbr(cin, width), cbr(width, width, 3, stride, 1),
                                      cbr(width, cout, act=None))
        else:
            self.body = nn.Sequential(cbr(cin, width, 3, stride, 1),
                                      cbr(width, width, 3, 1, 1, act=None))
        self.down = cbr(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU(inplace=True)
        self.cout = cout

    def forward(self, x):
        return self.relu(self.body(x) + (x if self.down is None else self.down(x)))


def resnet(depths: tuple[int, ...], bottleneck: bool) -> nn.Module:
    layers, cin = [cbr(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1)], 64
    for stage, n in enumerate(depths):
        for i in range(n):
            blk = ResBlock(cin, 64 * 2 ** stage, 2 if stage > 0 and i == 0 else 1, bottleneck)
            layers.append(blk)
            cin = blk.cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


# --- SqueezeNet 1.1 ----------------------------------------------------------------------
def fire(cin: int, squeeze: int, e1: int, e3: int) -> nn.Sequential:
    conv = lambda a, b, k, p: nn.Sequential(nn.Conv2d(a, b, k, padding=p), nn.ReLU(inplace=True))
    return nn.Sequential(conv(cin, squeeze, 1, 0),
                         Cat(conv(squeeze, e1, 1, 0), conv(squeeze, e3, 3, 1)))


def squeezenet1_1() -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), pool(),
        fire(64, 16, 64, 64), fire(128, 16, 64, 64), pool(),
        fire(128, 32, 128, 128), fire(256, 32, 128, 128), pool(),
        fire(256, 48, 192, 192), fire(384, 48, 192, 192), fire(384, 64, 256, 256),
        fire(512, 64, 256, 256),
        nn.Dropout(0.5), nn.Conv2d(512, 1000, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
        nn.Flatten())


# --- DenseNet-121 ------------------------------------------------------------------------
def _bn_relu_conv(cin: int, cout: int, k: int, p: int = 0) -> list[nn.Module]:
    return [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, k, 1, p, bias=False)]


class DenseBlock(nn.Module):
    """Each layer (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k) sees the concat of all before."""

    def __init__(self, n: int, cin: int, growth: int = 32, bn_size: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(*_bn_relu_conv(cin + i * growth, bn_size * growth, 1),
                          *_bn_relu_conv(bn_size * growth, growth, 3, 1)) for i in range(n))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


def densenet121() -> nn.Module:
    layers, c = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                 nn.MaxPool2d(3, 2, 1)], 64
    for i, n in enumerate((6, 12, 24, 16)):
        layers.append(DenseBlock(n, c))
        c += n * 32
        if i < 3:
            layers += [*_bn_relu_conv(c, c // 2, 1), nn.AvgPool2d(2, 2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000))


# --- GoogLeNet ---------------------------------------------------------------------------
def _gconv(cin, cout, k=1, s=1, p=0):
    return cbr(cin, cout, k, s, p, eps=1e-3)


def inception_g(cin, c1, c3r, c3, c5r, c5, pp) -> Cat:
    """torchvision's GoogLeNet Inception block (its "5x5" branch uses a 3x3 kernel, as there)."""
    return Cat(_gconv(cin, c1), nn.Sequential(_gconv(cin, c3r), _gconv(c3r, c3, 3, 1, 1)),
               nn.Sequential(_gconv(cin, c5r), _gconv(c5r, c5, 3, 1, 1)),
               nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _gconv(cin, pp)))


def googlenet() -> nn.Module:
    pool = lambda k=3: nn.MaxPool2d(k, 2, ceil_mode=True)
    return _head(nn.Sequential(
        _gconv(3, 64, 7, 2, 3), pool(), _gconv(64, 64), _gconv(64, 192, 3, 1, 1), pool(),
        inception_g(192, 64, 96, 128, 16, 32, 32), inception_g(256, 128, 128, 192, 32, 96, 64),
        pool(),
        inception_g(480, 192, 96, 208, 16, 48, 64), inception_g(512, 160, 112, 224, 24, 64, 64),
        inception_g(512, 128, 128, 256, 24, 64, 64), inception_g(512, 112, 144, 288, 32, 64, 64),
        inception_g(528, 256, 160, 320, 32, 128, 128), pool(2),
        inception_g(832, 256, 160, 320, 32, 128, 128),
        inception_g(832, 384, 192, 384, 48, 128, 128),
    ), 1024)


# --- InceptionV3 -------------------------------------------------------------------------
def _pool_branch(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 1, 1), _gconv(cin, cout))


def _seq(*specs) -> nn.Sequential:
    """Chain of BasicConv2d from (cin, cout, k, s, p) tuples."""
    return nn.Sequential(*(_gconv(*s) for s in specs))


def inception_a(cin, pool_features):
    return Cat(_gconv(cin, 64), _seq((cin, 48), (48, 64, 5, 1, 2)),
               _seq((cin, 64), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)),
               _pool_branch(cin, pool_features))


def inception_b(cin):
    return Cat(_gconv(cin, 384, 3, 2), _seq((cin, 64), (64, 96, 3, 1, 1), (96, 96, 3, 2)),
               nn.MaxPool2d(3, 2))


def inception_c(cin, c7):
    a, b = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    return Cat(_gconv(cin, 192), _seq((cin, c7), (c7, c7, a[0], 1, a[1]), (c7, 192, b[0], 1, b[1])),
               _seq((cin, c7), (c7, c7, b[0], 1, b[1]), (c7, c7, a[0], 1, a[1]),
                    (c7, c7, b[0], 1, b[1]), (c7, 192, a[0], 1, a[1])),
               _pool_branch(cin, 192))


def inception_d(cin):
    return Cat(_seq((cin, 192), (192, 320, 3, 2)),
               _seq((cin, 192), (192, 192, (1, 7), 1, (0, 3)), (192, 192, (7, 1), 1, (3, 0)),
                    (192, 192, 3, 2)), nn.MaxPool2d(3, 2))


def inception_e(cin):
    split = lambda c: Cat(_gconv(c, 384, (1, 3), 1, (0, 1)), _gconv(c, 384, (3, 1), 1, (1, 0)))
    return Cat(_gconv(cin, 320), nn.Sequential(_gconv(cin, 384), split(384)),
               nn.Sequential(_seq((cin, 448), (448, 384, 3, 1, 1)), split(384)),
               _pool_branch(cin, 192))


def inception_v3() -> nn.Module:
    return _head(nn.Sequential(
        _seq((3, 32, 3, 2), (32, 32, 3), (32, 64, 3, 1, 1)), nn.MaxPool2d(3, 2),
        _seq((64, 80), (80, 192, 3)), nn.MaxPool2d(3, 2),
        inception_a(192, 32), inception_a(256, 64), inception_a(288, 64), inception_b(288),
        inception_c(768, 128), inception_c(768, 160), inception_c(768, 160), inception_c(768, 192),
        inception_d(768), inception_e(1280), inception_e(2048)), 2048)


# --- transformers ------------------------------------------------------------------------
class Attention(nn.Module):
    """Eager multi-head attention: ``softmax(Q K^T / sqrt(d) + mask) V``, then an output dense.

    ``fused_qkv`` is GPT-2's single ``c_attn`` projection; BERT has separate query/key/value.
    """

    def __init__(self, hidden: int, heads: int, causal: bool, fused_qkv: bool):
        super().__init__()
        self.heads, self.causal, self.fused = heads, causal, fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(hidden, 3 * hidden)
        else:
            self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x, mask):
        b, s, h = x.shape
        q, k, v = self.qkv(x).split(h, 2) if self.fused else (self.q(x), self.k(x), self.v(x))
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(h // self.heads)
        w = torch.where(mask, w, torch.finfo(w.dtype).min) if self.causal else w + mask
        ctx = torch.matmul(w.softmax(-1), v).transpose(1, 2).reshape(b, s, h)
        return self.out(ctx)


class BertLayer(nn.Module):
    """Post-LN: ``x = LN(x + attn(x))``, ``x = LN(x + W2 gelu(W1 x))``."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.attn = Attention(hidden, heads, causal=False, fused_qkv=False)
        self.ln1, self.ln2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
        self.fc1, self.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, x, mask):
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class Bert(nn.Module):
    def __init__(self, layers: int = 12, hidden: int = 768, heads: int = 12, vocab: int = 30522,
                 max_pos: int = 512):
        super().__init__()
        self.word, self.pos = nn.Embedding(vocab, hidden), nn.Embedding(max_pos, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(hidden, heads) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, ids, attention_mask):
        s = ids.shape[1]
        pos = torch.arange(s, device=ids.device)[None]
        x = self.ln(self.word(ids) + self.token_type(torch.zeros_like(ids)) + self.pos(pos))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, mask)
        return x, torch.tanh(self.pooler(x[:, 0]))


class Gpt2Block(nn.Module):
    """Pre-LN: ``x = x + attn(LN(x))``, ``x = x + W2 gelu_tanh(W1 LN(x))``."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads, causal=True, fused_qkv=True)
        self.fc1, self.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class Gpt2(nn.Module):
    def __init__(self, layers: int = 12, hidden: int = 768, heads: int = 12, vocab: int = 50257,
                 max_pos: int = 1024):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, hidden), nn.Embedding(max_pos, hidden)
        self.blocks = nn.ModuleList(Gpt2Block(hidden, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)

    def forward(self, ids):
        s = ids.shape[1]
        pos = torch.arange(s, device=ids.device)[None]
        x = self.wte(ids) + self.wpe(pos)
        mask = torch.ones(s, s, dtype=torch.bool, device=ids.device).tril()[None, None]
        for blk in self.blocks:
            x = blk(x, mask)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied LM head


# --- the zoo -----------------------------------------------------------------------------
def _image_inputs(size: int) -> InputsFn:
    return lambda batch, device="cpu": (torch.randn(batch, 3, size, size, device=device),)


def _bert_inputs(seq: int) -> InputsFn:
    def fn(batch, device="cpu"):
        ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
        return ids, torch.ones(batch, seq, dtype=torch.long, device=device)
    return fn


def _gpt_inputs(seq: int) -> InputsFn:
    return lambda batch, device="cpu": (torch.zeros(batch, seq, dtype=torch.long, device=device),)


_BUILDERS: dict[str, tuple[Callable[[], nn.Module], InputsFn]] = {
    "mobilenetv2": (mobilenet_v2, _image_inputs(224)),
    "resnet18": (lambda: resnet((2, 2, 2, 2), False), _image_inputs(224)),
    "resnet34": (lambda: resnet((3, 4, 6, 3), False), _image_inputs(224)),
    "resnet50": (lambda: resnet((3, 4, 6, 3), True), _image_inputs(224)),
    "squeezenet1.1": (squeezenet1_1, _image_inputs(224)),
    "densenet121": (densenet121, _image_inputs(224)),
    "googlenet": (googlenet, _image_inputs(224)),
    "inceptionv3": (inception_v3, _image_inputs(299)),
    "bert-base": (Bert, _bert_inputs(128)),
    "gpt2": (Gpt2, _gpt_inputs(128)),
}
ZOO_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, InputsFn]:
    """``(model in eval mode, example_inputs_fn(batch, device="cpu") -> tuple)`` for a zoo name.

    ``device="meta"`` builds the module without allocating its weights (what the tracer uses).
    """
    try:
        make, inputs = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}: choose one of "
                         f"{', '.join(ZOO_NAMES)}") from None
    with torch.device(device):
        model = make()
    return model.eval(), inputs


def build_bert(layers: int, hidden: int, heads: int, seq: int,
               device: str | torch.device = "cpu") -> tuple[nn.Module, InputsFn]:
    """A BERT of any size at sequence ``seq`` (BERT-large: 24 layers, hidden 1024, 16 heads)."""
    with torch.device(device):
        model = Bert(layers, hidden, heads)
    return model.eval(), _bert_inputs(seq)
