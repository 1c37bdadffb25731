"""Int8 weights for linear layers on the CPU: each matmul reads a quarter of the float32 bytes.

Decoding is bound by reading weights from memory on these machines (a batch-16 step spent 33 of
its 65 ms in matmuls doing 4 GFLOP), so shrinking the weights is worth more than anything else;
measured on SmolLM2-135M, 2 cores: 36 vs 22 tokens/s single-stream and 661 vs 347 at batch 32
against bfloat16, with fbgemm's dynamic int8 kernel (VNNI), the fastest of the kernels tried.

That kernel picks one activation scale for its whole input, which would make a row's result depend
on the other requests in the batch (and a seeded sample depend on the load). So each row is first
scaled into [-1, 1] by its own largest magnitude, and a constant calibration row holding -1 and +1
is appended: the kernel then always sees the range [-1, 1], every row is quantized on the same grid
whatever its neighbours, and the result is scaled back per row. This is per-token activation
quantization: it costs ~40 us per layer call and is more accurate than the per-batch scale.

Each layer is then exactly batch-invariant; the model as a whole is not quite, because float
attention over padded and unpadded sequences rounds differently, and int8 rounding can turn such a
last-bit difference into a different token now and then (bench/invariance.py counts how often).

Weights that are 4-bit already (the default model comes from a Q4_1 GGUF file: blocks of 32 inputs
with a scale and a minimum) are also kept as torch's packed int4 with the same blocks, which holds them
exactly. Single-stream decoding reads every weight once per token, so half the bytes is most of the
speed there: a batch-1 step took 16 ms against 27 ms for int8, batch 4 20 against 33, batch 12 38
against 47 (SmolLM2-135M, 2 cores). Past INT4_MAX_ROWS rows fbgemm's int8 matmul (VNNI) wins again
(batch 32: 52 against 80 ms), so the layer picks its kernel by the number of rows. The int4 kernel
is row-invariant too (each row's result is bitwise the same alone or among others), but a request
decoded alone and one decoded in a large batch take different kernels, so only float32 promises
identical greedy output under load.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read(1 << 16)
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# Without VNNI, fbgemm multiplies through saturating 16-bit sums, so activations must keep to 7 bits;
# with it the sums are 32-bit and the full 8 bits halve the rounding step.
_REDUCE_RANGE = not _has_vnni()

INT4_GROUP = 32  # a Q4_0 / Q4_1 block
INT4_MAX_ROWS = 12


def exact_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The weight as torch's packed int4 (groups of 32 inputs, scale and offset in bfloat16) when every group
    holds at most 16 evenly spaced values, as de-quantized Q4 weights do; None for weights this would change."""
    rows, columns = weight.shape
    if columns % INT4_GROUP or not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return None
    groups = weight.reshape(rows, columns // INT4_GROUP, INT4_GROUP)
    low = groups.amin(dim=-1, keepdim=True)
    step = (groups.amax(dim=-1, keepdim=True) - low) / 15
    codes = ((groups - low) / step.clamp(min=1e-30)).round().clamp(0, 15)
    # Up to float rounding, or the weights were not 4-bit to begin with.
    if ((codes * step + low - groups).abs() > 1e-3 * step + 1e-12).any():
        return None
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).reshape(rows, columns), 1)
    # The kernel computes (code - 8) * scale + zero.
    scale, zero = step.squeeze(-1), (low + 8 * step).squeeze(-1)
    scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, scales_and_zeros


class Int8Linear(nn.Linear):
    """A linear layer with per-output-channel int8 weights, computed by fbgemm's dynamic int8 kernel.

    It stays an `nn.Linear` so that peft can put LoRA adapters on it; the float weight is replaced by
    an empty stand-in that only tells peft and transformers the activations' dtype and device.
    """

    def __init__(self, source: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = source.in_features
        self.out_features = source.out_features
        weight = source.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # Quantized tensor constructors are deprecated upstream but still the way into fbgemm's
            # packed int8 kernels in the torch this project pins.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scales, zero_points, axis=0, dtype=torch.qint8)
        # The bias is added after the per-row rescaling, so it is kept out of the packed kernel.
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self._bias = source.bias.detach().float() if source.bias is not None else None
        calibration = torch.zeros(1, self.in_features)
        calibration[0, 0], calibration[0, -1] = 1.0, -1.0
        self._calibration = calibration
        self._int4 = exact_int4(weight)
        self.weight = nn.Parameter(torch.empty(0, dtype=torch.float32), requires_grad=False)
        self.register_parameter("bias", None)
        self.weight_bytes = qweight.numel() + (self._bias.numel() * 4 if self._bias is not None else 0)
        if self._int4 is not None:
            self.weight_bytes += sum(t.numel() * t.element_size() for t in self._int4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rows(x.reshape(-1, self.in_features).float())
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The layer on float32 rows [n, in_features] -> [n, out_features]; `forward` without its reshapes."""
        if self._int4 is not None and rows.shape[0] <= INT4_MAX_ROWS:
            packed, scales_and_zeros = self._int4
            small: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
                rows.to(torch.bfloat16), packed, INT4_GROUP, scales_and_zeros
            ).float()
            return small if self._bias is None else small + self._bias
        # abs().amax() rather than an inf-norm: the same numbers, a sixth of the time (62 vs 10 us).
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)
        normalized = torch.cat([rows / scale, self._calibration])
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(normalized, self._packed, reduce_range=_REDUCE_RANGE)
        out = out[:-1] * scale
        return out if self._bias is None else out + self._bias

    def extra_repr(self) -> str:
        kinds = "int8+int4" if self._int4 is not None else "int8"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kinds}"


# Layers of one parent that always read the same input: attention's projections, the MLP's gate and up.
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _SharedMatmul:
    """One Int8Linear over the concatenated weights of layers that read the same input.

    The model still calls each layer in turn; the first call with a new input runs the one matmul for
    all of them and the others take their slice. That is one activation quantization and one kernel
    call instead of three (or two), which at batch 16 took ~900 fewer operator calls a decode step.
    Each output column is computed as before, so the results are the same bits as separate layers.
    """

    def __init__(self, layer: Int8Linear, sizes: list[int]) -> None:
        self.layer = layer
        self.sizes = sizes
        self._input: torch.Tensor | None = None  # held, so `is` cannot match a new tensor at a reused address
        self._parts: list[torch.Tensor] = []
        self._taken: list[bool] = []

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if x is not self._input or self._taken[index]:
            self._parts = list(self.layer(x).split(self.sizes, dim=-1))
            self._input, self._taken = x, [False] * len(self.sizes)
        self._taken[index] = True
        part = self._parts[index]
        if all(self._taken):
            self._input, self._parts = None, []
        return part


class SharedInputLinear(nn.Linear):
    """One of the layers of a _SharedMatmul; an `nn.Linear` with an empty stand-in weight, like Int8Linear."""

    def __init__(self, shared: _SharedMatmul, index: int, in_features: int) -> None:
        nn.Module.__init__(self)
        self.in_features = in_features
        self.out_features = shared.sizes[index]
        self._shared = shared
        self._index = index
        self.weight = nn.Parameter(torch.empty(0, dtype=torch.float32), requires_grad=False)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._shared.part(self._index, x)

    def extra_repr(self) -> str:
        shared = self._shared.layer
        return f"in_features={self.in_features}, out_features={self.out_features}, part {self._index} of {shared}"


def fused_layer(layers: list[nn.Module]) -> Int8Linear | None:
    """The one Int8Linear that computes `layers` when they are all the parts of one shared matmul, in order."""
    parts = [layer for layer in layers if type(layer) is SharedInputLinear]
    if len(parts) != len(layers):
        return None
    shared = parts[0]._shared
    if [(part._shared, part._index) for part in parts] != [(shared, index) for index in range(len(shared.sizes))]:
        return None
    return shared.layer


def _fuse(parent: nn.Module, names: tuple[str, ...]) -> int:
    layers = [getattr(parent, name, None) for name in names]
    if not all(type(layer) is nn.Linear for layer in layers):
        return 0
    linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
    inputs = {layer.in_features for layer in linears}
    biased = {layer.bias is not None for layer in linears}
    if len(inputs) != 1 or len(biased) != 1:
        return 0
    fused = nn.Linear(inputs.pop(), sum(layer.out_features for layer in linears), bias=biased.pop())
    fused.weight.data = torch.cat([layer.weight.detach().float() for layer in linears])
    if fused.bias is not None:
        fused.bias.data = torch.cat([layer.bias.detach().float() for layer in linears if layer.bias is not None])
    kernel = Int8Linear(fused)
    shared = _SharedMatmul(kernel, [layer.out_features for layer in linears])
    for index, name in enumerate(names):
        setattr(parent, name, SharedInputLinear(shared, index, fused.in_features))
    return kernel.weight_bytes


def quantize_linears(model: nn.Module) -> int:
    """Replace every float `nn.Linear` of `model` (the output head included) by int8 layers; returns bytes.

    Layers that read the same input (SHARED_INPUT_GROUPS) share one matmul; the others become Int8Linear.
    """
    total = 0
    for parent in list(model.modules()):
        for names in SHARED_INPUT_GROUPS:
            total += _fuse(parent, names)
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                replacement = Int8Linear(child)
                total += replacement.weight_bytes
                setattr(parent, name, replacement)
    return total


def int8_supported() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines
