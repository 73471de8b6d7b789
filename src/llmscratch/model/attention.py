"""Causal multi-head self-attention, written out and fused.

Legend: B batch, T tokens (queries), S keys (T, or more with a KV cache),
D width (n_embd), H heads, Dh head width (D / H).

Each token's vector is projected to a query, a key and a value per head. A
token attends to itself and to every earlier token: its output is the
average of their values, weighted by softmax(q . k / sqrt(Dh)). The causal
mask hides later tokens, so the model can be trained on every position of a
sequence at once without seeing the answer (Vaswani et al., 2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.config import ModelConfig
from llmscratch.model.kv_cache import KVCache


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention spelled out: scores, causal mask, softmax, weighted sum.

    q: (B, H, T, Dh); k, v: (B, H, S, Dh) with S >= T, where the T queries are
    the last T of the S positions (S > T when earlier keys come from a cache).
    Returns (B, H, T, Dh).
    """
    T, S = q.size(-2), k.size(-2)
    attn_scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    # Query i sits at absolute position S - T + i and may see keys 0 .. S - T + i.
    query_pos = torch.arange(S - T, S, device=q.device).unsqueeze(1)  # (T, 1)
    key_pos = torch.arange(S, device=q.device).unsqueeze(0)  # (1, S)
    future = key_pos > query_pos  # (T, S), True where the key is in the query's future
    attn_scores = attn_scores.masked_fill(future, float("-inf"))
    attn_weights = torch.softmax(attn_scores.float(), dim=-1).to(v.dtype)  # (B, H, T, S)
    return attn_weights @ v  # (B, H, T, Dh)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same function through PyTorch's fused kernel (flash / memory-efficient)."""
    T, S = q.size(-2), k.size(-2)
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if T == 1:  # one new token may see every cached key: no mask needed
        return F.scaled_dot_product_attention(q, k, v)
    # Several new tokens after a cached prefix: the mask is offset by S - T.
    query_pos = torch.arange(S - T, S, device=q.device).unsqueeze(1)
    visible = torch.arange(S, device=q.device).unsqueeze(0) <= query_pos  # (T, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)


class CausalSelfAttention(nn.Module):
    """GPT-2 attention: one fused q/k/v projection, H heads, an output projection."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.attn_impl = config.attn_impl
        # One matmul makes queries, keys and values for all heads: (D) -> (3 D).
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, D = x.shape  # (B, T, D)
        qkv = self.qkv(x)  # (B, T, 3D)
        qkv = qkv.view(B, T, 3, self.n_head, self.head_dim)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H, S, Dh), S = cached + T

        if self.attn_impl == "explicit":
            context = explicit_attention(q, k, v)  # (B, H, T, Dh)
        else:
            context = fused_attention(q, k, v)  # (B, H, T, Dh)

        context = context.transpose(1, 2).reshape(B, T, D)  # (B, T, D): heads side by side
        out = self.proj(context)  # (B, T, D)
        return F.dropout(out, self.dropout, self.training)
