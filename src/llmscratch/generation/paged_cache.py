"""The paged KV cache's memory, and the view of it that the model reads for one batch.

Legend: N slots (blocks x block_size), L layers, Hkv key/value heads, Dh head
width, B sequences in the batch, T new tokens of the longest, S = the longest
sequence's cached + new tokens.

`PagedKVCache` holds every layer's keys and values as one tensor of slots,
(N, Hkv, Dh): slot `block * block_size + offset` is a token position of
whichever sequence owns that block (block_manager.py).

`BatchCache` is what the model sees during one engine step. It has the
interface of the dense cache (model/kv_cache.py: `pos`, `update`, `advance`),
so the model's own attention runs unchanged over it: for each layer it
writes the new tokens' keys and values into their slots, then gathers every
sequence's keys and values, left-padded to the longest:

    sequence a (5 cached, 1 new):   . . . a0 a1 a2 a3 a4 a5
    sequence b (0 cached, 4 new):   . . . . . b0 b1 b2 b3 ...   (S = 9 here)

The model is given the matching attention mask, so padding is invisible and
each token's position is its index among real tokens. The new tokens of a
sequence are the last ones of its row, as the model expects of a cache.
"""

from __future__ import annotations

import torch

from llmscratch.model.config import ModelConfig


class PagedKVCache:
    """Keys and values of every layer, in slots of `block_size` positions per block."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        # (N, Hkv, Dh); latent attention (DeepSeek) keeps its latents and RoPE keys instead
        heads, key_width, value_width = config.cache_widths
        self.keys = [torch.zeros(num_blocks * block_size, heads, key_width, dtype=dtype,
                                 device=device) for _ in range(config.n_layer)]
        self.values = [torch.zeros(num_blocks * block_size, heads, value_width, dtype=dtype,
                                   device=device) for _ in range(config.n_layer)]
        self.num_blocks, self.block_size = num_blocks, block_size
        # Where a layer's gathered keys and values go: buffers reused by every layer and step
        # (attention is done with one layer's before the next layer gathers). Allocating them
        # afresh costs more than the copy: the operating system hands a large allocation over
        # page by page, and on 2 cores that is slower than the gather itself.
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, numel: int) -> torch.Tensor:
        """A reusable flat buffer of at least `numel` elements (grown when too small)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[name] = torch.empty(numel, dtype=self.keys[0].dtype,
                                                       device=self.keys[0].device)
        return buffer[:numel]

    def bytes_per_block(self) -> int:
        """Memory one block takes, keys and values of every layer."""
        per_slot = sum(t[0].numel() * t.element_size() for t in self.keys + self.values)
        return per_slot * self.block_size


class BatchCache:
    """One step's view of the paged cache (see the module docstring).

    block_tables: each sequence's blocks; cached: how many of its tokens the
    cache already holds; new: how many it computes this step (its input row
    ends with them; T = the longest `new`).
    """

    def __init__(self, cache: PagedKVCache, block_tables: list[list[int]], cached: list[int],
                 new: list[int], device: torch.device) -> None:
        self.cache = cache
        totals = [c + n for c, n in zip(cached, new, strict=True)]
        self.T, self.S = max(new), max(totals)
        bs = cache.block_size

        def slot(table: list[int], position: int) -> int:
            return table[position // bs] * bs + position % bs

        # Where this step's real new tokens go: (row, column in the input, slot).
        rows, columns, slots = [], [], []
        for i, (table, c, n) in enumerate(zip(block_tables, cached, new, strict=True)):
            for j in range(n):
                rows.append(i)
                columns.append(self.T - n + j)
                slots.append(slot(table, c + j))
        self.write_rows = torch.tensor(rows, device=device)
        self.write_columns = torch.tensor(columns, device=device)
        self.write_slots = torch.tensor(slots, device=device)
        # Which slot each key position of the left-padded (B, S) layout reads; padding
        # reads slot 0, and the attention mask hides it.
        gather = torch.zeros(len(totals), self.S, dtype=torch.int64)
        self.attention_mask = torch.zeros(len(totals), self.S, dtype=torch.int64)
        for i, (table, total) in enumerate(zip(block_tables, totals, strict=True)):
            gather[i, self.S - total:] = torch.tensor([slot(table, p) for p in range(total)])
            self.attention_mask[i, self.S - total:] = 1
        self.gather = gather.to(device)  # (B, S)
        self.attention_mask = self.attention_mask.to(device)  # (B, S)

    @property
    def pos(self) -> int:
        """Key positions before the T new ones in the padded layout (the model places the
        new tokens after them)."""
        return self.S - self.T

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' k, v (B, Hkv, T, Dh); return all of them (B, Hkv, S, Dh)."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]  # (N, Hkv, Dh)
        keys[self.write_slots] = k[self.write_rows, :, self.write_columns]  # (n, Hkv, Dh)
        values[self.write_slots] = v[self.write_rows, :, self.write_columns]
        return self._gather(keys, "keys"), self._gather(values, "values")

    def _gather(self, slots: torch.Tensor, name: str) -> torch.Tensor:
        """Every sequence's keys (or values) from their slots (N, Hkv, Dh): (B, Hkv, S, Dh)."""
        (B, S), (_, Hkv, Dh) = self.gather.shape, slots.shape
        rows = self.cache.buffer(name, B * S * Hkv * Dh).view(B * S, Hkv, Dh)
        torch.index_select(slots, 0, self.gather.view(-1), out=rows)  # one row per position
        gathered = rows.view(B, S, Hkv, Dh).transpose(1, 2)  # (B, Hkv, S, Dh), a strided view
        if slots.dtype == torch.float32 or slots.device.type != "cpu":
            return gathered  # attention reads the view as fast as a contiguous copy
        # PyTorch's CPU attention reads bf16 keys from this view far slower than contiguous
        # ones: reorder them first (on a 2-core AMD EPYC, 64 sequences of 768 positions:
        # 70 ms a layer for gather and attention from the view, 25 ms with this copy).
        contiguous = self.cache.buffer(name + " contiguous", rows.numel()).view(B, Hkv, S, Dh)
        return contiguous.copy_(gathered)

    def advance(self, n_tokens: int) -> None:
        """Lengths are the engine's to keep: nothing to do here."""
