"""Batches of fine-tuning examples: shuffled each epoch, padded or packed, resumable.

Pretraining reads windows cut from one long text (data/loader.py). Fine-tuning
reads examples, each a short sequence with what to learn from it:

- classification: token ids and a label (one per sequence);
- instruction tuning: token ids and a target per position: the next token
  where the answer is learned, -100 (IGNORE) where nothing is, such as the
  prompt of an instruction and the padding.

Rows. A batch is a few rows of equal length. By default a row holds one
example, padded on the right (or the left, `pad_side`) to the longest in its
batch. With packing, examples are laid end to end in rows of `pack_len`
tokens, so almost no token is padding; the attention mask numbers them (1, 2,
3, ...) and the model keeps them apart (model/transformer.py: each sees only
its own tokens, its positions starting from 0). Packing is done once, after
a seeded shuffle; the rows are then shuffled each epoch.

Order, ranks and state are those of the pretraining loader: epoch e visits
the rows in an order seeded by (seed, e); global batch i is rows i * G ..
(i + 1) * G - 1 of the run's order, G = batch_size * world_size, and rank r
takes the r-th slice of batch_size rows. The position (global batches handed
out) is saved in each checkpoint, so a resumed run reads the batch the
uninterrupted run would have read next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmscratch.errors import LLMScratchError

IGNORE = -100  # a target that is not learned (F.cross_entropy's ignore_index)


@dataclass
class Example:
    """One fine-tuning example: `ids`, and `targets` (same length) or a `label`."""

    ids: list[int]
    targets: list[int] | None = None
    label: int | None = None
    reference_logp: float | None = None  # DPO: the reference model's log p(response | prompt)


@dataclass
class Batch:
    """B rows of T tokens (see the module docstring).

    input_ids: (B, T) int64. attention_mask: (B, T) int64, 0 for padding and
    the example's number within its row (1, 2, ...) for its tokens.
    targets: (B, T) next-token targets, IGNORE where nothing is learned; or None.
    labels: (B,) class labels; or None.
    reference_logps: (B,) fp32 the reference model's log-probability of each row's
    targets (DPO); or None.
    causal_is_enough: each row is one example padded on the right. Causal
    attention alone then keeps every real token from seeing padding (it all
    comes later) and positions start at 0 as they should, so the model needs
    no mask, and takes the fused causal kernel, faster than one given a mask
    tensor. (A classifier's head still reads the mask to find the last token.)
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    causal_is_enough: bool = False
    reference_logps: torch.Tensor | None = None

    @property
    def model_mask(self) -> torch.Tensor | None:
        """The attention mask the model needs: None when causal attention is enough."""
        return None if self.causal_is_enough else self.attention_mask

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(move(self.input_ids), move(self.attention_mask), move(self.targets),
                     move(self.labels), self.causal_is_enough, move(self.reference_logps))


def pack(examples: Sequence[Example], pack_len: int) -> list[list[Example]]:
    """Lay examples end to end in rows of at most `pack_len` tokens (next fit, in order)."""
    rows, row, used = [], [], 0
    for example in examples:
        if len(example.ids) > pack_len:
            raise LLMScratchError(f"an example of {len(example.ids)} tokens does not fit a "
                                  f"packed row of {pack_len}")
        if used + len(example.ids) > pack_len:
            rows.append(row)
            row, used = [], 0
        row.append(example)
        used += len(example.ids)
    if row:
        rows.append(row)
    return rows


def collate(rows: Sequence[Sequence[Example]], pad_id: int = 0, pad_side: str = "right",
            width: int = 0) -> Batch:
    """One Batch from rows of examples, padded to the longest row (or to `width`)."""
    width = max(width, max(sum(len(e.ids) for e in row) for row in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    has_targets = rows[0][0].targets is not None
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.int64) if has_targets else None
    for i, row in enumerate(rows):
        used = sum(len(e.ids) for e in row)
        start = width - used if pad_side == "left" else 0
        for number, example in enumerate(row, start=1):
            span = slice(start, start + len(example.ids))
            ids[i, span] = torch.tensor(example.ids)
            mask[i, span] = number
            if targets is not None:
                targets[i, span] = torch.tensor(example.targets)
            start += len(example.ids)
    labels = None
    if rows[0][0].label is not None:
        labels = torch.tensor([row[0].label for row in rows], dtype=torch.int64)  # (B,)
    reference = None
    if rows[0][0].reference_logp is not None:
        reference = torch.tensor([row[0].reference_logp for row in rows],
                                 dtype=torch.float32)  # (B,)
    one_each = all(len(row) == 1 for row in rows)
    return Batch(ids, mask, targets, labels, causal_is_enough=one_each and pad_side == "right",
                 reference_logps=reference)


class ExampleBatches:
    """Deterministic batches of fine-tuning examples, one rank's share (module docstring)."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, pack_len: int = 0, pad_id: int = 0,
                 pad_side: str = "right") -> None:
        if not examples:
            raise LLMScratchError("there are no training examples")
        if pack_len:
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
            self.rows = pack([examples[i] for i in order.tolist()], pack_len)
        else:
            self.rows = [[e] for e in examples]
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.pad_id, self.pad_side, self.pack_len = pad_id, pad_side, pack_len
        self.position = 0  # global batches handed out so far
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.int64)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def row(self, k: int) -> list[Example]:
        """The k-th row of the run's order."""
        epoch, pos = divmod(k, len(self.rows))
        if epoch != self._epoch:
            # Modulo 2^63: a valid seed (config.check_seed) whatever the run's seed.
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._order, self._epoch = torch.randperm(len(self.rows), generator=gen), epoch
        return self.rows[int(self._order[pos])]

    def batch_rows(self, index: int) -> list[list[Example]]:
        """The rows of this rank's part of global batch `index`."""
        first = index * self.global_batch + self.rank * self.batch_size
        return [self.row(k) for k in range(first, first + self.batch_size)]

    def batch(self, index: int) -> Batch:
        """This rank's part of global batch `index`."""
        return collate(self.batch_rows(index), self.pad_id, self.pad_side, self.pack_len)

    def next_batch(self, policy: object = None) -> Batch:
        """The batch at the current position; advances it (`policy` is not needed here)."""
        batch = self.batch(self.position)
        self.position += 1
        return batch

    def epochs(self, n_batches: int) -> float:
        """How many passes over the rows `n_batches` global batches make."""
        return n_batches * self.global_batch / len(self.rows)

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "rows": len(self.rows),
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the examples and batch shape must be the same."""
        mine = self.state_dict()
        changed = [k for k in ("seed", "rows", "global_batch") if state.get(k) != mine[k]]
        if changed:
            k = changed[0]
            raise LLMScratchError(
                f"the checkpoint's data order does not fit this run: {k} was {state.get(k)}, "
                f"now {mine[k]}; resume with the same data, seed and batch size")
        self.position = int(state["position"])


class PairBatches(ExampleBatches):
    """Batches of preference pairs, in the order and resumable state of ExampleBatches.

    A pair is a row here: [chosen, rejected], each an Example of prompt +
    response. A batch of P pairs is one Batch of 2P rows, each padded on the
    right: the P chosen responses, then the P rejected ones in the same order
    (training/objectives.py splits them in halves).
    """

    def __init__(self, pairs: Sequence[tuple[Example, Example]], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, pad_id: int = 0) -> None:
        super().__init__([chosen for chosen, _ in pairs], batch_size, seed, rank, world_size,
                         pad_id=pad_id)
        self.rows = [[chosen, rejected] for chosen, rejected in pairs]

    def batch(self, index: int) -> Batch:
        rows = self.batch_rows(index)
        return collate([[chosen] for chosen, _ in rows] + [[rejected] for _, rejected in rows],
                       self.pad_id)
