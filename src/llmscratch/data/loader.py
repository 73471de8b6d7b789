"""Batches of token windows from one or many shards, deterministic and resumable.

The training tokens are one or more 1-D arrays: an array in memory (text
tokenized at the start of a run) or shards memory-mapped from disk
(`llmscratch data prepare`). A training example is a window of `seq_len + 1`
consecutive tokens of one array: the first `seq_len` are the input, the same
window shifted by one is the target (next-token prediction).

Order. An epoch cuts every array into non-overlapping windows, all starting
at one random offset, and visits all of them in one random order, so every
token is seen once per epoch. Offset and order come from a generator seeded
by (seed, epoch): the k-th window of the run can be rebuilt from k alone.

Batches and ranks. Global batch number i is made of windows
i * G .. (i + 1) * G - 1 of that order, where G = batch_size * world_size.
Data-parallel rank r takes the r-th slice of batch_size windows, so ranks
never share a window, and together they read exactly the windows one process
would read with a batch of G: the run's data does not depend on how many
processes share it.

State. The loader's position is the number of global batches handed out.
`state_dict()` holds it with what it depends on (seed, window count, sizes);
it is saved in each checkpoint, so a resumed run continues with exactly the
batch the uninterrupted run would have taken next.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llmscratch.errors import LLMScratchError


class TokenWindows:
    """Deterministic (inputs, targets) batches from 1-D token arrays, one rank's share."""

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise LLMScratchError(f"rank {rank} is outside a world of {world_size} processes")
        self.arrays = list(arrays)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        # Windows per array: leave room for the random offset and the shifted target.
        counts = [max((len(a) - seq_len - 1) // seq_len, 0) for a in self.arrays]
        self.windows_per_epoch = sum(counts)
        if self.windows_per_epoch == 0:
            longest = max((len(a) for a in self.arrays), default=0)
            raise LLMScratchError(
                f"the training data has no window of {seq_len + 1} tokens (longest array: "
                f"{longest} tokens); give more text or a smaller train.seq_len"
            )
        self._first_window = np.cumsum([0] + counts)  # (A + 1,) window number where array a starts
        self.position = 0  # global batches handed out so far
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.int64)
        self._offset = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _epoch_order(self, epoch: int) -> tuple[torch.Tensor, int]:
        """The epoch's window order and start offset (cached for the current epoch)."""
        if epoch != self._epoch:
            # Modulo 2^63: a valid seed (config.check_seed) whatever the run's seed.
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._offset = int(torch.randint(0, self.seq_len, (1,), generator=gen))
            self._order = torch.randperm(self.windows_per_epoch, generator=gen)
            self._epoch = epoch
        return self._order, self._offset

    def window(self, k: int) -> np.ndarray:
        """The k-th window of the run: seq_len + 1 token ids."""
        epoch, pos = divmod(k, self.windows_per_epoch)
        order, offset = self._epoch_order(epoch)
        w = int(order[pos])
        a = int(np.searchsorted(self._first_window, w, side="right")) - 1  # which array
        start = offset + (w - int(self._first_window[a])) * self.seq_len
        return self.arrays[a][start : start + self.seq_len + 1]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of global batch `index`: inputs and targets, each (B, T) int64."""
        first = index * self.global_batch + self.rank * self.batch_size
        rows = [np.asarray(self.window(k)) for k in range(first, first + self.batch_size)]
        windows = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]  # inputs (B, T), targets (B, T)

    def next_batch(self, policy: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at the current position; advances the position by one.

        `policy`, the model being trained, is what the training loop offers every
        data source (RL samples from it); windows of text do not depend on it.
        """
        batch = self.batch(self.position)
        self.position += 1
        return batch

    def epochs(self, n_batches: int) -> float:
        """How many passes over the data `n_batches` global batches make."""
        return n_batches * self.global_batch / self.windows_per_epoch

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "seq_len": self.seq_len,
                "global_batch": self.global_batch, "windows_per_epoch": self.windows_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the data and batch shape must be the same."""
        if not state:  # a checkpoint from before loaders had state: position = batches so far
            return
        mine = self.state_dict()
        changed = [k for k in ("seed", "seq_len", "global_batch", "windows_per_epoch")
                   if state.get(k) != mine[k]]
        if changed:
            k = changed[0]
            raise LLMScratchError(
                f"the checkpoint's data order does not fit this run: {k} was {state.get(k)}, "
                f"now {mine[k]}; resume with the same data, seed and global batch"
            )
        self.position = int(state["position"])
