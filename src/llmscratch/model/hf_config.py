"""Hugging Face `config.json` <-> `ModelConfig`, for GPT-2, Llama 3, Qwen3(-MoE), Gemma 3
(text), Olmo 3, gpt-oss, DeepSeek V3 (whose own fields hf_deepseek.py maps), Qwen3-Next,
Qwen3.5 (text) and Gemma 4 (text; hf_gemma4.py).

Hugging Face names the same sizes differently per family (GPT-2's `n_embd`
is Llama's `hidden_size`) and spells RoPE two ways: `rope_theta` plus
`rope_scaling` in most hub files, one `rope_parameters` dict in transformers
5 (for Gemma 3 and Olmo 3, one dict per layer type: "sliding_attention"
and "full_attention"). `config_from_hf` reads both; `config_to_hf` writes
the first, which every transformers version reads, except for Gemma 3 and
Olmo 3, whose per-layer RoPE only the second can say (and gpt-oss, whose
YaRN option `truncate` only the second holds). Features a family has
that our model lacks (another activation, dense layers between MoE layers,
soft-capped logits...) are refused with the field's name rather than
converted wrongly.
"""

from __future__ import annotations

import math

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import ModelConfig
from llmscratch.model.hf_deepseek import deepseek_from_hf, deepseek_to_hf, is_deepseek_v3
from llmscratch.model.hf_gemma4 import (
    gemma4_fits,
    gemma4_from_hf,
    gemma4_to_hf,
    is_gemma4,
    proportional_rope,
    without_proportional,
)

ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Gemma3ForCausalLM": "gemma3_text",
    "Olmo3ForCausalLM": "olmo3",
    "GptOssForCausalLM": "gpt_oss",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "Qwen3NextForCausalLM": "qwen3_next",
    "Qwen3_5ForCausalLM": "qwen3_5_text",
    "Gemma4ForCausalLM": "gemma4_text",
}
# Multimodal architectures whose text model we import (without the vision encoder), and
# the text model's own architecture. Gemma 3 4B and larger are released only so; their
# config.json gives the text model's fields that differ from Gemma3TextConfig's defaults.
TEXT_MODELS = {"Gemma3ForConditionalGeneration": "Gemma3ForCausalLM",
               "Qwen3_5ForConditionalGeneration": "Qwen3_5ForCausalLM",
               "Gemma4ForConditionalGeneration": "Gemma4ForCausalLM"}
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
    "head_dim": 256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256, "sliding_window": 4096,
}
# Qwen3.5's text models are released inside Qwen3_5ForConditionalGeneration too; the
# defaults of Qwen3_5TextConfig that the DeltaNet fields' own defaults do not cover.
QWEN3_5_TEXT_DEFAULTS = {
    "vocab_size": 248320, "hidden_size": 4096, "intermediate_size": 12288,
    "num_hidden_layers": 32, "num_attention_heads": 16, "num_key_value_heads": 4,
    "head_dim": 256, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
}
# Each multimodal architecture's text defaults, and whether it ties its embeddings.
# Gemma 4 (all of its released sizes read images, E2B and E4B audio too): Gemma4TextConfig's.
GEMMA4_TEXT_DEFAULTS = {
    "vocab_size": 262144, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 30, "num_attention_heads": 8, "num_key_value_heads": 4,
    "head_dim": 256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
    "sliding_window": 512,
}
TEXT_DEFAULTS = {"Gemma3ForConditionalGeneration": (GEMMA3_TEXT_DEFAULTS, True),
                 "Qwen3_5ForConditionalGeneration": (QWEN3_5_TEXT_DEFAULTS, False),
                 "Gemma4ForConditionalGeneration": (GEMMA4_TEXT_DEFAULTS, True)}
# Families whose layers are local or global by `layer_types`, each kind with its own
# RoPE; the default bases of their (global, local) layers.
LAYER_TYPED = ("gemma3_text", "olmo3", "gemma4_text")
# Families with Gated DeltaNet layers between full-attention layers: Qwen3-Next (MoE with
# a shared expert) and Qwen3.5's dense text models.
HYBRID = ("qwen3_next", "qwen3_5_text")
THETAS = {"gemma3_text": (1000000.0, 10000.0), "olmo3": (500000.0, 500000.0),
          "gemma4_text": (1000000.0, 10000.0)}
HF_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}


def hf_family(hf: dict, source: str) -> str:
    """The family of a Hugging Face config.json, or an error listing the supported ones."""
    architecture = (hf.get("architectures") or ["(none)"])[0]
    if architecture not in ARCHITECTURES:
        raise LLMScratchError(
            f"unsupported architecture {architecture!r} in {source}; supported: "
            f"{', '.join(ARCHITECTURES)}, and the text model of {', '.join(TEXT_MODELS)}"
        )
    return ARCHITECTURES[architecture]


def text_model_config(hf: dict) -> dict:
    """The text model's config.json in a multimodal model's (`hf` itself otherwise)."""
    architecture = (hf.get("architectures") or [None])[0]
    if architecture not in TEXT_MODELS:
        return hf
    dtype = hf.get("torch_dtype") or hf.get("dtype")
    defaults, tied = TEXT_DEFAULTS[architecture]
    return {**defaults, "tie_word_embeddings": hf.get("tie_word_embeddings", tied),
            "torch_dtype": dtype, **(hf.get("text_config") or {}),
            "architectures": [TEXT_MODELS[architecture]]}


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our config for a Hugging Face config.json (already parsed); a field missing, or of
    the wrong type ("hidden_size": "x"), is one line naming the file."""
    try:
        return _config_from_hf(text_model_config(hf), source)
    except LLMScratchError as err:  # our config's own checks: say which file it came from
        raise LLMScratchError(str(err) if source in str(err) else f"{source}: {err}") from None
    except KeyError as err:
        raise LLMScratchError(f"{source}: no {err.args[0]!r}, which this model family needs"
                              ) from None
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise LLMScratchError(f"{source}: a value of the wrong type or size ({err})") from None


def _config_from_hf(hf: dict, source: str) -> ModelConfig:
    family = hf_family(hf, source)
    if hf.get("quantization_config"):  # gpt-oss's MXFP4 experts, DeepSeek V3's fp8
        method = (hf["quantization_config"] or {}).get("quant_method", "?")
        raise LLMScratchError(f"{source}: the checkpoint is quantized ({method}), "
                              "quantization_config; convert one saved in bf16 or fp32")
    if family == "gpt_oss":
        return _gpt_oss_from_hf(hf, source)

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

    if family == "gemma3_text":
        require("hidden_activation", "gelu_pytorch_tanh", "gelu_pytorch_tanh")
        for field in ("final_logit_softcapping", "attn_logit_softcapping"):
            require(field, None, None)
        require("use_bidirectional_attention", False, False)
    elif family != "gemma4_text":  # (Gemma 4's own fields: hf_gemma4.py)
        require("hidden_act", "silu", "silu")
    if family in (*LAYER_TYPED, *HYBRID):
        require("attention_bias", False, False)
    if family == "deepseek_v3":  # no biases in latent attention here
        require("attention_bias", False, False)
    if hf.get("mlp_bias", False) != hf.get("attention_bias", False):
        raise LLMScratchError(f"{source}: attention_bias and mlp_bias differ; not supported")
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    default_head = {"qwen3": 128, "gemma3_text": 256, "qwen3_next": 256,
                    "qwen3_5_text": 256, "gemma4_text": 256}.get(family, D // H)
    sizes = dict(
        vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=H, n_embd=D,
        n_kv_head=hf.get("num_key_value_heads") or H,
        head_size=hf.get("head_dim") or default_head, norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), positions="rope", mlp="swiglu",
        bias=hf.get("attention_bias", False), tie_embeddings=hf.get("tie_word_embeddings", False),
        qk_norm=family != "llama", dtype=dtype,
    )
    if family in LAYER_TYPED:
        sizes.update(_layer_pattern(hf, family, source))
        spelled = without_proportional(hf) if family == "gemma4_text" else hf  # (Gemma 4)
        sizes.update(_rope_by_layer_kind(spelled, family, source))
    else:
        sizes.update(_rope_from_hf(hf, source))
    if family == "gemma3_text":
        sizes.update(mlp="geglu", norm_placement="sandwich", norm_zero_centred=True,
                     scale_embeddings=True, tie_embeddings=hf.get("tie_word_embeddings", True),
                     attn_scalar=float(hf.get("query_pre_attn_scalar", 256)))
    if family == "olmo3":
        sizes.update(norm_placement="post", qk_norm_scope="all")
    if family == "gemma4_text":
        sizes.update(gemma4_from_hf(hf, source))
    if family == "deepseek_v3":
        sizes.update(deepseek_from_hf(hf, source))
    if family in ("qwen3", "qwen3_moe") and hf.get("use_sliding_window"):
        if any(kind != "sliding_attention" for kind in hf.get("layer_types") or []) or (
            family == "qwen3" and hf.get("max_window_layers", 28) > 0 and not hf.get("layer_types")
        ):
            raise LLMScratchError(f"{source}: sliding window on only some layers is not supported")
        sizes["sliding_window"] = hf["sliding_window"]
    if family in HYBRID:
        sizes.update(_qwen3_next_fields(hf, family, source))
    if family in ("qwen3_moe", "qwen3_next"):
        if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
            raise LLMScratchError(f"{source}: dense layers between MoE layers (mlp_only_layers, "
                                  "decoder_sparse_step) are not supported")
        sizes.update(
            mlp="moe", mlp_hidden=hf["moe_intermediate_size"],
            n_expert=hf.get("num_experts") or hf["num_local_experts"],
            n_expert_active=hf["num_experts_per_tok"],
            moe_renormalize=hf.get("norm_topk_prob", False),
        )
    elif family != "deepseek_v3":
        sizes["mlp_hidden"] = hf["intermediate_size"]
    return ModelConfig(**sizes)


def _gpt_oss_from_hf(hf: dict, source: str) -> ModelConfig:
    """gpt-oss: one RoPE (usually YaRN) for every layer, local and global layers alternating,
    sinks and biases in attention, biased experts with the clamped SwiGLU."""
    if not hf.get("attention_bias", True):
        raise LLMScratchError(f"{source}: attention_bias=False is not supported for gpt-oss "
                              "(its experts keep their biases; our model has one bias switch)")
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 150000.0))
    rope = _rope_fields(theta, hf.get("rope_scaling") or params, source)
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=H, n_embd=D,
        n_kv_head=hf.get("num_key_value_heads") or H, head_size=hf.get("head_dim") or D // H,
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-5), positions="rope", mlp="moe",
        mlp_hidden=hf["intermediate_size"],
        n_expert=hf.get("num_local_experts") or hf["num_experts"],
        n_expert_active=hf["num_experts_per_tok"], moe_renormalize=True, bias=True,
        attn_sinks=True, swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
        swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        dtype="bf16" if (hf.get("torch_dtype") or hf.get("dtype")) == "bfloat16" else "fp32",
        **rope, **_layer_pattern(hf, "gpt_oss", source),
    )


def _qwen3_next_fields(hf: dict, family: str, source: str) -> dict:
    """Qwen3-Next's switches: which layers are Gated DeltaNet (`layer_types`, or every
    `full_attention_interval`-th is full attention), their sizes, partial RoPE, the
    gated attention output, zero-centred norms and (not in Qwen3.5's dense models)
    the shared expert."""
    n = hf["num_hidden_layers"]
    every = hf.get("full_attention_interval", 4)
    kinds = hf.get("layer_types") or [
        "linear_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    linear = [kind == "linear_attention" for kind in kinds]
    if set(kinds) - {"linear_attention", "full_attention"} or len(kinds) != n:
        raise LLMScratchError(f"{source}: layer_types must give one of 'linear_attention', "
                              f"'full_attention' for each of the {n} layers")
    P = linear.index(False) + 1 if not all(linear) else 0
    if not P or linear != [(i + 1) % P != 0 for i in range(n)]:
        raise LLMScratchError(f"{source}: layer_types is not a repeating pattern of "
                              "linear_attention layers and then one full_attention layer; "
                              "not supported")
    if family == "qwen3_next" and not hf.get("shared_expert_intermediate_size"):
        raise LLMScratchError(f"{source}: shared_expert_intermediate_size must be positive")
    params = hf.get("rope_parameters") or {}
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.25))
    return dict(
        full_attention_interval=P, linear_n_key_head=hf.get("linear_num_key_heads", 16),
        linear_n_value_head=hf.get("linear_num_value_heads", 32),
        linear_key_size=hf.get("linear_key_head_dim", 128),
        linear_value_size=hf.get("linear_value_head_dim", 128),
        linear_conv_kernel=hf.get("linear_conv_kernel_dim", 4), attn_output_gate=True,
        rope_fraction=float(fraction), norm_zero_centred=True,
        moe_shared_hidden=hf["shared_expert_intermediate_size"] if family == "qwen3_next" else 0,
    )


def _layer_pattern(hf: dict, family: str, source: str) -> dict:
    """`sliding_window` and `sliding_window_pattern` from `layer_types`, the kind of each
    layer (or, in older Gemma 3 files, from `sliding_window_pattern`: every P-th is global)."""
    n = hf["num_hidden_layers"]
    every = hf.get("sliding_window_pattern", 6) if family in ("gemma3_text", "gemma4_text") \
        else 4
    every = 2 if family == "gpt_oss" else every  # gpt-oss alternates
    kinds = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    if family == "gemma4_text" and kinds:  # transformers makes the last layer global anyway
        kinds = [*kinds[:-1], "full_attention"]
    unknown = set(kinds) - {"sliding_attention", "full_attention"}
    if unknown or len(kinds) != n:
        raise LLMScratchError(f"{source}: layer_types must give one of 'sliding_attention', "
                              f"'full_attention' for each of the {n} layers")
    local = [kind == "sliding_attention" for kind in kinds]
    if not any(local):
        return {}
    if all(local):
        return {"sliding_window": hf["sliding_window"]}
    P = local.index(False) + 1
    if local != [(i + 1) % P != 0 for i in range(n)]:
        raise LLMScratchError(f"{source}: layer_types is not a repeating pattern of local "
                              "layers and then one global layer; not supported")
    return {"sliding_window": hf["sliding_window"], "sliding_window_pattern": P}


def _rope_by_layer_kind(hf: dict, family: str, source: str) -> dict:
    """RoPE of the global layers (with their scaling) and of the local ones (unscaled),
    from transformers 5's `rope_parameters` by layer type or the older single fields."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full, sliding = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    else:  # older files: rope_theta and rope_scaling for the global layers; the local ones
        # have Gemma's rope_local_base_freq or, as transformers reads them, the default base
        full = {**(hf.get("rope_scaling") or params),
                "rope_theta": hf.get("rope_theta", params.get("rope_theta"))}
        sliding = {"rope_theta": hf.get("rope_local_base_freq")}
    if full.get("truncate", True) is not True:  # transformers reads it from a flat dict only
        raise LLMScratchError(f"{source}: yarn with truncate={full['truncate']!r} is not "
                              "supported by layer type")
    default_global, default_local = THETAS[family]
    fields = _rope_fields(full.get("rope_theta") or default_global, full, source)
    if sliding.get("rope_type", sliding.get("type", "default")) != "default":
        raise LLMScratchError(f"{source}: rope scaling on the sliding-window layers "
                              f"({sliding.get('rope_type', sliding.get('type'))!r}) is not "
                              "supported")
    return {**fields, "rope_local_theta": float(sliding.get("rope_theta") or default_local)}


def _rope_from_hf(hf: dict, source: str) -> dict:
    """RoPE fields from either spelling: `rope_theta` + `rope_scaling` (most hub
    files) or `rope_parameters` (transformers 5)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    return _rope_fields(params.get("rope_theta", hf.get("rope_theta", 10000.0)), scaling, source)


def _rope_fields(theta, scaling: dict, source: str) -> dict:
    """Our RoPE fields for a base `theta` and a Hugging Face scaling dict."""
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return {"rope_theta": float(theta)}
    if kind == "linear":
        return {"rope_theta": float(theta), "rope_scaling": "linear",
                "rope_factor": float(scaling["factor"])}
    if kind == "yarn":
        return _yarn_fields(theta, scaling, source)
    if kind != "llama3":
        raise LLMScratchError(f"{source}: rope type {kind!r} is not supported "
                              "(only default, linear, llama3 and yarn)")
    return {
        "rope_theta": float(theta), "rope_scaling": "llama3",
        "rope_factor": float(scaling["factor"]),
        "rope_low_freq_factor": float(scaling["low_freq_factor"]),
        "rope_high_freq_factor": float(scaling["high_freq_factor"]),
        "rope_original_context": int(scaling["original_max_position_embeddings"]),
    }


def _yarn_fields(theta, scaling: dict, source: str) -> dict:
    """YaRN's parameters: beta_slow and beta_fast are our llama3 thresholds (in turns
    within the original context); a missing attention_factor is YaRN's default."""
    if scaling.get("truncate", True) not in (True, False):
        raise LLMScratchError(f"{source}: yarn with truncate={scaling['truncate']!r} is not "
                              "supported")
    factor = float(scaling["factor"])
    attention_factor = scaling.get("attention_factor")
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if attention_factor is None and mscale and mscale_all_dim:  # DeepSeek's: a ratio of the two
        attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    if attention_factor is None:
        attention_factor = _yarn_mscale(factor, 1.0)
    return {
        "rope_theta": float(theta), "rope_scaling": "yarn", "rope_factor": factor,
        "rope_low_freq_factor": float(scaling.get("beta_slow") or 1),
        "rope_high_freq_factor": float(scaling.get("beta_fast") or 32),
        "rope_original_context": int(scaling["original_max_position_embeddings"]),
        "rope_attention_factor": float(attention_factor),
        "rope_yarn_truncate": bool(scaling.get("truncate", True)),
    }


def _yarn_mscale(factor: float, m: float) -> float:
    """YaRN's 0.1 m ln(factor) + 1 (1 for no stretch)."""
    return 0.1 * m * math.log(factor) + 1 if factor > 1 else 1.0


def family_of(config: ModelConfig) -> str:
    """The Hugging Face family that can hold this architecture, or an error saying why none."""
    c = config
    if (c.full_attention_interval, c.attn_output_gate, c.rope_fraction,
            c.moe_shared_hidden) != (0, False, 1.0, 0):  # Qwen3-Next's switches
        hybrid = (c.positions, c.norm, c.norm_placement, c.norm_zero_centred,
                  c.scale_embeddings, c.qk_norm, c.qk_norm_scope, c.bias, c.qkv_bias,
                  c.attn_output_gate, c.sliding_window, c.rope_scaling, c.attn_scalar) == (
            "rope", "rmsnorm", "pre", True, False, True, "head", False, False, True, 0, "none",
            0) and c.full_attention_interval > 0
        if hybrid and c.mlp == "moe" and c.moe_shared_hidden:
            return "qwen3_next"
        if hybrid and c.mlp == "swiglu":
            return "qwen3_5_text"
        raise LLMScratchError(
            "no Hugging Face architecture matches this combination of Gated DeltaNet layers "
            f"(full_attention_interval={c.full_attention_interval}), attn_output_gate="
            f"{c.attn_output_gate}, rope_fraction={c.rope_fraction}, mlp={c.mlp}, "
            f"moe_shared_hidden={c.moe_shared_hidden}; Qwen3-Next (MoE and a shared expert) "
            "and Qwen3.5 (SwiGLU) have the first three, with their other switches")
    if is_gemma4(c):  # Gemma 4's switches (hf_gemma4.py)
        local_rope_ok = c.rope_local_theta > 0 or c.rope_scaling == "none"
        if gemma4_fits(c) and c.rope_scaling != "llama3" and local_rope_ok:
            return "gemma4_text"
        raise LLMScratchError(
            f"no Hugging Face architecture matches kv_shared_layers={c.kv_shared_layers}, "
            f"v_norm={c.v_norm}, layer_scalar={c.layer_scalar}, logit_softcap={c.logit_softcap} "
            f"with mlp={c.mlp}, "
            f"norm_placement={c.norm_placement}, norm_zero_centred={c.norm_zero_centred}, "
            f"attn_scalar={c.attn_scalar}; Gemma 4 has these with Gemma 3's other switches, "
            "plain RMSNorm gains and unscaled scores (attn_scalar 1)")
    # The parts each family fixes, beyond the ones tested below.
    plain = (c.norm_placement, c.norm_zero_centred, c.scale_embeddings, c.attn_scalar,
             c.sliding_window_pattern, c.rope_local_theta) == ("pre", False, False, 0, 0, 0)
    if c.qk_norm and c.qk_norm_scope != "head":
        plain = False
    if c.kv_lora_rank and is_deepseek_v3(c):
        return "deepseek_v3"
    if c.kv_lora_rank or (c.n_shared_expert, c.moe_router, c.moe_groups, c.moe_routed_scale,
                          c.moe_dense_layers) != (0, "softmax", 1, 1.0, 0):
        plain = False  # DeepSeek's parts
    rope_ok = c.rope_scaling != "llama3"
    # gpt-oss's parts exist in no other family (nor YaRN unrounded: transformers reads it
    # only where one RoPE serves every layer).
    gpt_oss_parts = c.attn_sinks or c.swiglu_limit or not c.rope_yarn_truncate
    if gpt_oss_parts:
        if (c.positions, c.norm, c.norm_placement, c.norm_zero_centred, c.scale_embeddings,
                c.mlp, c.moe_renormalize, c.qk_norm, c.attn_scalar, c.rope_local_theta, c.bias,
                c.qkv_bias, c.attn_sinks) == ("rope", "rmsnorm", "pre", False, False, "moe",
                                              True, False, 0, 0, True, False, True) \
                and c.swiglu_limit > 0:
            return "gpt_oss"
    elif (c.positions, c.norm, c.mlp) == ("learned", "layernorm", "gelu"):
        if c.kv_heads == c.n_head and c.head_dim * c.n_head == c.n_embd and plain and not (
            c.qk_norm or c.sliding_window or c.rope_scaling != "none"
        ):
            return "gpt2"
    elif c.positions == "rope" and c.norm == "rmsnorm" and not (c.qkv_bias and not c.bias):
        if plain and c.mlp == "swiglu" and not c.qk_norm and not c.sliding_window:
            return "llama"
        if plain and c.mlp == "swiglu" and c.qk_norm and c.rope_scaling == "none" and not c.bias:
            return "qwen3"
        if plain and c.mlp == "moe" and c.qk_norm and c.rope_scaling == "none" and not c.bias:
            return "qwen3_moe"
        # Hugging Face never scales the local layers' RoPE: ours must not either.
        local_rope_ok = c.rope_local_theta > 0 or c.rope_scaling == "none" or not any(
            c.layer_is_local(i) for i in range(c.n_layer))
        if (c.mlp, c.norm_placement, c.norm_zero_centred, c.scale_embeddings, c.qk_norm,
                c.qk_norm_scope, c.bias) == ("geglu", "sandwich", True, True, True, "head",
                                             False) and rope_ok and local_rope_ok:
            return "gemma3_text"
        if (c.mlp, c.norm_placement, c.norm_zero_centred, c.scale_embeddings, c.qk_norm,
                c.qk_norm_scope, c.bias, c.attn_scalar) == ("swiglu", "post", False, False, True,
                                                            "all", False, 0) \
                and rope_ok and local_rope_ok:
            return "olmo3"
    raise LLMScratchError(
        f"no Hugging Face architecture matches positions={c.positions}, norm={c.norm}, "
        f"norm_placement={c.norm_placement}, mlp={c.mlp}, qk_norm={c.qk_norm}, bias={c.bias}, "
        f"sliding_window={c.sliding_window}, rope_scaling={c.rope_scaling}, "
        f"attn_sinks={c.attn_sinks}, swiglu_limit={c.swiglu_limit}; GPT-2, Llama, "
        "Qwen3(-MoE), Gemma 3, Olmo 3, gpt-oss and DeepSeek V3 combinations can be exported"
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A Hugging Face config.json (as a dict) describing the same model."""
    c, family = config, family_of(config)
    architecture = {v: k for k, v in ARCHITECTURES.items()}[family]
    common = {"architectures": [architecture], "model_type": family,
              "vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings,
              "torch_dtype": HF_DTYPE_NAMES[c.dtype], "bos_token_id": None, "eos_token_id": None}
    if family == "gpt2":
        # n_ctx repeats n_positions, as GPT-2's own config.json does: transformers 5 no
        # longer writes it, and llama.cpp's converter (convert_hf_to_gguf.py) reads it.
        return {**common, "n_positions": c.context_length, "n_ctx": c.context_length,
                "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
                "n_inner": c.mlp_hidden or None,
                "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
                "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": 0.0}
    hf = {**common, "hidden_size": c.n_embd, "intermediate_size": c.mlp_dim,
          "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
          "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim,
          "max_position_embeddings": c.context_length, "rms_norm_eps": c.norm_eps,
          "hidden_act": "silu", "rope_theta": c.rope_theta, "rope_scaling": _hf_scaling(c),
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
    if family == "deepseek_v3":
        del hf["mlp_bias"]
        hf.update(deepseek_to_hf(c))
        if c.rope_mscale_all_dim:
            hf["rope_scaling"]["mscale_all_dim"] = c.rope_mscale_all_dim
    if family in HYBRID:
        del hf["mlp_bias"]
        hf.update(
            layer_types=["linear_attention" if c.layer_is_linear(i) else "full_attention"
                         for i in range(c.n_layer)],
            linear_num_key_heads=c.linear_n_key_head, linear_num_value_heads=c.linear_n_value_head,
            linear_key_head_dim=c.linear_key_size, linear_value_head_dim=c.linear_value_size,
            linear_conv_kernel_dim=c.linear_conv_kernel, partial_rotary_factor=c.rope_fraction)
    if family == "qwen3_next":
        hf.update(
            num_experts=c.n_expert, num_experts_per_tok=c.n_expert_active,
            moe_intermediate_size=c.mlp_dim, norm_topk_prob=c.moe_renormalize,
            shared_expert_intermediate_size=c.moe_shared_hidden, decoder_sparse_step=1,
            mlp_only_layers=[], intermediate_size=c.mlp_dim * c.n_expert_active)  # unused
    if family in LAYER_TYPED:  # transformers 5's spelling: RoPE by layer type
        for name in ("rope_theta", "rope_scaling", "mlp_bias"):
            del hf[name]
        local_theta = c.rope_local_theta or c.rope_theta
        hf.update(
            layer_types=["sliding_attention" if c.layer_is_local(i) else "full_attention"
                         for i in range(c.n_layer)],
            sliding_window=c.sliding_window or c.context_length,
            rope_parameters={
                "full_attention": {"rope_theta": c.rope_theta,
                                   **(_hf_scaling(c) or {"rope_type": "default"})},
                "sliding_attention": {"rope_type": "default", "rope_theta": local_theta}})
    if family == "gpt_oss":  # one RoPE for all layers, in transformers 5's spelling
        for name in ("rope_theta", "rope_scaling", "mlp_bias", "hidden_act"):
            del hf[name]
        hf.update(
            layer_types=["sliding_attention" if c.layer_is_local(i) else "full_attention"
                         for i in range(c.n_layer)],
            sliding_window=c.sliding_window or None, num_local_experts=c.n_expert,
            num_experts_per_tok=c.n_expert_active, swiglu_limit=c.swiglu_limit,
            swiglu_alpha=c.swiglu_alpha,
            rope_parameters={"rope_theta": c.rope_theta,
                             **(_hf_scaling(c) or {"rope_type": "default"})})
    if family == "gemma3_text":
        scalar = c.attn_scalar or c.head_dim
        del hf["hidden_act"]
        hf.update(hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=None,
                  attn_logit_softcapping=None, use_bidirectional_attention=False,
                  query_pre_attn_scalar=int(scalar) if scalar == int(scalar) else scalar)
    if family == "gemma4_text":
        del hf["hidden_act"]
        hf.update(gemma4_to_hf(c))
        params = hf["rope_parameters"]
        params["full_attention"] = proportional_rope(c, params["full_attention"])
    return hf


def _hf_scaling(c: ModelConfig) -> dict | None:
    """Hugging Face's `rope_scaling` for our RoPE scaling fields (None: no scaling)."""
    if c.rope_scaling == "linear":
        return {"rope_type": "linear", "factor": c.rope_factor}
    if c.rope_scaling == "yarn":
        return {"rope_type": "yarn", "factor": c.rope_factor,
                "beta_slow": c.rope_low_freq_factor, "beta_fast": c.rope_high_freq_factor,
                "original_max_position_embeddings": c.rope_original_context,
                "attention_factor": c.rope_attention_factor, "truncate": c.rope_yarn_truncate}
    if c.rope_scaling == "llama3":
        return {"rope_type": "llama3", "factor": c.rope_factor,
                "low_freq_factor": c.rope_low_freq_factor,
                "high_freq_factor": c.rope_high_freq_factor,
                "original_max_position_embeddings": c.rope_original_context}
    return None
