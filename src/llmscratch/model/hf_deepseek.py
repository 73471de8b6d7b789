"""DeepSeek V3's fields of a Hugging Face config.json <-> ours (hf_config.py does the rest).

A DeepseekV3 config.json reads like Llama's (sizes, RMSNorm, SiLU, RoPE)
plus the fields of its two mechanisms, which map one to one onto ours:

    Hugging Face              ours                 Hugging Face            ours
    kv_lora_rank              kv_lora_rank         n_routed_experts        n_expert
    q_lora_rank (null: none)  q_lora_rank (0)      num_experts_per_tok     n_expert_active
    qk_rope_head_dim          qk_rope_head_dim     n_shared_experts        n_shared_expert
    qk_nope_head_dim          qk_nope_head_dim     n_group, topk_group     moe_groups(_active)
    v_head_dim                v_head_dim           routed_scaling_factor   moe_routed_scale
    rope_interleave           rope_interleave      norm_topk_prob          moe_renormalize
    rope_scaling.             rope_mscale_all_dim  first_k_dense_replace   moe_dense_layers
      mscale_all_dim (yarn)                        intermediate_size       dense_mlp_hidden
    moe_intermediate_size     mlp_hidden

Its router is always sigmoid-scored with a bias (transformers ignores the
original files' scoring_func and topk_method). Fields missing from a file
take transformers' defaults, as transformers reads them.
"""

from __future__ import annotations

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import ModelConfig

# DeepseekV3Config's defaults (transformers 5), for files that leave a field out.
DEFAULTS = {
    "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
    "v_head_dim": 128, "rope_interleave": True, "moe_intermediate_size": 2048,
    "intermediate_size": 18432, "n_routed_experts": 256, "num_experts_per_tok": 8,
    "n_shared_experts": 1, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
    "norm_topk_prob": True, "first_k_dense_replace": 3,
}


def deepseek_from_hf(hf: dict, source: str) -> dict:
    """Our latent-attention and MoE fields for a DeepseekV3 config.json."""
    hf = {**DEFAULTS, **hf}
    heads = hf["num_attention_heads"]
    if (hf.get("num_key_value_heads") or heads) != heads:
        raise LLMScratchError(f"{source}: num_key_value_heads={hf['num_key_value_heads']} is "
                              f"not supported: latent attention gives each of the {heads} "
                              "heads its own key and value")
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    yarn = kind == "yarn"
    if scaling.get("mscale_all_dim") and kind not in ("default", "yarn"):
        raise LLMScratchError(f"{source}: mscale_all_dim with rope type {kind!r} is not "
                              "supported (only with yarn)")
    return dict(
        n_kv_head=0, head_size=0, qk_norm=False,
        kv_lora_rank=hf["kv_lora_rank"], q_lora_rank=hf["q_lora_rank"] or 0,
        qk_rope_head_dim=hf["qk_rope_head_dim"], qk_nope_head_dim=hf["qk_nope_head_dim"],
        v_head_dim=hf["v_head_dim"], rope_interleave=bool(hf["rope_interleave"]),
        rope_mscale_all_dim=float(scaling.get("mscale_all_dim") or 0) if yarn else 0.0,
        mlp="moe", mlp_hidden=hf["moe_intermediate_size"], n_expert=hf["n_routed_experts"],
        n_expert_active=hf["num_experts_per_tok"], n_shared_expert=hf["n_shared_experts"] or 0,
        moe_router="sigmoid", moe_groups=hf["n_group"] or 1,
        moe_groups_active=hf["topk_group"] or 1,
        moe_routed_scale=float(hf["routed_scaling_factor"]),
        moe_renormalize=bool(hf["norm_topk_prob"]),
        moe_dense_layers=hf["first_k_dense_replace"] or 0,
        dense_mlp_hidden=hf["intermediate_size"],
    )


def is_deepseek_v3(c: ModelConfig) -> bool:
    """Whether DeepseekV3ForCausalLM can hold this latent-attention model."""
    return (c.kv_lora_rank > 0 and c.norm == "rmsnorm" and c.norm_placement == "pre"
            and not (c.norm_zero_centred or c.scale_embeddings or c.attn_scalar
                     or c.sliding_window or c.rope_local_theta)
            and c.mlp == "moe" and c.moe_router == "sigmoid")


def deepseek_to_hf(c: ModelConfig) -> dict:
    """DeepseekV3 config.json fields for our latent attention and MoE."""
    return {
        "kv_lora_rank": c.kv_lora_rank, "q_lora_rank": c.q_lora_rank or None,
        "qk_rope_head_dim": c.qk_rope_head_dim, "qk_nope_head_dim": c.qk_nope_head_dim,
        "v_head_dim": c.v_head_dim, "head_dim": c.qk_rope_head_dim,
        "rope_interleave": c.rope_interleave, "moe_intermediate_size": c.mlp_dim,
        "intermediate_size": c.dense_mlp_hidden or c.mlp_dim,
        "n_routed_experts": c.n_expert, "num_experts_per_tok": c.n_expert_active,
        "n_shared_experts": c.n_shared_expert, "n_group": c.moe_groups,
        "topk_group": c.moe_groups_active, "routed_scaling_factor": c.moe_routed_scale,
        "norm_topk_prob": c.moe_renormalize, "first_k_dense_replace": c.moe_dense_layers,
        "num_nextn_predict_layers": 0,  # no multi-token prediction module
    }
