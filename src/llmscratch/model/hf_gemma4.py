"""Gemma 4's fields of a Hugging Face config.json <-> ours (hf_config.py does the rest).

A Gemma4Text config.json reads like Gemma 3's (local and global layers by
`layer_types`, RoPE by layer type, sandwich norms, GeGLU, scaled embeddings,
QK-norm) with these differences:

    Hugging Face             ours                    what it is
    num_kv_shared_layers     kv_shared_layers        the last K layers reuse keys
    use_double_wide_mlp      kv_shared_mlp_double    their MLP twice as wide
    (always)                 v_norm                  values RMS-normalised, no gain
    (always)                 layer_scalar            a fixed scalar per block
    (always)                 attn_scalar = 1         scores q . k, unscaled
    (always)                 norm_zero_centred off   RMSNorm gains stored as w, not 1 + w
    final_logit_softcapping  logit_softcap           logits c tanh(logits / c) (null: 0)
    hidden_size_per_layer_input  per_layer_input     every layer's own input (0: none)
    vocab_size_per_layer_input   per_layer_vocab     its embedding table's ids

    global_head_dim          global_head_size        the global layers' wider heads
    attention_k_eq_v         global_k_is_v           their values: the keys' projection
    num_global_key_value_heads  global_kv_heads      their key/value heads
    rope_parameters.         rope_proportional       their RoPE on the first pairs only
      full_attention.partial_rotary_factor ("proportional")

Gemma 4's other mechanisms are refused by name: its MoE block
(enable_moe_block, 26B-A4B) and bidirectional attention.
"""

from __future__ import annotations

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import ModelConfig

# Gemma4TextConfig's defaults (transformers 5) for the fields we refuse: a file that leaves
# one out has that mechanism on.
REFUSED = {"enable_moe_block": (False, False),
           "use_bidirectional_attention": (None, None), "attention_bias": (False, False),
           "hidden_activation": ("gelu_pytorch_tanh", "gelu_pytorch_tanh")}


def gemma4_from_hf(hf: dict, source: str) -> dict:
    """Our Gemma 4 fields for a Gemma4Text config.json (beyond Gemma 3's layer pattern and
    RoPE by layer type, which hf_config.py reads)."""
    for field, (wanted, default) in REFUSED.items():
        if hf.get(field, default) != wanted:
            raise LLMScratchError(f"{source}: {field}={hf.get(field, default)!r} is not "
                                  f"supported (only {wanted!r})")
    head_dim = hf.get("head_dim") or 256
    global_head_dim = _global_head_dim(hf, head_dim)
    k_is_v = bool(hf.get("attention_k_eq_v", False))
    kv_heads = hf.get("num_key_value_heads") or hf["num_attention_heads"]
    global_kv_heads = _global_kv_heads(hf, kv_heads, k_is_v)
    full = rope_by_kind(hf)["full_attention"]
    proportional = full.get("partial_rotary_factor", 1.0) \
        if full.get("rope_type") == "proportional" else 1.0
    shared = hf.get("num_kv_shared_layers", 0)
    per_layer = hf.get("hidden_size_per_layer_input", 256) or 0
    return dict(logit_softcap=float(hf.get("final_logit_softcapping") or 0.0), mlp="geglu",
                per_layer_input=per_layer,
                global_head_size=global_head_dim if global_head_dim != head_dim else 0,
                global_kv_heads=global_kv_heads if global_kv_heads != kv_heads else 0,
                global_k_is_v=k_is_v,
                rope_proportional=float(proportional) if proportional != 1.0 else 0.0,
                per_layer_vocab=hf.get("vocab_size_per_layer_input", 262144) if per_layer else 0,
                norm_placement="sandwich", norm_zero_centred=False,
                scale_embeddings=True, tie_embeddings=hf.get("tie_word_embeddings", True),
                attn_scalar=1.0, v_norm=True, layer_scalar=True, kv_shared_layers=shared,
                kv_shared_mlp_double=bool(shared and hf.get("use_double_wide_mlp", False)))


def rope_by_kind(hf: dict) -> dict:
    """`rope_parameters` by layer type, or Gemma4TextConfig's default when a file has none."""
    params = hf.get("rope_parameters")
    if params is None:
        return {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                   "rope_theta": 1000000.0}}
    return params


def without_proportional(hf: dict) -> dict:
    """The config.json with the global layers' "proportional" RoPE spelled as the default (or
    linear) RoPE it is once its slow pairs are switched off (our `rope_proportional`), for
    hf_config.py to read like Gemma 3's."""
    params = rope_by_kind(hf)
    full = dict(params.get("full_attention") or {})
    if full.get("rope_type") == "proportional":
        full.pop("partial_rotary_factor", None)
        full["rope_type"] = "linear" if full.get("factor", 1.0) != 1.0 else "default"
    return {**hf, "rope_parameters": {**params, "full_attention": full}}


def _global_kv_heads(hf: dict, kv_heads: int, k_is_v: bool) -> int:
    """The key/value heads of the global layers: a `per_layer_config` override, else
    `num_global_key_value_heads`, which transformers reads only with attention_k_eq_v."""
    overrides = hf.get("per_layer_config")
    if overrides is None:
        return (hf.get("num_global_key_value_heads") if k_is_v else None) or kv_heads
    heads = {layer.get("num_key_value_heads", kv_heads) for layer in overrides.values()}
    return next(iter(heads - {kv_heads}), kv_heads)


def _global_head_dim(hf: dict, head_dim: int) -> int:
    """The head width of the global layers: a `per_layer_config` override as transformers
    writes it, else `global_head_dim` (default 512)."""
    overrides = hf.get("per_layer_config")
    if overrides is None:
        return hf.get("global_head_dim", 512)
    widths = {layer.get("head_dim", head_dim) for layer in overrides.values()}
    return next(iter(widths - {head_dim}), head_dim)


def is_gemma4(c: ModelConfig) -> bool:
    """Whether the config uses a switch of Gemma 4's own (then only Gemma 4 can hold it)."""
    return bool(c.kv_shared_layers or c.v_norm or c.layer_scalar or c.logit_softcap
                or c.per_layer_input or c.global_head_size or c.rope_proportional
                or c.global_kv_heads or c.global_k_is_v)


def gemma4_fits(c: ModelConfig) -> bool:
    """Whether Gemma4ForCausalLM can hold this architecture."""
    return (c.positions, c.norm, c.mlp, c.norm_placement, c.norm_zero_centred,
            c.scale_embeddings, c.qk_norm, c.qk_norm_scope, c.bias, c.qkv_bias, c.attn_scalar,
            c.v_norm, c.layer_scalar, bool(c.global_kv_heads) and not c.global_k_is_v) == (
        "rope", "rmsnorm", "geglu", "sandwich", False, True, True, "head", False, False, 1.0,
        True, True, False)  # (transformers reads num_global_key_value_heads only with k = v)


def gemma4_to_hf(c: ModelConfig) -> dict:
    """Gemma4Text's own fields for our config (the rest as Gemma 3's)."""
    return {"hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": c.logit_softcap or None,
            "use_bidirectional_attention": None,
            "hidden_size_per_layer_input": c.per_layer_input,
            "vocab_size_per_layer_input": c.per_layer_vocab or c.vocab_size,
            "attention_k_eq_v": c.global_k_is_v,
            "num_global_key_value_heads": c.global_kv_heads or None,
            "enable_moe_block": False,
            "num_kv_shared_layers": c.kv_shared_layers,
            "use_double_wide_mlp": c.kv_shared_mlp_double,
            "global_head_dim": c.global_head_size or c.head_dim}


def proportional_rope(c: ModelConfig, full: dict) -> dict:
    """The global layers' rope_parameters entry, "proportional" where `rope_proportional`."""
    if not c.rope_proportional:
        return full
    factor = {"factor": c.rope_factor} if c.rope_scaling == "linear" else {}
    return {"rope_type": "proportional", "rope_theta": c.rope_theta,
            "partial_rotary_factor": c.rope_proportional, **factor}
