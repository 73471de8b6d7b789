"""The paged KV cache's bookkeeping: which block of memory holds which of a sequence's tokens.

A dense KV cache reserves, for every request, room for the longest sequence
it might reach. A paged one (Kwon et al., 2023, "vLLM: Efficient Memory
Management for Large Language Model Serving with PagedAttention") cuts the
cache into blocks of `block_size` token positions and gives a sequence blocks
only as it grows; its *block table* lists them in order, so position p of the
sequence lives in block `block_table[p // block_size]`, slot `p % block_size`:

    sequence: t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9         block_size 4
    block table:   [  7,          2,          9  ]       blocks from anywhere
    memory:   block 2: t4..t7   block 7: t0..t3   block 9: t8 t9 . .

Prefix caching. A block that is full is identified by a hash of its tokens,
chained to the hash of the block before it, so equal hashes mean an equal
prefix, not just an equal block. A new sequence whose first blocks hash to
blocks already in memory (a shared system prompt) takes those blocks, adds a
reference, and skips computing them. The tokens are compared as well: a
hash collision costs a recomputation, never a wrong answer. Only full blocks
are shared, and the block holding a prompt's last token is always computed
afresh, so a shared block is never written.

Blocks are counted by reference: a block returns to the free list when no
sequence uses it, keeping its contents (and its hash) until it is handed out
again, so a prefix freed a moment ago can still be found.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from llmscratch.generation.sequence import Sequence


@dataclass
class Block:
    """One block of KV-cache memory: who uses it, and what it holds once full."""

    id: int
    ref_count: int = 0
    hash: bytes | None = None  # set once the block is full and its K/V computed
    token_ids: tuple[int, ...] = field(default_factory=tuple)


def block_hash(token_ids: list[int], previous: bytes | None) -> bytes:
    """A full block's identity: its tokens, chained to the hash of the blocks before it."""
    digest = hashlib.sha256(previous or b"")
    digest.update(b",".join(str(t).encode() for t in token_ids))
    return digest.digest()


class BlockManager:
    """Hands out blocks to sequences, shares full blocks with equal prefixes, takes them back."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: deque[int] = deque(range(num_blocks))
        self.by_hash: dict[bytes, int] = {}
        self.cache_hits = 0  # blocks reused instead of computed (for tests and metrics)

    @property
    def used(self) -> int:
        return len(self.blocks) - len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)  # ceil

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether the free list holds enough blocks for all of `seq`'s tokens (not counting
        blocks the prefix cache might provide: a safe answer)."""
        return len(self.free) >= self.blocks_needed(seq.num_tokens)

    def allocate(self, seq: Sequence) -> None:
        """Blocks for every token of a sequence about to be prefilled; cached prefix blocks reused.

        Sets `seq.num_computed`: the tokens whose K/V the cache already holds.
        """
        assert not seq.block_table, "a sequence is allocated once (or after being freed)"
        previous, matching = None, True
        for i in range(self.blocks_needed(seq.num_tokens)):
            tokens = seq.token_ids[i * self.block_size:(i + 1) * self.block_size]
            # Only full blocks before the prompt's last token may come from the cache.
            shareable = (i + 1) * self.block_size < seq.num_tokens
            h = block_hash(tokens, previous) if shareable else None
            cached = self.by_hash.get(h) if (matching and h is not None) else None
            if cached is not None and self.blocks[cached].token_ids == tuple(tokens):
                seq.block_table.append(self._reuse(cached))
                seq.num_computed += self.block_size
                self.cache_hits += 1
            else:
                matching = False
                seq.block_table.append(self._fresh())
            previous = h

    def can_append(self, seq: Sequence) -> bool:
        """Whether the token `seq` is about to compute has a slot (perhaps in a new block)."""
        return len(seq.block_table) * self.block_size >= seq.num_tokens or bool(self.free)

    def append(self, seq: Sequence) -> None:
        """Give `seq` a new block if its last token has no slot yet."""
        if len(seq.block_table) * self.block_size < seq.num_tokens:
            seq.block_table.append(self._fresh())

    def commit(self, seq: Sequence) -> None:
        """Hash every block of `seq` that is now full of computed K/V, so others can share it."""
        previous = None
        for i, block_id in enumerate(seq.block_table):
            end = (i + 1) * self.block_size
            if end > seq.num_computed:
                break
            block = self.blocks[block_id]
            if block.hash is None:
                tokens = seq.token_ids[end - self.block_size:end]
                block.hash, block.token_ids = block_hash(tokens, previous), tuple(tokens)
                self.by_hash.setdefault(block.hash, block_id)
            previous = block.hash

    def free_blocks(self, seq: Sequence) -> None:
        """Return a finished (or preempted) sequence's blocks; the cache forgets nothing yet."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free.append(block_id)
        seq.block_table.clear()
        seq.num_computed = 0

    def _reuse(self, block_id: int) -> int:
        """Add a reference to a cached block (taking it off the free list if it was there)."""
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self.free.remove(block_id)
        block.ref_count += 1
        return block_id

    def _fresh(self) -> int:
        """A block off the free list for new contents: what it held is forgotten."""
        block = self.blocks[self.free.popleft()]
        if block.hash is not None and self.by_hash.get(block.hash) == block.id:
            del self.by_hash[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block.id
