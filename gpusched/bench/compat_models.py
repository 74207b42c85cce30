"""The architectures of ``gpusched bench compat``: built from configs, random weights, small.

Every torchvision classification family, a torchvision segmentation model, and from
``transformers`` encoder-only, decoder-only, encoder-decoder, vision and audio models. Each is
the library's own class at a small size (few layers, narrow widths; where a torchvision
builder has no width argument, its classifier head is narrowed), seeded, in eval mode; no
weights are downloaded. ``build(name)`` -> ``Case`` (module, example args and kwargs, and
a function making inputs at another batch size).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gpusched.bench.compat_env import ensure_torchvision


@dataclass
class Case:
    name: str
    family: str
    module: object
    inputs: Callable[[int], tuple]      # batch -> (args, kwargs)
    generator: bool = False             # decoder-only: generation is checked too
    vocab: int = 0
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _image(size: int, channels: int = 3):
    import torch

    def make(batch: int):
        g = torch.Generator().manual_seed(batch)
        return (torch.randn(batch, channels, size, size, generator=g),), {}
    return make


def _ids(vocab: int, length: int = 8, mask: bool = True, extra=None):
    import torch

    def make(batch: int):
        g = torch.Generator().manual_seed(batch)
        kw = {"input_ids": torch.randint(1, vocab, (batch, length), generator=g)}
        if mask:
            kw["attention_mask"] = torch.ones(batch, length, dtype=torch.long)
        if extra is not None:
            kw.update(extra(batch, g))
        return (), kw
    return make


# -- torchvision ------------------------------------------------------------------------------
def _narrow_head(seq, n_in: int, width: int = 64, classes: int = 10):
    """A VGG/AlexNet classifier with the same layers at a small width."""
    from torch import nn
    return nn.Sequential(nn.Dropout(0.5), nn.Linear(n_in, width), nn.ReLU(True), nn.Dropout(0.5),
                         nn.Linear(width, width), nn.ReLU(True), nn.Linear(width, classes)) \
        if seq == "alexnet" else nn.Sequential(
            nn.Linear(n_in, width), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(width, width),
            nn.ReLU(True), nn.Dropout(0.5), nn.Linear(width, classes))


def _tv(name: str):
    ensure_torchvision()
    import torchvision.models as tvm
    from torchvision.models import convnext, maxvit, resnet, swin_transformer, vgg
    from torchvision.models import efficientnet as eff
    c = 10
    if name == "alexnet":
        m = tvm.AlexNet(num_classes=c)
        m.classifier = _narrow_head("alexnet", 256 * 6 * 6)
        return m, 64
    if name == "vgg11":
        m = vgg.VGG(vgg.make_layers([16, "M", 32, "M", 64, 64, "M", 64, 64, "M", 64, 64, "M"]),
                    num_classes=c)
        m.avgpool = __import__("torch").nn.AdaptiveAvgPool2d((7, 7))
        m.classifier = _narrow_head("vgg", 64 * 7 * 7)
        return m, 64
    if name == "resnet":
        return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=c), 64
    if name == "resnext":
        return resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4,
                             num_classes=c), 64
    if name == "wide_resnet":
        return resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], width_per_group=128,
                             num_classes=c), 32
    if name == "squeezenet":
        return tvm.SqueezeNet("1_1", num_classes=c), 64
    if name == "densenet":
        return tvm.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16,
                            num_classes=c), 64
    if name == "inception_v3":
        return tvm.Inception3(num_classes=c, aux_logits=False, init_weights=False), 96
    if name == "googlenet":
        return tvm.GoogLeNet(num_classes=c, aux_logits=False, init_weights=False), 64
    if name == "shufflenet_v2":
        return tvm.ShuffleNetV2([2, 2, 2], [16, 32, 64, 128, 256], num_classes=c), 64
    if name == "mobilenet_v2":
        return tvm.MobileNetV2(num_classes=c, width_mult=0.25), 64
    if name == "mobilenet_v3":
        return tvm.mobilenet_v3_small(num_classes=c), 64
    if name == "mnasnet":
        return tvm.MNASNet(0.5, num_classes=c), 64
    if name == "efficientnet":
        return eff.EfficientNet([eff.MBConvConfig(1, 3, 1, 16, 16, 1),
                                 eff.MBConvConfig(6, 3, 2, 16, 24, 1),
                                 eff.MBConvConfig(6, 5, 2, 24, 40, 1)], 0.2, num_classes=c), 64
    if name == "efficientnet_v2":
        from functools import partial

        import torch
        return eff.EfficientNet([eff.FusedMBConvConfig(1, 3, 1, 16, 16, 1),
                                 eff.FusedMBConvConfig(4, 3, 2, 16, 32, 1),
                                 eff.MBConvConfig(4, 3, 2, 32, 48, 1)], 0.2, num_classes=c,
                                norm_layer=partial(torch.nn.BatchNorm2d, eps=1e-3),
                                last_channel=128), 64
    if name == "regnet":
        return tvm.regnet_y_400mf(num_classes=c), 64
    if name == "vit":
        return tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                     hidden_dim=32, mlp_dim=64, num_classes=c), 32
    if name == "convnext":
        cfg = [convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, 64, 1),
               convnext.CNBlockConfig(64, None, 1)]
        return convnext.ConvNeXt(cfg, num_classes=c), 64
    if name == "swin":
        return swin_transformer.SwinTransformer([4, 4], 16, [1, 1], [2, 2], [4, 4],
                                                num_classes=c), 64
    if name == "swin_v2":
        return swin_transformer.SwinTransformer(
            [4, 4], 16, [1, 1], [2, 2], [4, 4], num_classes=c,
            block=swin_transformer.SwinTransformerBlockV2,
            downsample_layer=swin_transformer.PatchMergingV2), 64
    if name == "maxvit":
        return maxvit.MaxVit(input_size=(64, 64), stem_channels=16, partition_size=2,
                             block_channels=[16, 32], block_layers=[1, 1], head_dim=8,
                             stochastic_depth_prob=0.0, num_classes=c), 64
    if name == "lraspp_mobilenet_v3":
        from torchvision.models import segmentation
        return segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                      num_classes=5), 64
    raise KeyError(name)


TV_CLASSIFICATION = ("alexnet", "vgg11", "resnet", "resnext", "wide_resnet", "squeezenet",
                     "densenet", "inception_v3", "googlenet", "shufflenet_v2", "mobilenet_v2",
                     "mobilenet_v3", "mnasnet", "efficientnet", "efficientnet_v2", "regnet",
                     "vit", "convnext", "swin", "swin_v2", "maxvit")


# -- transformers -----------------------------------------------------------------------------
V = 128     # vocabulary of the text models
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64}
IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _hf(name: str):
    ensure_torchvision()
    import torch
    import transformers as T
    T.logging.set_verbosity_error()
    if name == "bert":
        return T.BertModel(T.BertConfig(vocab_size=V, max_position_embeddings=64, **SMALL,
                                        pad_token_id=0)), _ids(V), "encoder-only", False
    if name == "roberta":
        return T.RobertaModel(T.RobertaConfig(vocab_size=V, max_position_embeddings=66, **SMALL,
                                              **IDS)), _ids(V), "encoder-only", False
    if name == "distilbert":
        cfg = T.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                 max_position_embeddings=64, pad_token_id=0)
        return T.DistilBertModel(cfg), _ids(V), "encoder-only", False
    if name == "gpt2":
        cfg = T.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                           bos_token_id=1, eos_token_id=2)
        return T.GPT2LMHeadModel(cfg), _ids(V), "decoder-only", True
    if name == "llama":
        cfg = T.LlamaConfig(vocab_size=V, max_position_embeddings=64, num_key_value_heads=2,
                            **SMALL, **IDS)
        return T.LlamaForCausalLM(cfg), _ids(V), "decoder-only", True
    if name == "mistral":
        cfg = T.MistralConfig(vocab_size=V, max_position_embeddings=64, num_key_value_heads=2,
                              sliding_window=None, **SMALL, **IDS)
        return T.MistralForCausalLM(cfg), _ids(V), "decoder-only", True
    if name == "qwen2":
        cfg = T.Qwen2Config(vocab_size=V, max_position_embeddings=64, num_key_value_heads=2,
                            **SMALL, **IDS)
        return T.Qwen2ForCausalLM(cfg), _ids(V), "decoder-only", True
    if name == "t5":
        cfg = T.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                         decoder_start_token_id=0, **IDS)

        def dec(batch, g):
            return {"decoder_input_ids": torch.randint(1, V, (batch, 4), generator=g)}
        return T.T5ForConditionalGeneration(cfg), _ids(V, extra=dec), "encoder-decoder", False
    if name == "bart":
        cfg = T.BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                           decoder_start_token_id=2, forced_eos_token_id=None, **IDS)
        return T.BartForConditionalGeneration(cfg), _ids(V), "encoder-decoder", False
    if name == "vit-hf":
        cfg = T.ViTConfig(image_size=32, patch_size=8, num_channels=3, **SMALL)
        return T.ViTModel(cfg), _pixels(32), "vision", False
    if name == "clip-vision":
        cfg = T.CLIPVisionConfig(image_size=32, patch_size=8, **SMALL)
        return T.CLIPVisionModel(cfg), _pixels(32), "vision", False
    if name == "whisper-encoder":
        cfg = T.WhisperConfig(vocab_size=V, num_mel_bins=16, d_model=32, encoder_layers=2,
                              encoder_attention_heads=4, decoder_layers=2,
                              decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                              max_source_positions=16, max_target_positions=32,
                              decoder_start_token_id=1, **IDS)

        def feats(batch: int):
            g = torch.Generator().manual_seed(batch)
            return (), {"input_features": torch.randn(batch, 16, 32, generator=g)}
        return T.WhisperModel(cfg).get_encoder(), feats, "audio", False
    raise KeyError(name)


def _pixels(size: int):
    import torch

    def make(batch: int):
        g = torch.Generator().manual_seed(batch)
        return (), {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}
    return make


HF = ("bert", "roberta", "distilbert", "gpt2", "llama", "mistral", "qwen2", "t5", "bart",
      "vit-hf", "clip-vision", "whisper-encoder")
ALL = TV_CLASSIFICATION + ("lraspp_mobilenet_v3",) + HF


def build(name: str) -> Case:
    import torch
    torch.manual_seed(0)
    if name in HF:
        m, inputs, family, gen = _hf(name)
        return Case(name, family, m.eval(), inputs, generator=gen, vocab=V)
    m, size = _tv(name)
    family = ("torchvision-segmentation" if name.startswith("lraspp")
              else "torchvision-classification")
    return Case(name, family, m.eval(), _image(size))
