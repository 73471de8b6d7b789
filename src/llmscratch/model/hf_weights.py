"""Our tensors <-> Hugging Face's: one table of names and layouts, for both directions.

For every tensor of our model, `weight_links` lists the Hugging Face tensors
it is made of. Most are the same matrix under another name. Four kinds are
not: our fused q/k/v projection is Hugging Face's q_proj, k_proj and v_proj
concatenated (Qwen3-Next's, and its Gated DeltaNet's in_proj_qkvz and
in_proj_ba, with their rows reordered: they interleave per head what we keep
apart); our stacked MoE experts are its E per-expert matrices stacked;
GPT-2's `Conv1D` layers (and gpt-oss's experts) store (in, out), the transpose
of a Linear weight; and gpt-oss's `gate_up_proj` holds our experts' gate and
up projections interleaved, gate in the even columns, up in the odd ones.

    hf_tensors(model)               ours -> Hugging Face names (export)
    model_from_hf(config, read)     Hugging Face tensors -> a GPT (import)

Reading and writing Hugging Face folders (safetensors shards, the hub) is
the runs package's job (runs/hf_import.py, runs/hf_export.py); this module
knows only the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import ModelConfig, torch_dtype
from llmscratch.model.hf_config import family_of
from llmscratch.model.kv_sharing import kv_source
from llmscratch.model.transformer import GPT

# Each placement's norms in a block, ours -> Hugging Face's (Llama, Qwen; Gemma; Olmo).
# The same name is two norms: Llama's post_attention_layernorm comes before the MLP,
# Gemma's and Olmo's after attention.
NORM_NAMES = {
    "pre": {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"},
    "sandwich": {"ln_1": "input_layernorm", "post_ln_1": "post_attention_layernorm",
                 "ln_2": "pre_feedforward_layernorm", "post_ln_2": "post_feedforward_layernorm"},
    "post": {"post_ln_1": "post_attention_layernorm", "post_ln_2": "post_feedforward_layernorm"},
}
# A multimodal Gemma 3 checkpoint holds its text model under a prefix (transformers 5's or
# 4's spelling), beside a vision encoder, which a text model leaves out.
TEXT_MODEL_PREFIXES = {"model.language_model.": "model.", "language_model.model.": "model.",
                       "language_model.lm_head.": "lm_head."}
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                   "model.multi_modal_projector.", "model.visual.",  # (the last: Qwen3.5)
                   "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")  # Gemma 4
# Non-weight tensors some checkpoints carry: GPT-2's causal-mask buffers, RoPE tables.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
# Qwen3-Next's multi-token-prediction layer (for speculative decoding), which transformers
# does not load either.
IGNORED_PREFIXES = ("mtp.",)


@dataclass
class Link:
    """Our tensor `ours` is made of the Hugging Face tensors `theirs`.

    join: "same" (one tensor, the same matrix), "cat" (concatenated along dim
    0: q, k, v), "stack" (stacked along a new dim 0: one per expert), "even"
    or "odd" (the even or odd columns of their one tensor: gpt-oss's gate_up_proj).
    transpose: stored as (in, out) by GPT-2's Conv1D, the transpose of ours
    (the last two dims swapped, for a stack of matrices).
    rows: "cat": the rows of each Hugging Face tensor (None: q, k, v of attention).
    order: "cat": our rows are theirs concatenated, then taken in this order
        (Qwen3-Next interleaves per head what we keep apart); None: as they are.
    """

    ours: str
    theirs: list[str]
    join: str = "same"
    transpose: bool = False
    rows: list[int] | None = None
    order: torch.Tensor | None = None


INTERLEAVED = ("even", "odd")  # joins that take every other column of one tensor


def weight_links(config: ModelConfig) -> list[Link]:
    """For every tensor of our model, the Hugging Face tensors it is made of."""
    family, c = family_of(config), config
    links: list[Link] = []

    def same(ours: str, theirs: str, transpose: bool = False, bias: bool = False) -> None:
        links.append(Link(f"{ours}.weight", [f"{theirs}.weight"], transpose=transpose))
        if bias:
            links.append(Link(f"{ours}.bias", [f"{theirs}.bias"]))

    if family == "gpt2":
        same("tok_emb", "transformer.wte")
        same("pos_emb", "transformer.wpe")
        for i in range(c.n_layer):
            ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
            same(f"{ours}.ln_1", f"{theirs}.ln_1", bias=c.bias)
            same(f"{ours}.attn.qkv", f"{theirs}.attn.c_attn", transpose=True, bias=c.bias)
            same(f"{ours}.attn.proj", f"{theirs}.attn.c_proj", transpose=True, bias=c.bias)
            same(f"{ours}.ln_2", f"{theirs}.ln_2", bias=c.bias)
            same(f"{ours}.mlp.fc", f"{theirs}.mlp.c_fc", transpose=True, bias=c.bias)
            same(f"{ours}.mlp.proj", f"{theirs}.mlp.c_proj", transpose=True, bias=c.bias)
        same("ln_f", "transformer.ln_f", bias=c.bias)
    else:
        same("tok_emb", "model.embed_tokens")
        for i in range(c.n_layer):
            ours, theirs = f"blocks.{i}", f"model.layers.{i}"
            attn = f"{theirs}.self_attn"
            for our_norm, their_norm in NORM_NAMES[c.norm_placement].items():
                same(f"{ours}.{our_norm}", f"{theirs}.{their_norm}")
            if c.layer_is_linear(i):  # Qwen3-Next's and Qwen3.5's Gated DeltaNet layer
                links += gated_deltanet_links(c, f"{ours}.attn", f"{theirs}.linear_attn",
                                              family)
            elif c.kv_lora_rank:  # DeepSeek's latent attention
                links += latent_attention_links(f"{ours}.attn", attn, c)
                same(f"{ours}.attn.proj", f"{attn}.o_proj", bias=c.bias)
            elif kv_source(c, i) is not None:  # Gemma 4: queries only
                links += shared_kv_attention_links(f"{ours}.attn", attn)
            else:
                links += attention_links(c, f"{ours}.attn", attn, i)
            if c.layer_scalar:  # Gemma 4
                links.append(Link(f"{ours}.scalar", [f"{theirs}.layer_scalar"]))
            if c.per_layer_input:  # Gemma 4 E2B, E4B: the branch reading the layer's input
                same(f"{ours}.per_layer.gate", f"{theirs}.per_layer_input_gate")
                same(f"{ours}.per_layer.up", f"{theirs}.per_layer_projection")
                same(f"{ours}.per_layer.norm", f"{theirs}.post_per_layer_input_norm")
            if c.attn_sinks:
                links.append(Link(f"{ours}.attn.sinks", [f"{attn}.sinks"]))
            if family == "gpt_oss":
                links.extend(gpt_oss_expert_links(ours, theirs))
            elif c.mlp == "moe" and not c.layer_is_dense(i):
                same(f"{ours}.mlp.router", f"{theirs}.mlp.gate")
                links += deepseek_moe_links(f"{ours}.mlp", f"{theirs}.mlp", c)
                if c.moe_shared_hidden:  # Qwen3-Next's shared expert
                    for ours_name, theirs_name in [("gate", "gate_proj"), ("up", "up_proj"),
                                                   ("proj", "down_proj")]:
                        same(f"{ours}.mlp.shared.{ours_name}",
                             f"{theirs}.mlp.shared_expert.{theirs_name}")
                    same(f"{ours}.mlp.shared.shared_gate", f"{theirs}.mlp.shared_expert_gate")
                for ours_name, theirs_name in [("gate", "gate_proj"), ("up", "up_proj"),
                                               ("proj", "down_proj")]:
                    experts = [f"{theirs}.mlp.experts.{e}.{theirs_name}.weight"
                               for e in range(c.n_expert)]
                    links.append(Link(f"{ours}.mlp.{ours_name}", experts, join="stack"))
            else:
                same(f"{ours}.mlp.gate", f"{theirs}.mlp.gate_proj", bias=c.bias)
                same(f"{ours}.mlp.up", f"{theirs}.mlp.up_proj", bias=c.bias)
                same(f"{ours}.mlp.proj", f"{theirs}.mlp.down_proj", bias=c.bias)
        same("ln_f", "model.norm")
        if c.per_layer_input:  # Gemma 4 E2B, E4B: every layer's input
            same("per_layer.embed", "model.embed_tokens_per_layer")
            same("per_layer.context", "model.per_layer_model_projection")
            same("per_layer.norm", "model.per_layer_projection_norm")
    if not c.tie_embeddings:
        same("lm_head", "lm_head")
    return links


def gpt_oss_expert_links(ours: str, theirs: str) -> list[Link]:
    """gpt-oss's router and experts: (E, D, 2F) gate_up_proj, gate and up interleaved, and
    (E, F, D) down_proj, each the transpose of our (E, F, D) and (E, D, F), with biases."""
    experts = f"{theirs}.mlp.experts"
    return [
        Link(f"{ours}.mlp.router.weight", [f"{theirs}.mlp.router.weight"]),
        Link(f"{ours}.mlp.router.bias", [f"{theirs}.mlp.router.bias"]),
        Link(f"{ours}.mlp.gate", [f"{experts}.gate_up_proj"], "even", transpose=True),
        Link(f"{ours}.mlp.up", [f"{experts}.gate_up_proj"], "odd", transpose=True),
        Link(f"{ours}.mlp.proj", [f"{experts}.down_proj"], transpose=True),
        Link(f"{ours}.mlp.gate_bias", [f"{experts}.gate_up_proj_bias"], "even"),
        Link(f"{ours}.mlp.up_bias", [f"{experts}.gate_up_proj_bias"], "odd"),
        Link(f"{ours}.mlp.proj_bias", [f"{experts}.down_proj_bias"]),
    ]


def latent_attention_links(ours: str, theirs: str, c: ModelConfig) -> list[Link]:
    """DeepSeek's latent attention: the same matrices under other names."""
    names = [("kv_a", "kv_a_proj_with_mqa"), ("kv_norm", "kv_a_layernorm"), ("kv_b", "kv_b_proj")]
    names += ([("q_a", "q_a_proj"), ("q_norm", "q_a_layernorm"), ("q_b", "q_b_proj")]
              if c.q_lora_rank else [("q", "q_proj")])
    return [Link(f"{ours}.{a}.weight", [f"{theirs}.{b}.weight"]) for a, b in names]


def deepseek_moe_links(ours: str, theirs: str, c: ModelConfig) -> list[Link]:
    """DeepSeek's MoE beyond Qwen3-MoE's: the router's bias and the shared expert."""
    links = []
    if c.moe_router == "sigmoid":
        links.append(Link(f"{ours}.expert_bias", [f"{theirs}.gate.e_score_correction_bias"]))
    if c.n_shared_expert:
        for a, b in [("gate", "gate_proj"), ("up", "up_proj"), ("proj", "down_proj")]:
            links.append(Link(f"{ours}.shared.{a}.weight", [f"{theirs}.shared_experts.{b}.weight"]))
    return links


def is_mtp_module(name: str, config: ModelConfig) -> bool:
    """Whether `name` belongs to DeepSeek V3's multi-token prediction module (the layers after
    the last, model.layers.61 in the released model), which next-token generation never uses."""
    match = re.match(r"model\.layers\.(\d+)\.", name)
    return bool(config.kv_lora_rank and match and int(match.group(1)) >= config.n_layer)


def is_unused_shared_kv(name: str, config: ModelConfig) -> bool:
    """Whether `name` is a key or value tensor of a Gemma 4 KV-sharing layer, which the
    released checkpoints hold but never use (transformers skips them too: kv_sharing.py)."""
    match = re.match(r"model\.layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\.", name)
    return bool(config.kv_shared_layers and match
                and kv_source(config, int(match.group(1))) is not None)


def attention_links(c: ModelConfig, ours: str, theirs: str, layer: int = 0) -> list[Link]:
    """An attention layer's tensors: q, k, v projections (fused in ours), QK-norm, output."""
    links = []
    Dh, Hkv = c.layer_head_dim(layer), c.layer_kv_heads(layer)  # (Gemma 4: global layers)
    k_is_v = c.global_k_is_v and not c.layer_is_local(layer)  # (Gemma 4: no v_proj)
    rows = [c.n_head * Dh, Hkv * Dh] + ([] if k_is_v else [Hkv * Dh])
    for kind in ["weight", "bias"] if c.bias or c.qkv_bias else ["weight"]:
        qkv = [f"{theirs}.{p}_proj.{kind}" for p in ("qk" if k_is_v else "qkv")]
        if c.attn_output_gate:  # Qwen3-Next's q_proj: per head, its queries then its gates
            links.append(Link(f"{ours}.qkv.{kind}", qkv, join="cat", rows=_gated_rows(c),
                              order=_gated_order(c)))
        else:
            links.append(Link(f"{ours}.qkv.{kind}", qkv, join="cat", rows=rows))
    if c.qk_norm:
        links.append(Link(f"{ours}.q_norm.weight", [f"{theirs}.q_norm.weight"]))
        links.append(Link(f"{ours}.k_norm.weight", [f"{theirs}.k_norm.weight"]))
    links.append(Link(f"{ours}.proj.weight", [f"{theirs}.o_proj.weight"]))
    if c.bias:
        links.append(Link(f"{ours}.proj.bias", [f"{theirs}.o_proj.bias"]))
    return links


def shared_kv_attention_links(ours: str, theirs: str) -> list[Link]:
    """A Gemma 4 KV-sharing layer's attention: q_proj (all our `qkv` holds), q_norm, o_proj;
    no k_proj, v_proj or k_norm (kv_sharing.py)."""
    return [Link(f"{ours}.{a}.weight", [f"{theirs}.{b}.weight"])
            for a, b in [("qkv", "q_proj"), ("q_norm", "q_norm"), ("proj", "o_proj")]]


def _gated_rows(c: ModelConfig) -> list[int]:
    """Rows of q_proj (queries and gates), k_proj and v_proj."""
    return [2 * c.n_head * c.head_dim] + [c.kv_heads * c.head_dim] * 2


def _gated_order(c: ModelConfig) -> torch.Tensor:
    """Our q, k, v, gate rows among q_proj's (per head h: its Dh queries, then its Dh
    gates), k_proj's and v_proj's, concatenated."""
    H, Dh, kv = c.n_head, c.head_dim, c.kv_heads * c.head_dim
    q_proj = torch.arange(2 * H * Dh).view(H, 2, Dh)  # (H, queries or gates, Dh)
    k_and_v = torch.arange(2 * H * Dh, 2 * H * Dh + 2 * kv)
    return torch.cat([q_proj[:, 0].flatten(), k_and_v, q_proj[:, 1].flatten()])


def gated_deltanet_links(c: ModelConfig, ours: str, theirs: str,
                         family: str = "qwen3_next") -> list[Link]:
    """A Gated DeltaNet layer's tensors. Our one input projection (q, k, v, z, b, a) is
    Qwen3-Next's in_proj_qkvz and in_proj_ba, whose rows are grouped by key head, or
    Qwen3.5's in_proj_qkv, in_proj_z, in_proj_b and in_proj_a, in our order."""
    Hk, G = c.linear_n_key_head, c.linear_n_value_head // c.linear_n_key_head
    Hv, Dv = c.linear_n_value_head, c.linear_value_size
    if family == "qwen3_5_text":
        rows = [2 * Hk * c.linear_key_size + Hv * Dv, Hv * Dv, Hv, Hv]
        projections = [f"{theirs}.in_proj_{p}.weight" for p in ("qkv", "z", "b", "a")]
        links = [Link(f"{ours}.qkv.weight", projections, join="cat", rows=rows)]
    else:
        per_head = 2 * c.linear_key_size + 2 * G * Dv  # q, k, G v, G z
        rows = [Hk * per_head, Hk * 2 * G]
        links = [Link(f"{ours}.qkv.weight", [f"{theirs}.in_proj_qkvz.weight",
                                             f"{theirs}.in_proj_ba.weight"],
                      join="cat", rows=rows, order=_deltanet_order(c))]
    for name, their_name in [("conv.weight", "conv1d.weight"), ("A_log", "A_log"),
                             ("dt_bias", "dt_bias"), ("norm.weight", "norm.weight"),
                             ("proj.weight", "out_proj.weight")]:
        links.append(Link(f"{ours}.{name}", [f"{theirs}.{their_name}"]))
    return links


def _deltanet_order(c: ModelConfig) -> torch.Tensor:
    """Our rows (all heads' q, then k, v, z, b, a) among in_proj_qkvz's and in_proj_ba's
    concatenated, which hold per key head its q, k, its G value heads' v, z, then b, a."""
    Hk, Dk, Dv = c.linear_n_key_head, c.linear_key_size, c.linear_value_size
    G = c.linear_n_value_head // Hk
    qkvz = torch.arange(Hk * (2 * Dk + 2 * G * Dv)).view(Hk, -1)  # (Hk, 2 Dk + 2 G Dv)
    ba = qkvz.numel() + torch.arange(Hk * 2 * G).view(Hk, 2 * G)  # (Hk, 2 G)
    q, k, v, z = qkvz.split([Dk, Dk, G * Dv, G * Dv], dim=1)
    b, a = ba.split([G, G], dim=1)
    return torch.cat([x.flatten() for x in (q, k, v, z, b, a)])


def their_shapes(link: Link, our_shape: torch.Size, config: ModelConfig) -> list[tuple]:
    """The shape each Hugging Face tensor of `link` must have, given our tensor's shape."""
    if link.join == "stack":
        return [tuple(our_shape[1:])] * len(link.theirs)
    if link.join == "cat":  # q, k, v rows: H Dh, Hkv Dh, Hkv Dh, unless the link says
        rows = link.rows or [config.n_head * config.head_dim] + [config.kv_heads
                                                                 * config.head_dim] * 2
        return [(r, *our_shape[1:]) for r in rows]
    shape = tuple(our_shape)
    if link.transpose:
        shape = (*shape[:-2], shape[-1], shape[-2])
    if link.join in INTERLEAVED:  # their last dim holds ours and its partner's
        shape = (*shape[:-1], 2 * shape[-1])
    return [shape]


def join_tensors(link: Link, pieces: list[torch.Tensor]) -> torch.Tensor:
    """Hugging Face tensors -> ours."""
    if link.join == "cat":
        joined = torch.cat(pieces, dim=0)
        return joined if link.order is None else joined[link.order]
    if link.join == "stack":
        return torch.stack(pieces, dim=0)
    tensor = pieces[0]
    if link.join in INTERLEAVED:
        tensor = tensor[..., INTERLEAVED.index(link.join)::2]  # every other column
    return tensor.transpose(-2, -1) if link.transpose else tensor


def split_tensor(link: Link, tensor: torch.Tensor, config: ModelConfig) -> list[torch.Tensor]:
    """Ours -> Hugging Face tensors (contiguous, ready to save)."""
    if link.join == "cat":
        rows = [shape[0] for shape in their_shapes(link, tensor.shape, config)]
        if link.order is not None:  # back to their order
            tensor = tensor[link.order.argsort()]
        pieces = list(tensor.split(rows, dim=0))
    elif link.join == "stack":
        pieces = list(tensor.unbind(0))
    else:  # (interleaved halves are put together by hf_tensors)
        pieces = [tensor.transpose(-2, -1) if link.transpose else tensor]
    return [p.contiguous() for p in pieces]


def text_model_names(names: Iterable[str]) -> dict[str, str]:
    """The stored name of each tensor, by the name it has in a text model: the same, except
    in multimodal checkpoints, whose vision encoder's tensors are left out."""
    stored = {}
    for name in names:
        if name.startswith(VISION_PREFIXES):
            continue
        prefix = next((p for p in TEXT_MODEL_PREFIXES if name.startswith(p)), "")
        stored[TEXT_MODEL_PREFIXES[prefix] + name.removeprefix(prefix) if prefix else name] = name
    return stored


def model_from_hf(config: ModelConfig, read: Callable[[str, tuple], torch.Tensor],
                  names: Iterable[str]) -> GPT:
    """A GPT whose tensors are Hugging Face's, joined and renamed, in `config.dtype`.

    `read(name, shape)` returns the Hugging Face tensor `name`, checked to have
    `shape`; `names` are all the tensor names the checkpoint holds, so that
    tensors this architecture would not use are refused rather than ignored.
    The model is built on the meta device: no memory beyond the tensors.
    """
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in GPT(config).state_dict().items()}
    tensors, used = {}, set()
    for link in weight_links(config):
        expected = their_shapes(link, shapes[link.ours], config)
        pieces = [read(name, shape) for name, shape in zip(link.theirs, expected, strict=True)]
        tensors[link.ours] = join_tensors(link, pieces).to(config.torch_dtype).contiguous()
        used.update(link.theirs)
    unknown = sorted(
        name for name in set(names) - used
        if not name.endswith(IGNORED_SUFFIXES) and not name.startswith(IGNORED_PREFIXES)
        and not (name == "lm_head.weight" and config.tie_embeddings)
        and not is_mtp_module(name, config) and not is_unused_shared_kv(name, config)
    )
    if unknown:
        raise LLMScratchError(f"the checkpoint has tensors this architecture does not use, "
                              f"e.g. {unknown[0]} ({len(unknown)} in all)")
    return GPT.from_state_dict(config, tensors)


def hf_tensors(model: GPT, dtype: str | None = None) -> dict[str, torch.Tensor]:
    """Our model's weights under Hugging Face's names and layouts."""
    config = model.config
    ours = model.state_dict()
    cast_to = torch_dtype(dtype) if dtype else None
    tensors, halves = {}, {}
    for link in weight_links(config):
        pieces = split_tensor(link, ours[link.ours], config)
        for name, piece in zip(link.theirs, pieces, strict=True):
            piece = piece.to(cast_to) if cast_to is not None else piece
            if link.join in INTERLEAVED:  # gpt-oss's gate_up: wait for both halves
                halves.setdefault(name, [None, None])[INTERLEAVED.index(link.join)] = piece
            else:
                tensors[name] = piece
    for name, (even, odd) in halves.items():  # (..., F) twice -> (..., 2F), alternating
        tensors[name] = torch.stack([even, odd], dim=-1).flatten(-2)
    if family_of(config) == "gpt2" and not config.bias:  # GPT-2 always has biases: zeros
        for name, piece in list(tensors.items()):
            if name.startswith("transformer.h.") or name.startswith("transformer.ln_f"):
                bias = name.removesuffix(".weight") + ".bias"
                width = piece.shape[-1] if piece.dim() == 2 else piece.shape[0]
                tensors[bias] = torch.zeros(width, dtype=piece.dtype)
    return tensors
