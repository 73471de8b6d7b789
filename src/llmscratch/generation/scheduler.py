"""Continuous batching: which sequences run in the engine's next step.

Requests wait in a queue and run in a batch. With continuous batching
(Yu et al., 2022, "Orca"), the batch is decided again at every step: a
request joins as soon as there is room and leaves the step it finishes, so
a long answer never holds a short one back and a free slot never idles.

Each step is one of two kinds:

- prefill: waiting requests enter, as many as fit in `max_batch` sequences,
  `max_batch_tokens` new tokens and the free KV-cache blocks (and, for a
  model with Gated DeltaNet layers, the free state slots); their prompts
  are computed in one forward pass (minus any prefix the cache already holds);
- decode: every running sequence computes one token.

A step prefills whenever someone is waiting and fits; otherwise it decodes.
When the cache has no block left for a running sequence's next token, the
newest running sequence is preempted: its blocks (and state slot) are freed
and it goes back to the front of the queue, to be computed again later (its
tokens and its random generator are kept, so its text is the one it would
have written).
Nothing crashes for lack of memory; a single request that cannot fit even
alone is refused when it is added (engine.py).
"""

from __future__ import annotations

from collections import deque

from llmscratch.generation.block_manager import BlockManager
from llmscratch.generation.sequence import Sequence, Status


class Scheduler:
    """Waiting and running queues under a batch size, a token budget and the cache's blocks."""

    def __init__(self, blocks: BlockManager, max_batch: int, max_batch_tokens: int) -> None:
        self.blocks = blocks
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The next step's sequences, and whether it is a prefill (else a decode) step."""
        batch = self._prefill()
        if batch:
            return batch, True
        return self._decode(), False

    def _prefill(self) -> list[Sequence]:
        batch, tokens = [], 0
        while self.waiting and len(batch) < self.max_batch:
            seq = self.waiting[0]
            new_tokens = seq.num_tokens  # an upper bound: a cached prefix is not computed
            too_many = batch and tokens + new_tokens > self.max_batch_tokens
            if too_many or not self.blocks.can_allocate(seq):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)
            seq.status = Status.RUNNING
            tokens += seq.num_tokens - seq.num_computed
            batch.append(seq)
            self.running.append(seq)
        return batch

    def _decode(self) -> list[Sequence]:
        """Every running sequence, each with a slot for its next token (preempting if need be)."""
        batch = []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or len(batch) == self.max_batch:
                continue
            while not self.blocks.can_append(seq):
                newest = self.running[-1]
                self._preempt(newest)
                if newest is seq:
                    break
            if seq.status is Status.RUNNING:
                self.blocks.append(seq)
                batch.append(seq)
        return batch

    def _preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks; it waits at the front, to be computed again."""
        self.running.remove(seq)
        self.blocks.free_blocks(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """A sequence is done (or abandoned): it leaves the queues and gives back its blocks."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
            self.blocks.free_blocks(seq)
        seq.status = Status.FINISHED
