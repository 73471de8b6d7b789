"""A preallocated key/value cache for fast autoregressive generation.

Without a cache, generating token t re-runs attention over all t previous
tokens. With one, each layer stores the keys and values it has already
computed, and a decode step only computes the newest token's.

The buffers are allocated once at their full size and written by position,
so tensor shapes never change between decode steps (friendly to
`torch.compile` and to the allocator).

Legend: B batch, Hkv key/value heads, T new tokens, Tmax cache capacity,
Dh head width.

The model talks to a cache through `pos`, `update` and `advance`. A cache
may instead attend itself: one with `positions` (each new token's position,
(B, T)) and `attend(layer, q, k, v, kernel, window)` (store k and v, return
the attention's output) is handed each layer's queries, keys and values
whole. The engine's paged cache works this way (generation/paged_cache.py),
so it decides where keys live and how they are read.
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
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)  # (B, Hkv, Tmax, Dh)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
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

    def reset(self) -> None:
        self.pos = 0
