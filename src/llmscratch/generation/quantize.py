"""Weight-only int8 and int4 quantization: smaller weights, so faster decoding on a CPU.

Decoding one token reads every weight matrix once (cpu_weights.py), so a
decode step lasts as long as the weights take to stream from memory. Store
each weight in 8 bits instead of 32 and there are 4x fewer bytes to read;
in 4 bits, 8x fewer. The activations stay in floating point ("weight-only"):
the matmul turns the small integers back into floats as it goes.

    model, tokenizer, settings = load_for_inference("runs/demo")
    quantize_linear_weights(model, "int8")   # in place: nn.Linear -> Int8Linear

int8, symmetric, one scale per output channel (a row of the weight):

    scale[n] = max_k |W[n, k]| / 127
    q[n, k]  = clamp(round(W[n, k] / scale[n]), -128, 127)       int8
    W[n, k] ~ q[n, k] * scale[n]                                  (dequantized)

Rounding moves each weight by at most scale / 2, so a row's output
y[n] = sum_k x[k] W[n, k] moves by at most (scale[n] / 2) * sum_k |x[k]|.
With 255 levels over a row's range that is a fraction of a percent.

int4 has only 16 levels, too few for a whole row: a row of 768 weights with
one outlier would squeeze all the others into a level or two. So the scale
is per *group* of `group_size` consecutive weights of a row (32 here, as
llama.cpp's Q4_0; 128 halves the overhead and costs some quality), and it
is asymmetric: the 16 levels span the group's own [min, max] rather than
[-max|W|, max|W|], which wastes no level on a side the group does not use.

    scale[n, g] = (max - min of group g of row n) / 15
    q[n, k]     = clamp(round((W[n, k] - min[n, g]) / scale[n, g]), 0, 15)
    W[n, k]    ~ min[n, g] + q[n, k] * scale[n, g]

Which kernels. PyTorch ships CPU kernels for exactly these layouts, the ones
`torch.compile` and torchao use for their own weight-only quantization:
`torch._weight_int8pack_mm(x, q, scale)` (x @ (q * scale).T, dequantizing a
tile at a time), and `torch._convert_weight_to_int4pack_for_cpu` (two 4-bit
levels per byte, in the order its kernel reads them) with
`torch._weight_int4pack_mm_for_cpu`, which reads a group's weight as
(q - 8) * scale + zero, so zero = min + 8 * scale.

Both kernels' vectorized code takes bf16 activations; given fp32 ones they
run scalar code, 15 to 50 times slower (bench/quantize_speed.py's docstring
has the measurements). So the layers round their input to bf16 (8
significant bits: finer than an int8 step) and return the output in the
input's dtype. The kernels are built for a few rows (a decode step): int8
sends a prompt's rows (DEQUANTIZE_ROWS or more) to an ordinary matmul by the
dequantized weight, faster there; int4 has no such path (its packed layout
is the kernel's own): an int4 prefill goes through the kernel (on 512 rows
of a 3,072 x 768 layer, 1.2x the time of the fp32 matmul, measured).

torchao 0.18 (pip `torchao`, for torch >= 2.11) was the other
choice: its CPU int4 layout calls the same `_weight_int4pack_mm_for_cpu`,
and its int8 weight-only tensor, in eager mode, converts the whole int8
weight to float at every call before an ordinary matmul (it counts on
`torch.compile` to fuse the two), which reads more bytes than fp32 weights
would. It could not be faster here, so the two small modules below call the
kernels directly, with nothing to install.

What is quantized: every nn.Linear in the transformer blocks (attention,
MLP) and the output layer. The token embedding stays as it is: a lookup
reads one row per token, so its size costs memory but not decode time.
A tied output layer gets its own quantized copy (it is the largest matrix
the decode step reads: 38.6 M of GPT-2's 124 M weights), and with int4 the
output layer is quantized to int8, as llama.cpp keeps its output layer at
6 bits in Q4_K_M: its errors go straight into the logits (bench/quantize_quality.py
measures both). Also left in float: a Mixture of Experts' expert weights
(3-D tensors, not nn.Linear) and its router, and a classifier's head.

The kernels are the CPU's: on another device `quantize_linear_weights`
refuses with a message. int4 needs a row count divisible by 16 (rows of
zeros are added, and their outputs dropped) and an input width divisible
by the group size (a layer where it is not falls back to int8).
A quantized model is for inference only: it does not train, and nothing
saves it: a run's checkpoint stays in floating point, quantized as it loads.
"""

from __future__ import annotations

import torch
from torch import nn

from llmscratch.errors import LLMScratchError

MODES = ("int8", "int4")
GROUP_SIZE = 32  # int4: weights sharing one scale and minimum (the kernel takes 32 to 256)
_ROW_MULTIPLE = 16  # int4: the packing kernel's row tile
_TINY = 1e-10  # a floor for scales: an all-zero row or group still divides
# The kernels' vectorized code takes bf16 activations (AVX2 and AVX-512); with fp32 ones
# they run scalar code, 15 to 50 times slower (measured: bench/quantize_speed.py's docstring).
KERNEL_DTYPE = torch.bfloat16
# int8 with this many rows or more (a prompt) multiplies by the dequantized weight instead:
# the kernel is built for a few rows, and on 64 it was 2x slower than an ordinary matmul.
DEQUANTIZE_ROWS = 32


# --- the arithmetic --------------------------------------------------------------------


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale): weight (N, K) -> int8 q (N, K) and fp32 scale (N,), one per row."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=_TINY) / 127  # (N,)
    q = torch.clamp(torch.round(w / scale[:, None]), -128, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 weight (N, K) that int8 q (N, K) and scale (N,) stand for."""
    return q.float() * scale.float()[:, None]


def quantize_int4(weight: torch.Tensor, group_size: int = GROUP_SIZE
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, scale, low): weight (N, K) -> levels q (N, K) int32 in 0..15, and per group of
    `group_size` weights of a row, fp32 scale and minimum `low`, both (N, K / group_size)."""
    N, K = weight.shape
    groups = weight.detach().float().reshape(N, K // group_size, group_size)  # (N, G, g)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (N, G) each
    scale = (high - low).clamp(min=_TINY) / 15
    q = torch.clamp(torch.round((groups - low[..., None]) / scale[..., None]), 0, 15)
    return q.to(torch.int32).reshape(N, K), scale, low


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The fp32 weight (N, K) that int4 levels q (N, K) with scale and low (N, G) stand for."""
    N, K = q.shape
    groups = q.float().reshape(N, scale.shape[1], -1)  # (N, G, g)
    return (low.float()[..., None] + groups * scale.float()[..., None]).reshape(N, K)


# --- the layers ------------------------------------------------------------------------


class Int8Linear(nn.Module):
    """`nn.Linear`'s function with an int8 weight and one scale per output channel (CPU)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_int8(linear.weight)
        self.register_buffer("weight_int8", q)  # (N, K)
        self.register_buffer("scale", scale.to(KERNEL_DTYPE))  # (N,), as the kernel takes it
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features), in x's dtype."""
        rows = x.reshape(-1, self.in_features)  # (M, K)
        if rows.shape[0] >= DEQUANTIZE_ROWS:  # a prompt: an ordinary matmul is faster
            y = nn.functional.linear(rows, self.dequantized().to(x.dtype))
        else:
            y = torch._weight_int8pack_mm(rows.to(KERNEL_DTYPE).contiguous(), self.weight_int8,
                                          self.scale).to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, as an fp32 (N, K) tensor."""
        return dequantize_int8(self.weight_int8, self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int4Linear(nn.Module):
    """`nn.Linear`'s function with a grouped, asymmetric int4 weight, packed two to a byte."""

    def __init__(self, linear: nn.Linear, group_size: int = GROUP_SIZE) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size
        weight = linear.weight.detach()
        extra = -self.out_features % _ROW_MULTIPLE  # rows of zeros the kernel's tiles need
        if extra:
            weight = torch.cat([weight, weight.new_zeros(extra, self.in_features)])
        q, scale, low = quantize_int4(weight, group_size)  # (N', K), (N', G), (N', G)
        self.register_buffer("weight_int4", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        # The kernel's form: w = (q - 8) * scale + zero, per group: (G, N', 2).
        zero = low + 8 * scale
        self.register_buffer("scale_and_zero",
                             torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
                             .to(KERNEL_DTYPE))
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features), in x's dtype."""
        rows = x.reshape(-1, self.in_features).to(KERNEL_DTYPE).contiguous()  # (M, K)
        y = torch._weight_int4pack_mm_for_cpu(rows, self.weight_int4, self.group_size,
                                              self.scale_and_zero)  # (M, N')
        y = y[:, :self.out_features].to(x.dtype)  # the padding rows' outputs dropped
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer multiplies by, as an fp32 (N, K) tensor (for tests: slow)."""
        identity = torch.eye(self.in_features)
        # The kernel itself unpacks: I @ W.T = W.T (the packed layout is the kernel's own),
        # in fp32 (its scalar code) to keep every bit of (q - 8) * scale + zero.
        w = torch._weight_int4pack_mm_for_cpu(identity, self.weight_int4, self.group_size,
                                              self.scale_and_zero.float()).T
        return w[:self.out_features].contiguous()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4, group_size={self.group_size}")


# --- the model -------------------------------------------------------------------------


def check_mode(mode: str | None, device: torch.device | str) -> None:
    """Refuse a quantization mode this code does not have, or a device without the kernels."""
    if mode is None:
        return
    if mode not in MODES:
        raise LLMScratchError(f"unknown quantization {mode!r}; choose {' or '.join(MODES)}")
    if torch.device(device).type != "cpu":
        raise LLMScratchError(f"--quantize {mode} runs on the CPU only (PyTorch's packed int8 "
                              f"and int4 kernels are the CPU's); use --device cpu, or leave "
                              "--quantize out on a GPU")


def quantized(linear: nn.Linear, bits: int, group_size: int = GROUP_SIZE) -> nn.Module:
    """`linear` as an Int8Linear or Int4Linear (int8 where int4's group does not divide K)."""
    if bits == 4 and linear.in_features % group_size == 0:
        return Int4Linear(linear, group_size)
    return Int8Linear(linear)


@torch.no_grad()
def quantize_linear_weights(model: nn.Module, mode: str | None,
                            group_size: int = GROUP_SIZE, head_bits: int = 8) -> int:
    """Quantize the linear layers of an inference-only CPU model in place (module docstring).

    mode: "int8", "int4" or None (nothing changes). With int4 the output layer
    gets `head_bits` (8, or 4). Returns how many layers were replaced.
    """
    if mode is None:
        return 0
    weight = model.tok_emb.weight
    check_mode(mode, weight.device)
    if weight.dtype not in (torch.float32, torch.bfloat16):
        raise LLMScratchError(f"--quantize takes fp32 or bf16 weights, not {weight.dtype}")
    bits = 8 if mode == "int8" else 4
    replaced = 0
    for block in model.blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and name != "router":
                    setattr(parent, name, quantized(child, bits, group_size))
                    replaced += 1
    model.lm_head = quantized(model.lm_head, bits if bits == 8 else head_bits, group_size)
    return replaced + 1
