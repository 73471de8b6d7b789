"""The model's architecture, as one typed config (its named sizes: presets.py).

`ModelConfig` says everything needed to build `GPT` (model/transformer.py).
GPT-2, Llama 3, Qwen3, Qwen3-MoE, Gemma 3, Olmo 3, gpt-oss, DeepSeek V3 and
Qwen3-Next are one model with different switches:

    field             GPT-2      Llama 3       Qwen3    Qwen3-MoE  Gemma 3       Olmo 3
    positions         learned    rope (+llama3 rope     rope       rope (+linear rope (+yarn
                                 scaling)                          on global)    on global)
    norm              layernorm  rmsnorm       rmsnorm  rmsnorm    rmsnorm       rmsnorm
    norm_placement    pre        pre           pre      pre        sandwich      post
    norm_zero_centred no         no            no       no         yes (1 + w)   no
    scale_embeddings  no         no            no       no         yes           no
    mlp               gelu       swiglu        swiglu   moe        geglu         swiglu
    n_kv_head         = n_head   8 (grouped)   8        4          1 to 16       = n_head or 8
    head_size         D / H      D / H         128      128        256 (27B 128) D / H
    attn_scalar       Dh         Dh            Dh       Dh         256 (27B 168) Dh
    qk_norm           no         no            yes      yes        yes (head)    yes (all)
    sliding_window    0          0             0        0          512 or 1024   4096
    sliding_window_   0          0             0        0          6 (5 local,   4 (3 local,
      pattern                                                      1 global)     1 global)
    rope_local_theta  0          0             0        0          10,000        500,000
    bias              yes        no            no       no         no            no
    tie_embeddings    yes        1B, 3B: yes   to 4B    no         yes           no

Layers: with `sliding_window_pattern` P > 0, layers P, 2P, 3P, ... (counting
from 1) are global (they attend to every earlier token) and the others are
local (they see the `sliding_window` latest tokens); with P = 0 every layer
sees the window, or everything if it is 0. `layer_is_local(i)` says which.
Local layers rotate with RoPE base `rope_local_theta`, unscaled (0: exactly
like the global layers); `rope_scaling` stretches the global layers, which
are the ones that see far.

gpt-oss is Qwen3-MoE's switches with `bias` on (attention, router and
experts), no QK-norm, local and global layers alternating (pattern 2, window
128), YaRN on every layer with unrounded bounds (`rope_yarn_truncate` off),
and two parts of its own: `attn_sinks` (sinks.py) and the experts' clamped
SwiGLU (`swiglu_limit`, moe.py).
DeepSeek V3 is Qwen3-MoE with two mechanisms switched: multi-head latent
attention (`kv_lora_rank` > 0; latent_attention.py), and its routing
(`moe_router` "sigmoid", expert groups, a shared expert, dense first layers;
moe.py). `layer_is_dense(i)` says which layers have no experts.
Qwen3-Next (`qwen3-next-80b-a3b`) is Qwen3-MoE with four more switches:
`full_attention_interval` 4 (three Gated DeltaNet layers, linear attention
with a fixed-size memory, to one full-attention layer), `attn_output_gate`,
`rope_fraction` 0.25 and `moe_shared_hidden`; its RMSNorms are zero-centred.
Qwen3.5's dense text models are the same with `mlp` "swiglu" (`qwen3.5-tiny`).

Sizes that are usually derived have a 0 default meaning "derive it", read
through a property: `n_kv_head` -> `kv_heads`, `head_size` -> `head_dim`,
`mlp_hidden` -> `mlp_dim`. Presets (presets.py) are looked up by exact name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmscratch.config import check_fields
from llmscratch.errors import LLMScratchError

# Weight dtypes by name, as configs and the command line spell them.
DTYPES = ("fp32", "bf16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` ("fp32" or "bf16")."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


@dataclass
class ModelConfig:
    """Architecture of a decoder-only transformer (GPT-2, Llama 3, Qwen3, Qwen3-MoE, Gemma 3,
    Olmo 3, DeepSeek V3).

    Fields:
        vocab_size: number of token ids the embedding and output layer cover.
        context_length: longest sequence the model accepts.
        n_layer: number of transformer blocks.
        n_head: query heads per block.
        n_embd: width of the residual stream (d_model).
        n_kv_head: key/value heads; 0 means n_head (multi-head attention),
            1 is multi-query, anything between is grouped-query. Must divide n_head.
        head_size: width of each head; 0 means n_embd / n_head. Qwen3 fixes it
            at 128 whatever the width.
        mlp_hidden: hidden width of the MLP (of each expert, for "moe");
            0 means 4 * n_embd (GPT-2).
        positions: "learned" (a position embedding table, GPT-2) or "rope"
            (rotary embeddings of q and k, Su et al., 2021).
        rope_theta: RoPE base; the slowest rotation has period ~2 pi theta.
        rope_scaling: "none", "llama3" (Llama 3.1's stretch of the slow
            frequencies, set by the four fields below), "yarn" (the same idea,
            blended by pair; Olmo 3's global layers) or "linear" (every
            frequency divided by rope_factor; Gemma 3's global layers); see rope.py.
        rope_factor: how much the (slow) frequencies are slowed.
        rope_low_freq_factor: llama3 and yarn scaling: pairs turning fewer than
            this many times within rope_original_context tokens (wavelengths
            above rope_original_context / this) are fully slowed (YaRN's beta_slow).
        rope_high_freq_factor: llama3 and yarn scaling: pairs turning more than
            this many times are kept (YaRN's beta_fast).
        rope_original_context: llama3 and yarn scaling: the context length of pretraining.
        rope_attention_factor: yarn scaling: cos and sin are multiplied by this,
            the scores by its square (YaRN's 0.1 ln(rope_factor) + 1).
        norm: "layernorm" (GPT-2) or "rmsnorm" (Llama, Qwen).
        norm_eps: epsilon of every norm (GPT-2 and Llama 3: 1e-5; Qwen3: 1e-6).
        norm_placement: where each sub-layer's norms sit: "pre" (x + f(norm(x)),
            GPT-2 to Qwen3), "sandwich" (x + norm(f(norm(x))), Gemma) or "post"
            (x + norm(f(x)), Olmo 2 and 3).
        norm_zero_centred: RMSNorm gains stored as w and applied as 1 + w, w
            starting at 0 (Gemma).
        scale_embeddings: multiply the token embeddings by sqrt(n_embd) (Gemma).
        mlp: "gelu" (GPT-2), "relu2" (GPT-2's shape with relu(x)^2,
            Primer), "swiglu" (Llama, Qwen, Olmo), "geglu" (Gemma: the
            gate through tanh GELU) or "moe" (Qwen3-MoE: a router and n_expert
            SwiGLU experts; see moe.py).
        n_expert: experts per MoE layer (0 unless mlp is "moe").
        n_expert_active: experts each token is routed to (top-k).
        moe_renormalize: rescale the top-k router weights to sum to 1
            (Qwen3-MoE: yes; Hugging Face calls it norm_topk_prob).
        qk_norm: RMSNorm on the queries and keys before RoPE (Qwen3, Gemma 3, Olmo 3).
        qk_norm_scope: what that norm normalises: "head" (each head's Dh
            features, Qwen3 and Gemma 3) or "all" (all heads' features of a
            token together, Olmo 2 and 3).
        attn_scalar: the scores are q . k / sqrt(attn_scalar); 0 means the head
            width Dh (Gemma 3's query_pre_attn_scalar).
        bias: biases in Linear layers and LayerNorms (GPT-2: True).
        qkv_bias: biases on the q/k/v projection even when `bias` is False.
        sliding_window: in local layers each token sees itself and this many - 1
            earlier tokens; 0 means all earlier tokens.
        sliding_window_pattern: P > 0: layers P, 2P, ... (from 1) are global,
            the others local (Gemma 3: 6, Olmo 3: 4); 0: every layer is local
            when sliding_window is set.
        rope_local_theta: RoPE base of the local layers, which are never scaled
            (Gemma 3: 10,000 against 1,000,000 for the global ones); 0 means
            local layers rotate exactly as global ones.
        tie_embeddings: the output layer reuses the token embedding matrix.
        dtype: "fp32" or "bf16": the dtype weights are stored in (checkpoints,
            converted models) and loaded in for inference. Training keeps fp32
            weights and chooses its compute dtype itself (train.dtype).
        dropout: dropout probability (0.0 for pretraining small models on CPU).
        attn_impl: "sdpa" (PyTorch's fused kernel), "explicit" (mask + softmax,
            for reading) or "auto" (the faster of the two for the inputs: see
            attention.use_fused_kernel). All compute the same function.
        head_outputs: a sequence head beside the output layer (heads.SequenceHead):
            the number of classes of a classifier, 1 for a reward model; 0 = none.
        head_pooling: what the sequence head reads: "last" (the last real token)
            or "mean" (the mean over real tokens).
        attn_sinks: a learned logit per query head joins every softmax's
            denominator, so a head may give its attention to nothing (gpt-oss;
            see sinks.py).
        swiglu_limit: > 0: the experts' activation is gpt-oss's clamped SwiGLU,
            (clamp(up, +-limit) + 1) * g sigmoid(alpha g) with g = min(gate, limit);
            0: plain SwiGLU (see moe.py).
        swiglu_alpha: the sigmoid's gain in that activation (gpt-oss: 1.702, which
            makes g sigmoid(alpha g) the sigmoid approximation of GELU).
        rope_yarn_truncate: yarn scaling: round the blended pairs' bounds outwards
            to whole pairs (the YaRN default); gpt-oss keeps them fractional.

    DeepSeek V3 (multi-head latent attention: latent_attention.py; its MoE: moe.py):
        kv_lora_rank: > 0 turns on multi-head latent attention (MLA): keys and
            values are made from one latent of this width per token, which is
            what the KV cache holds (with the RoPE key); 0 = ordinary attention.
        q_lora_rank: queries pass through a latent of this width too; 0 = a
            plain query projection.
        qk_rope_head_dim: width of the part of each query and key that RoPE
            rotates; the key's is one vector shared by all heads.
        qk_nope_head_dim: width of the part of each query and key without RoPE.
        v_head_dim: width of each value head.
        rope_interleave: RoPE pairs neighbours (x0, x1), (x2, x3), ... as
            DeepSeek's checkpoints do, instead of x_p with x_{p + P}.
        rope_mscale_all_dim: yarn scaling in MLA: the scores are multiplied by
            (0.1 m ln(rope_factor) + 1)^2 for this m (DeepSeek's mscale_all_dim); 0: no.
        n_shared_expert: experts that every token goes through besides its
            routed ones (one SwiGLU of n_shared_expert x mlp_hidden).
        moe_router: "softmax" (Qwen3-MoE) or "sigmoid" (DeepSeek V3: each
            expert's score is a sigmoid, and a bias that only steers the choice).
        moe_groups: experts form this many groups; a token picks its experts
            from the moe_groups_active best groups only (1: no groups).
        moe_groups_active: how many groups each token may pick from.
        moe_routed_scale: the routed experts' weights are multiplied by this
            (DeepSeek's routed_scaling_factor).
        moe_dense_layers: the first this many layers have a plain SwiGLU MLP of
            width dense_mlp_hidden instead of experts (first_k_dense_replace).
        dense_mlp_hidden: hidden width of those dense layers.

    Qwen3-Next's fields (see linear_attention.py):
        full_attention_interval: P > 0: layers P, 2P, ... (from 1) are full
            attention and the others Gated DeltaNet layers (Qwen3-Next: 4, three
            DeltaNet layers to one attention layer); 0: no DeltaNet layers.
        linear_n_key_head, linear_n_value_head: query/key heads and value heads of
            a DeltaNet layer (value heads: a multiple of key heads, which they share).
        linear_key_size, linear_value_size: width of each key (and query) head and
            of each value head; a head's memory is a key-size x value-size matrix.
        linear_conv_kernel: length of the causal depthwise convolution over q, k, v.
        attn_output_gate: the attention output is multiplied by sigmoid(gate), a
            gate projected from the input beside q, k and v (one per feature).
        rope_fraction: the share of each head's features RoPE rotates (Qwen3-Next:
            0.25); the others carry no position.
        moe_shared_hidden: width of a shared expert beside the routed ones, which
            every token goes through, scaled by a sigmoid gate of its own (0: none).

    Gemma 4's fields (kv_sharing.py, per_layer_inputs.py; 0 or off: none):
        kv_shared_layers: the last K layers make queries only, over the keys and values
            of the last earlier layer of their kind (local or global); they cache nothing.
        v_norm, layer_scalar: values RMS-normalised without a gain (the scores are then
            q . k unscaled: attn_scalar 1); each block's output times a stored number.
        kv_shared_mlp_double: the sharing layers' MLP is 2 x mlp_hidden wide.
        logit_softcap: c > 0: the logits are c tanh(logits / c) (Gemma 2 and 4: 30).
        per_layer_input, per_layer_vocab: P > 0: every layer reads P numbers of its own
            per token, from a second table (per_layer_vocab ids; 0: vocab_size).
        global_head_size, global_kv_heads: the global layers' head width and key/value
            heads (Gemma 4: 512 against 256); global_k_is_v: their values are their keys'
            projection; rope_proportional f: their RoPE turns only their first f of pairs.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int = 0
    head_size: int = 0
    mlp_hidden: int = 0
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_scaling: str = "none"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    rope_attention_factor: float = 1.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"
    norm_zero_centred: bool = False
    scale_embeddings: bool = False
    mlp: str = "gelu"
    n_expert: int = 0
    n_expert_active: int = 0
    moe_renormalize: bool = True
    qk_norm: bool = False
    qk_norm_scope: str = "head"
    attn_scalar: float = 0.0
    bias: bool = True
    qkv_bias: bool = False
    sliding_window: int = 0
    sliding_window_pattern: int = 0
    rope_local_theta: float = 0.0
    tie_embeddings: bool = True
    dtype: str = "fp32"
    dropout: float = 0.0
    attn_impl: str = "auto"
    head_outputs: int = 0
    head_pooling: str = "last"
    # gpt-oss: attention sinks, the clamped SwiGLU of its experts, YaRN unrounded.
    attn_sinks: bool = False
    swiglu_limit: float = 0.0
    swiglu_alpha: float = 1.702
    rope_yarn_truncate: bool = True
    # DeepSeek V3: multi-head latent attention and its Mixture of Experts (see above).
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = False
    rope_mscale_all_dim: float = 0.0
    n_shared_expert: int = 0
    moe_router: str = "softmax"
    moe_groups: int = 1
    moe_groups_active: int = 1
    moe_routed_scale: float = 1.0
    moe_dense_layers: int = 0
    dense_mlp_hidden: int = 0
    # Qwen3-Next: Gated DeltaNet layers between full-attention layers (linear_attention.py),
    # a sigmoid gate on the attention output, RoPE on part of each head, a shared expert.
    full_attention_interval: int = 0
    linear_n_key_head: int = 0
    linear_n_value_head: int = 0
    linear_key_size: int = 0
    linear_value_size: int = 0
    linear_conv_kernel: int = 4
    attn_output_gate: bool = False
    rope_fraction: float = 1.0
    moe_shared_hidden: int = 0
    # Gemma 4: KV sharing, value norm, layer scalars, soft-capped logits, per-layer inputs, ...
    kv_shared_layers: int = 0
    v_norm: bool = False
    layer_scalar: bool = False
    kv_shared_mlp_double: bool = False
    logit_softcap: float = 0.0
    per_layer_input: int = 0
    per_layer_vocab: int = 0
    global_head_size: int = 0
    rope_proportional: float = 0.0
    global_kv_heads: int = 0
    global_k_is_v: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "model.")  # types, and whole numbers that fit 64 bits
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "give a positive number")
        for name in ("n_kv_head", "head_size", "mlp_hidden", "sliding_window",
                     "sliding_window_pattern", "attn_scalar", "rope_local_theta"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "give 0 (derive it) or a positive number")
        if self.head_size == 0 and self.n_embd % self.n_head and not self.kv_lora_rank:
            raise LLMScratchError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}; "
                "pick a head count that divides the width, or set model.head_size"
            )
        if self.n_head % self.kv_heads:
            _fail("n_kv_head", self.n_kv_head, f"it must divide n_head={self.n_head}")
        _check_choice("positions", self.positions, ("learned", "rope"))
        _check_choice("rope_scaling", self.rope_scaling, ("none", "llama3", "yarn", "linear"))
        _check_choice("norm", self.norm, ("layernorm", "rmsnorm"))
        _check_choice("norm_placement", self.norm_placement, ("pre", "sandwich", "post"))
        _check_choice("mlp", self.mlp, ("gelu", "relu2", "swiglu", "geglu", "moe"))
        _check_choice("qk_norm_scope", self.qk_norm_scope, ("head", "all"))
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("attn_impl", self.attn_impl, ("auto", "sdpa", "explicit"))
        _check_choice("head_pooling", self.head_pooling, ("last", "mean"))
        if self.head_outputs < 0:
            _fail("head_outputs", self.head_outputs, "give 0 (no head) or a positive number")
        if self.positions == "rope" and self.rope_dim % 2 and self.rope_fraction == 1.0:
            # (a fraction of the head is checked with Qwen3-Next's switches)
            _fail("qk_rope_head_dim" if self.kv_lora_rank else "head_size", self.rope_dim,
                  "RoPE rotates pairs of features: use an even width")
        if self.rope_theta <= 0:
            _fail("rope_theta", self.rope_theta, "give a positive base such as 10000")
        if self.rope_scaling in ("llama3", "yarn") and not (
            self.rope_factor >= 1 and 0 < self.rope_low_freq_factor < self.rope_high_freq_factor
            and self.rope_original_context > 0
        ):
            _fail("rope_factor", self.rope_factor, f"{self.rope_scaling} scaling needs "
                  "rope_factor >= 1, 0 < rope_low_freq_factor < rope_high_freq_factor, "
                  "rope_original_context > 0")
        if self.rope_attention_factor <= 0:
            _fail("rope_attention_factor", self.rope_attention_factor, "give a positive number")
        if self.rope_scaling == "linear" and self.rope_factor < 1:
            _fail("rope_factor", self.rope_factor, "linear scaling needs rope_factor >= 1")
        if self.norm_zero_centred and self.norm != "rmsnorm":
            _fail("norm_zero_centred", True, "zero-centred gains are for norm='rmsnorm'")
        if self.sliding_window_pattern and not self.sliding_window:
            _fail("sliding_window_pattern", self.sliding_window_pattern,
                  "a pattern of local and global layers needs a sliding_window")
        if self.norm_eps <= 0:
            _fail("norm_eps", self.norm_eps, "give a small positive number such as 1e-5")
        if self.mlp == "moe":
            if self.n_expert < 1:
                _fail("n_expert", self.n_expert, "a 'moe' MLP needs at least one expert")
            if not 1 <= self.n_expert_active <= self.n_expert:
                _fail("n_expert_active", self.n_expert_active,
                      f"route each token to between 1 and n_expert={self.n_expert} experts")
        elif self.n_expert or self.n_expert_active:
            _fail("n_expert", self.n_expert, "experts need mlp='moe'; set both expert counts to 0")
        if not 0.0 <= self.dropout < 1.0:
            _fail("dropout", self.dropout, "give a probability in [0, 1)")
        self._check_gpt_oss()
        _check_deepseek(self)
        self._check_qwen3_next()
        self._check_gemma4()

    def _check_gpt_oss(self) -> None:
        """gpt-oss's switches: the clamped SwiGLU is its experts' activation, and YaRN's
        rounding is a YaRN option."""
        if self.swiglu_limit < 0:
            _fail("swiglu_limit", self.swiglu_limit, "give 0 (plain SwiGLU) or a positive clamp")
        if self.swiglu_limit and self.mlp != "moe":
            _fail("swiglu_limit", self.swiglu_limit, "the clamped SwiGLU is for mlp='moe' experts")
        if self.swiglu_alpha <= 0:
            _fail("swiglu_alpha", self.swiglu_alpha, "give a positive sigmoid gain such as 1.702")
        if not self.rope_yarn_truncate and self.rope_scaling != "yarn":
            _fail("rope_yarn_truncate", False, "it is an option of rope_scaling='yarn'")

    def _check_qwen3_next(self) -> None:
        """Qwen3-Next's switches: Gated DeltaNet sizes, partial RoPE, shared expert."""
        for name in ("full_attention_interval", "linear_n_key_head", "linear_n_value_head",
                     "linear_key_size", "linear_value_size", "moe_shared_hidden"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "give 0 (none) or a positive number")
        if self.full_attention_interval:
            for name in ("linear_n_key_head", "linear_n_value_head", "linear_key_size",
                         "linear_value_size", "linear_conv_kernel"):
                if getattr(self, name) < 1:
                    _fail(name, getattr(self, name), "Gated DeltaNet layers "
                          "(full_attention_interval > 0) need a positive size")
            if self.linear_n_value_head % self.linear_n_key_head:
                _fail("linear_n_value_head", self.linear_n_value_head,
                      f"it must be a multiple of linear_n_key_head={self.linear_n_key_head}")
            if self.sliding_window:
                _fail("sliding_window", self.sliding_window, "Gated DeltaNet layers "
                      "(full_attention_interval > 0) do not combine with a sliding window")
        if not 0.0 < self.rope_fraction <= 1.0:
            _fail("rope_fraction", self.rope_fraction, "give a fraction in (0, 1]")
        if self.positions == "rope" and (self.rope_dim < 2 or self.rope_dim % 2):
            _fail("rope_fraction", self.rope_fraction, f"it rotates {self.rope_dim} of the "
                  f"{self.head_dim} features of a head; RoPE needs an even number of them")
        if self.moe_shared_hidden and self.mlp != "moe":
            _fail("moe_shared_hidden", self.moe_shared_hidden, "a shared expert needs mlp='moe'")

    def _check_gemma4(self) -> None:
        """Gemma 4's switches: KV sharing needs a layer of each kind before the sharing ones."""
        K = self.kv_shared_layers
        for name in ("kv_shared_layers", "per_layer_input", "per_layer_vocab",
                     "global_head_size", "logit_softcap", "global_kv_heads"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "give 0 (none) or a positive number")
        if K >= self.n_layer:
            _fail("kv_shared_layers", K, f"at most n_layer - 1 = {self.n_layer - 1}: some "
                  "layer must make the keys and values the others reuse")
        if K and (self.kv_lora_rank or self.full_attention_interval or self.attn_output_gate):
            _fail("kv_shared_layers", K, "KV sharing is for ordinary attention layers (no "
                  "latent attention, Gated DeltaNet layers or output gate)")
        first_shared = self.n_layer - K
        kinds = {self.layer_is_local(i) for i in range(first_shared)}
        for layer in range(first_shared, self.n_layer):
            if self.layer_is_local(layer) not in kinds:
                kind = "local" if self.layer_is_local(layer) else "global"
                _fail("kv_shared_layers", K, f"layer {layer} is {kind} and no {kind} layer "
                      "before the sharing ones makes keys for it")
        if self.per_layer_vocab and not self.per_layer_input:
            _fail("per_layer_vocab", self.per_layer_vocab, "it sizes the per-layer input "
                  "embedding: set per_layer_input")
        if self.global_head_size % 2:
            _fail("global_head_size", self.global_head_size, "RoPE turns pairs: an even width")
        if self.global_kv_heads and self.n_head % self.global_kv_heads:
            _fail("global_kv_heads", self.global_kv_heads, f"it must divide n_head={self.n_head}")
        if (self.global_head_size or self.rope_proportional or self.global_kv_heads
                or self.global_k_is_v) and not (
                self.sliding_window_pattern and self.positions == "rope"
                and self.rope_scaling in ("none", "linear") and self.rope_fraction == 1.0
                and not self.kv_lora_rank):
            name = next(n for n in ("global_head_size", "rope_proportional", "global_kv_heads",
                                    "global_k_is_v") if getattr(self, n))
            _fail(name, getattr(self, name), "it is for the global layers of a "
                  "sliding_window_pattern, with RoPE unscaled or linear")
        if not 0.0 <= self.rope_proportional <= 1.0:
            _fail("rope_proportional", self.rope_proportional, "give a fraction in [0, 1]")
        if self.kv_shared_mlp_double and not K:
            _fail("kv_shared_mlp_double", True, "it widens the KV-sharing layers' MLP: set "
                  "kv_shared_layers")

    @property
    def kv_heads(self) -> int:
        """Key/value heads: `n_kv_head`, or one per query head when it is 0."""
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        """Width of each head: `head_size`, or n_embd / n_head when it is 0. With latent
        attention, the width of a query or key head (qk_nope_head_dim + qk_rope_head_dim)."""
        if self.kv_lora_rank:
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_size or self.n_embd // self.n_head

    @property
    def rope_dim(self) -> int:
        """How many features of each head RoPE rotates: all of them, the first
        `rope_fraction` of them (Qwen3-Next: a quarter; the rest pass unrotated), or
        latent attention's qk_rope_head_dim."""
        if self.kv_lora_rank:
            return self.qk_rope_head_dim
        return int(self.head_dim * self.rope_fraction)

    @property
    def cache_widths(self) -> tuple[int, int, int]:
        """What the KV cache holds per token and layer: (heads, key width, value width).

        Keys and values of `kv_heads` heads of `head_dim`; with latent attention,
        one "head" holding the latent (kv_lora_rank) in place of keys and the
        shared RoPE key (qk_rope_head_dim) in place of values.
        """
        if self.kv_lora_rank:
            return 1, self.kv_lora_rank, self.qk_rope_head_dim
        return self.kv_heads, self.head_dim, self.head_dim

    def layer_head_dim(self, layer: int) -> int:
        """Layer `layer`'s head width: `global_head_size` if set and it is global, else head_dim."""
        if self.global_head_size and not self.layer_is_local(layer):
            return self.global_head_size
        return self.head_dim

    def layer_kv_heads(self, layer: int) -> int:
        """Layer `layer`'s key/value heads: `global_kv_heads` if set and it is global, else
        kv_heads."""
        if self.global_kv_heads and not self.layer_is_local(layer):
            return self.global_kv_heads
        return self.kv_heads

    def layer_cache_widths(self, layer: int) -> tuple[int, int, int]:
        """`cache_widths` of layer `layer`: (heads, key width, value width)."""
        if self.kv_lora_rank:
            return self.cache_widths
        Dh = self.layer_head_dim(layer)  # (Gemma 4's global layers: other heads)
        return self.layer_kv_heads(layer), Dh, Dh

    def layer_is_dense(self, layer: int) -> bool:
        """Whether layer `layer` (from 0) of a Mixture-of-Experts model has a plain MLP."""
        return self.mlp == "moe" and layer < self.moe_dense_layers

    @property
    def mlp_dim(self) -> int:
        """Hidden width of the MLP: `mlp_hidden`, or GPT-2's 4 * n_embd when it is 0."""
        return self.mlp_hidden or 4 * self.n_embd

    def layer_is_linear(self, layer: int) -> bool:
        """Whether layer `layer` (from 0) is a Gated DeltaNet layer: with
        full_attention_interval P > 0, all but layers P, 2P, ... (counting from 1)."""
        P = self.full_attention_interval
        return P > 0 and (layer + 1) % P != 0

    def layer_is_local(self, layer: int) -> bool:
        """Whether layer `layer` (from 0) attends through the sliding window (a local layer)."""
        if not self.sliding_window:
            return False
        P = self.sliding_window_pattern
        return P == 0 or (layer + 1) % P != 0

    @property
    def attention_kind(self) -> str:
        if self.kv_heads == self.n_head:
            return "multi-head"
        return "multi-query" if self.kv_heads == 1 else "grouped-query"

    @property
    def torch_dtype(self) -> torch.dtype:
        """This config's weight dtype as a torch dtype."""
        return torch_dtype(self.dtype)



def _fail(name: str, value, fix: str):
    raise LLMScratchError(f"model.{name}={value!r} is not valid: {fix}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, value, "choose one of " + ", ".join(repr(c) for c in choices))


def _check_deepseek(c: ModelConfig) -> None:
    """DeepSeek V3's switches: latent attention's sizes, and the MoE router's options."""
    mla = ("q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
    for name in ("kv_lora_rank", *mla, "n_shared_expert", "moe_dense_layers",
                 "dense_mlp_hidden", "rope_mscale_all_dim"):
        if getattr(c, name) < 0:
            _fail(name, getattr(c, name), "give 0 or a positive number")
    if c.kv_lora_rank:
        for name in mla[1:]:
            if getattr(c, name) < 1:
                _fail(name, getattr(c, name), "latent attention needs a positive width")
        if c.positions != "rope":
            _fail("positions", c.positions, "latent attention needs positions='rope'")
        if c.head_size or c.kv_heads != c.n_head:
            _fail("head_size" if c.head_size else "n_kv_head", c.head_size or c.n_kv_head,
                  "latent attention sets its own head widths and key/value heads: give 0")
        if c.qk_norm or c.bias or c.qkv_bias:
            _fail("qk_norm" if c.qk_norm else "bias", True,
                  "latent attention has no QK-norm and no biases here")
    else:
        for name in (*mla, "rope_interleave"):
            if getattr(c, name):
                _fail(name, getattr(c, name), "this is for latent attention: set kv_lora_rank")
    if c.rope_mscale_all_dim and (c.rope_scaling != "yarn" or not c.kv_lora_rank):
        _fail("rope_mscale_all_dim", c.rope_mscale_all_dim,
              "it scales latent attention's scores under yarn scaling only")
    _check_choice("moe_router", c.moe_router, ("softmax", "sigmoid"))
    moe_options = dict(n_shared_expert=c.n_shared_expert, moe_router=c.moe_router != "softmax",
                       moe_groups=c.moe_groups != 1, moe_groups_active=c.moe_groups_active != 1,
                       moe_routed_scale=c.moe_routed_scale != 1.0,
                       moe_dense_layers=c.moe_dense_layers)
    if c.mlp != "moe":
        for name, used in moe_options.items():
            if used:
                _fail(name, getattr(c, name), "this is an option of mlp='moe'")
        return
    if c.moe_groups < 1 or c.n_expert % c.moe_groups:
        _fail("moe_groups", c.moe_groups, f"give a number of groups that divides "
              f"n_expert={c.n_expert}")
    per_group = c.n_expert // c.moe_groups
    if c.moe_groups > 1 and per_group < 2:
        _fail("moe_groups", c.moe_groups, "a group is scored by its best two experts: "
              "give at least two experts per group")
    if not 1 <= c.moe_groups_active <= c.moe_groups:
        _fail("moe_groups_active", c.moe_groups_active,
              f"give between 1 and moe_groups={c.moe_groups}")
    if c.n_expert_active > c.moe_groups_active * per_group:
        _fail("moe_groups_active", c.moe_groups_active, f"its groups hold fewer experts than "
              f"n_expert_active={c.n_expert_active}")
    if c.moe_routed_scale <= 0:
        _fail("moe_routed_scale", c.moe_routed_scale, "give a positive number")
    if c.moe_dense_layers > c.n_layer:
        _fail("moe_dense_layers", c.moe_dense_layers, f"at most n_layer={c.n_layer}")
    if c.moe_dense_layers and not c.dense_mlp_hidden:
        _fail("dense_mlp_hidden", 0, "dense layers need a hidden width")
