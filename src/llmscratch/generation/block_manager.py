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

Sliding-window layers (Gemma 3, Olmo 3: `sliding_window`) read only the
latest `window` keys, so their memory need not grow with the text. Their
keys and values live in a second pool of blocks with a table of its own per
sequence (`Sequence.window_table`, after vLLM's hybrid allocator): a block
no future query of the sequence can see goes back to the pool (its place in
the table becomes None), and a prompt's positions before its last window
A sequence holds at most about window / block_size + 2 of them after its
prefill, however long it grows:

    window 8, block_size 4, 22 tokens, the next query at position 22:
    block table:        [ 7,  2,  9,  4,  1,  8 ]    every position, global layers
    window table:       [ -,  -,  -,  5,  3,  6 ]    positions 12..: it sees 15..22

Both pools name full blocks by the same hash, and a block given back keeps
its contents until it is handed out again, so a cached prefix is shared
when both hold what its continuation reads: the global pool every block
before it, the window pool the blocks of its last window.

Gated DeltaNet layers (Qwen3-Next, Qwen3.5) keep a state of fixed size per
sequence instead of keys: a slot in a `StatePool` (state_pool.py), which the
manager hands out and takes back with the sequence's blocks. A model with
such layers has no prefix caching (`prefix_caching=False`): their state
after a shared prefix is kept nowhere (state_pool.py says why).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from llmscratch.generation.sequence import Sequence
from llmscratch.generation.state_pool import StatePool


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


class BlockPool:
    """One pool of blocks: a free list, full blocks found by hash, references counted."""

    def __init__(self, num_blocks: int) -> None:
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: deque[int] = deque(range(num_blocks))
        self.by_hash: dict[bytes, int] = {}

    @property
    def used(self) -> int:
        return len(self.blocks) - len(self.free)

    def find(self, h: bytes, tokens: list[int]) -> int | None:
        """The block holding a full block of these tokens after this prefix, if any."""
        cached = self.by_hash.get(h)
        if cached is not None and self.blocks[cached].token_ids == tuple(tokens):
            return cached
        return None

    def reuse(self, block_id: int) -> int:
        """Add a reference to a cached block (taking it off the free list if it was there)."""
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self.free.remove(block_id)
        block.ref_count += 1
        return block_id

    def fresh(self) -> int:
        """A block off the free list for new contents: what it held is forgotten."""
        block = self.blocks[self.free.popleft()]
        if block.hash is not None and self.by_hash.get(block.hash) == block.id:
            del self.by_hash[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block.id

    def release(self, block_id: int) -> None:
        """Drop a reference; the block is free when none is left (its contents kept)."""
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free.append(block_id)

    def name(self, block_id: int, h: bytes, tokens: list[int]) -> None:
        """Record that a block is full of these tokens' K/V, after the prefix hashed in h."""
        block = self.blocks[block_id]
        if block.hash is None:
            block.hash, block.token_ids = h, tuple(tokens)
            self.by_hash.setdefault(h, block_id)


class BlockManager:
    """Hands out blocks to sequences, shares full blocks with equal prefixes, takes them back.

    window: > 0 when some layers see only the latest `window` keys; their blocks
    come from a second pool of `window_blocks` (see the module docstring).
    states: the Gated DeltaNet layers' state slots, one per running sequence, or
    None. prefix_caching: whether full blocks are shared between sequences.
    """

    def __init__(self, num_blocks: int, block_size: int, window: int = 0,
                 window_blocks: int = 0, states: StatePool | None = None,
                 prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.window = window
        self.window_pool = BlockPool(window_blocks) if window else None
        self.states = states
        self.prefix_caching = prefix_caching
        self.cache_hits = 0  # blocks reused instead of computed (for tests and metrics)

    @property
    def blocks(self) -> list[Block]:
        return self.pool.blocks

    @property
    def used(self) -> int:
        """Blocks in use, both pools."""
        return self.pool.used + (self.window_pool.used if self.window_pool else 0)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)  # ceil

    def first_seen(self, position: int) -> int:
        """The first block a query at `position` (or later) can see in a window layer."""
        return max(0, position - self.window + 1) // self.block_size

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether the free lists hold enough blocks for all of `seq`'s tokens (not counting
        blocks the prefix cache might provide: a safe answer). A prefill writes every
        position in both pools; the window pool gets most of its blocks back at once.
        A model with linear layers needs a free state slot too."""
        needed = self.blocks_needed(seq.num_tokens)
        return len(self.pool.free) >= needed and (
            self.window_pool is None or len(self.window_pool.free) >= needed) and (
            self.states is None or bool(self.states.free))

    def allocate(self, seq: Sequence) -> None:
        """Blocks for every token of a sequence about to be prefilled; cached prefix blocks reused.

        Sets `seq.num_computed`: the tokens whose K/V the cache already holds.
        Hashing stops at the first block not in the cache: the blocks after it
        are hashed by `commit` once computed.
        """
        assert not seq.block_table, "a sequence is allocated once (or after being freed)"
        bs, tokens = self.block_size, seq.token_ids
        found, hashes, previous = [], [], None
        # Only full blocks before the prompt's last token may come from the cache.
        while self.prefix_caching and (len(found) + 1) * bs < len(tokens):
            i = len(found)
            h = block_hash(tokens[i * bs:(i + 1) * bs], previous)
            cached = self.pool.find(h, tokens[i * bs:(i + 1) * bs])
            if cached is None:
                break
            found.append(cached)
            hashes.append(h)
            previous = h
        if self.window_pool is not None:  # the window pool must hold the prefix's last window
            while found and not self._window_cached(tokens, hashes):
                found.pop()
                hashes.pop()
        m = len(found)
        seq.block_table = [self.pool.reuse(b) for b in found]
        seq.block_table += [self.pool.fresh() for _ in range(m, self.blocks_needed(len(tokens)))]
        if self.window_pool is not None:
            seq.window_table = self._window_table(tokens, hashes)
        seq.num_computed = m * bs
        seq.num_hashed, seq.last_hash = m, (hashes[-1] if hashes else None)
        self.cache_hits += m
        if self.states is not None:  # an empty state: the sequence is computed from its start
            seq.state_slot = self.states.allocate()

    def _window_cached(self, tokens: list[int], hashes: list[bytes]) -> bool:
        """Whether the window pool holds the blocks a continuation after these reads."""
        bs = self.block_size
        return all(self.window_pool.find(hashes[j], tokens[j * bs:(j + 1) * bs]) is not None
                   for j in range(self.first_seen(len(hashes) * bs), len(hashes)))

    def _window_table(self, tokens: list[int], hashes: list[bytes]) -> list[int | None]:
        """A new sequence's window blocks: the cached prefix's last window, then a block for
        each block of positions the prefill computes."""
        bs, m, pool = self.block_size, len(hashes), self.window_pool
        table: list[int | None] = [None] * self.first_seen(m * bs)
        table += [pool.reuse(pool.find(hashes[j], tokens[j * bs:(j + 1) * bs]))
                  for j in range(len(table), m)]
        return table + [pool.fresh() for _ in range(m, self.blocks_needed(len(tokens)))]

    def can_append(self, seq: Sequence) -> bool:
        """Whether the token `seq` is about to compute has a slot (perhaps in new blocks)."""
        if len(seq.block_table) * self.block_size >= seq.num_tokens:
            return True
        return bool(self.pool.free) and (self.window_pool is None or bool(self.window_pool.free))

    def append(self, seq: Sequence) -> None:
        """Give `seq` a new block if its last token has no slot yet."""
        if len(seq.block_table) * self.block_size < seq.num_tokens:
            seq.block_table.append(self.pool.fresh())
            if self.window_pool is not None:
                seq.window_table.append(self.window_pool.fresh())

    def commit(self, seq: Sequence) -> None:
        """Hash the blocks of `seq` that filled with computed K/V since its last commit, so
        others can share them, and give back the window blocks no later query of `seq`
        sees. A decode step fills at most one block: this is one comparison a step, and
        one hash each `block_size` steps."""
        bs = self.block_size
        while self.prefix_caching and (seq.num_hashed + 1) * bs <= seq.num_computed:
            i = seq.num_hashed
            tokens = seq.token_ids[i * bs:(i + 1) * bs]
            block = self.pool.blocks[seq.block_table[i]]
            h = block.hash or block_hash(tokens, seq.last_hash)
            self.pool.name(block.id, h, tokens)
            if self.window_pool is not None and seq.window_table[i] is not None:
                self.window_pool.name(seq.window_table[i], h, tokens)
            seq.num_hashed, seq.last_hash = i + 1, h
        if self.window_pool is not None:
            for j in range(seq.window_released, self.first_seen(seq.num_computed)):
                if seq.window_table[j] is not None:
                    self.window_pool.release(seq.window_table[j])
                    seq.window_table[j] = None
            seq.window_released = max(seq.window_released, self.first_seen(seq.num_computed))

    def free_blocks(self, seq: Sequence) -> None:
        """Return a finished (or preempted) sequence's blocks, and its state slot; the cache
        forgets nothing yet (but the slot's state, which only this sequence could use)."""
        for block_id in reversed(seq.block_table):
            self.pool.release(block_id)
        for block_id in reversed(seq.window_table):
            if block_id is not None:
                self.window_pool.release(block_id)
        if seq.state_slot is not None:
            self.states.release(seq.state_slot)
            seq.state_slot = None
        seq.block_table.clear()
        seq.window_table.clear()
        seq.num_computed = seq.num_hashed = seq.window_released = 0
        seq.last_hash = None

    def reserve(self, seq: Sequence, num_tokens: int) -> int:
        """Give `seq` blocks for up to `num_tokens` positions, as many as the free lists
        allow without preempting anyone (speculative decoding's draft tokens: a guess
        need not get room); returns the positions its blocks now hold."""
        while len(seq.block_table) * self.block_size < num_tokens and self.pool.free and (
                self.window_pool is None or self.window_pool.free):
            seq.block_table.append(self.pool.fresh())
            if self.window_pool is not None:
                seq.window_table.append(self.window_pool.fresh())
        return len(seq.block_table) * self.block_size

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Give back the blocks past a sequence's first `num_tokens` positions (rejected
        draft tokens). Only blocks the sequence alone holds and nobody can have found by
        hash go: the cached prefix and every hashed block lie before its computed end."""
        keep = self.blocks_needed(num_tokens)
        assert keep >= seq.num_hashed, "a hashed (shareable) block is never truncated"
        for block_id in reversed(seq.block_table[keep:]):
            assert self.pool.blocks[block_id].ref_count == 1
            self.pool.release(block_id)
        for block_id in reversed(seq.window_table[keep:]):
            if block_id is not None:
                self.window_pool.release(block_id)
        del seq.block_table[keep:], seq.window_table[keep:]
