"""LoRA: train a low-rank update beside each frozen weight matrix (Hu et al., 2021).

Legend: N any leading dimensions (batch, tokens), I in-features, O out-features,
r the adapter's rank (r << I, O).

A linear layer computes y = x W^T + b with W of shape (O, I). Fine-tuning
all of W costs O I trainable numbers per layer and their optimizer state.
LoRA freezes W and learns the change as a product of two thin matrices:

    y = x W^T + b  +  (alpha / r) * x A^T B^T        A: (r, I), B: (O, r)

Only A and B train: r (I + O) numbers instead of O I. B starts at zero, so
a fresh adapter leaves the model exactly as it was; A starts random
(kaiming-uniform, as in PEFT), so B's first gradients are not zero.
`alpha / r` (the "scaling") keeps the update's size comparable across
ranks. For inference the update can be folded into the weight once,
W' = W + (alpha / r) B A, and the model costs nothing extra ("merge").

    apply_lora(model, LoRAConfig(...))   wrap the matching nn.Linear layers, freeze the rest
    lora_state_dict(model)               the adapter tensors alone, to save
    merge_lora / unmerge_lora            fold the updates into the weights, and back
    remove_lora(model)                   merge, then plain nn.Linear again: a full model

Names. A wrapped layer keeps its weight and bias under the same names, so
`blocks.0.attn.qkv.weight` stays `blocks.0.attn.qkv.weight` (base checkpoints
load into a model with adapters, and back); the adapter adds
`blocks.0.attn.qkv.lora_A` (r, I) and `blocks.0.attn.qkv.lora_B` (O, r).

What LoRA does not reach here: the token embedding; the output layer
`lm_head`, because the model's loss heads read `lm_head.weight` directly
(model/heads.py) and would skip an adapter; and the experts of a Mixture of
Experts, which are stacked 3-D parameters (model/moe.py), not nn.Linear
layers. An MoE block's router is an nn.Linear, so `blocks.*.mlp.*` adapts it.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.errors import LLMScratchError

# Every block's attention projections (qkv and proj; DeepSeek's latent attention's q_a,
# q_b, kv_a, kv_b and proj) and its MLP's linear layers: GPT-2's fc and proj, Llama's and
# Qwen3's gate, up and proj, or an MoE block's router (and DeepSeek's shared expert).
DEFAULT_TARGETS = ("blocks.*.attn.*", "blocks.*.mlp.*")
OUTPUT_LAYER = "lm_head"


@dataclass
class LoRAConfig:
    """Which linear layers get an adapter, and its size.

    rank: r, the inner width of B A.
    alpha: the update is scaled by alpha / rank.
    dropout: dropout on the adapter's input while training (the base path never drops).
    targets: fnmatch patterns on module names (`model.named_modules()`), each of which
        must match at least one nn.Linear: "blocks.*.attn.qkv", "*.mlp.*", "blocks.0.*".
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise LLMScratchError(f"lora rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise LLMScratchError(f"lora alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise LLMScratchError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            raise LLMScratchError(f"lora targets must be a list of patterns, got the string "
                                  f"{self.targets!r}; write [{self.targets!r}]")
        if not self.targets:
            raise LLMScratchError("lora targets is empty; name the layers to adapt, "
                                  f"e.g. {list(DEFAULT_TARGETS)}")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: x W^T + b + s x A^T B^T.

    The layer's own `weight` (O, I) and `bias` (O) are taken over, same tensors,
    same names; `lora_A` (r, I) and `lora_B` (O, r) are new, in the weight's
    dtype and on its device.
    """

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # (O, I), frozen by apply_lora
        self.bias = linear.bias  # (O,) or None
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.dropout = dropout
        like = {"dtype": linear.weight.dtype, "device": linear.weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))  # (r, I)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))  # (O, r)
        # PEFT's initialisation (that of nn.Linear): uniform, bound 1 / sqrt(I).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False  # True while s B A is folded into `weight`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, I) -> (N, O)."""
        out = F.linear(x, self.weight, self.bias)  # (N, O)
        if self.merged:  # the update is already inside `weight`
            return out
        dropped = F.dropout(x, self.dropout, self.training)  # (N, I)
        down = dropped @ self.lora_A.T  # (N, r)
        return out + (down @ self.lora_B.T) * self.scaling  # (N, O)

    def delta_weight(self) -> torch.Tensor:
        """The update s B A as a weight matrix (O, I), computed in fp32."""
        return self.scaling * (self.lora_B.float() @ self.lora_A.float())  # (O, I)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A. Forward then skips the adapter path; nothing changes if merged."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s B A: the base weight again (to rounding in bf16)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def matching_linears(model: nn.Module, targets: list[str]) -> list[str]:
    """The names of the nn.Linear layers that `targets` match, in model order.

    Embeddings are not nn.Linear, so they are never matched, nor is the
    output layer (see the module docstring); a pattern that matches no
    layer is an error, so a typo never trains nothing.
    """
    linears = [name for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[-1] != OUTPUT_LAYER]
    for pattern in targets:
        if pattern.split(".")[-1] == OUTPUT_LAYER:
            raise LLMScratchError(
                f"lora target {pattern!r}: an adapter on the output layer is not supported "
                "(the loss heads read lm_head.weight directly and would skip it); train "
                "lm_head fully instead")
        if not any(fnmatch.fnmatchcase(name, pattern) for name in linears):
            examples = ", ".join(linears[:6]) or "(none)"
            raise LLMScratchError(
                f"lora target {pattern!r} matches no linear layer; linear layers are named "
                f"like {examples} (patterns are fnmatch-style, e.g. 'blocks.*.attn.qkv')")
    return [name for name in linears
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in targets)]


def add_lora_layer(model: nn.Module, name: str, rank: int, alpha: float,
                   dropout: float = 0.0) -> LoRALinear:
    """Replace the nn.Linear called `name` by a LoRALinear around it; returns the new layer."""
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    linear = getattr(parent, child_name)
    assert isinstance(linear, nn.Linear), f"{name} is {type(linear).__name__}, not nn.Linear"
    layer = LoRALinear(linear, rank, alpha, dropout)
    layer.train(linear.training)  # a model in eval mode stays in it: no adapter dropout
    setattr(parent, child_name, layer)
    return layer


def freeze_all_but_lora(model: nn.Module) -> None:
    """requires_grad only for the adapters' A and B."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith((".lora_A", ".lora_B")))


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Put an adapter on every nn.Linear that `config.targets` match; freeze everything else.

    In place. Returns the names of the adapted layers. A fresh adapter has
    B = 0, so the model computes exactly what it did before.
    """
    if lora_layers(model):
        raise LLMScratchError("the model already has LoRA layers; call remove_lora (or load a "
                              "fresh model) before applying another adapter")
    names = matching_linears(model, config.targets)
    for name in names:
        add_lora_layer(model, name, config.rank, config.alpha, config.dropout)
    freeze_all_but_lora(model)
    return names


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (for fast inference); undo with unmerge_lora."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged adapter back out of its base weight."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def remove_lora(model: nn.Module) -> list[str]:
    """Merge every adapter, then put plain nn.Linear layers back: a full model again.

    In place; returns the names of the layers changed. The state dict then
    has exactly the keys of a model that never had adapters. Parameters keep
    their requires_grad (apply_lora froze them): `model.requires_grad_(True)`
    to train the whole model.
    """
    layers = lora_layers(model)
    for name, layer in layers.items():
        layer.merge()
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device="meta")  # shapes only: the parameters are taken over below
        linear.weight, linear.bias = layer.weight, layer.bias
        linear.train(layer.training)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, linear)
    return list(layers)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, by their names in the model's state dict (`....lora_A/B`)."""
    return {name: tensor for name, tensor in model.state_dict().items()
            if name.endswith((".lora_A", ".lora_B"))}
