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
                  per_layer = 4 D + (2 H + 3 Hkv) Dh + mlp (+ 2 D for
                  sandwich norms), where mlp is 2 F (GELU), 4 F (SwiGLU,
                  GeGLU) or K (D + 4 F) + E (MoE; + 4 Fs for a shared
                  expert); a Gated DeltaNet layer has 2 C + 3 Hv Dv in
                  place of the attention's (2 H + 3 Hkv) Dh
    KV cache      2 L B T Hkv Dh x bytes (inference), L counting attention
                  layers only; each Gated DeltaNet layer keeps a state of
                  the same size at any T instead: B (C (K - 1) x bytes +
                  Hv Dk Dv x 4), its memory in fp32

Training needs weights + gradients + optimizer + activations; inference
needs weights + KV cache. Activations are an estimate (within tens of
percent); the weights are exact.
"""

from __future__ import annotations

import math

import torch

from llmscratch.model.config import ModelConfig, torch_dtype
from llmscratch.model.heads import ROWS_PER_CHUNK
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

    if c.mlp == "gelu":
        mlp = 2 * c.mlp_dim
    elif c.mlp in ("swiglu", "geglu"):
        mlp = 4 * c.mlp_dim
    else:
        mlp = c.n_expert_active * (c.n_embd + 4 * c.mlp_dim) + c.n_expert \
            + 4 * c.moe_shared_hidden
    n_linear = sum(c.layer_is_linear(i) for i in range(c.n_layer))  # Gated DeltaNet layers
    n_attention = c.n_layer - n_linear
    conv_state, memory = state_shapes(c, batch)
    channels, value_width = conv_state[1], c.linear_n_value_head * c.linear_value_size
    attention = (2 * c.n_head + 3 * c.kv_heads) * c.head_dim
    per_layer = 4 * c.n_embd + mlp
    if c.norm_placement == "sandwich":
        per_layer += 2 * c.n_embd
    per_token = c.n_layer * per_layer + n_attention * attention \
        + n_linear * (2 * channels + 3 * value_width) + 2 * c.n_embd
    state_bytes = n_linear * (math.prod(conv_state) * nbytes + math.prod(memory) * 4)
    memory = {
        "weights": total * nbytes,
        "gradients": total * nbytes,
        "optimizer": 2 * total * nbytes,
        "activations": batch * T * per_token * nbytes
                       + min(batch * T, ROWS_PER_CHUNK) * c.vocab_size * (4 + nbytes),
        "kv_cache": 2 * n_attention * batch * T * c.kv_heads * c.head_dim * nbytes
                    + state_bytes,
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
    }


def describe(c: ModelConfig) -> str:
    """One line naming the architecture's parts."""
    attention = f"{c.n_head} heads of width {c.head_dim} ({c.attention_kind}"
    attention += f", {c.kv_heads} kv heads)" if c.kv_heads != c.n_head else ")"
    mlp = f"{c.mlp} MLP of width {c.mlp_dim}"
    if c.mlp == "moe":
        mlp = f"MoE of {c.n_expert} experts ({c.n_expert_active} active) of width {c.mlp_dim}"
        if c.moe_shared_hidden:
            mlp += f" and a shared expert of width {c.moe_shared_hidden}"
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
    if c.sliding_window_pattern:
        P = c.sliding_window_pattern
        parts.append(f"{P - 1} local layers (window {c.sliding_window}) to 1 global")
    elif c.sliding_window:
        parts.append(f"sliding window {c.sliding_window}")
    parts.append("tied embeddings" if c.tie_embeddings else "untied embeddings")
    return ", ".join(parts)
