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

import torch
from torch import nn


class PackedLinear(nn.Module):
    """`nn.Linear`'s function, its weight held in oneDNN's packed layout (CPU only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        # An opaque oneDNN tensor (layout torch._mkldnn), kept as a plain attribute: it is
        # not a parameter and cannot be moved, saved or trained.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()

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


@torch.no_grad()
def pack_linear_weights(model: nn.Module) -> int:
    """Replace every `nn.Linear` of an inference-only CPU model by a `PackedLinear`, in place.

    Returns how many were replaced (0 when packing does not apply, see `can_pack`).
    A weight shared by two modules (an output layer tied to the embedding) is
    packed for the linear layer and kept as it is for the other.
    """
    if not can_pack(model):
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced
