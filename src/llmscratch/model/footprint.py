"""Parameters, FLOPs and memory of a model, from its config alone.

Legend: B batch, T tokens, L layers, D width, H heads, Hkv key/value heads,
Dh head width, F MLP width, V vocabulary, E experts, K active experts.

Parameters are counted on a model built on the meta device: exact, and free
even for a 30B model. Memory is estimated from them and from the shapes:

    weights       N x bytes per value
    gradients     N x bytes (one per weight)
    optimizer     2 N x bytes (AdamW's two moments; PyTorch keeps them in the
                  weights' dtype)
    activations   B T x [L x per_layer + 2 D] x bytes: the tensors autograd
                  keeps for the backward pass, with fused attention (no T x T
                  scores). No B T V logits: training computes the output layer
                  and its loss a chunk of rows at a time (model/heads.py)
                  and keeps only the gradient of the final hidden states (D),
                  plus, while it runs, one chunk: R x V x (4 + bytes) with
                  R = min(B T, 1,024) rows (fp32 softmax, logits and gradient)
                  per_layer = 4 D + attn + mlp (+ 2 D for sandwich norms),
                  where attn is (2 H + 3 Hkv) Dh (latent attention: its
                  latents, and q, k, v of every head; a Gated DeltaNet
                  layer: 2 C + 3 Hv Dv) and mlp is 2 F (GELU, ReLU
                  squared), 4 F (SwiGLU, GeGLU) or K (D + 4 F) + E (MoE;
                  + 4 F per shared expert; DeepSeek's first layers are SwiGLU)
    KV cache      2 L B T Hkv Dh x bytes (inference), L counting attention
                  layers only, and not KV-sharing ones (Gemma 4); latent
                  attention caches L B T (C + Dr): its latent and its RoPE
                  key; attention sinks (gpt-oss) are weights, not cached; a
                  sliding-window layer keeps at most its window W: min(T, W)
                  tokens in place of T (what the engine's window pool holds,
                  give or take its blocks); each Gated DeltaNet layer keeps a
                  state of the same size at any T instead: B (C (K - 1) x
                  bytes + Hv Dk Dv x 4), its memory in fp32

Training needs weights + gradients + optimizer + activations; inference
needs weights + KV cache. Activations are an estimate (within tens of
percent); the weights are exact.
"""

from __future__ import annotations

import math

import torch

from llmscratch.model.config import ModelConfig, torch_dtype
from llmscratch.model.heads import ROWS_PER_CHUNK
from llmscratch.model.kv_sharing import caches_keys
from llmscratch.model.linear_attention import state_shapes
from llmscratch.model.transformer import GPT


def footprint(config: ModelConfig, batch: int = 1, seq: int = 0, dtype: str = "") -> dict:
    """Parameter counts, FLOPs per token and memory estimates as one JSON-able dict.

    seq: tokens per sequence (0 = the context length); dtype: "fp32" or "bf16"
    for weights and activations ("" = the config's).
    """
    c = config
    T = seq or c.context_length
    dtype = dtype or c.dtype
    nbytes = torch_dtype(dtype).itemsize
    with torch.device("meta"):
        model = GPT(c)
    total = model.num_params()
    non_embedding = model.num_params(non_embedding=True)
    active = model.num_params(active=True)

    per_layer = 4 * c.n_embd + (2 * c.n_embd if c.norm_placement == "sandwich" else 0)
    per_token = sum(per_layer + attention_activations(c, i) + mlp_activations(c, i)
                    for i in range(c.n_layer)) + 2 * c.n_embd
    kv = kv_cache_bytes(c, nbytes)
    kept = min(T, kv["window"]) if kv["window"] else T  # tokens a local layer keeps
    memory = {
        "weights": total * nbytes,
        "gradients": total * nbytes,
        "optimizer": 2 * total * nbytes,
        "activations": batch * T * per_token * nbytes
                       + min(batch * T, ROWS_PER_CHUNK) * c.vocab_size * (4 + nbytes),
        "kv_cache": batch * (T * kv["per_token_global"]
                             + kept * (kv["per_token"] - kv["per_token_global"])
                             + kv["state_per_sequence"]),
    }
    memory["training_total"] = sum(memory[k] for k in ("weights", "gradients", "optimizer",
                                                       "activations"))
    memory["inference_total"] = memory["weights"] + memory["kv_cache"]
    return {
        "architecture": describe(c),
        "batch": batch,
        "seq": T,
        "dtype": dtype,
        "parameters": {
            "total": total,
            "embedding": total - non_embedding,
            "non_embedding": non_embedding,
            "active": active,
        },
        "flops_per_token": {
            "training": model.flops_per_token(T, training=True),
            "inference": model.flops_per_token(T, training=False),
        },
        "memory_bytes": memory,
        "kv_cache_bytes_per_token": kv["per_token"],
        "kv_cache": kv,
    }


def kv_cache_bytes(c: ModelConfig, nbytes: int) -> dict:
    """What inference caches for one sequence, in bytes, values of `nbytes` each.

    per_token: the keys and values (latent attention: its latent and RoPE key) of
    every layer that caches them (attention_layers of them: not Gated DeltaNet layers,
    nor Gemma 4's KV-sharing layers, which read another layer's) for one token, as if
    each kept every token; per_token_global:
    the same for the layers that do keep every token, without the sliding-window
    layers, which keep only their last `window` tokens (0: no such layers);
    state_per_sequence: the Gated DeltaNet layers' states, the same at any length.
    A sequence of T tokens holds T per_token_global + min(T, window) (per_token -
    per_token_global) + state_per_sequence.
    """
    def token_bytes(layer: int) -> int:  # one token's keys and values in `layer`
        heads, key_width, value_width = c.layer_cache_widths(layer)
        return heads * (key_width + value_width) * nbytes

    caching = [i for i in range(c.n_layer) if caches_keys(c, i)]
    local = [i for i in caching if c.layer_is_local(i)]
    linear = sum(c.layer_is_linear(i) for i in range(c.n_layer))
    conv_state, recurrent_state = state_shapes(c, 1)
    state = math.prod(conv_state) * nbytes + math.prod(recurrent_state) * 4  # memory in fp32
    return {
        "per_token": sum(token_bytes(i) for i in caching),
        "per_token_global": sum(token_bytes(i) for i in caching if i not in local),
        "window": c.sliding_window if local else 0,
        "attention_layers": len(caching),
        "local_layers": len(local),
        "linear_layers": linear,
        "state_per_sequence": linear * state,
    }


def attention_activations(c: ModelConfig, layer: int) -> int:
    """Numbers per token layer `layer`'s attention (or Gated DeltaNet) keeps for the backward
    pass."""
    if c.layer_is_linear(layer):
        channels = state_shapes(c, 1)[0][1]  # q, k and v side by side
        return 2 * channels + 3 * c.linear_n_value_head * c.linear_value_size
    if not c.kv_lora_rank:
        return (2 * c.n_head + 3 * c.layer_kv_heads(layer)) * c.layer_head_dim(layer)
    latents = 2 * (c.q_lora_rank + c.kv_lora_rank + c.qk_rope_head_dim)  # before and after norms
    return latents + c.n_head * (3 * c.head_dim + 3 * c.v_head_dim)  # q, k; kv, v, output


def mlp_activations(c: ModelConfig, layer: int) -> int:
    """Numbers per token layer `layer`'s MLP keeps for the backward pass."""
    if c.mlp in ("gelu", "relu2"):
        return 2 * c.mlp_dim
    if c.mlp in ("swiglu", "geglu"):
        double = c.kv_shared_mlp_double and not caches_keys(c, layer)  # Gemma 4's sharing layers
        return 4 * c.mlp_dim * (2 if double else 1)
    if c.layer_is_dense(layer):
        return 4 * c.dense_mlp_hidden
    shared = 4 * (c.n_shared_expert * c.mlp_dim + c.moe_shared_hidden)
    return c.n_expert_active * (c.n_embd + 4 * c.mlp_dim) + c.n_expert + shared


def describe(c: ModelConfig) -> str:
    """One line naming the architecture's parts."""
    attention = f"{c.n_head} heads of width {c.head_dim} ({c.attention_kind}"
    attention += f", {c.kv_heads} kv heads)" if c.kv_heads != c.n_head else ")"
    if c.attn_sinks:
        attention += " with sinks"
    if c.kv_lora_rank:
        attention = (f"{c.n_head} heads of latent attention (latent {c.kv_lora_rank}, RoPE key "
                     f"{c.qk_rope_head_dim}, q.k width {c.head_dim}, values {c.v_head_dim}")
        attention += f", query latent {c.q_lora_rank})" if c.q_lora_rank else ")"
    mlp = f"{c.mlp} MLP of width {c.mlp_dim}"
    if c.mlp == "moe":
        mlp = f"MoE of {c.n_expert} experts ({c.n_expert_active} active) of width {c.mlp_dim}"
        if c.swiglu_limit:
            mlp += f", clamped SwiGLU (limit {c.swiglu_limit:g})"
        if c.moe_router == "sigmoid":
            mlp += ", sigmoid routing"
        if c.moe_groups > 1:
            mlp += f" from {c.moe_groups_active} of {c.moe_groups} groups"
        if c.n_shared_expert:
            mlp += f", {c.n_shared_expert} shared"
        if c.moe_shared_hidden:
            mlp += f" and a shared expert of width {c.moe_shared_hidden}"
        if c.moe_dense_layers:
            mlp += f", after {c.moe_dense_layers} dense layers of width {c.dense_mlp_hidden}"
    positions = "learned positions" if c.positions == "learned" else f"RoPE theta {c.rope_theta:g}"
    if c.rope_scaling != "none":
        positions += f" ({c.rope_scaling} scaling x{c.rope_factor:g})"
    if c.rope_local_theta:
        positions += f", local layers theta {c.rope_local_theta:g}"
    norm = c.norm if c.norm_placement == "pre" else f"{c.norm_placement} {c.norm}"
    parts = [f"{c.n_layer} layers of width {c.n_embd}", attention, mlp, norm, positions,
             f"vocabulary {c.vocab_size}", f"context {c.context_length}"]
    if c.qk_norm:
        parts.append("QK-norm" if c.qk_norm_scope == "head" else "QK-norm over all heads")
    if c.full_attention_interval:
        P = c.full_attention_interval
        parts.append(f"{P - 1} Gated DeltaNet layers ({c.linear_n_value_head} value heads, "
                     f"{c.linear_n_key_head} key heads) to 1 attention layer")
    if c.attn_output_gate:
        parts.append("gated attention output")
    if c.rope_fraction < 1:
        parts.append(f"RoPE on {c.rope_dim} of {c.head_dim} features")
    if c.global_head_size:
        parts.append(f"global layers' heads of width {c.global_head_size}")
    if c.global_kv_heads or c.global_k_is_v:
        parts.append(f"global layers' {c.layer_kv_heads(c.sliding_window_pattern - 1)} kv "
                     "heads" + (", values from the keys' projection" if c.global_k_is_v
                                else ""))
    if c.rope_proportional:
        parts.append(f"global layers' RoPE on their first {c.rope_proportional:g} of pairs")
    if c.kv_shared_layers:
        parts.append(f"the last {c.kv_shared_layers} layers reuse earlier layers' keys and "
                     "values" + (f", with MLPs of width {2 * c.mlp_dim}"
                                 if c.kv_shared_mlp_double else ""))
    if c.per_layer_input:
        parts.append(f"per-layer inputs of width {c.per_layer_input}")
    if c.logit_softcap:
        parts.append(f"logits soft-capped at {c.logit_softcap:g}")
    if c.sliding_window_pattern == 2:  # gpt-oss
        parts.append(f"local (window {c.sliding_window}) and global layers alternating")
    elif c.sliding_window_pattern:
        P = c.sliding_window_pattern
        parts.append(f"{P - 1} local layers (window {c.sliding_window}) to 1 global")
    elif c.sliding_window:
        parts.append(f"sliding window {c.sliding_window}")
    parts.append("tied embeddings" if c.tie_embeddings else "untied embeddings")
    return ", ".join(parts)
