"""The aten ops the daemon runs, known to both sides: the client refuses others before sending."""
from __future__ import annotations

# aten ops a registered graph may use: pure tensor math, no I/O, no storage aliasing tricks.
ALLOWED = frozenset("""
addmm mm bmm matmul linear t transpose permute view reshape _unsafe_view expand clone contiguous
relu relu_ gelu tanh sigmoid silu softmax _softmax log_softmax _log_softmax add add_ sub mul mul_
div div_ neg rsqrt sqrt pow exp mean sum layer_norm native_layer_norm convolution
_native_batch_norm_legit_no_training native_batch_norm max_pool2d_with_indices max_pool2d
adaptive_avg_pool2d avg_pool2d _adaptive_avg_pool2d flatten cat stack split split_with_sizes
chunk unsqueeze squeeze slice select embedding dropout native_dropout detach alias scaled_dot_product_attention
_scaled_dot_product_flash_attention_for_cpu _transformer_encoder_layer_fwd _native_multi_head_attention
masked_fill baddbmm arange zeros ones full empty_like zeros_like ones_like where eq ne lt gt
_to_copy to copy_ lift_fresh empty rsub erf tanh_ gelu_ index_select gather embedding_dense_backward bitwise_not logical_not any all max min amax argmax sort topk full_like new_zeros new_ones expand_as unbind hardtanh hardtanh_ clamp
""".split())
