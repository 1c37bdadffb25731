"""The lean decode step gives the logits of transformers' forward, bit for bit, and is used only where it can."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from inference_api.engine.batch import DecodeBatch
from inference_api.engine.runner import new_sequence
from inference_api.engine.types import GenerationRequest, SamplingParams
from inference_api.modeling.attention import use_decode_attention
from inference_api.modeling.cache import LoadedModel, ModelCache
from inference_api.modeling.decode_step import LlamaDecodeStep, decode_step_for
from inference_api.modeling.loader import LoadedBase, Precision, load_tokenizer
from inference_api.modeling.quantization import INT4_GROUP, Int8Linear, int8_supported, quantize_linears
from inference_api.modeling.registry import ModelRef, ModelRegistry

PROMPTS = ["The capital of France is", "Once upon a time, in a land far away, there lived", "def add(a, b):"]

needs_int8 = pytest.mark.skipif(not int8_supported(), reason="fbgemm int8 kernels are not in this torch build")


def snap_to_four_bits(model: nn.Module) -> None:
    """Round every linear weight to 16 evenly spaced values per block of 32 inputs, as a Q4_1 file holds them."""
    for module in model.modules():
        if type(module) is nn.Linear and module.in_features % INT4_GROUP == 0:
            weight = module.weight.data
            groups = weight.reshape(weight.shape[0], -1, INT4_GROUP)
            low = groups.amin(-1, keepdim=True)
            step = (groups.amax(-1, keepdim=True) - low) / 15
            module.weight.data = (((groups - low) / step).round() * step + low).reshape(weight.shape)


def loaded(tiny_model_dir: Path, precision: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype).eval()
    if precision == "int4":
        # Tied embeddings would be rounded too; untie so the output head stays a plain int8 layer.
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
        snap_to_four_bits(model.model)
    if precision in ("int8", "int4"):
        quantize_linears(model)
    use_decode_attention(model)  # as load_base does on the CPU: the reference is the model the server runs
    base = LoadedBase(
        name="tiny",
        model=model,
        tokenizer=load_tokenizer(str(tiny_model_dir)),
        device=torch.device("cpu"),
        precision=Precision("float32" if precision == "float32" else "bfloat16" if dtype == torch.bfloat16 else "int8"),
        context_length=512,
        load_seconds=0.0,
        memory_bytes=0,
    )
    return LoadedModel(ModelRef("tiny"), base, None)


def decode(model: LoadedModel, *, lean: bool, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Logits of every decode step of a batch that rows join and leave; through the lean step or transformers."""
    base = model.base
    step = base.decode_step
    monkeypatch.setattr(base, "decode_step", step if lean else None)
    seen: list[torch.Tensor] = []
    batch = DecodeBatch(model)
    choose = batch._choose

    def recording(sequences: Any, logits: torch.Tensor) -> list[str]:
        seen.append(logits.clone())
        return choose(sequences, logits)

    monkeypatch.setattr(batch, "_choose", recording)

    def sequences(prompts: list[str]) -> list[Any]:
        params = SamplingParams(max_new_tokens=100)
        return [
            new_sequence(model, GenerationRequest(model.ref, base.tokenizer(p)["input_ids"], params)) for p in prompts
        ]

    first = sequences(PROMPTS[:2])
    batch.prefill(first)
    for _ in range(4):
        batch.step()
    batch.prefill(sequences(PROMPTS[2:]))  # joins the running batch, padded to its width
    for _ in range(4):
        batch.step()
    batch.remove(first[:1])  # the longest prompt leaves: the cache is compacted and trimmed
    for _ in range(4):
        batch.step()
    monkeypatch.setattr(base, "decode_step", step)
    return seen[2:]  # the prefills' logits come from transformers either way


@pytest.mark.parametrize("precision", ["float32", "bfloat16", pytest.param("int8", marks=needs_int8), "int4"])
def test_the_lean_step_gives_transformers_logits_bit_for_bit(
    tiny_model_dir: Path, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if precision == "int4" and not int8_supported():
        pytest.skip("fbgemm int8 kernels are not in this torch build")
    model = loaded(tiny_model_dir, precision)
    assert isinstance(model.base.decode_step, LlamaDecodeStep)
    if precision == "int4":
        assert model.base.model.model.layers[0].mlp.down_proj._int4 is not None
    lean = decode(model, lean=True, monkeypatch=monkeypatch)
    reference = decode(model, lean=False, monkeypatch=monkeypatch)
    assert len(lean) == 12
    assert same(lean, reference)


def same(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("precision", ["float32", pytest.param("int8", marks=needs_int8)])
def test_lora_adapters_apply_in_the_lean_step_as_in_transformers(
    registry_file: Path, tmp_path: Path, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry.from_file(registry_file, ModelRef("tiny"))
    cache = ModelCache(
        registry, data_dir=tmp_path, device=torch.device("cpu"), precision=Precision(precision), capacity=4
    )
    plain_model = cache.get(ModelRef("tiny"))
    before = plain_model.base.decode_step
    plain = decode(plain_model, lean=True, monkeypatch=monkeypatch)
    adapted_model = cache.get(ModelRef("tiny", "alpha"))
    # peft wrapped q_proj and v_proj: the step was rebuilt, so it calls the wrappers.
    assert adapted_model.base.decode_step is not None and adapted_model.base.decode_step is not before
    adapted = decode(adapted_model, lean=True, monkeypatch=monkeypatch)
    assert same(adapted, decode(adapted_model, lean=False, monkeypatch=monkeypatch))
    assert not torch.equal(adapted[0], plain[0])  # the adapter does change the output
    # The base version again, the adapter's wrappers in place but disabled.
    assert same(decode(plain_model, lean=True, monkeypatch=monkeypatch), plain)


def test_models_of_other_shapes_and_other_devices_get_no_lean_step(tiny_model_dir: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    assert decode_step_for(gpt2, torch.device("cpu")) is None
    llama = loaded(tiny_model_dir, "float32").base.model
    assert decode_step_for(llama, torch.device("cpu")) is not None
    assert decode_step_for(llama, torch.device("cuda", 0)) is None
    assert not any(isinstance(m, Int8Linear) for m in llama.modules())
