"""Attention for one new token a row, as the CPU decode loop runs it.

A decode step asks for one query per row against a left-padded cache. torch's SDPA answers that on the
CPU with its masked flash kernel, 240-380 us per layer call at batch 16 for ~1 MFLOP of work (7-11 ms
of a 45-60 ms step, by torch's profiler). Written as two batched matmuls, with the query heads grouped
under the key/value head they share (grouped-query attention) so that keys and values are never
repeated, the same attention took 5-6 ms. A modest gain, but a steady one on a noisy machine where
wall-clock A/B runs of the whole step did not separate the two. Everything else (prefill, beam search,
CUDA) keeps SDPA (on CUDA without cuDNN's kernel: see `keep_sdpa_off_cudnn`).
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


def keep_sdpa_off_cudnn() -> None:
    """Take cuDNN's attention out of SDPA's choices, for the whole process (torch keeps one switch per process).

    On an H100 (torch 2.11, cuDNN 9.19) SDPA answers a bfloat16 decode step under a padding mask with cuDNN's
    kernel, which pays for every new shape (plan building, by all signs: the same widths again took 0.07 ms a
    call), and a decode step's key/value width is new at every step: 2.4-5.9 ms per attention call where the
    other kernels take 0.07-0.4 ms. The server ran slower in bfloat16 than in float32 (which cuDNN's attention
    does not take) on `python -m bench`: 18.6 against 30.1 tokens/s at concurrency 1, 37.3 against 106.5 at 4.
    Without it, bfloat16 ran as fast as float32 (a random model of SmolLM2-135M's shape, first pass: 27.4 and
    355 tokens/s at concurrency 1 and 16, against 8.7 and 88 with it; float32 28.5 and 371).
    """
    torch.backends.cuda.enable_cudnn_sdp(False)
