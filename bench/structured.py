"""Constrained decoding's cost in the batch: c rows each under a JSON schema against the same load free, in one run.

`python -m bench.structured [--concurrency 16] [--max-tokens 64] [--rounds 2]`: the bundled model (float32), one
DecodeBatch of `concurrency` rows decoded to the end, free and constrained rounds alternated; tokens/s of each and
the ratio (the machine is shared: compare the ratio, not the absolute figures).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.prompts import PROMPTS
from inference_api.engine.batch import DecodeBatch
from inference_api.engine.grammar import Grammars, GrammarSpec
from inference_api.engine.runner import new_sequence
from inference_api.engine.types import GenerationRequest, SamplingParams
from inference_api.modeling import builtin
from inference_api.modeling.cache import ModelCache
from inference_api.modeling.loader import Precision
from inference_api.modeling.prompt import PromptEncoder
from inference_api.modeling.registry import ModelRef, ModelRegistry

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "size": {"enum": ["small", "medium", "large"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "count": {"type": "integer"},
    },
    "required": ["name", "size", "tags", "count"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.structured")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args()
    folder = builtin.prepare_builtin(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        registry_file = Path(tmp) / "models.yaml"
        registry_file.write_text(f"models:\n  - name: smol\n    path: {folder}\n")
        registry = ModelRegistry.from_file(registry_file, ModelRef("smol"))
        cache = ModelCache(
            registry, data_dir=Path(tmp), device=torch.device("cpu"), precision=Precision("float32"), capacity=1
        )
        model = cache.get(ModelRef("smol"))
        encoder = PromptEncoder(registry, Path(tmp))
        grammars = Grammars(encoder.tokenizer)
        spec = GrammarSpec("json_schema", json.dumps(SCHEMA))
        prompts = [encoder.encode_chat("smol", [{"role": "user", "content": p}]).ids for p in PROMPTS]

        def run(constrained: bool) -> tuple[int, float]:
            requests = []
            for i in range(args.concurrency):
                params = SamplingParams(max_new_tokens=args.max_tokens, do_sample=True, temperature=0.7, seed=i)
                request = GenerationRequest(model.ref, prompts[i % len(prompts)], params)
                if constrained:
                    request.grammar = grammars.row("smol", spec)
                requests.append(request)
            batch = DecodeBatch(model)
            sequences = [new_sequence(model, r) for r in requests]
            started = time.perf_counter()
            batch.prefill(sequences)
            while batch.sequences:
                batch.remove([s for s in batch.sequences if s.finish_reason is not None])
                if batch.sequences:
                    batch.step()
            return sum(s.tokens_generated for s in sequences), time.perf_counter() - started

        grammars.row("smol", spec)  # the token table and the schema, built once before timing
        totals = {False: [0, 0.0], True: [0, 0.0]}
        for _ in range(args.rounds):
            for constrained in (False, True):
                tokens, seconds = run(constrained)
                totals[constrained][0] += tokens
                totals[constrained][1] += seconds
        free = totals[False][0] / totals[False][1]
        bound = totals[True][0] / totals[True][1]
        print(
            f"c={args.concurrency} max_tokens={args.max_tokens} rounds={args.rounds} threads={torch.get_num_threads()}"
        )
        print(f"free:        {totals[False][0]} tokens in {totals[False][1]:.1f} s = {free:.1f} tokens/s")
        print(f"JSON schema: {totals[True][0]} tokens in {totals[True][1]:.1f} s = {bound:.1f} tokens/s")
        print(f"constrained/free: {bound / free:.3f} (overhead {100 * (1 - bound / free):.1f} %)")


if __name__ == "__main__":
    main()
