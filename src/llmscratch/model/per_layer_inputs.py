"""Per-layer input embeddings (Gemma 3n and Gemma 4's E2B and E4B): a small input for every layer.

Legend: B batch, T tokens, D width, L layers, P = `per_layer_input` (the
width of each layer's input, 256 in the released models), Vp its vocabulary.

A transformer reads the token only once, at the bottom: everything a late
layer knows about it went through all the layers before. Per-layer inputs
give every layer its own view of the token, straight from a second
embedding table, at little cost: the table (Vp x L P) is large, but it is a
lookup, which can stay in slow memory (on disk, or the CPU for a GPU model),
and each layer adds only two thin matrices (D x P and P x D).

Each token gets one vector of L P numbers, split into one P-vector per layer:

    token part     e_tok = embed_per_layer[token] x sqrt(P)                (B, T, L, P)
    context part   e_ctx = RMSNorm_P(W (x / sqrt(D)))    x = the token's   (B, T, L, P)
                                                          scaled embedding
    per-layer input  u = (e_tok + e_ctx) / sqrt(2)                          (B, T, L, P)

and block i, after its attention and MLP, adds one more residual branch that
gates its own u_i with the stream:

    x = x + RMSNorm_D(W_up (gelu(W_gate x) * u_i))                          (B, T, D)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.norms import RMSNorm

if TYPE_CHECKING:
    from llmscratch.model.config import ModelConfig


class PerLayerInputs(nn.Module):
    """The model's side: every layer's input u (B, T, L, P) from the token ids and their
    (scaled) embeddings."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        L, P = config.n_layer, config.per_layer_input
        self.n_layer, self.width, self.model_width = L, P, config.n_embd
        self.embed = nn.Embedding(config.per_layer_vocab or config.vocab_size, L * P)
        self.context = nn.Linear(config.n_embd, L * P, bias=False)
        self.norm = RMSNorm(P, config.norm_eps, config.norm_zero_centred)

    def forward(self, input_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T), x (B, T, D) the embeddings the first layer reads -> (B, T, L, P)."""
        B, T = input_ids.shape
        shape = (B, T, self.n_layer, self.width)
        scale = torch.tensor(math.sqrt(self.width)).to(self.embed.weight.dtype)  # as Gemma's
        token = self.embed(input_ids).view(shape) * scale  # (B, T, L, P)
        context = self.norm((self.context(x) * self.model_width ** -0.5).view(shape))
        return (token + context) * 2 ** -0.5  # (B, T, L, P)


class PerLayerBranch(nn.Module):
    """The block's side: x + RMSNorm(up(gelu(gate(x)) * u_i)), u_i the layer's input."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.per_layer_input, bias=False)
        self.up = nn.Linear(config.per_layer_input, config.n_embd, bias=False)
        self.norm = RMSNorm(config.n_embd, config.norm_eps, config.norm_zero_centred)

    def forward(self, x: torch.Tensor, layer_input: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), layer_input (B, T, P) -> (B, T, D)."""
        gated = F.gelu(self.gate(x), approximate="tanh") * layer_input  # (B, T, P)
        return x + self.norm(self.up(gated))  # (B, T, D)
