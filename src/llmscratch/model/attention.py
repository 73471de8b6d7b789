"""Causal self-attention: multi-head, grouped-query or multi-query; written out and fused.

Legend: B batch, T tokens (queries), S keys (T, or more with a KV cache),
D width (n_embd), H query heads, Hkv key/value heads, G = H / Hkv query heads
per key/value head, Dh head width.

Each token's vector is projected to queries, keys and values. A token attends
to itself and to earlier tokens: its output is the average of their values,
weighted by softmax(q . k / sqrt(Dh)). The causal mask hides later tokens, so
a model trains on every position of a sequence at once without seeing the
answer (Vaswani et al., 2017).

Keys and values may have fewer heads than queries (Ainslie et al., 2023):

    multi-head      H = Hkv       q q q q      every query head has its own k, v
                                  | | | |
                                  k k k k
    grouped-query   Hkv = 2       q q q q      G = 2 query heads share one k, v
                                   \\| |/
                                  k     k
    multi-query     Hkv = 1       q q q q      all query heads share one k, v
                                   \\ | /
                                     k

Fewer key/value heads shrink the KV cache by G at a small cost in quality.

Which keys a query may see (x: visible), causal and with a sliding window of 3:

        k0 k1 k2 k3 k4              k0 k1 k2 k3 k4
    q0  x  .  .  .  .           q0  x  .  .  .  .
    q1  x  x  .  .  .           q1  x  x  .  .  .
    q2  x  x  x  .  .           q2  x  x  x  .  .
    q3  x  x  x  x  .           q3  .  x  x  x  .
    q4  x  x  x  x  x           q4  .  .  x  x  x
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.config import ModelConfig
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.norms import RMSNorm
from llmscratch.model.rope import apply_rope
from llmscratch.model.sinks import softmax_with_sinks


def visible_keys(
    T: int,
    S: int,
    device: torch.device,
    window: int = 0,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which keys each query may attend to (True = visible).

    The T queries are the last T of the S positions: query i sits at position
    S - T + i and sees key j when j <= that position (causal) and, with a
    `window` W > 0, when j > position - W. `segments` (B, S) is an attention
    mask: 0 for padding, and for real tokens the number of the sequence they
    belong to (all 1 for one sequence per row; 1, 2, 3, ... for several
    sequences packed into one row). A query sees only keys of its own
    sequence - and its own position always, so a padding query sees one key
    and its (ignored) output stays finite. Returns (T, S), or (B, 1, T, S)
    with `segments`.
    """
    query_pos = torch.arange(S - T, S, device=device).unsqueeze(1)  # (T, 1)
    key_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    visible = key_pos <= query_pos  # (T, S)
    if window:
        visible = visible & (key_pos > query_pos - window)  # (T, S)
    if segments is not None:
        is_self = key_pos == query_pos  # (T, S)
        query_segment = segments[:, None, S - T:, None]  # (B, 1, T, 1)
        key_segment = segments[:, None, None, :]  # (B, 1, 1, S)
        same = (key_segment == query_segment) & (key_segment > 0)  # (B, 1, T, S)
        visible = visible & (same | is_self)  # (B, 1, T, S)
    return visible


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None = None,
    scale: float | None = None, sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention spelled out: scores, mask, softmax, weighted sum.

    q: (B, H, T, Dh); k, v: (B, Hkv, S, Dh) with S >= T, the T queries being
    the last T of the S positions, and H a multiple of Hkv (query head h reads
    key/value head h // G). `visible` is a mask from `visible_keys`; None
    means plain causal. `scale` multiplies the scores (None: 1/sqrt(Dh)).
    `sinks` (H,): one more logit per head in the softmax's denominator
    (gpt-oss; sinks.py). Returns (B, H, T, Dh).

    Grouped-query heads are not copied out to H key heads: the G query heads
    that share a key/value head are laid side by side as G T rows of one
    matrix, (B, Hkv, G T, Dh), which meets its keys in one product.

    Three choices keep it fast without changing the math: the scale is
    applied to the T x Dh queries rather than the T x S scores; the mask is
    added as a bias (0 where visible, -inf where hidden) in the same pass
    that could not be avoided; and the softmax runs in the scores' own
    dtype, because PyTorch's softmax kernels already accumulate in fp32 for
    bf16 input (casting to fp32 and back would only add two passes).
    """
    B, H, T, Dh = q.shape
    Hkv, S = k.size(1), k.size(-2)
    G = H // Hkv  # query heads per key/value head
    if visible is None:
        visible = visible_keys(T, S, q.device)  # (T, S)
    mask_bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device)
    mask_bias = mask_bias.masked_fill(~visible, float("-inf"))  # (T, S) or (B, 1, T, S)
    if mask_bias.dim() == 4:
        mask_bias = mask_bias.unsqueeze(2)  # (B, 1, 1, T, S): the same for all G heads
    if scale is None:
        scale = 1.0 / math.sqrt(Dh)
    grouped_q = (q * scale).reshape(B, Hkv, G * T, Dh)  # (B, Hkv, G T, Dh)
    attn_scores = (grouped_q @ k.transpose(-2, -1)).view(B, Hkv, G, T, S)  # (B, Hkv, G, T, S)
    attn_scores = attn_scores + mask_bias  # (B, Hkv, G, T, S)
    if sinks is not None:  # one more logit for each of the H = Hkv G query heads
        attn_weights = softmax_with_sinks(attn_scores.view(B, H, T, S), sinks)  # (B, H, T, S)
    else:
        attn_weights = torch.softmax(attn_scores, dim=-1)  # (B, Hkv, G, T, S)
    context = attn_weights.reshape(B, Hkv, G * T, S) @ v  # (B, Hkv, G T, Dv)
    return context.view(B, H, T, v.size(-1))  # (Dv: Dh, or latent attention's value width)


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The same function through PyTorch's fused kernel (flash / memory-efficient); with
    fewer key/value heads than query heads, the kernel's own grouped-query mode."""
    gqa = q.size(1) != k.size(1)
    if visible is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale,
                                              enable_gqa=gqa)
    T, S = q.size(-2), k.size(-2)
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                              enable_gqa=gqa)
    if T == 1:  # one new token may see every cached key: no mask needed
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    # Several new tokens after a cached prefix: the causal mask is offset by S - T.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible_keys(T, S, q.device),
                                          scale=scale, enable_gqa=gqa)


def use_fused_kernel(attn_impl: str, q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `attn_impl` ("auto", "sdpa" or "explicit") means the fused kernel for these inputs.

    "auto" picks the faster one. That is the fused kernel, except on CPU in
    bf16 with up to 512 keys: there PyTorch's CPU flash kernel is slower than
    the explicit path's few large bf16 matmuls (1.1x to 2.1x slower at 256 keys,
    forward and backward; faster again at 1024; docs/benchmarks.md, "The CPU kernel
    choice"). The fused kernel never stores the T x S scores, so it also wins on
    memory for long sequences, and it is the one to use on GPUs.
    """
    if attn_impl != "auto":
        return attn_impl == "sdpa"
    short_cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.size(-2) <= 512
    return not short_cpu_bf16


class SharedKV:
    """What the source layers publish, in one forward pass, for the KV-sharing layers after
    them (Gemma 4, kv_sharing.py): (keys, values) by kind (`window`: 0 for global layers).
    A plain object rather than a dict on purpose: FSDP2 and activation checkpointing
    rebuild the dicts, lists and tuples passed to a block (to move the tensors inside), so
    a source's write into a dict would land in a copy the later layers never see."""

    def __init__(self) -> None:
        self.by_window: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __setitem__(self, window: int, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.by_window[window] = kv

    def __getitem__(self, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.by_window[window]


class CausalSelfAttention(nn.Module):
    """One fused q/k/v projection, optional QK-norm and RoPE, H heads, an output projection.

    Which keys a layer sees (all earlier ones, or a sliding window) and how
    RoPE rotates them come in with each call: the model computes them once for
    each kind of layer (local, global) and hands each layer its kind's.
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.layer_kv_heads(layer_idx)  # (Gemma 4: other when global)
        self.head_dim = Dh = config.layer_head_dim(layer_idx)  # (Gemma 4: wider when global)
        self.layer_idx = layer_idx
        self.attn_impl = config.attn_impl
        q_width = config.n_head * Dh  # H Dh
        kv_width = self.n_kv_head * Dh  # Hkv Dh
        # One matmul makes queries, keys and values for all heads: (D) -> (H + 2 Hkv) Dh.
        self.split_sizes = [q_width, kv_width, kv_width]
        # Gemma 4's global layers may take their values from the keys' projection.
        self.k_is_v = config.global_k_is_v and not config.layer_is_local(layer_idx)
        if self.k_is_v:
            self.split_sizes = [q_width, kv_width]
        # Qwen3-Next's output gate: the same matmul also makes a gate for every feature of
        # the output, which is multiplied by sigmoid(gate) before the output projection.
        if config.attn_output_gate:
            self.split_sizes.append(q_width)
        self.qkv = nn.Linear(config.n_embd, sum(self.split_sizes),
                             bias=config.bias or config.qkv_bias)
        # QK-norm (Qwen3, Gemma 3): each head's query and key get unit RMS and a learned
        # gain, which bounds the attention logits (Henry et al., 2020; Dehghani et al., 2023).
        # Olmo 2 and 3 normalise all heads' queries (and keys) of a token together.
        self.qk_norm = config.qk_norm_scope if config.qk_norm else None
        q_norm_width, k_norm_width = ((q_width, kv_width) if self.qk_norm == "all"
                                      else (Dh, Dh))
        self.q_norm = self.k_norm = None
        if self.qk_norm:
            self.q_norm = RMSNorm(q_norm_width, config.norm_eps, config.norm_zero_centred)
            self.k_norm = RMSNorm(k_norm_width, config.norm_eps, config.norm_zero_centred)
        # Gemma 4: values too get unit RMS per head, with no gain.
        self.v_norm_eps = config.norm_eps if config.v_norm else 0.0
        # Scores are q . k / sqrt(Dh), or / sqrt(attn_scalar) where a family fixes it (Gemma 3).
        self.scale = 1.0 / math.sqrt(config.attn_scalar or Dh)
        self.proj = nn.Linear(q_width, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        # gpt-oss: a learned sink logit per query head (sinks.py); the fused kernel cannot
        # take it, so such a layer always runs the explicit path.
        self.sinks = nn.Parameter(torch.zeros(config.n_head)) if config.attn_sinks else None
        # The keys a query sees reach back this far in a local layer (0: all of them).
        self.window = config.sliding_window if config.layer_is_local(layer_idx) else 0

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  visible: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, H, T, Dh) attends over k, v (B, Hkv, S, Dh) with the kernel `attn_impl`
        picks for them (the explicit one where there are sinks); `visible` as in
        `explicit_attention`. Returns (B, H, T, Dh)."""
        if self.sinks is None and use_fused_kernel(self.attn_impl, q, k):
            return fused_attention(q, k, v, visible, self.scale)
        return explicit_attention(q, k, v, visible, self.scale, self.sinks)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        visible: torch.Tensor | None = None,
        shared: SharedKV | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D); `rope`: (cos, sin) from rope.rope_angles, or None for
        learned positions; `visible`: a mask from `visible_keys`, None for plain
        causal; `shared`: where this layer publishes the keys and values it attends
        over, for later layers that reuse them (Gemma 4; kv_sharing.py). Returns (B, T, D)."""
        B, T, _ = x.shape  # (B, T, D)
        H, Hkv, Dh = self.n_head, self.n_kv_head, self.head_dim
        # (B, T, H Dh), 2 x (B, T, Hkv Dh) and, with an output gate, (B, T, H Dh)
        q, k, *rest = self.qkv(x).split(self.split_sizes, dim=-1)
        v, *gate = [k, *rest] if self.k_is_v else rest  # (values: the raw keys, Gemma 4)
        if self.qk_norm == "all":  # over every head's features at once
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, Hkv, Dh).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = v.view(B, T, Hkv, Dh).transpose(1, 2)  # (B, Hkv, T, Dh)
        if self.qk_norm == "head":  # over each head's Dh features
            q, k = self.q_norm(q), self.k_norm(k)
        if self.v_norm_eps:
            v = F.rms_norm(v.float(), (Dh,), eps=self.v_norm_eps).to(v.dtype)  # (B, Hkv, T, Dh)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None and hasattr(cache, "attend"):  # a cache that attends itself
            if shared is not None:  # this step's keys: sharing layers hand them to the cache
                shared[self.window] = k, v
            context = cache.attend(self.layer_idx, q, k, v, self.attention, self.window)
        else:
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v)  # (B, Hkv, S, Dh), S = cached + T
            if shared is not None:  # all the keys: sharing layers attend over them
                shared[self.window] = k, v
            context = self.attention(q, k, v, visible)  # (B, H, T, Dh)
        context = context.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, H Dh): heads side by side
        if gate:
            context = context * torch.sigmoid(gate[0])  # (B, T, H Dh)
        out = self.proj(context)  # (B, T, D)
        return F.dropout(out, self.dropout, self.training)
