"""The model's architecture, as one typed config, and named presets.

`ModelConfig` says everything needed to build `GPT` (model/transformer.py).
GPT-2, Llama 3, Qwen3, Qwen3-MoE, Gemma 3, Olmo 3 and Qwen3-Next are one
model with different switches:

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

Qwen3-Next (`qwen3-next-80b-a3b`) is Qwen3-MoE with four more switches:
`full_attention_interval` 4 (three Gated DeltaNet layers, linear attention
with a fixed-size memory, to one full-attention layer), `attn_output_gate`,
`rope_fraction` 0.25 and `moe_shared_hidden`; its RMSNorms are zero-centred.
Qwen3.5's dense text models are the same with `mlp` "swiglu" (`qwen3.5-tiny`).

Sizes that are usually derived have a 0 default meaning "derive it", read
through a property: `n_kv_head` -> `kv_heads`, `head_size` -> `head_dim`,
`mlp_hidden` -> `mlp_dim`. Presets are looked up by exact name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

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
    Olmo 3).

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
        mlp: "gelu" (GPT-2), "swiglu" (Llama, Qwen, Olmo), "geglu" (Gemma: the
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

    def __post_init__(self) -> None:
        check_fields(self, "model.")  # types, and whole numbers that fit 64 bits
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "give a positive number")
        for name in ("n_kv_head", "head_size", "mlp_hidden", "sliding_window",
                     "sliding_window_pattern", "attn_scalar", "rope_local_theta"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "give 0 (derive it) or a positive number")
        if self.head_size == 0 and self.n_embd % self.n_head:
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
        _check_choice("mlp", self.mlp, ("gelu", "swiglu", "geglu", "moe"))
        _check_choice("qk_norm_scope", self.qk_norm_scope, ("head", "all"))
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("attn_impl", self.attn_impl, ("auto", "sdpa", "explicit"))
        _check_choice("head_pooling", self.head_pooling, ("last", "mean"))
        if self.head_outputs < 0:
            _fail("head_outputs", self.head_outputs, "give 0 (no head) or a positive number")
        if self.positions == "rope" and self.head_dim % 2:
            _fail("head_size", self.head_dim, "RoPE rotates pairs of features: use an even width")
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
        self._check_qwen3_next()

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

    @property
    def kv_heads(self) -> int:
        """Key/value heads: `n_kv_head`, or one per query head when it is 0."""
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        """Width of each head: `head_size`, or n_embd / n_head when it is 0."""
        return self.head_size or self.n_embd // self.n_head

    @property
    def mlp_dim(self) -> int:
        """Hidden width of the MLP: `mlp_hidden`, or GPT-2's 4 * n_embd when it is 0."""
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def rope_dim(self) -> int:
        """How many features of each head RoPE rotates: all of them, or the first
        `rope_fraction` of them (Qwen3-Next: a quarter); the rest pass unrotated."""
        return int(self.head_dim * self.rope_fraction)

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

    @classmethod
    def from_preset(cls, name: str) -> ModelConfig:
        """The preset `name` (a YAML model section may start with `preset: NAME`)."""
        return get_preset(name)


def _fail(name: str, value, fix: str):
    raise LLMScratchError(f"model.{name}={value!r} is not valid: {fix}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, value, "choose one of " + ", ".join(repr(c) for c in choices))


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
    # 1.7M parameters: the demo's model where fewer than 2,000 steps of gpt2-demo fit in
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
    "olmo-3-7b": _olmo3(n_layer=32, n_head=32, n_embd=4096, mlp_hidden=11008),
    "olmo-3-32b": _olmo3(n_layer=64, n_head=40, n_kv_head=8, n_embd=5120, mlp_hidden=27648),
    # Four layers: three local (a window of 8 tokens) and one global.
    "olmo3-tiny": _olmo3(vocab_size=512, context_length=256, n_layer=4, n_head=4, n_kv_head=2,
                         n_embd=64, mlp_hidden=128, sliding_window=8, rope_factor=4.0,
                         rope_original_context=16, rope_attention_factor=0.1 * math.log(4.0) + 1,
                         dtype="fp32"),
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
