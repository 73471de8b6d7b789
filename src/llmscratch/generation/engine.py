"""The inference engine: many requests at once, continuous batching over a paged KV cache.

    engine = Engine(model)
    outputs = engine.generate([prompt_a, prompt_b], SamplingConfig(temperature=0))

Each `step` asks the scheduler which sequences run (scheduler.py) and runs
the model once over all their not-yet-computed tokens, packed into one row
with a `StepBatch` view of the paged cache (paged_cache.py): in a decode
step, every sequence's newest token; in a prefill step, every new prompt,
whatever their lengths, with no padding. It then samples one token for each
sequence from its last position, all rows at once (sampling.py:
`sample_rows`), and lets finished sequences go. A request may ask for
speculative decoding (`draft_tokens`): in a decode step it then brings
draft tokens found in its own text, the pass scores them too, and it may
get several tokens from one step (speculative.py). The model is the same one
that trains: its attention hands the view its queries, keys and values, and
the view attends over the cache.

Legend: B sequences in the step, M new tokens of them all, D width, V vocabulary.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator
from collections.abc import Sequence as Seq

import torch

from llmscratch.errors import LLMScratchError
from llmscratch.generation.block_manager import BlockManager
from llmscratch.generation.paged_attention import DTYPES as KERNEL_DTYPES
from llmscratch.generation.paged_attention import KernelDecode, kernel_missing
from llmscratch.generation.paged_cache import FlexDecode, PagedKVCache, StepBatch
from llmscratch.generation.sampling import SamplingConfig, TokenCounts, sample_rows
from llmscratch.generation.scheduler import Scheduler
from llmscratch.generation.sequence import Sequence, TokenLogprobs
from llmscratch.generation.speculative import (
    EngineDrafter,
    SpeculationStats,
    accept_drafts,
    check_draft_model,
    check_draft_tokens,
    engine_draft,
    scored_rows,
)
from llmscratch.generation.state_pool import NO_PREFIX_CACHING, StatePool
from llmscratch.model import GPT
from llmscratch.model.config import ModelConfig
from llmscratch.model.footprint import kv_cache_bytes

DEFAULT_BLOCK_SIZE = 16
DEFAULT_CACHE_BYTES = 4 * 2**30  # at most 4 GiB of KV cache unless told


def blocks_per_sequence(num_tokens: int, block_size: int) -> int:
    """Blocks that hold `num_tokens` positions."""
    return -(-num_tokens // block_size)


def choose_paged_attention(choice: str, config: ModelConfig, embedding: torch.Tensor) -> str:
    """Which way decode steps read the cache (Engine's `paged_attention`): "auto" becomes
    "kernel" where the C++ kernel serves this model, else "gather"; a path asked for by
    name that cannot serve it is refused with the reason."""
    if choice not in ("auto", "kernel", "gather", "flex"):
        raise LLMScratchError("paged_attention must be auto, kernel, gather or flex, "
                              f"not {choice!r}")
    if choice == "gather":
        return choice
    if config.kv_lora_rank:  # keys are rebuilt from the cached latents: only the copy does that
        if choice != "auto":
            raise LLMScratchError(f"paged_attention={choice!r} reads keys and values in place; "
                                  "latent attention (DeepSeek V3) caches latents: use 'gather'")
        return "gather"
    if choice == "flex":
        return choice
    if embedding.device.type != "cpu" or embedding.dtype not in KERNEL_DTYPES:
        why_not = (f"the kernel is for fp32 or bf16 on a CPU, not {embedding.dtype} "
                   f"on {embedding.device}")
    elif config.attn_sinks:
        why_not = "the kernel has no attention sinks (gpt-oss)"
    else:
        why_not = kernel_missing()
    if why_not and choice == "kernel":
        raise LLMScratchError(f"paged_attention='kernel': {why_not}")
    return "gather" if why_not else "kernel"


class StepFailed(Exception):
    """A step raised; the sequences it ran were ended with finish_reason "error"."""

    def __init__(self, seqs: list[Sequence]) -> None:
        super().__init__(f"an engine step failed; {len(seqs)} sequence(s) ended")
        self.seqs = seqs


class Engine:
    """Generates for many requests at once with one model (see the module docstring).

    num_blocks: KV-cache blocks of `block_size` positions (default: room for
    `max_batch` sequences of the full context length, or as many blocks as
    `cache_bytes` hold if that is fewer: a model with a long context would
    otherwise reserve more memory than the machine has). Sliding-window
    layers get a smaller pool: `max_batch` windows and one full context. vocab_size: the
    tokenizer's, when the output layer is wider (ids past it are never drawn).
    paged_attention: how a decode step reads the cache: "kernel" (a C++ kernel reading
    the blocks in place, on the CPU: paged_attention.py), "gather" (its keys copied
    out through the block tables, then PyTorch's attention), "flex" (compiled
    flex_attention reading the blocks in place), or "auto": the kernel where it serves
    (a CPU, fp32 or bf16, no attention sinks or latent attention, a C++ compiler), else
    "gather" (docs/benchmarks.md has the figures); `paged_attention` says which ran.
    draft_tokens: > 0 makes every request speculate with up to this many draft tokens a
    step, unless `add` says otherwise (speculative.py), drafted by `draft_model` (a smaller
    model reading the same tokens) or else by prompt lookup; `speculation` counts what
    was drafted and accepted.
    Gated DeltaNet layers (Qwen3-Next, Qwen3.5) keep their states in a pool of
    `max_batch` slots beside the blocks (state_pool.py), and such a model has no prefix
    caching: `prefix_caching_off` says why (None when it is on).
    """

    def __init__(self, model: GPT, num_blocks: int | None = None,
                 block_size: int = DEFAULT_BLOCK_SIZE, max_batch: int = 32,
                 max_batch_tokens: int = 4096, vocab_size: int | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, paged_attention: str = "auto",
                 draft_tokens: int = 0, draft_model: GPT | None = None) -> None:
        check_draft_tokens(draft_tokens, model.config)  # a model that cannot rewind: refused
        if draft_model is not None:
            check_draft_model(draft_model, vocab_size or model.config.vocab_size)
        self.model = model.eval()
        embedding = model.tok_emb.weight  # (the linear layers' may be packed: cpu_weights.py)
        self.device = embedding.device
        c = model.config
        if num_blocks is None:
            # Keys and values of every layer that caches them (footprint.py: not Gated
            # DeltaNet layers, nor Gemma 4's KV-sharing ones), for one block of positions.
            per_token = kv_cache_bytes(c, embedding.element_size())["per_token"]
            block_bytes = max(per_token, 1) * block_size
            longest = blocks_per_sequence(c.context_length, block_size)
            num_blocks = max(min(max_batch * longest, cache_bytes // block_bytes), 1)
        # Sliding-window layers keep only their window, in a pool of blocks of their own
        # (block_manager.py): room for `max_batch` windows and one prompt as long as the context.
        window = c.sliding_window if any(c.layer_is_local(i) for i in range(c.n_layer)) else 0
        window = window if window < c.context_length else 0
        window_blocks = 0
        if window:
            window_blocks = min(num_blocks, max_batch * (window // block_size + 2)
                                + blocks_per_sequence(c.context_length, block_size))
        linear = any(c.layer_is_linear(i) for i in range(c.n_layer))
        states = StatePool(c, max_batch, embedding.dtype, self.device) if linear else None
        self.prefix_caching_off = NO_PREFIX_CACHING if linear else None
        self.blocks = BlockManager(num_blocks, block_size, window, window_blocks, states,
                                   prefix_caching=not linear)
        self.cache = PagedKVCache(c, num_blocks, block_size, embedding.dtype, self.device,
                                  window_blocks)
        self.cache.states = states
        self.paged_attention = choose_paged_attention(paged_attention, c, embedding)
        if self.paged_attention == "kernel":  # decode reads the blocks in place
            self.cache.in_place = KernelDecode()
        elif self.paged_attention == "flex":
            pools = {"all": num_blocks, "window": window_blocks} if window else {"all": num_blocks}
            self.cache.in_place = FlexDecode(max_batch, block_size, pools, self.device)
        self.scheduler = Scheduler(self.blocks, max_batch, max_batch_tokens)
        self.vocab_size = vocab_size
        self.draft_tokens = draft_tokens
        self.drafter = EngineDrafter(draft_model, vocab_size or c.vocab_size)
        self.speculation = SpeculationStats()

    def add(self, prompt_ids: list[int], sampling: SamplingConfig,
            stop_ids: Collection[int] = (), draft_tokens: int | None = None) -> Sequence:
        """Queue a request; it joins the running batch as soon as there is room.
        draft_tokens: its speculative decoding's (default: the engine's; 0 = off)."""
        self.check(prompt_ids, sampling)
        draft_tokens = self.draft_tokens if draft_tokens is None else draft_tokens
        check_draft_tokens(draft_tokens, self.model.config)
        seq = Sequence(list(prompt_ids), sampling, stop_ids, draft_tokens=draft_tokens)
        self.scheduler.add(seq)
        return seq

    def check(self, prompt_ids: list[int], sampling: SamplingConfig) -> None:
        """Fail in one line unless the request could run (it reads only the configuration)."""
        context = self.model.config.context_length
        if not prompt_ids:
            raise LLMScratchError("the prompt is empty: give at least one token")
        vocab = self.model.config.vocab_size
        unknown = [t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < vocab)]
        if unknown:
            raise LLMScratchError(f"the prompt holds {unknown[0]!r}, which is not a token id of "
                                  f"this model (0 to {vocab - 1})")
        drawn = self.vocab_size or vocab  # the ids sampling can draw
        if any(t >= drawn for t in sampling.logit_bias or {}):
            raise LLMScratchError(f"logit_bias names token {max(sampling.logit_bias)}; the "
                                  f"vocabulary's ids are 0 to {drawn - 1}")
        if len(prompt_ids) >= context:
            raise LLMScratchError(f"the prompt is {len(prompt_ids)} tokens; the model's context "
                                  f"length is {context}; shorten the prompt")
        # A request must fit the cache on its own, or it could never run.
        most_tokens = min(len(prompt_ids) + sampling.max_new_tokens, context)
        if self.blocks.blocks_needed(most_tokens) > len(self.blocks.blocks):
            raise LLMScratchError(f"a request of {most_tokens} tokens needs more KV-cache blocks "
                                  f"than the engine has ({len(self.blocks.blocks)})")

    @torch.no_grad()
    def step(self) -> list[tuple[Sequence, int]]:
        """One forward pass over the scheduled sequences; returns each one's new token.

        If the step raises (a bug, or the machine: out of memory), its sequences
        end with finish_reason "error" and their blocks are freed before
        `StepFailed` says which they were: the engine stays consistent and
        goes on with the others.
        """
        seqs, prefill = self.scheduler.schedule()
        if not seqs:
            return []
        try:
            return self._step(seqs, prefill)
        except Exception as err:
            for seq in seqs:
                self.abort(seq, "error")
            raise StepFailed(seqs) from err

    def _step(self, seqs: list[Sequence], prefill: bool) -> list[tuple[Sequence, int]]:
        context = self.model.config.context_length
        proposals = [engine_draft(seq, self.drafter, self.blocks, context)
                     if seq.draft_tokens and not prefill else ([], None) for seq in seqs]
        drafts = [draft for draft, _ in proposals]
        logits = self._forward(seqs, drafts)  # (B [+ drafts], V): all new tokens in one pass
        for seq in seqs:
            seq.num_computed = seq.num_tokens
            self.blocks.commit(seq)
        # Each sequence's rows: its last token's, then its draft tokens' (none in most steps).
        firsts = list(itertools.accumulate((len(d) + 1 for d in drafts), initial=0))
        plain = [i for i, draft in enumerate(drafts) if not draft]
        rows = logits if len(plain) == len(seqs) else logits[[firsts[i] for i in plain]]
        sampled = self._sample([seqs[i] for i in plain], rows).tolist() if plain else []
        tokens = dict(zip(plain, ([t] for t in sampled), strict=True))  # (B - drafting,)
        produced = []
        for i, (seq, (draft, q)) in enumerate(zip(seqs, proposals, strict=True)):
            scored = logits[firsts[i]:firsts[i] + len(draft) + 1]  # (k + 1, V)
            new = accept_drafts(seq, scored, draft, q, self.blocks) if draft else tokens[i]
            for row, token in zip(scored, new, strict=False):  # n + 1 tokens of k + 1 rows
                if seq.sampling.logprobs is not None:
                    seq.logprobs.append(token_logprobs(row, token, seq.sampling.logprobs))
                produced.append((seq, token))
                self._append(seq, token)
                if seq.finished:
                    break
            if seq.draft_tokens and not prefill:
                self.speculation.add(len(draft), len(new) - 1, len(new))
            if draft and not seq.finished:  # the accepted drafts' keys and values stay
                seq.num_computed += len(new) - 1
                self.blocks.commit(seq)
        self.drafter.forget_finished()  # a draft model's caches of the sequences that ended
        return produced

    def _forward(self, seqs: list[Sequence], drafts: list[list[int]]) -> torch.Tensor:
        """The model over every sequence's uncomputed tokens and draft tokens, packed into one
        row (prompts of any lengths, no padding: paged_cache.py); next-token logits in fp32
        of every sequence's last token, (B, V), with each draft token's after its sequence's
        last token's (B + drafts, V)."""
        new = [seq.num_tokens - seq.num_computed + len(d)
               for seq, d in zip(seqs, drafts, strict=True)]
        ids = [t for seq, draft in zip(seqs, drafts, strict=True)
               for t in seq.token_ids[seq.num_computed:] + draft]
        inputs = torch.tensor([ids], dtype=torch.int64).to(self.device)  # (1, M)
        windows = [s.window_table for s in seqs] if self.cache.window_blocks else None
        slots = [s.state_slot for s in seqs] if self.cache.states is not None else None
        batch = StepBatch(self.cache, [s.block_table for s in seqs],
                          [s.num_computed for s in seqs], new, self.device, windows, slots)
        hidden = self.model(inputs, batch)[0, scored_rows(batch.last, drafts)]  # (B [+ k], D)
        return self.model.logits(hidden)[:, :self.vocab_size].float()  # (B [+ drafts], V)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """Every sequence's next token (B,), in one batched call; each draws its random
        numbers from its own generator (none when greedy) and penalises its own tokens."""
        for seq in seqs:
            if seq.sampling.penalizes and seq.counts is None:
                seq.counts = TokenCounts(seq.prompt_ids, logits.size(-1), logits.device)
                for token in seq.output_ids:
                    seq.counts.add(token)
        return sample_rows(logits, [seq.sampling for seq in seqs],
                           [seq.generator for seq in seqs], [seq.counts for seq in seqs])

    def abort(self, seq: Sequence, reason: str = "abort") -> None:
        """Drop a request (its client left, or its text hit a stop string): blocks freed now."""
        if not seq.finished:
            seq.finish_reason = reason
            self.scheduler.finish(seq)
            self.drafter.forget_finished()

    def stream(self, prompt_ids: list[int], sampling: SamplingConfig,
               stop_ids: Collection[int] = ()) -> Iterator[int]:
        """A request's new tokens as they come, stepping the engine (and whatever else it runs).

        The request is checked and queued at once; stopping the iteration early
        (a stop string, Ctrl-C) aborts it.
        """
        return self._follow(self.add(prompt_ids, sampling, stop_ids))

    def _follow(self, seq: Sequence) -> Iterator[int]:
        try:
            while not seq.finished:
                for owner, token in self.step():
                    if owner is seq and token not in seq.stop_ids:
                        yield token
        finally:
            self.abort(seq)

    def _append(self, seq: Sequence, token: int) -> None:
        """Add a sampled token, or end the sequence (the stop token itself is not output)."""
        context = self.model.config.context_length
        if token in seq.stop_ids:
            seq.finish_reason, seq.stop_token = "stop", token
        else:
            seq.output_ids.append(token)
            if seq.counts is not None:
                seq.counts.add(token)
            if len(seq.output_ids) >= seq.sampling.max_new_tokens or seq.num_tokens >= context:
                seq.finish_reason = "length"
        if seq.finish_reason is not None:
            self.scheduler.finish(seq)

    def generate(self, prompts: Seq[list[int]], sampling: SamplingConfig | Seq[SamplingConfig],
                 stop_ids: Collection[int] = ()) -> list[list[int]]:
        """Every prompt's new tokens, all generated together (in the prompts' order)."""
        return [seq.output_ids for seq in self.run(prompts, sampling, stop_ids)]

    def run(self, prompts: Seq[list[int]], sampling: SamplingConfig | Seq[SamplingConfig],
            stop_ids: Collection[int] = ()) -> list[Sequence]:
        """`generate`, returning the finished Sequences (output, finish reason, stop token)."""
        settings = [sampling] * len(prompts) if isinstance(sampling, SamplingConfig) else sampling
        seqs = [self.add(p, s, stop_ids) for p, s in zip(prompts, settings, strict=True)]
        while not self.scheduler.idle:
            self.step()
        return seqs


def token_logprobs(logits: torch.Tensor, token: int, k: int) -> TokenLogprobs:
    """log softmax of one position's logits (V,): the chosen token's, and the k best."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (V,)
    top = torch.topk(log_probs, min(k, log_probs.numel()))
    return TokenLogprobs(token, float(log_probs[token]),
                         list(zip(top.indices.tolist(), top.values.tolist(), strict=True)))
