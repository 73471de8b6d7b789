"""Hugging Face `config.json` <-> `ModelConfig`, for GPT-2, Llama 3, Qwen3 and Qwen3-MoE.

Hugging Face names the same sizes differently per family (GPT-2's `n_embd`
is Llama's `hidden_size`) and spells RoPE two ways: `rope_theta` plus
`rope_scaling` in most hub files, one `rope_parameters` dict in transformers
5. `config_from_hf` reads both; `config_to_hf` writes the first, which every
transformers version reads. Features a family has that our model lacks
(another activation, dense layers between MoE layers...) are refused with
the field's name rather than converted wrongly.
"""

from __future__ import annotations

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import ModelConfig

ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
HF_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}


def hf_family(hf: dict, source: str) -> str:
    """The family of a Hugging Face config.json, or an error listing the supported ones."""
    architecture = (hf.get("architectures") or ["(none)"])[0]
    if architecture not in ARCHITECTURES:
        raise LLMScratchError(
            f"unsupported architecture {architecture!r} in {source}; supported: "
            f"{', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[architecture]


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our config for a Hugging Face config.json (already parsed); a field missing, or of
    the wrong type ("hidden_size": "x"), is one line naming the file."""
    try:
        return _config_from_hf(hf, source)
    except LLMScratchError as err:  # our config's own checks: say which file it came from
        raise LLMScratchError(str(err) if source in str(err) else f"{source}: {err}") from None
    except KeyError as err:
        raise LLMScratchError(f"{source}: no {err.args[0]!r}, which this model family needs"
                              ) from None
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise LLMScratchError(f"{source}: a value of the wrong type or size ({err})") from None


def _config_from_hf(hf: dict, source: str) -> ModelConfig:
    family = hf_family(hf, source)

    def require(field: str, wanted, default) -> None:
        if hf.get(field, default) != wanted:
            raise LLMScratchError(f"{source}: {field}={hf.get(field)!r} is not supported "
                                  f"(only {wanted!r})")

    # The dtype the weights were saved in; converting may choose another.
    dtype = "bf16" if (hf.get("torch_dtype") or hf.get("dtype")) == "bfloat16" else "fp32"
    if family == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            require("activation_function", "gelu_new", "gelu_new")
        require("scale_attn_by_inverse_layer_idx", False, False)
        require("reorder_and_upcast_attn", False, False)
        return ModelConfig(
            vocab_size=hf["vocab_size"], context_length=hf["n_positions"],
            n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
            mlp_hidden=hf.get("n_inner") or 0, norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True), dtype=dtype,
        )

    require("hidden_act", "silu", "silu")
    if hf.get("mlp_bias", False) != hf.get("attention_bias", False):
        raise LLMScratchError(f"{source}: attention_bias and mlp_bias differ; not supported")
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    default_head = 128 if family == "qwen3" else D // H
    sizes = dict(
        vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=H, n_embd=D,
        n_kv_head=hf.get("num_key_value_heads") or H,
        head_size=hf.get("head_dim") or default_head, norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), positions="rope", mlp="swiglu",
        bias=hf.get("attention_bias", False), tie_embeddings=hf.get("tie_word_embeddings", False),
        qk_norm=family != "llama", dtype=dtype, **_rope_from_hf(hf, source),
    )
    if family != "llama" and hf.get("use_sliding_window"):
        if any(kind != "sliding_attention" for kind in hf.get("layer_types") or []) or (
            family == "qwen3" and hf.get("max_window_layers", 28) > 0 and not hf.get("layer_types")
        ):
            raise LLMScratchError(f"{source}: sliding window on only some layers is not supported")
        sizes["sliding_window"] = hf["sliding_window"]
    if family == "qwen3_moe":
        if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
            raise LLMScratchError(f"{source}: dense layers between MoE layers (mlp_only_layers, "
                                  "decoder_sparse_step) are not supported")
        sizes.update(
            mlp="moe", mlp_hidden=hf["moe_intermediate_size"],
            n_expert=hf.get("num_experts") or hf["num_local_experts"],
            n_expert_active=hf["num_experts_per_tok"],
            moe_renormalize=hf.get("norm_topk_prob", False),
        )
    else:
        sizes["mlp_hidden"] = hf["intermediate_size"]
    return ModelConfig(**sizes)


def _rope_from_hf(hf: dict, source: str) -> dict:
    """RoPE fields from either spelling: `rope_theta` + `rope_scaling` (most hub
    files) or `rope_parameters` (transformers 5)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return {"rope_theta": float(theta)}
    if kind != "llama3":
        raise LLMScratchError(f"{source}: rope type {kind!r} is not supported "
                              "(only default and llama3)")
    return {
        "rope_theta": float(theta), "rope_scaling": "llama3",
        "rope_factor": float(scaling["factor"]),
        "rope_low_freq_factor": float(scaling["low_freq_factor"]),
        "rope_high_freq_factor": float(scaling["high_freq_factor"]),
        "rope_original_context": int(scaling["original_max_position_embeddings"]),
    }


def family_of(config: ModelConfig) -> str:
    """The Hugging Face family that can hold this architecture, or an error saying why none."""
    c = config
    if (c.positions, c.norm, c.mlp) == ("learned", "layernorm", "gelu"):
        if c.kv_heads == c.n_head and c.head_dim * c.n_head == c.n_embd and not (
            c.qk_norm or c.sliding_window or c.rope_scaling != "none"
        ):
            return "gpt2"
    elif c.positions == "rope" and c.norm == "rmsnorm" and not (c.qkv_bias and not c.bias):
        if c.mlp == "swiglu" and not c.qk_norm and not c.sliding_window:
            return "llama"
        if c.mlp == "swiglu" and c.qk_norm and c.rope_scaling == "none" and not c.bias:
            return "qwen3"
        if c.mlp == "moe" and c.qk_norm and c.rope_scaling == "none" and not c.bias:
            return "qwen3_moe"
    raise LLMScratchError(
        f"no Hugging Face architecture matches positions={c.positions}, norm={c.norm}, "
        f"mlp={c.mlp}, qk_norm={c.qk_norm}, bias={c.bias}, sliding_window={c.sliding_window}; "
        "GPT-2, Llama and Qwen3(-MoE) combinations can be exported"
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A Hugging Face config.json (as a dict) describing the same model."""
    c, family = config, family_of(config)
    architecture = {v: k for k, v in ARCHITECTURES.items()}[family]
    common = {"architectures": [architecture], "model_type": family,
              "vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings,
              "torch_dtype": HF_DTYPE_NAMES[c.dtype], "bos_token_id": None, "eos_token_id": None}
    if family == "gpt2":
        return {**common, "n_positions": c.context_length, "n_layer": c.n_layer,
                "n_head": c.n_head, "n_embd": c.n_embd, "n_inner": c.mlp_hidden or None,
                "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
                "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": 0.0}
    rope_scaling = None
    if c.rope_scaling == "llama3":
        rope_scaling = {"rope_type": "llama3", "factor": c.rope_factor,
                        "low_freq_factor": c.rope_low_freq_factor,
                        "high_freq_factor": c.rope_high_freq_factor,
                        "original_max_position_embeddings": c.rope_original_context}
    hf = {**common, "hidden_size": c.n_embd, "intermediate_size": c.mlp_dim,
          "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
          "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim,
          "max_position_embeddings": c.context_length, "rms_norm_eps": c.norm_eps,
          "hidden_act": "silu", "rope_theta": c.rope_theta, "rope_scaling": rope_scaling,
          "attention_bias": c.bias, "mlp_bias": c.bias, "attention_dropout": 0.0}
    if family in ("qwen3", "qwen3_moe"):
        hf.update(use_sliding_window=bool(c.sliding_window),
                  sliding_window=c.sliding_window or None, max_window_layers=0)
        del hf["mlp_bias"]
    if family == "qwen3_moe":
        hf.update(num_experts=c.n_expert, num_experts_per_tok=c.n_expert_active,
                  moe_intermediate_size=c.mlp_dim, norm_topk_prob=c.moe_renormalize,
                  decoder_sparse_step=1, mlp_only_layers=[],
                  intermediate_size=c.mlp_dim * c.n_expert_active)  # unused: no dense layers
    return hf


