"""CPU inference at memory speed: linear layers whose weights are pre-packed for oneDNN.

Decoding one token multiplies every weight matrix by one vector per
sequence, so a decode step is as fast as the weights stream from memory.
`nn.Linear` hands that product to the BLAS PyTorch is built with (Intel's
MKL). On the 2-core AMD machines this project is measured on, MKL's
matrix-vector product in fp32 runs on one thread at about 16 GB/s, and its
product with a few rows (a batch of 2 to 32 sequences) is slower still,
while oneDNN, also inside PyTorch, reads the same weights at about 40 GB/s
once they are reordered into its own blocked layout ("packed") ahead of
time. `torch.compile` with `freezing` does this packing for its CPU graphs;
here it is done by hand, for an eager model, by swapping modules:

    model, tokenizer, settings = load_for_inference("runs/demo")
    pack_linear_weights(model)     # in place: every nn.Linear -> PackedLinear

A mixture of experts keeps its experts' weights stacked, (E, F, D), not as
`nn.Linear`s; each expert's three matrices are packed too, into the MoE's
`packed_experts` (model/moe.py), which it then uses in their place.

The packed model computes the same function (to rounding: oneDNN sums in
another order) but is for inference only: the packed weights are not
parameters, so it no longer trains, and its state_dict lacks them.
`bench/inference_speed.py` measures the difference; where PyTorch has no
oneDNN (`torch.backends.mkldnn.is_available()` is False), the model is not
on the CPU, or the CPU lacks the instructions oneDNN's kernels need for the
model's dtype (bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT: an AVX2-only
CPU has neither), nothing changes.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import nn

from llmscratch.model.moe import MoE


class PackedLinear(nn.Module):
    """`nn.Linear`'s function, its weight held in oneDNN's packed layout (CPU only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """weight (out, in) and bias (out,): an `nn.Linear`'s, or one expert's slice of a
        stack (model/moe.py)."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # An opaque oneDNN tensor (layout torch._mkldnn), kept as a plain attribute: it is
        # not a parameter and cannot be moved, saved or trained.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.bias = None if bias is None else bias.detach()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features)."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


@functools.cache
def _cpu_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs `dtype` weights on this CPU: tried once on a 1x1 weight.

    oneDNN decides from the CPU's instruction sets at run time and raises
    where they are missing, so asking it is the one reliable test.
    """
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.ones(1, 1, dtype=dtype), None)
    except RuntimeError:
        return False
    return True


def can_pack(model: nn.Module) -> bool:
    """Whether packing applies: PyTorch has oneDNN, the model is on the CPU in fp32 or bf16,
    and this CPU has oneDNN's kernels for that dtype."""
    weight = next(model.parameters())
    return (torch.backends.mkldnn.is_available() and weight.device.type == "cpu"
            and weight.dtype in (torch.float32, torch.bfloat16) and _cpu_packs(weight.dtype))


@functools.cache
def packing_pays(dtype: torch.dtype, in_features: int, out_features: int) -> bool:
    """Whether oneDNN's packed product is faster than `nn.Linear`'s here, for one layer
    shape: timed once per process on a random weight of that shape, at 1 row (a decode
    step at batch 1) and at 16 rows (a batch of sequences), the best of 5 rounds each.

    Which is faster depends on the machine, not on the model: on the 2-core AMD EPYCs
    this project is measured on, packed fp32 weights stream at 2.5x MKL's speed; on a
    Xeon with AMX, plain `nn.Linear` was 3% faster in fp32 decode (issue 33). So it is
    measured, not assumed.
    """
    linear = nn.Linear(in_features, out_features, bias=False, dtype=dtype)
    packed = PackedLinear.from_linear(linear)
    spent = {"plain": 0.0, "packed": 0.0}
    for rows in (1, 16):
        x = torch.randn(rows, in_features, dtype=dtype)
        for name, layer in (("plain", linear), ("packed", packed)):
            layer(x)  # warm
            rounds = []
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(3):
                    layer(x)
                rounds.append(time.perf_counter() - started)
            spent[name] += min(rounds)
    return spent["packed"] < spent["plain"]


@torch.no_grad()
def pack_linear_weights(model: nn.Module, measure: bool = True) -> int:
    """Replace every `nn.Linear` of an inference-only CPU model by a `PackedLinear`, in place,
    where that is faster on this machine.

    Returns how many weight matrices were packed, the experts' included (0 when
    packing does not apply, see `can_pack`, or, with `measure`, when `packing_pays`
    finds plain `nn.Linear` faster for the shape of the model's middle-sized layer).
    A weight shared by two modules (an output layer tied to the embedding) is packed
    for the linear layer and kept as it is for the other.
    """
    if not can_pack(model):
        return 0
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears:
        return 0
    typical = sorted(linears, key=lambda m: m.weight.numel())[len(linears) // 2]
    if measure and not packing_pays(typical.weight.dtype, typical.in_features,
                                    typical.out_features):
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear.from_linear(child))
                replaced += 1
    for moe in (m for m in model.modules() if isinstance(m, MoE)):
        replaced += pack_experts(moe)
    return replaced


def pack_experts(moe: MoE) -> int:
    """Each expert's gate, up and proj (and biases) as `PackedLinear`s, in
    `moe.packed_experts`; returns how many matrices that packed (3 E).

    The stacked parameters are then dropped, as a packed `nn.Linear` is: the
    packed copies replace them, and the experts (most of a large MoE's weights)
    are not held twice.
    """
    names = ("gate", "up", "proj")
    moe.packed_experts = [
        tuple(PackedLinear(getattr(moe, name)[e], getattr(moe, f"{name}_bias")[e]
                           if getattr(moe, f"{name}_bias") is not None else None)
              for name in names)
        for e in range(moe.n_expert)]
    for name in names:
        setattr(moe, name, None)
        setattr(moe, f"{name}_bias", None)
    return 3 * moe.n_expert
