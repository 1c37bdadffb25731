"""A running batch: sequences of one model that decode together, one token each per step.

Why a hand-written loop over transformers' own continuous batching (`generate_batch`): on this
project's CPU machines the paged-cache path gave 18-77 tokens/s where a padded batch through the
plain model gave 177-297 (../shared/DEPENDENCIES.md), because the per-step Python and paging work
dominates at these model sizes. So the batch keeps one left-padded KV cache: newcomers are
prefilled together, then their cache rows are padded on the left to the batch's length and joined;
finished rows are dropped between steps, and columns that became padding in every row are trimmed.
Each row carries its own positions and attention mask, so a sequence's logits do not depend on its
neighbours beyond floating-point reduction order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from inference_api.engine.kv import cache_keyword, slab_cache
from inference_api.engine.runner import Sequence, advance, end_for_grammar
from inference_api.engine.sampling import adjust, choose_next, logprobs_of
from inference_api.engine.types import GenerationRequest, TokenLogprob
from inference_api.modeling.cache import LoadedModel
from inference_api.modeling.prefix import LayerStates


class DecodeBatch:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.sequences: list[Sequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, columns], 1 where a real token sits
        self._positions: torch.Tensor | None = None  # [rows], position of each row's next token
        # Row of the tensors above that holds each of `sequences`. `remove` runs on the event loop and
        # only edits these lists; the tensors are compacted on the worker's thread, in the next
        # `step` or `prefill`. Tensor work on a second thread started a second OpenMP team there, and
        # with more OpenMP threads than cores libgomp stops spinning between parallel regions for good:
        # batch-1 steps went from ~20 to ~45 ms for the rest of the process on 2 cores.
        self._rows: list[int] = []

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def width(self) -> int:
        """Columns of the KV cache, padding included."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    def prefill(self, sequences: list[Sequence]) -> list[str]:
        """Run the newcomers' prompts together and join them to the batch; returns each one's first delta.

        A prompt's shared prefix (`GenerationRequest.shared_prefix`) is not run again: its stored keys and
        values go first in the new rows' cache, and only the rest of each prompt is run. So a row's
        columns are [padding][prefix][padding][rest]; the mask and the explicit positions make that the
        same attention as an unpadded prompt.
        """
        self.model.activate()
        self._compact()
        # Identical prompts (the n choices of one request) are run once and their rows copied.
        firsts: dict[tuple[int, tuple[int, ...]], int] = {}
        source = [
            firsts.setdefault((s.request.shared_prefix, tuple(s.request.prompt_ids)), i)
            for i, s in enumerate(sequences)
        ]
        unique = [sequences[i] for i in firsts.values()]
        logits = self._prefill(unique)
        if len(unique) < len(sequences):
            order = {first: row for row, first in enumerate(firsts.values())}
            index = torch.tensor([order[first] for first in source], device=logits.device)
            self._copy_rows(len(self.sequences) - len(unique), index)
            logits = logits.index_select(0, index)
            self.sequences[len(self.sequences) - len(unique) :] = sequences
        return self._choose(sequences, logits)

    def _copy_rows(self, start: int, index: torch.Tensor) -> None:
        """Rows from `start` on (the newcomers just joined) become `index`'s rows of them."""
        assert self._mask is not None and self._positions is not None
        rows = torch.cat([torch.arange(start, device=index.device), index + start])
        self._mask = self._mask.index_select(0, rows)
        self._positions = self._positions.index_select(0, rows)
        for layer in self._cache.layers:
            layer.replace(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
        self._rows = list(range(len(rows)))

    def _prefill(self, sequences: list[Sequence]) -> torch.Tensor:
        """Prefill distinct prompts and join them; returns their last logits."""
        base = self.model.base
        device = base.device
        prompts = [s.request.prompt_ids for s in sequences]
        prefixes = [self._prefix(s.request) for s in sequences]
        shared = [0 if states is None else states[0][0].shape[2] for states in prefixes]
        rest = [len(prompt) - skip for prompt, skip in zip(prompts, shared, strict=True)]
        past, width = max(shared), max(rest)
        pad_id = base.tokenizer.pad_token_id or 0
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(sequences), past + width), dtype=torch.long, device=device)
        for row, (prompt, skip, length) in enumerate(zip(prompts, shared, rest, strict=True)):
            ids[row, width - length :] = torch.tensor(prompt[skip:], device=device)
            mask[row, past - skip : past] = 1
            mask[row, past + width - length :] = 1
        # Each row counts its positions from its own first token, prefix included.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        cache = slab_cache(base.model.config)
        if past:
            _fill(cache, prefixes, past)
        with torch.inference_mode():
            out = base.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_keyword(base.model): cache},
                logits_to_keep=1,
            )
        self._join(cache, mask, torch.tensor([len(p) for p in prompts], device=device), sequences)
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    def _prefix(self, request: GenerationRequest) -> LayerStates | None:
        """The stored keys and values of the request's shared prefix, computed (alone) and stored if new."""
        count = request.shared_prefix
        store, adapter = self.model.base.prefixes, self.model.adapter
        if count <= 0 or count >= len(request.prompt_ids) or store.max_tokens == 0:
            return None
        key = tuple(request.prompt_ids[:count])
        states = store.get(adapter, key)
        if states is None:
            cache: Any = slab_cache(self.model.base.model.config)
            with torch.inference_mode():
                self.model.base.model(
                    input_ids=torch.tensor([key], device=self.model.base.device),
                    use_cache=True,
                    **{cache_keyword(self.model.base.model): cache},
                    logits_to_keep=1,
                )
            # Contiguous copies: a view would keep the whole fused q/k/v output of the prefix alive.
            states = [(layer.keys.contiguous(), layer.values.contiguous()) for layer in cache.layers]
            store.put(adapter, key, states)
        return states

    def step(self) -> list[str]:
        """One decode step for every row; returns each row's text delta, in `sequences` order.

        The model's lean decode step (`LoadedBase.decode_step`) runs it where there is one: the same logits
        as the model's forward, with a fraction of the Python and operator calls.
        """
        base = self.model.base
        self.model.activate()
        self._compact()
        assert self._mask is not None and self._positions is not None
        tokens = torch.tensor([[s.last_token] for s in self.sequences], device=base.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self), 1))], dim=1)
        with torch.inference_mode():
            if base.decode_step is not None:
                logits = base.decode_step(tokens[:, 0], self._positions, self._mask, self._cache)
            else:
                logits = base.model(
                    input_ids=tokens,
                    attention_mask=self._mask,
                    position_ids=self._positions[:, None],
                    use_cache=True,
                    **{cache_keyword(base.model): self._cache},
                ).logits[:, -1]
        self._positions = self._positions + 1
        return self._choose(self.sequences, logits)

    def remove(self, leaving: list[Sequence]) -> None:
        """Drop rows (finished, cancelled or failed); cheap, the cache is compacted before the next step."""
        if not leaving:
            return
        gone = {id(s) for s in leaving}
        keep = [i for i, s in enumerate(self.sequences) if id(s) not in gone]
        self.sequences = [self.sequences[i] for i in keep]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._positions = None

    def _compact(self) -> None:
        """Drop the tensors' rows that left, and the columns that only they were using."""
        if self._cache is None or self._rows == list(range(self._tensor_rows)):
            return
        assert self._mask is not None and self._positions is not None
        index = torch.tensor(self._rows, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0].item())
        self._mask = mask[:, first:]
        self._positions = self._positions.index_select(0, index)
        for layer in self._cache.layers:
            layer.replace(
                layer.keys.index_select(0, index)[:, :, first:], layer.values.index_select(0, index)[:, :, first:]
            )
        self._rows = list(range(len(self._rows)))

    @property
    def _tensor_rows(self) -> int:
        """Rows the cache tensors hold, including rows that left and are not compacted yet."""
        return 0 if self._mask is None else int(self._mask.shape[0])

    def _join(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor, sequences: list[Sequence]) -> None:
        self._rows.extend(range(len(self.sequences), len(self.sequences) + len(sequences)))
        self.sequences.extend(sequences)
        if self._cache is None:
            self._cache, self._mask, self._positions = cache, mask, positions
            return
        assert self._mask is not None and self._positions is not None
        width = max(self.width, int(mask.shape[1]))
        old_pad, new_pad = width - self.width, width - int(mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.replace(
                torch.cat([_pad_left(old.keys, old_pad), _pad_left(new.keys, new_pad)], dim=0),
                torch.cat([_pad_left(old.values, old_pad), _pad_left(new.values, new_pad)], dim=0),
            )
        self._mask = torch.cat([F.pad(self._mask, (old_pad, 0)), F.pad(mask, (new_pad, 0))], dim=0)
        self._positions = torch.cat([self._positions, positions])

    def _choose(self, sequences: list[Sequence], logits: torch.Tensor) -> list[str]:
        # One argmax for the whole batch; only rows that ask for more (sampling, a grammar, logit processors,
        # log-probabilities) pay for their own work.
        greedy = logits.argmax(dim=-1).tolist()
        deltas = []
        for row, seq in enumerate(sequences):
            params = seq.params
            grammar = seq.request.grammar
            remaining = params.max_new_tokens - seq.tokens_generated
            scores = logits[row]
            if params.adjusts:
                scores = adjust(scores, params, seq.request.prompt_ids, seq.assembler.ids, seq.eos)
            if grammar is not None:
                allowed = grammar.mask(remaining, seq.eos)
                if allowed is None:
                    deltas.append(end_for_grammar(seq))
                    continue
                scores = scores.masked_fill(~allowed.to(logits.device)[: logits.shape[-1]], float("-inf"))
            if grammar is None and not params.adjusts and params.greedy:
                token = greedy[row]
            else:
                token = choose_next(scores, params, seq.generator)
            if grammar is not None and token not in seq.eos:
                token = grammar.vet(token, remaining)
            if params.logprobs is not None and token not in seq.eos:
                seq.note_logprob(self._logprob(logits[row], token, params.logprobs))
            deltas.append(advance(seq, token))
        return deltas

    def _logprob(self, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
        """The token's log-probability under the model's own distribution (the raw logits: before temperature,
        processors and grammar), with the `top` likeliest tokens'."""
        decode = self.model.base.tokenizer.decode
        value, best = logprobs_of(logits, token, top)
        return TokenLogprob(token, decode([token]), value, tuple((i, decode([i]), lp) for i, lp in best))


def _pad_left(states: torch.Tensor, columns: int) -> torch.Tensor:
    """Pad a [batch, heads, columns, dim] cache tensor with zero columns on the left."""
    return F.pad(states, (0, 0, columns, 0)) if columns else states


def _fill(cache: Any, prefixes: list[LayerStates | None], width: int) -> None:
    """Put each row's prefix (zeros where it has none) into an empty cache, right-aligned at `width` columns."""
    some = next(states for states in prefixes if states is not None)
    for index, layer in enumerate(cache.layers):
        keys, values = [], []
        for states in prefixes:
            if states is None:
                template = some[index][0]
                blank = template.new_zeros((*template.shape[:2], width, template.shape[3]))
                keys.append(blank)
                values.append(blank)
                continue
            layer_keys, layer_values = states[index]
            keys.append(_pad_left(layer_keys, width - layer_keys.shape[2]))
            values.append(_pad_left(layer_values, width - layer_values.shape[2]))
        merged_keys, merged_values = torch.cat(keys), torch.cat(values)
        layer.lazy_initialization(merged_keys, merged_values)
        layer.replace(merged_keys, merged_values)
