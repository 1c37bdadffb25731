"""Int8 (and exact int4) linear layers: close to the float layer, and each row independent of its neighbours."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference_api.modeling.quantization import (
    INT4_GROUP,
    INT4_MAX_ROWS,
    Int8Linear,
    SharedInputLinear,
    exact_int4,
    fused_layer,
    int8_supported,
    quantize_linears,
)

pytestmark = pytest.mark.skipif(not int8_supported(), reason="fbgemm int8 kernels are not in this torch build")


def four_bit_linear(inputs: int = 128, outputs: int = 96, seed: int = 0) -> nn.Linear:
    """A layer whose weights are what a Q4_1 file de-quantizes to: 16 evenly spaced values per group of 32."""
    generator = torch.Generator().manual_seed(seed)
    groups = inputs // INT4_GROUP
    codes = torch.randint(0, 16, (outputs, groups, INT4_GROUP), generator=generator).float()
    codes[..., 0], codes[..., 1] = 0, 15  # a Q4_1 block's minimum and maximum are codes 0 and 15
    step = torch.rand(outputs, groups, 1, generator=generator) * 0.02 + 0.001
    low = -8 * step + torch.randn(outputs, groups, 1, generator=generator) * 0.001
    layer = nn.Linear(inputs, outputs, bias=False)
    layer.weight.data = (codes * step + low).reshape(outputs, inputs)
    return layer


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_int8_layer_is_close_to_the_float_layer_and_rows_do_not_depend_on_neighbours() -> None:
    torch.manual_seed(0)
    source = nn.Linear(128, 96)
    layer = Int8Linear(source)
    x = torch.randn(INT4_MAX_ROWS + 8, 128)
    x[3] *= 50  # one loud row must not coarsen the others' quantization grid
    together = layer(x)
    assert relative_error(together, source(x).detach()) < 0.02
    for row in range(x.shape[0]):
        among_others = layer(torch.cat([x[row : row + 1], x[: INT4_MAX_ROWS + 1]]))[0]
        assert torch.equal(among_others, together[row])


def test_random_weights_are_not_taken_for_four_bit_ones() -> None:
    torch.manual_seed(0)
    assert exact_int4(torch.randn(96, 128)) is None
    assert exact_int4(torch.randn(96, 100)) is None  # not whole groups


def test_four_bit_weights_are_held_exactly_and_used_for_few_rows() -> None:
    source = four_bit_linear()
    assert exact_int4(source.weight.detach()) is not None
    layer = Int8Linear(source)
    assert "int4" in layer.extra_repr()
    x = torch.randn(INT4_MAX_ROWS, 128)
    few = layer(x)
    # bfloat16 activations and scales: within bfloat16's rounding of the float result.
    assert relative_error(few, source(x).detach()) < 0.01
    # The int4 kernel, too, gives each row the same bits alone as among others.
    for row in range(x.shape[0]):
        assert torch.equal(layer(x[row : row + 1])[0], few[row])
    # Many rows take the int8 kernel: a different rounding of the same weights.
    many = layer(torch.cat([x, x]))[: x.shape[0]]
    assert relative_error(many, source(x).detach()) < 0.02


def test_every_float_linear_is_replaced() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 32)))
    weight_bytes = quantize_linears(model)
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [Int8Linear, Int8Linear]
    assert weight_bytes >= 64 * 64 + 64 * 32


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = four_bit_linear(128, 96, seed=1)
        self.k_proj = four_bit_linear(128, 32, seed=2)
        self.v_proj = four_bit_linear(128, 32, seed=3)


def test_layers_reading_one_input_share_one_matmul_with_the_same_bits() -> None:
    model = nn.Sequential(Attention())
    attention = model[0]
    separate = [Int8Linear(layer) for layer in (attention.q_proj, attention.k_proj, attention.v_proj)]
    quantize_linears(model)
    shared = [attention.q_proj, attention.k_proj, attention.v_proj]
    assert all(type(layer) is SharedInputLinear for layer in shared)
    assert len({id(layer._shared) for layer in shared}) == 1
    for rows in (1, INT4_MAX_ROWS + 4):  # the int4 and the int8 kernel
        x = torch.randn(rows, 128)
        want = [layer(x) for layer in separate]
        assert all(torch.equal(layer(x), w) for layer, w in zip(shared, want, strict=True))
        # In another order, and with a new input before every layer was called: still each its own output.
        assert torch.equal(shared[2](x), want[2]) and torch.equal(shared[0](x), want[0])
        y = torch.randn(rows, 128)
        assert torch.equal(shared[1](y), separate[1](y)) and torch.equal(shared[0](y), separate[0](y))


def test_the_fused_layer_is_found_only_for_all_its_parts_in_order() -> None:
    attention = Attention()
    quantize_linears(attention)
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    fused = fused_layer([q, k, v])
    assert type(fused) is Int8Linear and fused.out_features == 96 + 32 + 32
    assert fused_layer([k, q, v]) is None and fused_layer([q, k]) is None
    assert fused_layer([q, k, Attention().v_proj]) is None  # a plain layer among them


def test_layers_of_different_inputs_or_kinds_are_not_fused() -> None:
    attention = Attention()
    attention.v_proj = nn.Linear(64, 32, bias=False)  # another input size
    quantize_linears(attention)
    assert [type(m) for m in (attention.q_proj, attention.k_proj, attention.v_proj)] == [Int8Linear] * 3
    attention = Attention()
    attention.k_proj = nn.Linear(128, 32)  # a bias where the others have none
    quantize_linears(attention)
    assert [type(m) for m in (attention.q_proj, attention.k_proj, attention.v_proj)] == [Int8Linear] * 3
