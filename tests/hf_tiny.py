"""Tiny random Hugging Face models of each family, built locally (never downloaded).

Each family's sizes are shrunk but keep its distinguishing features: GQA,
Llama 3 rope scaling (with an original context shorter than the test
sequences, so the scaling matters), Qwen3's head width independent of the
width and its tied embeddings, Qwen3-MoE's renormalised top-k routing, and
Gemma 3's and Olmo 3's local and global layers (a window of 8, shorter than
the test sequences; the last layer after a global one is local again), each
kind with its own RoPE, Gemma's linear scaling and its query scale, Olmo's YaRN;
and gpt-oss's alternating layers (local, global, local) under one unrounded YaRN,
with sinks, biases, and experts whose SwiGLU clamp (1.0 here, not 7) is reached;
and DeepSeek V3's latent attention (a query latent, interleaved RoPE, YaRN with its
mscale) and its first layer dense, the others with experts in groups, a shared
expert and the router's bias (random, so that it steers the choice).
Qwen3-Next's three Gated DeltaNet layers (value heads sharing key heads) to one
full-attention layer with its output gate and partial RoPE, and its shared expert.
Gemma 4's six layers (local, local, global, twice), the last two reusing the keys and
values of layers 3 and 2 with a double-wide MLP, global heads twice as wide with RoPE on a
quarter of their pairs ("proportional"), per-layer inputs, random layer scalars, and its
logits soft-capped at 2 (not 30: the tiny model's logits are small).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from llmscratch.tokenizer import Tokenizer, train_bpe
from llmscratch.tokenizer.hf_json import save_hf_tokenizer

FAMILIES = ["gpt2", "llama", "qwen3", "qwen3_moe", "gemma3_text", "olmo3", "gpt_oss",
            "deepseek_v3", "qwen3_next", "qwen3_5_text", "gemma4_text"]
LAYER_TYPED = ["gemma3_text", "olmo3", "gpt_oss"]  # local and global layers
VOCAB = 320
SPECIALS = {
    "gpt2": ("<|endoftext|>",),
    "llama": ("<|begin_of_text|>", "<|end_of_text|>"),
    "qwen3": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "qwen3_moe": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "gemma3_text": ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
    "olmo3": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "gpt_oss": ("<|endoftext|>", "<|start|>", "<|end|>"),
    "deepseek_v3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "qwen3_next": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "qwen3_5_text": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    "gemma4_text": ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
}
TEXT = (
    "First Citizen: Before we proceed any further, hear me speak.\n"
    "All: Speak, speak.\nFirst Citizen: You are all resolved rather to die than to famish?\n"
    "All: Resolved. resolved.\nFirst Citizen: First, you know Caius Marcius is chief enemy "
    "to the people.\nAll: We know't, we know't.\n"
) * 20


def hf_config(family: str, **overrides):
    """A tiny `transformers` config of `family` (no bos/eos, so generation never stops)."""
    from transformers import (
        DeepseekV3Config,
        Gemma3TextConfig,
        Gemma4TextConfig,
        GPT2Config,
        GptOssConfig,
        LlamaConfig,
        Olmo3Config,
        Qwen3_5TextConfig,
        Qwen3Config,
        Qwen3MoeConfig,
        Qwen3NextConfig,
    )

    no_specials = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                          **no_specials, **overrides)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, **no_specials)
    if family == "llama":
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        return LlamaConfig(**{**common, "intermediate_size": 64, "rope_theta": 500000.0,
                              "rope_scaling": rope, "rms_norm_eps": 1e-5,
                              "tie_word_embeddings": False, **overrides})
    if family == "deepseek_v3":  # 3 layers: 1 dense, 2 with 8 experts in 4 groups, 2 active
        rope = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "mscale": 1.0,
                "mscale_all_dim": 0.5, "original_max_position_embeddings": 16}
        return DeepseekV3Config(**{**common, "num_hidden_layers": 3, "num_key_value_heads": 4,
                                   "intermediate_size": 64, "moe_intermediate_size": 16,
                                   "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8,
                                   "qk_nope_head_dim": 8, "v_head_dim": 12,
                                   "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 4,
                                   "topk_group": 2, "n_shared_experts": 1,
                                   "first_k_dense_replace": 1, "rope_parameters": rope,
                                   "tie_word_embeddings": False, **overrides})
    if family == "qwen3":
        return Qwen3Config(**{**common, "intermediate_size": 64, "head_dim": 16,
                              "tie_word_embeddings": True, **overrides})
    # Three Gated DeltaNet layers (value heads sharing key heads), then full attention.
    hybrid = {**common, "num_hidden_layers": 4, "max_position_embeddings": 256, "head_dim": 16,
              "partial_rotary_factor": 0.25, "linear_num_key_heads": 2,
              "linear_num_value_heads": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
              "linear_conv_kernel_dim": 4}
    if family == "qwen3_next":
        return Qwen3NextConfig(**{
            **hybrid, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 16, "norm_topk_prob": True, **overrides})
    if family == "qwen3_5_text":
        return Qwen3_5TextConfig(**{**hybrid, "intermediate_size": 64, **overrides})
    # Four layers: local, local, global, local.
    kinds = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    layered = {**common, "num_hidden_layers": 4, "layer_types": kinds, "sliding_window": 8,
               "intermediate_size": 64}
    if family == "gemma3_text":
        rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
        return Gemma3TextConfig(**{**layered, "head_dim": 16, "query_pre_attn_scalar": 24,
                                   "rope_parameters": rope, **overrides})
    if family == "gemma4_text":  # six layers (l, l, G twice), the last two sharing KV
        rope = {"full_attention": {"rope_type": "proportional", "rope_theta": 1e6,
                                   "partial_rotary_factor": 0.25},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
        return Gemma4TextConfig(**{**layered, "num_hidden_layers": 6,
                                   "layer_types": kinds[:3] * 2, "head_dim": 16,
                                   "global_head_dim": 32, "hidden_size_per_layer_input": 8,
                                   "vocab_size_per_layer_input": VOCAB,
                                   "num_kv_shared_layers": 2, "use_double_wide_mlp": True,
                                   "final_logit_softcapping": 2.0, "rope_parameters": rope,
                                   **overrides})
    if family == "olmo3":  # YaRN on the global layers, from an original context of 16
        rope = {"full_attention": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                   "original_max_position_embeddings": 16},
                "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}}
        return Olmo3Config(**{**layered, "rope_parameters": rope, **overrides})
    if family == "gpt_oss":  # layer_types left to its default: local and global alternate
        rope = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "beta_fast": 32.0,
                "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 16}
        return GptOssConfig(**{**common, "num_hidden_layers": 3, "sliding_window": 8,
                               "head_dim": 16, "intermediate_size": 16, "num_local_experts": 8,
                               "num_experts_per_tok": 2, "swiglu_limit": 1.0,
                               "rope_parameters": rope, **overrides})
    return Qwen3MoeConfig(**{**common, "moe_intermediate_size": 16, "head_dim": 16,
                             "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True,
                             **overrides})


def hf_model(family: str, seed: int = 0, **overrides):
    """A tiny random `transformers` model of `family`, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(family, **overrides))
    with torch.no_grad():  # wider than the 0.02 init, so logits differ clearly between tokens
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.1)
            elif family in (*LAYER_TYPED, "deepseek_v3", "qwen3_next", "qwen3_5_text",
                            "gemma4_text"):  # gains
                param.add_(0.1 * torch.randn_like(param))
        for name, buffer in model.named_buffers():  # DeepSeek's router bias
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.1)
            if name.endswith("layer_scalar"):  # Gemma 4's, 1 until trained
                buffer.uniform_(0.5, 1.5)
    return model.eval()


@functools.cache
def tokenizer(family: str) -> Tokenizer:
    """A byte-level BPE of VOCAB ids with the family's special tokens."""
    return train_bpe([TEXT], vocab_size=VOCAB, special_tokens=SPECIALS[family])


def save_folder(model, family: str, folder: Path, **save_options) -> Path:
    """Save `model` as a Hugging Face folder with a tokenizer, as downloads look."""
    model.save_pretrained(folder, **save_options)
    save_hf_tokenizer(tokenizer(family).parts, folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"})
    )
    return folder
