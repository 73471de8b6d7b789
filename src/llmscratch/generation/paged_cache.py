"""The paged KV cache's memory, and the view of it through which one engine step attends.

Legend: N slots (blocks x block_size), L layers, Hkv key/value heads, H query
heads, Dh head width, B sequences in the step, n_i the new tokens of
sequence i, M = sum n_i all new tokens of the step, S keys a query reads.

`PagedKVCache` holds every layer's keys and values as one tensor of slots,
(Hkv, N, Dh): slot `block * block_size + offset` is a token position of
whichever sequence owns that block (block_manager.py). Heads come first, so
a head's keys for any list of slots come out as rows of one matrix.

`StepBatch` is what the model sees during one engine step. Every sequence's
new tokens are packed into one row of M tokens, with no padding:

    a (5 cached, 1 new), b (0 cached, 4 new), c (2 cached, 1 new):
    tokens     a5 b0 b1 b2 b3 c2          (1, M = 6)
    positions   5  0  1  2  3  2          each token's place in its own sequence

so a prefill of many prompts is one pass through the weights for all their
tokens. Its `attend` (the model's attention calls it in place of the dense
cache's `update`: model/attention.py) writes the new keys and values into
their slots, then gives each sequence's queries its own keys:

- a prefill step: sequence by sequence, the model's kernel over that
  sequence's keys: its new ones as they are when nothing was cached (no copy
  at all), else its slots read through its block table;
- a decode step (one new token each): one kernel call for all B queries,
  each reading through its block table the slots of the keys it sees (only
  the last `window` ones in a sliding-window layer), with a mask for the
  rows shorter than the longest.

A Gated DeltaNet layer (Qwen3-Next, Qwen3.5) has no keys here: its `recur`
runs the layer on each sequence's state, kept in a slot of the state pool
(state_pool.py), a decode step's B sequences as one batch, a prefill's
prompts one by one.

How a decode step reads through the block tables was chosen by measuring
(docs/benchmarks.md, "A kernel of our own that reads the pages"). On a CPU the engine
hands it to a small C++ kernel that reads the blocks in place
(paged_attention.py, `KernelDecode`). Without it (no C++ compiler, a GPU,
attention sinks, latent attention) a decode step copies the keys it reads
into one buffer (`index_select`, reused between layers and steps), laid out
heads first so that each head's S x Dh keys are one dense matrix, and the
model's kernel reads that. `FlexDecode` (Engine(paged_attention="flex"))
reads the blocks in place with PyTorch's compiled flex_attention, its block
mask made of the block tables: on the CPU it gained little over the copy on a
whole workload (it pads every step to `max_batch` queries and builds its
block mask each step) and needs 20 to 100 seconds of compiling per model and
process, so it is there to choose; on a GPU it is the natural choice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from llmscratch.generation.state_pool import StatePool
from llmscratch.model.attention import visible_keys
from llmscratch.model.config import ModelConfig
from llmscratch.model.kv_sharing import kv_source

# The model's attention kernel: q (B, H, T, Dh), k, v (B, Hkv, S, Dh), a mask -> (B, H, T, Dh).
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class PagedKVCache:
    """Keys and values of every layer, in slots of `block_size` positions per block.

    window_blocks: > 0 gives the sliding-window layers a pool of their own of
    that many blocks (block_manager.py); the other layers have `num_blocks`.
    Gated DeltaNet layers keep no keys (None here): their states are in `states`
    (state_pool.py), set by the engine.
    """

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device | str, window_blocks: int = 0) -> None:
        self.num_blocks, self.block_size, self.window_blocks = num_blocks, block_size, window_blocks
        # Keys (Hkv, N, Dh) and values; latent attention (DeepSeek) keeps one "head" of its
        # latents where keys go and one of its RoPE keys where values go (config.cache_widths;
        # Gemma 4's global layers: wider heads).
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        self.dtype, self.device = dtype, device
        for layer in range(config.n_layer):
            heads, key_width, value_width = config.layer_cache_widths(layer)
            source = kv_source(config, layer)
            if config.layer_is_linear(layer):  # Gated DeltaNet: a state, no keys (StatePool)
                self.keys.append(None)
                self.values.append(None)
                continue
            if source is not None:  # Gemma 4: a KV-sharing layer reads its source's slots
                self.keys.append(self.keys[source])
                self.values.append(self.values[source])
                continue
            blocks = window_blocks if window_blocks and config.layer_is_local(layer) else num_blocks
            slots = blocks * block_size
            self.keys.append(torch.zeros(heads, slots, key_width, dtype=dtype, device=device))
            self.values.append(torch.zeros(heads, slots, value_width, dtype=dtype, device=device))
        # Set by the engine where a decode step reads the blocks in place: a KernelDecode
        # (paged_attention.py) or a FlexDecode (below); None: through the copy.
        self.in_place: Callable[..., torch.Tensor] | None = None
        self.states: StatePool | None = None  # set by the engine for Gated DeltaNet layers
        # Where a decode step's keys and values are read into: buffers reused by every layer
        # and step (attention is done with one layer's before the next layer reads). Allocating
        # them afresh costs more than the copy: the operating system hands a large allocation
        # over page by page, and on 2 cores that is slower than the copy itself.
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, numel: int) -> torch.Tensor:
        """A reusable flat buffer of at least `numel` elements (grown when too small)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[name] = torch.empty(numel, dtype=self.dtype,
                                                       device=self.device)
        return buffer[:numel]

    def bytes_per_block(self) -> int:
        """Memory one block takes, keys and values of every layer (of one pool's layers, with
        a window pool: what a position costs in each pool together)."""
        tensors = {id(t): t for t in self.keys + self.values if t is not None}.values()
        per_slot = sum(t[:, 0].numel() * t.element_size() for t in tensors)  # shared ones once
        return per_slot * self.block_size


class StepBatch:
    """One step's packed tokens and their view of the paged cache (see the module docstring).

    block_tables: each sequence's blocks; window_tables: its blocks in the
    sliding-window layers' pool (None where it has none: block_manager.py),
    or None without such a pool; cached: how many of its tokens the cache
    already holds; new: how many it computes this step; state_slots: each
    sequence's slot in the cache's state pool, for Gated DeltaNet layers.
    """

    def __init__(self, cache: PagedKVCache, block_tables: list[list[int]], cached: list[int],
                 new: list[int], device: torch.device,
                 window_tables: list[list[int | None]] | None = None,
                 state_slots: list[int] | None = None) -> None:
        self.cache, self.cached, self.new = cache, cached, new
        self.totals = [c + n for c, n in zip(cached, new, strict=True)]
        self.lengths = torch.tensor(self.totals, device=device)  # (B,) the same, as a tensor
        self.device = device
        self.tables = {"all": self._table(block_tables)}  # (B, blocks) per pool
        if window_tables is not None:
            self.tables["window"] = self._table(window_tables)
        cached_t = torch.tensor(cached, device=device)  # (B,)
        new_t = torch.tensor(new, device=device)  # (B,)
        # The packed row: sequence i's new tokens are positions cached_i .. total_i - 1.
        self.rows = torch.repeat_interleave(torch.arange(len(new), device=device), new_t)  # (M,)
        starts = torch.cumsum(new_t, 0) - new_t  # (B,) where each sequence's tokens begin
        within = torch.arange(int(sum(new)), device=device) - starts[self.rows]  # (M,)
        self.positions = (cached_t[self.rows] + within).unsqueeze(0)  # (1, M)
        # Where each pool stores this step's tokens (every one has a slot in both).
        self.writes = {pool: self.slots(self.rows, self.positions[0], pool)  # (M,)
                       for pool in self.tables}
        self.last = torch.cumsum(new_t, 0) - 1  # (B,) each sequence's last new token
        self.decode = all(n == 1 for n in new)
        self._reads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.flex_masks: dict[tuple[str, int], object] = {}
        self.state_slots = state_slots
        if state_slots is not None:
            self._slots = torch.tensor(state_slots, device=device)  # (B,)

    def _table(self, tables: list[list[int | None]]) -> torch.Tensor:
        """Block tables as one (B, blocks) tensor; -1 where there is no block."""
        width = max(len(t) for t in tables)
        out = torch.full((len(tables), width), -1, dtype=torch.int64)
        for i, table in enumerate(tables):
            out[i, :len(table)] = torch.tensor([-1 if b is None else b for b in table])
        return out.to(self.device)

    def pool(self, window: int) -> str:
        """Which pool a layer with this window keeps its keys in."""
        return "window" if window and "window" in self.tables else "all"

    def slots(self, rows: torch.Tensor, positions: torch.Tensor, pool: str = "all"
              ) -> torch.Tensor:
        """The slot of each (sequence row, position) pair, through the pool's block tables
        (negative where the pool holds no block for it)."""
        bs = self.cache.block_size
        block = self.tables[pool][rows, positions // bs]
        return torch.where(block >= 0, block * bs + positions % bs, -1)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               kernel: Kernel, window: int = 0) -> torch.Tensor:
        """Store the step's keys and values, then attend: q (1, H, M, Dh), k, v (1, Hkv, M, Dh)
        -> (1, H, M, Dh). `window` > 0: each query sees only the latest `window` keys."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]  # (Hkv, N, Dh)
        slots = self.writes[self.pool(window)]  # (M,)
        keys.index_copy_(1, slots, k[0])
        values.index_copy_(1, slots, v[0])
        if self.decode:
            return self._decode(q, keys, values, kernel, window)
        return self._prefill(q, k, v, keys, values, kernel, window)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, kernel: Kernel, window: int) -> torch.Tensor:
        """Each sequence's queries over its own keys, one kernel call per sequence: the
        step's new keys as they are, after those of its cached prefix that its queries see,
        read through its block table."""
        outputs, start = [], 0
        for i, (c, n) in enumerate(zip(self.cached, self.new, strict=True)):
            q_i = q[:, :, start:start + n]  # (1, H, n, Dh)
            k_i, v_i = k[:, :, start:start + n], v[:, :, start:start + n]  # (1, Hkv, n, Dh)
            first = max(0, c - window + 1) if window else 0  # the earliest key a query sees
            if c > first:
                where = self.slots(torch.full((c - first,), i, device=self.device),
                                   torch.arange(first, c, device=self.device),
                                   self.pool(window))  # (c - first,)
                k_i = torch.cat([keys[:, where].unsqueeze(0), k_i], dim=2)  # (1, Hkv, S, Dh)
                v_i = torch.cat([values[:, where].unsqueeze(0), v_i], dim=2)
            S = c - first + n
            visible = visible_keys(n, S, q.device, window) if (S > n or window) else None
            outputs.append(kernel(q_i, k_i, v_i, visible))  # (1, H, n, Dh)
            start += n
        return torch.cat(outputs, dim=2)  # (1, H, M, Dh)

    def _decode(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                kernel: Kernel, window: int) -> torch.Tensor:
        """All B new tokens at once, each over the keys it sees: (1, H, B, Dh) out."""
        if self.cache.in_place is not None:
            return self.cache.in_place(self, q, keys, values, kernel, window)
        where, visible = self._reading(window)  # (B S,), (B, 1, 1, S)
        B, S = visible.size(0), visible.size(-1)
        (Hkv, _, Dh), Dv = keys.shape, values.size(-1)  # (Dv: Dh, or a RoPE key's width)
        read_k = self.cache.buffer("keys", Hkv * B * S * Dh).view(Hkv, B * S, Dh)
        read_v = self.cache.buffer("values", Hkv * B * S * Dv).view(Hkv, B * S, Dv)
        torch.index_select(keys, 1, where, out=read_k)
        torch.index_select(values, 1, where, out=read_v)
        # (Hkv, B, S, Dh) -> (B, Hkv, S, Dh): each head's S x Dh keys stay one dense matrix.
        read_k = read_k.view(Hkv, B, S, Dh).transpose(0, 1)
        read_v = read_v.view(Hkv, B, S, Dv).transpose(0, 1)
        queries = q[0].transpose(0, 1).unsqueeze(2)  # (B, H, 1, Dh)
        out = kernel(queries, read_k, read_v, visible)  # (B, H, 1, Dh)
        return out.squeeze(2).transpose(0, 1).unsqueeze(0)  # (1, H, B, Dh)

    def _reading(self, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Which slots a decode step's queries read, and which of them are real.

        Row i reads its last min(total_i, window) positions (all of them when
        window is 0), right-aligned in S = the most any row reads; the places
        before a shorter row's first key read slot 0 and are masked out. The
        same for every layer of one window, so worked out once a step.
        """
        if window not in self._reads:
            totals = self.lengths  # (B,)
            seen = totals.clamp(max=window) if window else totals  # (B,)
            S = int(seen.max())
            positions = totals[:, None] - S + torch.arange(S, device=self.device)  # (B, S)
            real = positions >= totals[:, None] - seen[:, None]  # (B, S)
            rows = torch.arange(len(self.totals), device=self.device)[:, None].expand(-1, S)
            where = self.slots(rows, positions.clamp(min=0), self.pool(window))  # (B, S)
            where = torch.where(real, where, 0)
            self._reads[window] = (where.reshape(-1), real[:, None, None, :])
        return self._reads[window]

    def recur(self, layer: int, x: torch.Tensor, run: Callable[..., torch.Tensor]
              ) -> torch.Tensor:
        """A Gated DeltaNet layer over the step's tokens, each sequence from its own state
        (state_pool.py): x (1, M, D) -> (1, M, D). `run(x, states)` is the layer over a
        dense batch (B, T, D), reading and rewriting `states` (model/linear_attention.py).

        A decode step gathers the B states, runs the B tokens as a batch of B rows of
        one (the recurrent form) and writes the states back. A prefill step runs each
        sequence's tokens alone (the chunked form) on views of its slot, so packed
        prompts never mix: each starts from its own (empty) state.
        """
        pool = self.cache.states
        if self.decode:
            states = pool.gather(layer, self._slots)
            out = run(x.transpose(0, 1), states)  # (B, 1, D)
            pool.scatter(layer, self._slots, states)
            return out.transpose(0, 1)  # (1, B, D)
        outputs, start = [], 0
        for slot, n in zip(self.state_slots, self.new, strict=True):
            outputs.append(run(x[:, start:start + n], pool.view(layer, slot)))  # (1, n, D)
            start += n
        return torch.cat(outputs, dim=1)  # (1, M, D)

    def advance(self, n_tokens: int) -> None:
        """Lengths are the engine's to keep: nothing to do here."""


class FlexDecode:
    """Decode attention that reads the blocks in place: PyTorch's flex_attention, compiled,
    with a block mask whose rows are the block tables (after PyTorch's paged attention).

    The B queries are one row of up to `rows` positions (padded, so one compiled kernel
    serves every step), the keys are the pool's slots themselves (1, Hkv, N, Dh), and
    query i visits only the blocks of its table; a mask inside each block keeps its
    positions before its length (and, in a window layer, within the window). Compiling
    needs a C++ compiler on the CPU and takes tens of seconds once per model and process.
    """

    def __init__(self, rows: int, block_size: int, pool_blocks: dict[str, int],
                 device: torch.device) -> None:
        self.rows, self.block_size = rows, block_size
        self.kernel = torch.compile(flex_attention, dynamic=False)
        # Per pool, updated in place each step so the compiled code sees the same tensors:
        # which row owns each block, the block's place in its sequence, each row's length.
        self.owner = {p: torch.full((n,), -1, dtype=torch.int64, device=device)
                      for p, n in pool_blocks.items()}
        self.index = {p: torch.zeros(n, dtype=torch.int64, device=device)
                      for p, n in pool_blocks.items()}
        self.totals = torch.zeros(rows, dtype=torch.int64, device=device)
        self.masks: dict[tuple[str, int], object] = {}

    def mask_mod(self, pool: str, window: int):
        """Which (query row, slot) pairs attend: one function per pool and window, made once."""
        if (pool, window) not in self.masks:
            owner, index, totals, bs = self.owner[pool], self.index[pool], self.totals, \
                self.block_size

            def visible(b, h, q_idx, kv_idx):
                block = kv_idx // bs
                position = index[block] * bs + kv_idx % bs
                seen = (owner[block] == q_idx) & (position < totals[q_idx])
                if window:
                    seen = seen & (position >= totals[q_idx] - window)
                return seen

            self.masks[(pool, window)] = visible
        return self.masks[(pool, window)]

    def __call__(self, batch: StepBatch, q: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, kernel: Kernel, window: int) -> torch.Tensor:
        pool = batch.pool(window)
        block_mask = batch.flex_masks.get((pool, window))
        if block_mask is None:
            block_mask = self.block_mask(batch, pool, window, keys.size(1))
            batch.flex_masks[(pool, window)] = block_mask
        B, H = q.size(2), q.size(1)
        padded = q.new_zeros(1, H, self.rows, q.size(-1))  # (1, H, rows, Dh)
        padded[:, :, :B] = q
        scale = getattr(getattr(kernel, "__self__", None), "scale", None)
        out = self.kernel(padded, keys.unsqueeze(0), values.unsqueeze(0),
                          block_mask=block_mask, scale=scale,
                          enable_gqa=H != keys.size(0))  # (1, H, rows, Dh)
        return out[:, :, :B]

    def block_mask(self, batch: StepBatch, pool: str, window: int, slots: int):
        """This step's block mask for one pool: row i visits the blocks of its table."""
        table = batch.tables[pool]  # (B, width), -1 where no block
        B, bs = table.size(0), self.block_size
        nblocks = slots // bs
        rows = torch.arange(B, device=table.device)[:, None].expand_as(table)
        places = torch.arange(table.size(1), device=table.device).expand_as(table)
        real = table >= 0
        self.owner[pool].fill_(-1)
        self.owner[pool][table[real]] = rows[real]
        self.index[pool][table[real]] = places[real]
        self.totals.zero_()
        self.totals[:B] = batch.lengths
        counts = torch.zeros(1, 1, self.rows, dtype=torch.int32, device=table.device)
        counts[0, 0, :B] = real.sum(dim=1).int()
        indices = torch.zeros(1, 1, self.rows, nblocks, dtype=torch.int32, device=table.device)
        ordered = torch.sort(real.int(), dim=1, descending=True, stable=True).indices
        compact = table.gather(1, ordered).clamp(min=0)  # each row's blocks first
        indices[0, 0, :B, :table.size(1)] = compact.int()
        return BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=(1, bs),
                                        mask_mod=self.mask_mod(pool, window),
                                        seq_lengths=(self.rows, slots))
