"""Named model configs: every family's released sizes, and the small ones for the demo and tests.

`get_preset("qwen3-0.6b")` returns a `ModelConfig` (model/config.py); a run's
config names one with `model.preset: NAME` and may change any field after it.
Each family is a function that fills in the fields the family fixes (its
switches: docs/families.md); the presets give the sizes.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import ModelConfig


def _llama3(**sizes) -> ModelConfig:
    """Llama 3.x: 128k vocabulary, GQA with 8 kv heads, RoPE with llama3 scaling."""
    family = dict(
        vocab_size=128256, context_length=131072, n_kv_head=8, positions="rope",
        rope_theta=500000.0, rope_scaling="llama3", rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0, rope_original_context=8192, norm="rmsnorm", norm_eps=1e-5,
        mlp="swiglu", bias=False, dtype="bf16",
    )
    return ModelConfig(**{**family, **sizes})


def _qwen3(**sizes) -> ModelConfig:
    """Qwen3: 152k vocabulary, 128-wide heads with QK-norm, GQA with 8 kv heads."""
    family = dict(
        vocab_size=151936, context_length=40960, n_kv_head=8, head_size=128, positions="rope",
        rope_theta=1000000.0, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", qk_norm=True,
        bias=False, dtype="bf16",
    )
    return ModelConfig(**{**family, **sizes})


def _gemma3(**sizes) -> ModelConfig:
    """Gemma 3 (text): 262k vocabulary, sandwich norms with 1 + w gains, GeGLU, scaled
    embeddings, five local layers (RoPE base 10k) to one global layer (base 1M)."""
    family = dict(
        vocab_size=262144, context_length=32768, head_size=256, attn_scalar=256,
        positions="rope", rope_theta=1000000.0, rope_local_theta=10000.0, norm="rmsnorm",
        norm_eps=1e-6, norm_placement="sandwich", norm_zero_centred=True,
        scale_embeddings=True, mlp="geglu", qk_norm=True, bias=False, sliding_window=512,
        sliding_window_pattern=6, tie_embeddings=True, dtype="bf16",
    )
    return ModelConfig(**{**family, **sizes})


def _gemma3_long(**sizes) -> ModelConfig:
    """Gemma 3 4B and larger: a 128k context, the global layers' RoPE slowed 8 times."""
    return _gemma3(**{**dict(vocab_size=262208, context_length=131072, sliding_window=1024,
                             rope_scaling="linear", rope_factor=8.0), **sizes})


def _gemma4(**sizes) -> ModelConfig:
    """Gemma 4 (text): Gemma 3's layout with RMSNorm gains stored as they apply (not 1 + w),
    values RMS-normalised too and scores unscaled (attn_scalar 1), global layers with heads
    twice as wide and RoPE on a quarter of their pairs, a fixed scalar per layer, the last
    layers reusing earlier layers' keys and values, and its logits soft-capped at 30."""
    family = dict(
        vocab_size=262144, context_length=131072, head_size=256, global_head_size=512,
        rope_proportional=0.25, attn_scalar=1.0,
        positions="rope", rope_theta=1000000.0, rope_local_theta=10000.0, norm="rmsnorm",
        norm_eps=1e-6, norm_placement="sandwich", scale_embeddings=True, mlp="geglu",
        qk_norm=True, v_norm=True, layer_scalar=True, bias=False, sliding_window=512,
        sliding_window_pattern=6, tie_embeddings=True, logit_softcap=30.0, dtype="bf16",
    )
    return ModelConfig(**{**family, **sizes})


def _olmo3(**sizes) -> ModelConfig:
    """Olmo 3: 100k vocabulary, norms after each sub-layer (no pre-norm), QK-norm over all
    heads at once, three sliding-window layers to one global layer, whose RoPE YaRN
    stretches from the 8k tokens of pretraining to 64k."""
    family = dict(
        vocab_size=100278, context_length=65536, positions="rope", rope_theta=500000.0,
        rope_scaling="yarn", rope_factor=8.0, rope_original_context=8192,
        rope_low_freq_factor=1.0, rope_high_freq_factor=32.0,
        rope_attention_factor=0.1 * math.log(8.0) + 1, rope_local_theta=500000.0,
        norm="rmsnorm", norm_eps=1e-6, norm_placement="post",
        mlp="swiglu", qk_norm=True, qk_norm_scope="all", bias=False, sliding_window=4096,
        sliding_window_pattern=4, tie_embeddings=False, dtype="bf16",
    )
    return ModelConfig(**{**family, **sizes})


def _gpt_oss(**sizes) -> ModelConfig:
    """gpt-oss: 201k vocabulary, attention with sinks and biases, sliding-window (128) and
    global layers alternating, all with YaRN (4k -> 128k, bounds unrounded), and a Mixture
    of Experts with biases, routed by a softmax over the top 4 logits, whose experts use a
    clamped SwiGLU."""
    family = dict(
        vocab_size=201088, context_length=131072, n_head=64, n_kv_head=8, head_size=64,
        n_embd=2880, positions="rope", rope_theta=150000.0, rope_scaling="yarn",
        rope_factor=32.0, rope_original_context=4096, rope_low_freq_factor=1.0,
        rope_high_freq_factor=32.0, rope_attention_factor=0.1 * math.log(32.0) + 1,
        rope_yarn_truncate=False, norm="rmsnorm", norm_eps=1e-5, mlp="moe", mlp_hidden=2880,
        n_expert_active=4, moe_renormalize=True, bias=True, attn_sinks=True, swiglu_limit=7.0,
        swiglu_alpha=1.702, sliding_window=128, sliding_window_pattern=2,
        tie_embeddings=False, dtype="bf16",
    )
    return ModelConfig(**{**family, **sizes})


def _deepseek_v3(**sizes) -> ModelConfig:
    """DeepSeek V3: 129k vocabulary; multi-head latent attention (the cache holds a
    512-wide latent and a 64-wide RoPE key per token and layer) with YaRN from 4k to 160k
    tokens; after 3 dense layers, 256 routed experts (8 active, chosen by sigmoid scores
    from the 4 best of 8 groups) and 1 shared expert per layer."""
    family = dict(
        vocab_size=129280, context_length=163840, positions="rope", rope_theta=10000.0,
        rope_scaling="yarn", rope_factor=40.0, rope_original_context=4096,
        rope_low_freq_factor=1.0, rope_high_freq_factor=32.0, rope_attention_factor=1.0,
        rope_mscale_all_dim=1.0, rope_interleave=True, norm="rmsnorm", norm_eps=1e-6,
        kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128,
        v_head_dim=128, mlp="moe", mlp_hidden=2048, n_expert=256, n_expert_active=8,
        n_shared_expert=1, moe_router="sigmoid", moe_groups=8, moe_groups_active=4,
        moe_routed_scale=2.5, moe_renormalize=True, moe_dense_layers=3,
        dense_mlp_hidden=18432, bias=False, tie_embeddings=False, dtype="bf16",
    )
    return ModelConfig(**{**family, **sizes})


def _qwen3_next(**sizes) -> ModelConfig:
    """Qwen3-Next: Qwen3-MoE's vocabulary and router, three Gated DeltaNet layers to one
    full-attention layer, whose output is gated and whose RoPE turns a quarter of each
    256-wide head; zero-centred norms; a shared expert beside 10 of 512 routed ones."""
    family = dict(
        vocab_size=151936, context_length=262144, n_kv_head=2, head_size=256,
        positions="rope", rope_theta=10000000.0, rope_fraction=0.25, norm="rmsnorm",
        norm_eps=1e-6, norm_zero_centred=True, mlp="moe", qk_norm=True, bias=False,
        full_attention_interval=4, linear_n_key_head=16, linear_n_value_head=32,
        linear_key_size=128, linear_value_size=128, linear_conv_kernel=4,
        attn_output_gate=True, tie_embeddings=False, dtype="bf16",
    )
    return ModelConfig(**{**family, **sizes})


# Sizes are those of the released checkpoints (their config.json on the Hugging
# Face hub); tests/test_families.py checks every parameter count against
# `transformers`. The demo and tiny presets are for the CPU demo and for tests.
PRESETS: dict[str, ModelConfig] = {
    "gpt2": ModelConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": ModelConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": ModelConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": ModelConfig(n_layer=48, n_head=25, n_embd=1600),
    # 4.3M parameters: the 10-minute CPU demo's model (configs/demo.yaml). On a 2-core
    # CPU, 4 layers of width 256 ran faster per token than 6 of width 192 and
    # reached a lower validation loss for the same tokens; a 2,048-token vocabulary
    # and an untied output layer each lowered it further (docs/archive/benchmarks-history.md).
    "gpt2-demo": ModelConfig(vocab_size=2048, context_length=256, n_layer=4, n_head=4,
                             n_embd=256, tie_embeddings=False),
    # 1.7M parameters: the demo's model where fewer than 2,500 steps of gpt2-demo fit in
    # its budget (recipes/demo.py): in fp32, or on a slow CPU. A smaller model learns more
    # from the time then: 2 layers of width 192 reached 2.02 bpb against 2.15 for gpt2-demo
    # in the same 515 s in fp32, and 1.99 against 2.08 in bf16 on a CPU where 1,300
    # steps of gpt2-demo fit (docs/benchmarks.md, "Why gpt2-demo or gpt2-demo-small").
    "gpt2-demo-small": ModelConfig(vocab_size=2048, context_length=256, n_layer=2, n_head=3,
                                   n_embd=192, tie_embeddings=False),
    # A few thousand parameters: for tests that must run in milliseconds.
    "gpt2-tiny": ModelConfig(vocab_size=512, context_length=64, n_layer=2, n_head=2, n_embd=32),
    "llama-3.2-1b": _llama3(n_layer=16, n_head=32, n_embd=2048, mlp_hidden=8192,
                            rope_factor=32.0, tie_embeddings=True),
    "llama-3.2-3b": _llama3(n_layer=28, n_head=24, n_embd=3072, mlp_hidden=8192,
                            rope_factor=32.0, tie_embeddings=True),
    "llama-3.1-8b": _llama3(n_layer=32, n_head=32, n_embd=4096, mlp_hidden=14336,
                            rope_factor=8.0, tie_embeddings=False),
    "llama-3-tiny": _llama3(vocab_size=512, context_length=256, n_layer=2, n_head=4, n_embd=64,
                            n_kv_head=2, mlp_hidden=128, rope_factor=8.0,
                            rope_original_context=64, tie_embeddings=False, dtype="fp32"),
    "qwen3-0.6b": _qwen3(n_layer=28, n_head=16, n_embd=1024, mlp_hidden=3072,
                         tie_embeddings=True),
    "qwen3-1.7b": _qwen3(n_layer=28, n_head=16, n_embd=2048, mlp_hidden=6144,
                         tie_embeddings=True),
    "qwen3-4b": _qwen3(n_layer=36, n_head=32, n_embd=2560, mlp_hidden=9728, tie_embeddings=True),
    "qwen3-8b": _qwen3(n_layer=36, n_head=32, n_embd=4096, mlp_hidden=12288,
                       tie_embeddings=False),
    "qwen3-tiny": _qwen3(vocab_size=512, context_length=256, n_layer=2, n_head=4, n_embd=64,
                         n_kv_head=2, head_size=32, mlp_hidden=128, tie_embeddings=True,
                         dtype="fp32"),
    # 30.5B parameters in all, 3.3B active per token: 8 of 128 experts.
    "qwen3-30b-a3b": _qwen3(n_layer=48, n_head=32, n_embd=2048, n_kv_head=4, mlp="moe",
                            mlp_hidden=768, n_expert=128, n_expert_active=8,
                            tie_embeddings=False),
    "qwen3-moe-tiny": _qwen3(vocab_size=512, context_length=256, n_layer=2, n_head=4, n_embd=64,
                             n_kv_head=2, head_size=32, mlp="moe", mlp_hidden=32, n_expert=8,
                             n_expert_active=2, tie_embeddings=False, dtype="fp32"),
    "gemma-3-270m": _gemma3(n_layer=18, n_head=4, n_kv_head=1, n_embd=640, mlp_hidden=2048),
    "gemma-3-1b": _gemma3(n_layer=26, n_head=4, n_kv_head=1, n_embd=1152, mlp_hidden=6912),
    "gemma-3-4b": _gemma3_long(n_layer=34, n_head=8, n_kv_head=4, n_embd=2560,
                               mlp_hidden=10240),
    "gemma-3-12b": _gemma3_long(n_layer=48, n_head=16, n_kv_head=8, n_embd=3840,
                                mlp_hidden=15360),
    "gemma-3-27b": _gemma3_long(n_layer=62, n_head=32, n_kv_head=16, n_embd=5376,
                                mlp_hidden=21504, head_size=128, attn_scalar=168),
    # Six layers: five local (a window of 8 tokens) and one global, as in the real ones.
    "gemma3-tiny": _gemma3(vocab_size=512, context_length=256, n_layer=6, n_head=4,
                           n_kv_head=2, n_embd=64, head_size=16, attn_scalar=16,
                           mlp_hidden=128, sliding_window=8, dtype="fp32"),
    # The text models of Gemma 4 E2B and E4B, their sizes as gemma.cpp's configs, Ollama's GGUF
    # metadata (E2B) and NVIDIA's Megatron recipe (E4B) state them (not checked against their
    # config.json here): 4.63B and 7.46B parameters, of which the per-layer input table holds
    # 2.35B and 2.82B; the rest, 2.28B and 4.64B, is what Google calls "effective" (2.3B, 4.5B).
    "gemma-4-e2b": _gemma4(n_layer=35, n_head=8, n_kv_head=1, n_embd=1536, mlp_hidden=6144,
                           sliding_window_pattern=5, kv_shared_layers=20,
                           kv_shared_mlp_double=True, per_layer_input=256),
    "gemma-4-e4b": _gemma4(n_layer=42, n_head=8, n_kv_head=2, n_embd=2560, mlp_hidden=10240,
                           kv_shared_layers=18, per_layer_input=256),
    # Six layers: local, local, global, twice; the last two (one of each kind) reuse the keys
    # and values of layers 3 and 2, with a double-wide MLP; global heads twice as wide.
    "gemma4-tiny": _gemma4(vocab_size=512, context_length=256, n_layer=6, n_head=4, n_kv_head=2,
                           n_embd=64, head_size=16, mlp_hidden=128, sliding_window=8,
                           sliding_window_pattern=3, kv_shared_layers=2,
                           kv_shared_mlp_double=True, per_layer_input=8, global_head_size=32,
                           dtype="fp32"),
    "olmo-3-7b": _olmo3(n_layer=32, n_head=32, n_embd=4096, mlp_hidden=11008),
    "olmo-3-32b": _olmo3(n_layer=64, n_head=40, n_kv_head=8, n_embd=5120, mlp_hidden=27648),
    # Four layers: three local (a window of 8 tokens) and one global.
    "olmo3-tiny": _olmo3(vocab_size=512, context_length=256, n_layer=4, n_head=4, n_kv_head=2,
                         n_embd=64, mlp_hidden=128, sliding_window=8, rope_factor=4.0,
                         rope_original_context=16, rope_attention_factor=0.1 * math.log(4.0) + 1,
                         dtype="fp32"),
    # 20.9B parameters (3.6B active, not counting the embedding table) and 116.8B (5.1B
    # active); released with their experts in MXFP4 (convert from-hf reads bf16 or fp32 ones).
    "gpt-oss-20b": _gpt_oss(n_layer=24, n_expert=32),
    "gpt-oss-120b": _gpt_oss(n_layer=36, n_expert=128),
    # Four layers: local, global, local, global (a window of 8 tokens), YaRN from 16 tokens.
    "gpt-oss-tiny": _gpt_oss(vocab_size=512, context_length=256, n_layer=4, n_head=4,
                             n_kv_head=2, head_size=16, n_embd=64, mlp_hidden=32, n_expert=8,
                             n_expert_active=2, sliding_window=8, rope_factor=4.0,
                             rope_original_context=16,
                             rope_attention_factor=0.1 * math.log(4.0) + 1, dtype="fp32"),
    # 671B parameters in all (without the multi-token prediction module), 37B active.
    "deepseek-v3": _deepseek_v3(n_layer=61, n_head=128, n_embd=7168),
    # Three layers: one dense, two with experts (8 in 4 groups, 2 active, 1 shared).
    "deepseek-v3-tiny": _deepseek_v3(vocab_size=512, context_length=256, n_layer=3, n_head=4,
                                     n_embd=64, kv_lora_rank=32, q_lora_rank=48,
                                     qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16,
                                     mlp_hidden=32, n_expert=8, n_expert_active=2, moe_groups=4,
                                     moe_groups_active=2, moe_dense_layers=1,
                                     dense_mlp_hidden=128, rope_factor=4.0,
                                     rope_original_context=16, dtype="fp32"),
    # 79.7B parameters in all, 3.9B active per token (10 of 512 experts and a shared one;
    # 3.3B without the embeddings: the model card's "80B-A3B").
    "qwen3-next-80b-a3b": _qwen3_next(n_layer=48, n_head=16, n_embd=2048, mlp_hidden=512,
                                      n_expert=512, n_expert_active=10, moe_shared_hidden=512),
    # Four layers: three Gated DeltaNet layers and one full-attention layer.
    "qwen3-next-tiny": _qwen3_next(vocab_size=512, context_length=256, n_layer=4, n_head=4,
                                   n_embd=64, head_size=16, mlp_hidden=32, n_expert=8,
                                   n_expert_active=2, moe_shared_hidden=32, linear_n_key_head=2,
                                   linear_n_value_head=4, linear_key_size=16,
                                   linear_value_size=16, dtype="fp32"),
    # Qwen3.5's dense text models: Qwen3-Next's layers with a SwiGLU MLP in place of the MoE.
    "qwen3.5-tiny": _qwen3_next(vocab_size=512, context_length=256, n_layer=4, n_head=4,
                                n_embd=64, head_size=16, mlp="swiglu", mlp_hidden=128,
                                linear_n_key_head=2, linear_n_value_head=4, linear_key_size=16,
                                linear_value_size=16, dtype="fp32"),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """Return a copy of the preset `name`, with some fields replaced."""
    if name not in PRESETS:
        raise LLMScratchError(
            f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        )
    preset = PRESETS[name]
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise LLMScratchError(f"unknown model field(s) {sorted(unknown)} for preset {name!r}")
    return replace(preset, **overrides)
