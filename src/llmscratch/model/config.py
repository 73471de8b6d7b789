"""The model's architecture, as one typed config, and named presets.

`ModelConfig` says everything needed to build `GPT` (model/transformer.py):
sizes (vocabulary, context, width, depth, heads) and the few switches that
change the architecture. Presets are looked up by exact name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from llmscratch.errors import LLMScratchError


@dataclass
class ModelConfig:
    """Architecture of a decoder-only transformer (GPT-2 family).

    Fields:
        vocab_size: number of token ids the embedding and output layer cover.
        context_length: longest sequence the model accepts (learned positions).
        n_layer: number of transformer blocks.
        n_head: attention heads per block; `n_embd` must divide by it.
        n_embd: width of the residual stream (d_model).
        mlp_hidden: width of the MLP's hidden layer; 0 means 4 * n_embd (GPT-2).
        dropout: dropout probability (0.0 for pretraining small models on CPU).
        bias: biases in Linear layers and LayerNorms (GPT-2: True).
        tie_embeddings: the output layer reuses the token embedding matrix.
        norm_eps: LayerNorm epsilon (GPT-2: 1e-5).
        attn_impl: "sdpa" (fused kernel, for speed) or "explicit" (mask + softmax,
            for reading). Both compute the same function; weights don't change.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_hidden: int = 0
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise LLMScratchError(
                    f"model.{name} must be positive, got {getattr(self, name)}"
                )
        if self.n_embd % self.n_head:
            raise LLMScratchError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}; "
                "pick a head count that divides the width"
            )
        if self.attn_impl not in ("sdpa", "explicit"):
            raise LLMScratchError(
                f"model.attn_impl must be 'sdpa' or 'explicit', got {self.attn_impl!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise LLMScratchError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_dim(self) -> int:
        """Hidden width of the MLP: `mlp_hidden`, or GPT-2's 4 * n_embd when it is 0."""
        return self.mlp_hidden or 4 * self.n_embd


# GPT-2 sizes are those of OpenAI's release (and Hugging Face's GPT2LMHeadModel).
# The small presets are for the CPU demo and for fast tests.
PRESETS: dict[str, ModelConfig] = {
    "gpt2": ModelConfig(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": ModelConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": ModelConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": ModelConfig(n_layer=48, n_head=25, n_embd=1600),
    # ~3.7M parameters: what the 10-minute CPU demo trains (see configs/demo.yaml).
    "gpt2-demo": ModelConfig(vocab_size=4096, context_length=256, n_layer=6, n_head=6, n_embd=192),
    # A few thousand parameters: for tests that must run in milliseconds.
    "gpt2-tiny": ModelConfig(vocab_size=512, context_length=64, n_layer=2, n_head=2, n_embd=32),
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
