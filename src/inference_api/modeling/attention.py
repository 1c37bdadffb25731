"""Attention for one new token a row, as the CPU decode loop runs it.

A decode step asks for one query per row against a left-padded cache. torch's SDPA answers that on the
CPU with its masked flash kernel, 240-380 us per layer call at batch 16 for ~1 MFLOP of work (7-11 ms
of a 45-60 ms step, by torch's profiler). Written as two batched matmuls, with the query heads grouped
under the key/value head they share (grouped-query attention) so that keys and values are never
repeated, the same attention took 5-6 ms. A modest gain, but a steady one on a noisy machine where
wall-clock A/B runs of the whole step did not separate the two. Everything else (prefill, beam search,
CUDA) keeps SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NAME = "inference_api_decode"


def decode_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query [B, H, Q, D], key/value [B, KVH, W, D] -> ([B, Q, H, D], None)."""
    batch, heads, queries, dim = query.shape
    if queries != 1 or query.device.type != "cpu" or module.training:
        # Imported here, off the decode path this function exists for (it runs once a layer a step).
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        output: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return output
    kv_heads, width = key.shape[1], key.shape[2]
    # Head h reads key/value head h // (heads // kv_heads), as transformers' repeat_kv lays them out.
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, -width:]  # [B, 1, 1, W]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    attended = torch.matmul(probabilities, value)  # [B, KVH, G, D]
    return attended.reshape(batch, 1, heads, dim), None


def use_decode_attention(model: Any) -> None:
    """Register the function (with SDPA's mask format) and switch `model` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
