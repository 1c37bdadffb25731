"""A decode step for Llama-shaped models that runs the model's own weights without its module stack.

Single-stream decoding of a 135M model is bound by per-operator overhead, not arithmetic: a batch-1
step through transformers' LlamaForCausalLM took ~20 ms on 2 cores, of which ~6 ms were the matmul
kernels and most of the rest was Python (module calls, mask and cache bookkeeping, shape checks) and
small operators. This step reads the same parameters and layers and the same KV cache, and does one
new token a row with as few operators as the maths allows: one rotary embedding for queries and keys
together, attention as two batched matmuls with the query heads grouped under their key/value head,
the scale and padding mask folded into the first, and fused q/k/v and gate/up matmuls where the
layers were fused at load time (`quantization.SharedInputLinear`).

It is used only where it was checked to compute what the transformers model computes, bit for bit:
the classes below, on the CPU. Layers are called as modules wherever they are not our own int8 layers,
so peft's LoRA wrappers (which replace the linear layers when an adapter is loaded) apply their
adapter as in transformers' forward; `LoadedBase` builds a new step whenever adapters change, so the
step never holds a layer that was since wrapped. Prefill, beam search and everything else still run
through transformers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from inference_api.modeling.quantization import Int8Linear, fused_layer

# The transformers classes whose forward this file reproduces (checked against transformers 5.23).
_MODEL = "LlamaForCausalLM"
_LAYER = "LlamaDecoderLayer"
_ATTENTION = "LlamaAttention"
_MLP = "LlamaMLP"
_NORM = "LlamaRMSNorm"

RowFunction = Callable[[torch.Tensor], torch.Tensor]


def _rows_matmul(layer: Any) -> RowFunction:
    """`layer` as a function of 2-D rows, skipping the generic reshapes where it is one of our int8 layers."""
    if type(layer) is Int8Linear:
        return layer.rows
    return cast(RowFunction, layer)


def _concatenated(layers: list[Any]) -> RowFunction:
    """The layers' outputs side by side: one matmul where they were fused at load time."""
    fused = fused_layer(layers)
    if fused is not None:
        return fused.rows
    matmuls = [_rows_matmul(layer) for layer in layers]
    return lambda x: torch.cat([matmul(x) for matmul in matmuls], dim=-1)


def _rms_norm(norm: Any) -> RowFunction:
    """LlamaRMSNorm.forward as a function, in the same operations (so in the same rounding).

    In float32 that is what torch's own rms_norm computes, in one Python call instead of six.
    """
    weight: torch.Tensor = norm.weight
    eps = float(norm.variance_epsilon)
    if weight.dtype == torch.float32:
        return functools.partial(nn.functional.rms_norm, normalized_shape=weight.shape, weight=weight, eps=eps)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    return normalize


class _Layer:
    """The parts of one decoder layer that a decode step reads."""

    def __init__(self, layer: Any) -> None:
        attention, mlp = layer.self_attn, layer.mlp
        self.input_norm = _rms_norm(layer.input_layernorm)
        self.post_norm = _rms_norm(layer.post_attention_layernorm)
        self.qkv = _concatenated([attention.q_proj, attention.k_proj, attention.v_proj])
        self.output = _rows_matmul(attention.o_proj)
        self.gate_up = _concatenated([mlp.gate_proj, mlp.up_proj])
        self.down = _rows_matmul(mlp.down_proj)
        self.intermediate = int(mlp.intermediate_size)


class LlamaDecodeStep:
    """Logits for one new token per row, written into a cache that transformers' prefill started."""

    def __init__(self, model: Any) -> None:
        inner = model.model
        config = model.config
        self._embed = inner.embed_tokens
        self._rotary = inner.rotary_emb
        self._norm = _rms_norm(inner.norm)
        self._head = _rows_matmul(model.lm_head)
        self._layers = [_Layer(layer) for layer in inner.layers]
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        self.scaling = float(inner.layers[0].self_attn.scaling)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """tokens, positions: [rows]; mask: [rows, columns], nonzero for real tokens, this step's column included."""
        rows, width = mask.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        group = heads // kv_heads
        hidden = self._embed(tokens)  # [rows, hidden]
        cos, sin = self._rotary(hidden, positions[:, None])  # [rows, 1, dim]
        # rotate_half(x) * sin == flip of x's two halves, times sin with its first half negated.
        half = dim // 2
        signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        # Additive padding mask, already in the [rows * kv_heads, group, width] shape of the scores.
        bias = torch.zeros((rows, 1, 1, width), dtype=hidden.dtype, device=hidden.device)
        bias.masked_fill_((mask == 0)[:, None, None, :], torch.finfo(hidden.dtype).min)
        bias = bias.expand(rows, kv_heads, group, width).reshape(rows * kv_heads, group, width)
        rotated_heads = heads + kv_heads
        reduced = hidden.dtype != torch.float32
        for layer, slab in zip(self._layers, cache.layers, strict=True):
            qkv = layer.qkv(layer.input_norm(hidden)).view(rows, -1, dim)
            qk = qkv[:, :rotated_heads]
            swapped = qk.reshape(rows, rotated_heads, 2, half).flip(-2).reshape(rows, rotated_heads, dim)
            qk = qk * cos + swapped * signed_sin
            keys, values = slab.update(qk[:, heads:, None], qkv[:, rotated_heads:, None])  # [rows, kv, width, dim]
            query = qk[:, :heads].reshape(rows * kv_heads, group, dim)
            scores = torch.baddbmm(
                bias, query, keys.flatten(0, 1).transpose(1, 2), alpha=self.scaling
            )  # [rows * kv, group, width]
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
            if reduced:
                weights = weights.to(values.dtype)
            attended = torch.bmm(weights, values.flatten(0, 1)).view(rows, heads * dim)
            hidden.add_(layer.output(attended))  # embedding's output is a new tensor: ours to update
            gate_up = layer.gate_up(layer.post_norm(hidden))
            activated = nn.functional.silu(gate_up[:, : layer.intermediate]) * gate_up[:, layer.intermediate :]
            hidden.add_(layer.down(activated))
        return self._head(self._norm(hidden))


def decode_step_for(model: Any, device: torch.device) -> LlamaDecodeStep | None:
    """The lean step for `model` when it is a model this file reproduces, on the CPU; else None."""
    if device.type != "cpu" or type(model).__name__ != _MODEL:
        return None
    config = model.config
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return None
    layers = model.model.layers
    for layer in layers:
        parts = (type(layer).__name__, type(layer.self_attn).__name__, type(layer.mlp).__name__)
        norms = {type(layer.input_layernorm).__name__, type(layer.post_attention_layernorm).__name__}
        if parts != (_LAYER, _ATTENTION, _MLP) or norms != {_NORM}:
            return None
    if type(model.model.norm).__name__ != _NORM:
        return None
    return LlamaDecodeStep(model)
