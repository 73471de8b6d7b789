"""KV sharing across layers (Gemma 3n and Gemma 4): late layers reuse earlier layers' keys.

Legend: B batch, T tokens (queries), S keys, D width, H query heads, Hkv
key/value heads, Dh head width, L layers, K = `kv_shared_layers`.

Every attention layer normally makes its own keys and values and keeps them
in the KV cache: the cache grows by 2 L Hkv Dh numbers per token. Gemma 4
lets the last K layers make queries only. Each of them attends over the keys
and values of one earlier layer, its *source*: the last layer before the
shared ones that is of the same kind (local, with the sliding window, or
global). Eight layers, local (l) and global (G), the last K = 3 sharing:

    layer   0    1    2    3    4   | 5     6     7
    kind    l    l    G    l    l   | l     G     l
    keys    own  own  own  own  own | of 4  of 2  of 4

Layers 5 to 7 still have their own queries, norms, MLP and output
projection: they ask their own questions, of the memory layers 4 and 2
made. The cache holds L - K layers only: Gemma 4 E2B's 35 layers cache 15
(K = 20). The sharing layers have no key or value projections either,
which saves their weights; Gemma 4 gives them a double-wide MLP instead
(`kv_shared_mlp_double`).

Every non-sharing layer publishes the keys and values it attends over in a
dict, by kind; the last one of each kind to publish before the sharing
layers is their source, so a sharing layer just reads its kind's entry:

- without a cache, or with the dense one: all S keys and values (B, Hkv, S, Dh);
- with the engine's paged cache: this step's new keys and values, which the
  sharing layer hands to the cache's `attend` as its own: the paged cache
  gives a sharing layer its source's slots (generation/paged_cache.py), so
  it writes the same numbers where they already are and reads the source's
  cached keys.

ModelConfig checks that every sharing layer has a source (config.py, `_check_gemma4`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from llmscratch.model.attention import CausalSelfAttention, SharedKV
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.rope import apply_rope

if TYPE_CHECKING:
    from llmscratch.model.config import ModelConfig


def kv_source(config: ModelConfig, layer: int) -> int | None:
    """The layer whose keys and values layer `layer` (from 0) attends over: None if it makes
    its own, else the last layer before the K sharing ones of the same kind (local or
    global)."""
    first_shared = config.n_layer - config.kv_shared_layers
    if layer < first_shared:
        return None
    local = config.layer_is_local(layer)
    return max(j for j in range(first_shared) if config.layer_is_local(j) == local)


def caches_keys(config: ModelConfig, layer: int) -> bool:
    """Whether layer `layer` keeps keys and values of its own in a KV cache (not a sharing
    layer, and not a Gated DeltaNet layer, which keeps a state instead)."""
    return not config.layer_is_linear(layer) and kv_source(config, layer) is None


class SharedKVAttention(CausalSelfAttention):
    """An attention layer that makes queries only and attends over its source layer's keys
    and values (the `shared` dict, filled by the layers before it)."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        q_width = config.n_head * self.head_dim  # H Dh: queries only
        self.split_sizes = [q_width]
        self.qkv = torch.nn.Linear(config.n_embd, q_width, bias=config.bias or config.qkv_bias)
        self.k_norm = None  # the source normalised its keys

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        visible: torch.Tensor | None = None,
        shared: SharedKV | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D); `shared[window]` holds the source's (k, v)."""
        B, T, _ = x.shape
        H, Dh = self.n_head, self.head_dim
        q = self.qkv(x)  # (B, T, H Dh)
        if self.qk_norm == "all":
            q = self.q_norm(q)
        q = q.view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
        if self.qk_norm == "head":
            q = self.q_norm(q)
        if rope is not None:
            q = apply_rope(q, *rope)
        k, v = shared[self.window]  # (B, Hkv, S, Dh): the source's, already normed and rotated
        if cache is not None and hasattr(cache, "attend"):  # the paged cache: source's slots
            context = cache.attend(self.layer_idx, q, k, v, self.attention, self.window)
        else:
            context = self.attention(q, k, v, visible)  # (B, H, T, Dh)
        context = context.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, H Dh)
        return F.dropout(self.proj(context), self.dropout, self.training)  # (B, T, D)
