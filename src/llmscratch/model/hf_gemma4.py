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

Gemma 4's other mechanisms are refused by name: wider heads on the global
layers (global_head_dim), keys doubling as values (attention_k_eq_v), its
MoE block (enable_moe_block), bidirectional attention, and "proportional"
RoPE (the default of the global layers, whose rope_parameters must then be
given).
"""

from __future__ import annotations

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import ModelConfig

# Gemma4TextConfig's defaults (transformers 5) for the fields we refuse: a file that leaves
# one out has that mechanism on.
REFUSED = {"attention_k_eq_v": (False, False),
           "enable_moe_block": (False, False),
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
    if global_head_dim != head_dim:
        raise LLMScratchError(f"{source}: global_head_dim={global_head_dim!r} is not supported "
                              f"(only head_dim={head_dim}: the same heads in every layer)")
    if "full_attention" not in (hf.get("rope_parameters") or {}):
        raise LLMScratchError(f"{source}: rope_parameters by layer type are missing, and their "
                              "default, 'proportional' RoPE on the global layers, is not "
                              "supported")
    shared = hf.get("num_kv_shared_layers", 0)
    per_layer = hf.get("hidden_size_per_layer_input", 256) or 0
    return dict(logit_softcap=float(hf.get("final_logit_softcapping") or 0.0), mlp="geglu",
                per_layer_input=per_layer,
                per_layer_vocab=hf.get("vocab_size_per_layer_input", 262144) if per_layer else 0,
                norm_placement="sandwich", norm_zero_centred=False,
                scale_embeddings=True, tie_embeddings=hf.get("tie_word_embeddings", True),
                attn_scalar=1.0, v_norm=True, layer_scalar=True, kv_shared_layers=shared,
                kv_shared_mlp_double=bool(shared and hf.get("use_double_wide_mlp", False)))


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
                or c.per_layer_input)


def gemma4_fits(c: ModelConfig) -> bool:
    """Whether Gemma4ForCausalLM can hold this architecture."""
    return (c.positions, c.norm, c.mlp, c.norm_placement, c.norm_zero_centred,
            c.scale_embeddings, c.qk_norm, c.qk_norm_scope, c.bias, c.qkv_bias, c.attn_scalar,
            c.v_norm, c.layer_scalar) == (
        "rope", "rmsnorm", "geglu", "sandwich", False, True, True, "head", False, False, 1.0,
        True, True)


def gemma4_to_hf(c: ModelConfig) -> dict:
    """Gemma4Text's own fields for our config (the rest as Gemma 3's)."""
    return {"hidden_activation": "gelu_pytorch_tanh",
            "final_logit_softcapping": c.logit_softcap or None,
            "use_bidirectional_attention": None,
            "hidden_size_per_layer_input": c.per_layer_input,
            "vocab_size_per_layer_input": c.per_layer_vocab or c.vocab_size,
            "attention_k_eq_v": False, "enable_moe_block": False,
            "num_kv_shared_layers": c.kv_shared_layers,
            "use_double_wide_mlp": c.kv_shared_mlp_double, "global_head_dim": c.head_dim}
