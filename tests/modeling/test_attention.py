"""The decode attention gives SDPA's answer for one query a row over a left-padded, grouped-query cache."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from inference_api.modeling.attention import NAME, decode_attention, keep_sdpa_off_cudnn
from inference_api.modeling.loader import Precision, load_base
from inference_api.modeling.registry import ModelRef, ModelRegistry


class Attention(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    """SDPA's boolean mask [B, 1, 1, W]: True where a row's real (right-aligned) tokens sit."""
    columns = torch.arange(width)
    return torch.stack([columns >= width - n for n in lengths])[:, None, None, :]


def test_one_query_a_row_matches_sdpa_with_padding_and_shared_key_value_heads() -> None:
    torch.manual_seed(0)
    batch, heads, kv_heads, width, dim = 5, 9, 3, 23, 64
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, width, dim), torch.randn(batch, kv_heads, width, dim)
    mask = padded_mask([23, 1, 7, 15, 22], width)
    module = Attention(heads // kv_heads)
    ours, _ = decode_attention(module, query, key, value, mask, scaling=dim**-0.5)
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    assert ours.shape == want.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    # A padded column changes nothing: the row that holds one token attends to it alone.
    expected_row = value[1, :, -1:].repeat_interleave(heads // kv_heads, dim=0).reshape(1, heads, dim)
    torch.testing.assert_close(ours[1], expected_row)


def test_prefill_keeps_sdpa() -> None:
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    module = Attention(2)
    ours, _ = decode_attention(module, query, key, value, None, scaling=0.3)
    want, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.3)
    assert torch.equal(ours, want)


def test_cpu_models_are_loaded_with_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    ref = ModelRef("tiny", "base")
    registry_file = tmp_path / "models.yaml"
    registry_file.write_text(f"models:\n  - name: tiny\n    path: {tiny_model_dir}\n")
    spec = ModelRegistry.from_file(registry_file, ref).resolve(ref)
    base = load_base(spec, tmp_path, torch.device("cpu"), Precision("float32"))
    assert base.model.config._attn_implementation == NAME


def test_cudnn_attention_is_taken_out_of_sdpas_choices_alone() -> None:
    cuda = torch.backends.cuda
    others = (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled())
    before = cuda.cudnn_sdp_enabled()
    try:
        keep_sdpa_off_cudnn()
        assert not cuda.cudnn_sdp_enabled()
        assert (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled()) == others
    finally:
        cuda.enable_cudnn_sdp(before)
