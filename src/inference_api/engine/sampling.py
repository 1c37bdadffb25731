"""Choosing the next token from logits under one request's sampling parameters."""

from __future__ import annotations

import torch

from inference_api.engine.types import SamplingParams


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A private RNG per request, so a seed gives the same output whatever else is running."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def choose_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """`logits` is one row over the vocabulary."""
    if params.greedy or generator is None:
        return int(torch.argmax(logits).item())
    scores = logits.float() / params.temperature
    if not bool(torch.isfinite(scores.max())):
        # A temperature so small that the division overflowed (1e-300 is a valid one): its limit is greedy,
        # and softmax over inf would be NaN.
        return int(torch.argmax(logits).item())
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Drop tokens once the mass before them already reaches top_p; the first token always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= params.top_p
        # A top_p below float32's smallest number (5e-324 is valid) compares as 0, which would drop every token.
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def adjust(
    logits: torch.Tensor,
    params: SamplingParams,
    prompt: list[int],
    generated: list[int],
    eos: frozenset[int],
) -> torch.Tensor:
    """One row's logits under its processors (only rows with `params.adjusts` come here): transformers'
    repetition penalty over the prompt and the generated tokens, OpenAI's presence and frequency penalties over
    the generated tokens, the logit bias, and end-of-sequence masked until `min_tokens` were generated."""
    scores = logits.float().clone()
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(generated)), dtype=torch.long, device=scores.device)
        seen = seen[seen < scores.shape[-1]]
        picked = scores.index_select(0, seen)
        picked = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
        scores.index_copy_(0, seen, picked)
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, device=scores.device), minlength=scores.shape[-1])
        counts = counts[: scores.shape[-1]].to(scores.dtype)
        scores -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(scores.dtype)
    for token, bias in params.logit_bias:
        if token < scores.shape[-1]:
            scores[token] += bias
    if len(generated) < params.min_tokens:
        for token in eos:
            if token < scores.shape[-1]:
                scores[token] = float("-inf")
    return scores


def logprobs_of(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability under the model's own distribution (log_softmax of the raw logits) and
    the `top` likeliest tokens' (id, log-probability)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(logprobs, top)
        best = list(zip(ids.tolist(), values.tolist(), strict=True))
    return float(logprobs[token].item()), best
