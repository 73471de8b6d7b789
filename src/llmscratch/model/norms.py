"""Normalisation layers: LayerNorm (GPT-2) and RMSNorm (Llama, Qwen).

Legend: ... any leading dimensions, D the width being normalised.

Both rescale each vector so that its size no longer depends on the layer
before it. LayerNorm subtracts the mean and divides by the standard
deviation, then applies a gain and a bias (Ba et al., 2016). RMSNorm skips
the centring and the bias and divides by the root mean square alone (Zhang &
Sennrich, 2019): cheaper, and in practice as good.

Gemma stores RMSNorm's gain zero-centred: the weight w starts at 0 and the
norm multiplies by 1 + w, so weight decay pulls the gain towards 1, not 0.
"""

from __future__ import annotations

import torch
from torch import nn

from llmscratch.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (or * (1 + weight), zero-centred), over the last
    dimension."""

    def __init__(self, dim: int, eps: float, zero_centred: bool = False) -> None:
        super().__init__()
        self.zero_centred = zero_centred
        self.weight = nn.Parameter(torch.zeros(dim) if zero_centred else torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mean of squares is taken in fp32 even for bf16 inputs: squaring
        # small bf16 numbers loses most of their digits.
        x32 = x.float()  # (..., D)
        inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        if self.zero_centred:  # 1 + w in fp32: in bf16 it would round small w away
            return (x32 * inv_rms * (1.0 + self.weight.float())).to(x.dtype)  # (..., D)
        return self.weight * (x32 * inv_rms).to(x.dtype)  # (..., D)


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    """The norm the config asks for (`config.norm`), over vectors of width `dim`."""
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps, config.norm_zero_centred)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)
