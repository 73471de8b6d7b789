"""A preallocated key/value cache for fast autoregressive generation.

Without a cache, generating token t re-runs attention over all t previous
tokens. With one, each layer stores the keys and values it has already
computed, and a decode step only computes the newest token's.

The buffers are allocated once at their full size and written by position,
so tensor shapes never change between decode steps (friendly to
`torch.compile` and to the allocator).

Legend: B batch, Hkv key/value heads, T new tokens, Tmax cache capacity,
Dh head width.

A layer of multi-head latent attention (DeepSeek V3, latent_attention.py)
caches no per-head keys and values: per token, one latent vector and one
RoPE key shared by all heads. It stores them as a single "head" in the two
buffers, the latent where keys go and the RoPE key where values go, of
widths `key_dim` and `value_dim` (config.cache_widths).

Gated DeltaNet layers (Qwen3-Next; model/linear_attention.py) keep no keys
and values: each keeps a fixed-size state instead, the last inputs of its
convolution and its memory matrices, rewritten in place at every step.
The model talks to a cache through `pos`, `update` and `advance`. A cache
may instead attend itself: one with `positions` (each new token's position,
(B, T)) and `attend(layer, q, k, v, kernel, window)` (store k and v, return
the attention's output) is handed each layer's queries, keys and values
whole, and, with `recur(layer, x, run)`, each Gated DeltaNet layer's input
and the layer itself, to run on the states it keeps per sequence. The
engine's paged cache works this way (generation/paged_cache.py), so it
decides where keys and states live and how they are read.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for up to `max_len` positions.

    `pos` is the number of positions already stored; the model reads it to
    place new tokens (positions pos .. pos+T-1) and advances it after a forward.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        value_dim: int = 0,
        recurrent: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
        uncached: list[int] | tuple[int, ...] = (),
        shapes: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        """recurrent: for each Gated DeltaNet layer, the shapes of its convolution state
        (B, C, K - 1) and of its memory (B, Hv, Dk, Dv); these layers get those (the
        memory in fp32) and no keys or values (None). uncached: layers that store nothing
        (Gemma 4's KV-sharing layers, which read an earlier layer's keys: kv_sharing.py).
        shapes: (heads, width) of the layers whose keys and values differ from the others'
        (Gemma 4's global layers)."""
        recurrent = recurrent or {}
        skip = set(recurrent) | set(uncached)
        shapes = shapes or {}
        self.keys, self.values = [], []
        for i in range(n_layer):
            heads, width = shapes.get(i, (n_kv_head, head_dim))  # (Hkv, Dh)
            value_width = width if i in shapes else value_dim or head_dim  # (MLA: its own)
            for buffers, last in ((self.keys, width), (self.values, value_width)):
                buffers.append(None if i in skip else torch.zeros(
                    (batch_size, heads, max_len, last), dtype=dtype, device=device))
        self.conv_states = {i: torch.zeros(conv, dtype=dtype, device=device)
                            for i, (conv, _) in recurrent.items()}
        self.recurrent_states = {i: torch.zeros(memory, dtype=torch.float32, device=device)
                                 for i, (_, memory) in recurrent.items()}
        self.max_len = max_len
        self.pos = 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, Hkv, T, Dh) and return all keys/values so far.

        Returns tensors of shape (B, Hkv, pos + T, Dh): views into the buffers.
        """
        new_len = self.pos + k.size(2)
        if new_len > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {new_len}")
        self.keys[layer][:, :, self.pos : new_len] = k
        self.values[layer][:, :, self.pos : new_len] = v
        return self.keys[layer][:, :, :new_len], self.values[layer][:, :, :new_len]

    def advance(self, n_tokens: int) -> None:
        """Called by the model once every layer has stored `n_tokens` new positions."""
        self.pos += n_tokens

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions and forget the rest; the next forward
        overwrites them (speculative decoding drops the draft tokens it rejects)."""
        if not 0 <= length <= self.pos:
            raise ValueError(f"cannot truncate a cache of {self.pos} positions to {length}")
        if self.recurrent_states and length < self.pos:
            raise ValueError("Gated DeltaNet layers' states hold every token: they cannot be "
                             "truncated")
        self.pos = length

    def reset(self) -> None:
        self.pos = 0
        for state in [*self.conv_states.values(), *self.recurrent_states.values()]:
            state.zero_()
