"""Batches of (input, target) token windows, reproducible from (seed, step).

The training text is one long array of token ids. A batch is `batch_size`
windows of `seq_len + 1` consecutive tokens: the first `seq_len` are the
input, the same window shifted by one is the target (next-token prediction).

Order: each epoch cuts the array into non-overlapping windows starting at a
random offset, and visits them in a random order, so every token is seen once
per epoch. Both are drawn from a generator seeded by (seed, epoch), so the
batch at any step can be rebuilt from nothing but the step number: resuming a
run needs no loader state beyond the step it stopped at.
"""

from __future__ import annotations

import numpy as np
import torch

from llmscratch.errors import LLMScratchError


class TokenBatches:
    """Deterministic batches of windows from a 1-D array of token ids."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        if len(tokens) < seq_len + 2:
            raise LLMScratchError(
                f"the training text has {len(tokens)} tokens, fewer than one window of "
                f"{seq_len + 1}; give more text or a smaller train.seq_len"
            )
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        # Windows per epoch: leave room for the random offset and the shifted target.
        self.windows_per_epoch = (len(tokens) - seq_len - 1) // seq_len
        self._epoch = -1
        self._starts = torch.empty(0, dtype=torch.int64)

    def _epoch_starts(self, epoch: int) -> torch.Tensor:
        """Shuffled window start positions for one epoch (cached for the current one)."""
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            offset = int(torch.randint(0, self.seq_len, (1,), generator=gen))
            order = torch.randperm(self.windows_per_epoch, generator=gen)
            self._starts = offset + order * self.seq_len
            self._epoch = epoch
        return self._starts

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `index`-th batch of the run: inputs and targets, each (B, T) int64."""
        first = index * self.batch_size
        rows = []
        for i in range(first, first + self.batch_size):
            epoch, pos = divmod(i, self.windows_per_epoch)
            start = int(self._epoch_starts(epoch)[pos])
            rows.append(self.tokens[start : start + self.seq_len + 1])
        windows = torch.stack(rows)  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]  # inputs (B, T), targets (B, T)

    def epochs(self, n_batches: int) -> float:
        """How many passes over the data `n_batches` batches make."""
        return n_batches * self.batch_size / self.windows_per_epoch
