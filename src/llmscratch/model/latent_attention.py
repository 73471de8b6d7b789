"""Multi-head latent attention (MLA): DeepSeek V2 and V3's attention, with a small KV cache.

Legend: B batch, T tokens (queries), S keys (T, or more with a KV cache), D
width, H heads, C = kv_lora_rank (the latent's width), Cq = q_lora_rank,
Dn = qk_nope_head_dim, Dr = qk_rope_head_dim, Dv = v_head_dim.

Ordinary attention caches every head's key and value: 2 H Dh numbers per
token and layer. MLA caches one small latent vector c per token instead, and
makes every head's key and value from it with one up-projection (DeepSeek-AI,
2024, "DeepSeek-V2", section 2.1):

    c        = RMSNorm(x W_dkv)                  (B, T, C)        cached
    k_nope_h = c W_uk_h,   v_h = c W_uv_h        (B, H, S, Dn), (B, H, S, Dv)

RoPE cannot go through the latent (a rotation that depends on the position
would sit between c and W_uk, so the cached c could not be reused), so
position comes from a separate, "decoupled" RoPE key of Dr features that all
heads share, cached beside the latent:

    k_rope   = RoPE(x W_kr)                      (B, 1, T, Dr)    cached
    k_h      = [k_nope_h ; k_rope]               (B, H, S, Dn + Dr)

Queries have the same two parts, through a latent of their own (only to save
parameters: nothing of it is cached), or through one plain projection:

    q_h      = [q_nope_h ; RoPE(q_rope_h)] = RMSNorm(x W_dq) W_uq_h   (B, H, T, Dn + Dr)

and then it is attention as usual, softmax(q_h . k_h / sqrt(Dn + Dr)) v_h.
The cache holds C + Dr numbers per token and layer: DeepSeek V3's 512 + 64
against 2 x 128 heads x 128 for multi-head attention of its size, 57 times
fewer. In Hugging Face's names: W_dq is q_a_proj, W_uq q_b_proj, W_dkv and
W_kr together kv_a_proj_with_mqa, W_uk and W_uv together kv_b_proj.

Here the cached latents are up-projected again at every step (the plain
form). DeepSeek's inference code can instead fold W_uk into the query and W_uv
into the output projection ("absorbed"), attending over the latents directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.attention import explicit_attention, fused_attention, use_fused_kernel
from llmscratch.model.config import ModelConfig
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.norms import RMSNorm
from llmscratch.model.rope import apply_rope

# DeepSeek's latent norms keep their own epsilon, whatever the model's norm_eps.
LATENT_NORM_EPS = 1e-6


def yarn_mscale(factor: float, m: float) -> float:
    """YaRN's attention temperature for a context stretched `factor` times: 0.1 m ln(factor) + 1."""
    return 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """Features (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...): DeepSeek's RoPE pairs
    neighbours (x0, x1); after this our RoPE pairs x_p with x_{p + P}, the same pairs."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


class LatentAttention(nn.Module):
    """Multi-head latent attention (see the module docstring); a drop-in for
    CausalSelfAttention: the same call, and the cache holds (latent, RoPE key) pairs."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        c = config
        self.n_head, self.layer_idx, self.attn_impl = c.n_head, layer_idx, c.attn_impl
        self.nope_dim, self.rope_dim, self.v_dim = (c.qk_nope_head_dim, c.qk_rope_head_dim,
                                                    c.v_head_dim)
        self.latent_dim = c.kv_lora_rank
        self.interleaved = c.rope_interleave
        qk_dim = c.qk_nope_head_dim + c.qk_rope_head_dim  # Dn + Dr
        self.q = self.q_a = self.q_norm = self.q_b = None
        if c.q_lora_rank:  # queries through their own latent: D -> Cq -> H (Dn + Dr)
            self.q_a = nn.Linear(c.n_embd, c.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(c.q_lora_rank, LATENT_NORM_EPS)
            self.q_b = nn.Linear(c.q_lora_rank, c.n_head * qk_dim, bias=False)
        else:
            self.q = nn.Linear(c.n_embd, c.n_head * qk_dim, bias=False)
        # One matmul gives the latent and the shared RoPE key: D -> C + Dr.
        self.kv_a = nn.Linear(c.n_embd, c.kv_lora_rank + c.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(c.kv_lora_rank, LATENT_NORM_EPS)
        # The up-projection of the latent: every head's key (no RoPE) and value, C -> H (Dn + Dv).
        self.kv_b = nn.Linear(c.kv_lora_rank, c.n_head * (c.qk_nope_head_dim + c.v_head_dim),
                              bias=False)
        self.proj = nn.Linear(c.n_head * c.v_head_dim, c.n_embd, bias=False)
        # 1 / sqrt(Dn + Dr); under YaRN, DeepSeek also sharpens every feature's scores,
        # not just the rotated ones (those already are, through rope_attention_factor).
        self.scale = qk_dim ** -0.5
        if c.rope_scaling == "yarn" and c.rope_mscale_all_dim:
            self.scale *= yarn_mscale(c.rope_factor, c.rope_mscale_all_dim) ** 2
        self.dropout = c.dropout

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Every head's query, (B, T, D) -> (B, H, T, Dn + Dr), before RoPE."""
        B, T, _ = x.shape
        q = self.q(x) if self.q is not None else self.q_b(self.q_norm(self.q_a(x)))
        return q.view(B, T, self.n_head, -1).transpose(1, 2)  # (B, H, T, Dn + Dr)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        visible: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D); `rope`: (cos, sin) of Dr features; `visible`: a mask from
        `visible_keys`, None for plain causal. Returns (B, T, D)."""
        B, T, _ = x.shape  # (B, T, D)
        H, Dn, Dr, Dv = self.n_head, self.nope_dim, self.rope_dim, self.v_dim
        q_nope, q_rope = self.queries(x).split([Dn, Dr], dim=-1)  # (B, H, T, Dn), (B, H, T, Dr)
        latent, k_rope = self.kv_a(x).split([self.latent_dim, Dr], dim=-1)  # (B, T, C), (B, T, Dr)
        latent = self.kv_norm(latent).unsqueeze(1)  # (B, 1, T, C)
        k_rope = k_rope.unsqueeze(1)  # (B, 1, T, Dr): one RoPE key for all heads
        if self.interleaved:
            q_rope, k_rope = deinterleave(q_rope), deinterleave(k_rope)
        q_rope, k_rope = apply_rope(q_rope, *rope), apply_rope(k_rope, *rope)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (B, H, T, Dn + Dr)
        # The cache holds the latent and the RoPE key, not k and v (one "head" of each).
        if cache is not None and hasattr(cache, "attend"):  # the engine's paged cache
            context = cache.attend(self.layer_idx, q, latent, k_rope, self.attention)
        else:
            if cache is not None:
                latent, k_rope = cache.update(self.layer_idx, latent, k_rope)  # (B, 1, S, C)..
            context = self.attention(q, latent, k_rope, visible)  # (B, H, T, Dv)
        context = context.transpose(1, 2).reshape(B, T, H * Dv)  # (B, T, H Dv)
        return F.dropout(self.proj(context), self.dropout, self.training)  # (B, T, D)

    def attention(self, q: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                  visible: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, H, T, Dn + Dr) over the keys and values made from the latents (B, 1, S, C)
        and RoPE keys (B, 1, S, Dr) of the S positions it may see. Returns (B, H, T, Dv)."""
        B, S = latent.size(0), latent.size(2)
        H, Dn, Dr, Dv = self.n_head, self.nope_dim, self.rope_dim, self.v_dim
        kv = self.kv_b(latent).view(B, S, H, Dn + Dv).transpose(1, 2)  # (B, H, S, Dn + Dv)
        k_nope, v = kv.split([Dn, Dv], dim=-1)  # (B, H, S, Dn), (B, H, S, Dv)
        k = torch.cat([k_nope, k_rope.expand(B, H, S, Dr)], dim=-1)  # (B, H, S, Dn + Dr)
        if use_fused_kernel(self.attn_impl, q, k):
            return fused_attention(q, k, v, visible, self.scale)  # (B, H, T, Dv)
        return explicit_attention(q, k, v, visible, self.scale)  # (B, H, T, Dv)
