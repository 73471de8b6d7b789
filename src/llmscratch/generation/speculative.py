"""Speculative decoding: guess several tokens cheaply, let the model check them in one pass.

Decoding one token at a time reads every weight of the model for each token.
On a CPU (and a GPU at batch 1) that reading, not the arithmetic, sets the
pace, so a forward pass over k + 1 tokens costs little more than over one.
Speculative decoding spends that slack: a cheap *drafter* proposes the next
k tokens d1..dk, the model (the *target*) scores the last token and all k
drafts in one forward pass with its KV cache, and keeps the drafts it agrees
with. Every step yields at least one token (the target's own, after the
last accepted draft) and at most k + 1.

Two drafters:

- `PromptLookup` (Saxena, 2023, "prompt lookup decoding"): find the most
  recent earlier place where the last few tokens (an n-gram) occurred, in
  the prompt or in the reply so far, and propose the tokens that followed
  it there. It costs no model at all, and wins where the output repeats the
  input: editing, summarising, answering from a given text, code.
- `DraftModel`: a smaller model that reads the same tokens (a run trained
  with the same tokenizer) proposes k tokens one at a time, with its own
  KV cache.

Checking the drafts (Leviathan et al., 2023; Chen et al., 2023). Let p be
the target's distribution for a position (after penalties, temperature,
top-k/top-p/min-p: `sampling.next_token_probs`) and q the drafter's, from
which the draft token x was drawn. Accept x with probability
min(1, p(x) / q(x)); at the first rejection, draw the token instead from
the residual norm(max(0, p - q)) and stop; if all k are accepted, draw one
more token from the target's distribution after the last. The token that
comes out has exactly the distribution p: it is x with probability
q(x) min(1, p(x)/q(x)) = min(q(x), p(x)), and the residual supplies the
rest, p(y) - min(q(y), p(y)), for each y. So speculation changes the speed,
never the distribution of the text (a seed gives other text than without
speculation, as the random numbers are spent differently).

Special cases of the same rule: prompt lookup drafts deterministically, so
q is one-hot at x: accept with probability p(x), else draw from p with x
removed. Greedy decoding makes p one-hot too: a draft is accepted exactly
when it is the target's most likely token, and on a mismatch the residual
is that token. So greedy output is the plain greedy output, token for token
(up to rounding: the target scores k + 1 positions in one pass instead of
one at a time, which can flip a near-tie between two tokens).

Rejected drafts leave keys and values in the caches past the accepted
tokens; `KVCache.truncate` forgets them and the next pass overwrites them.

In the engine (engine.py), a request that asks for it (`draft_tokens` > 0)
carries up to k drafts into each decode step (`EngineDrafter`: prompt
lookup, or a draft model): its last token and its drafts go into the step's
packed row like a small prefill over its cached context (paged_cache.py:
rows of any lengths), the same rule checks them, and the paged cache rolls
back past the accepted tokens: the blocks the drafts took beyond them go
back to the free list (`BlockManager.truncate`; only blocks the sequence
alone holds: shared and hashed ones all lie before its computed end).
Drafts take only free blocks: when the cache is full a sequence decodes
plainly rather than preempting anyone for a guess. A draft model drafts for
each sequence on its own, with a dense cache per sequence sized to it
(`DraftModel`, as `generate` does): simple, and right at batch 1, where
speculation pays; with many sequences, their drafting is not batched.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import torch

from llmscratch.errors import LLMScratchError
from llmscratch.generation.block_manager import BlockManager
from llmscratch.generation.sampling import SamplingConfig, next_token_probs
from llmscratch.generation.sequence import Sequence as EngineSequence
from llmscratch.model.config import ModelConfig


@dataclass
class SpeculationStats:
    """What the drafter proposed and the target kept, over one generation."""

    drafted: int = 0  # draft tokens proposed and checked
    accepted: int = 0  # of those, kept by the target
    steps: int = 0  # target forward passes
    tokens: int = 0  # tokens yielded

    @property
    def acceptance_rate(self) -> float:
        """The fraction of draft tokens the target kept (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def add(self, drafted: int, accepted: int, tokens: int) -> None:
        """Count one forward pass's check of `drafted` tokens, and the tokens it gave."""
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        self.tokens += tokens

    def describe(self) -> str:
        return (f"speculative decoding: {self.accepted}/{self.drafted} draft tokens accepted "
                f"({self.acceptance_rate:.0%}), {self.tokens / max(self.steps, 1):.2f} tokens "
                f"per forward pass")


class PromptLookup:
    """Drafts by n-gram match against the sequence so far (prompt and reply).

    The longest n-gram first, from `max_ngram` down to `min_ngram` tokens:
    the last n tokens are looked for earlier in the sequence, the most
    recent occurrence first, and the (up to k) tokens that followed it are
    the draft. No match: no draft (the step is then plain decoding).
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, ids: Sequence[int], k: int, cfg: SamplingConfig, prompt_len: int,
                gen: torch.Generator) -> tuple[list[int], torch.Tensor | None]:
        """Up to k draft tokens to follow `ids`, and None: their q is one-hot."""
        return lookup(ids, k, self.max_ngram, self.min_ngram), None


def lookup(ids: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """The up to k tokens that followed the most recent earlier occurrence of the
    longest suffix n-gram of `ids` (max_ngram >= n >= min_ngram); [] if none."""
    ids = list(ids)
    for n in range(min(max_ngram, len(ids) - 1), min_ngram - 1, -1):
        pattern = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):  # most recent first, not the suffix itself
            if ids[start:start + n] == pattern:
                return ids[start + n:start + n + k]
    return []


class DraftModel:
    """A smaller model that reads the same tokens drafts k tokens, one forward each.

    It keeps its own KV cache across steps: what the target rejected is
    truncated away (the longest prefix its cache shares with the sequence
    stays), so each step feeds it only the tokens it has not read.
    `vocab_size` is the tokenizer's: both models' outputs are cut to it.
    `max_len`: the longest sequence it will draft for (prompt and reply; default and
    at most its context length), which sizes its cache.
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int, max_len: int | None = None
                 ) -> None:
        self.model = model.eval()
        self.vocab_size = vocab_size
        context_length = model.config.context_length
        self.cache = model.new_cache(batch_size=1, max_len=min(max_len or context_length,
                                                               context_length))
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds
        self.device = next(model.parameters()).device

    def propose(self, ids: Sequence[int], k: int, cfg: SamplingConfig, prompt_len: int,
                gen: torch.Generator) -> tuple[list[int], torch.Tensor | None]:
        """Up to k draft tokens to follow `ids`, and the distributions q (k, V) drawn from."""
        k = min(k, self.cache.max_len - len(ids) + 1)  # it reads ids and k - 1 drafts
        if k < 1:
            return [], None
        keep = shared_prefix(self.cached, ids, limit=len(ids) - 1)  # feed at least one token
        self.cache.truncate(keep)
        del self.cached[keep:]
        feed, draft, qs = list(ids[keep:]), [], []
        prompt_ids, output_ids = ids[:prompt_len], list(ids[prompt_len:])
        for _ in range(k):
            tokens = torch.tensor([feed], dtype=torch.int64, device=self.device)  # (1, T)
            hidden = self.model(tokens, self.cache)[:, -1]  # (1, D)
            self.cached += feed
            logits = self.model.logits(hidden)[:, :self.vocab_size]  # (1, V)
            q = next_token_probs(logits, cfg, prompt_ids, output_ids + draft)  # (1, V)
            token = int(torch.multinomial(q.to(gen.device), 1, generator=gen)) \
                if cfg.temperature else int(q.argmax())  # (the engine's generators: CPU)
            draft.append(token)
            qs.append(q)
            feed = [token]
        return draft, torch.cat(qs)  # (k, V)


def shared_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens `a` and `b` have in common, at most `limit`."""
    n = 0
    while n < min(len(a), len(b), limit) and a[n] == b[n]:
        n += 1
    return n


def verify(p: torch.Tensor, draft: list[int], q: torch.Tensor | None,
           gen: torch.Generator) -> tuple[int, int]:
    """The rule that keeps the target's distribution (module docstring).

    p: (k + 1, V) the target's distributions after the last token and after
    each draft token; draft: the k draft tokens; q: (k, V) the distributions
    they were drawn from, or None for deterministic drafts (one-hot q).
    Returns (n, token): the first n drafts are accepted, and `token` follows them.
    """
    k = len(draft)
    if k:
        x = torch.tensor(draft, device=p.device)  # (k,)
        p_x = p[:-1].gather(1, x[:, None]).squeeze(1)  # (k,)
        q_x = torch.ones_like(p_x) if q is None else q.gather(1, x[:, None]).squeeze(1)
        u = torch.rand(k, generator=gen, device=p.device)  # (k,)
        accepted = u * q_x < p_x  # with probability min(1, p(x) / q(x))
        n = k if bool(accepted.all()) else int(accepted.int().argmin())  # the first rejection
    else:
        n = 0
    if n == k:
        return k, draw(p[k], gen)
    if q is None:
        residual = p[n].clone()
        residual[draft[n]] = 0.0  # max(0, p - onehot(x))
    else:
        residual = (p[n] - q[n]).clamp(min=0.0)
    if residual.sum() <= 0:  # p <= q everywhere: a rejection of probability 0 (rounding)
        residual = p[n]
    return n, draw(residual, gen)


def draw(weights: torch.Tensor, gen: torch.Generator) -> int:
    """One token drawn with probability proportional to `weights` (V,); a one-hot
    (greedy) gives its token without spending random numbers."""
    if int((weights > 0).sum()) == 1:
        return int(weights.argmax())
    return int(torch.multinomial(weights, 1, generator=gen))


def target_probs(logits: torch.Tensor, cfg: SamplingConfig, prompt_ids: Sequence[int],
                 output_ids: list[int], draft: list[int]) -> torch.Tensor:
    """The target's distributions (k + 1, V) after the reply so far and after each draft
    token: with penalties each row sees the drafts before it as generated tokens."""
    if not cfg.penalizes:
        return next_token_probs(logits, cfg)
    return torch.cat([next_token_probs(logits[i:i + 1], cfg, prompt_ids, output_ids + draft[:i])
                      for i in range(len(draft) + 1)])


@torch.no_grad()
def speculative_tokens(
    model: torch.nn.Module,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    drafter: PromptLookup | DraftModel,
    draft_tokens: int = 5,
    stop_ids: Collection[int] = (),
    vocab_size: int | None = None,
    stats: SpeculationStats | None = None,
) -> Iterator[int]:
    """Yield new token ids as `sampling.generate_tokens` does, checking up to `draft_tokens`
    drafts per forward pass of `model`; `stats` (if given) counts what was accepted."""
    stats = stats if stats is not None else SpeculationStats()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    context_length = model.config.context_length
    budget = min(cfg.max_new_tokens, context_length - len(prompt_ids))
    was_training = model.training
    model.eval()
    try:
        # The cache holds every token but the newest, which the next pass reads first.
        cache = model.new_cache(batch_size=1, max_len=min(context_length, len(prompt_ids) + budget))
        ids, new_ids = list(prompt_ids), []
        while len(new_ids) < budget:
            k = min(draft_tokens, budget - len(new_ids) - 1)  # the k + 1 tokens fit the budget
            draft, q = drafter.propose(ids, k, cfg, len(prompt_ids), gen) if k > 0 else ([], None)
            fed = torch.tensor([ids[cache.pos:] + draft], dtype=torch.int64, device=device)
            hidden = model(fed, cache)[0, -(len(draft) + 1):]  # (k + 1, D)
            logits = model.logits(hidden)[:, :vocab_size]  # (k + 1, V)
            p = target_probs(logits, cfg, prompt_ids, new_ids, draft)  # (k + 1, V)
            n, next_token = verify(p, draft, q, gen)
            cache.truncate(len(ids) + n)  # the last token and the accepted drafts stay
            stats.steps += 1
            stats.drafted += len(draft)
            stats.accepted += n
            for token in [*draft[:n], next_token]:
                if token in stop_ids:
                    return
                ids.append(token)
                new_ids.append(token)
                stats.tokens += 1
                yield token
    finally:
        model.train(was_training)


def check_can_rewind(config: ModelConfig, whose: str) -> None:
    """Speculation drops rejected draft tokens by moving the KV cache back; a Gated DeltaNet
    layer (Qwen3-Next, Qwen3.5) folds every token into its state, which cannot move back."""
    if any(config.layer_is_linear(i) for i in range(config.n_layer)):
        raise LLMScratchError(
            f"--speculative: the {whose} has Gated DeltaNet layers, whose state cannot drop "
            "rejected draft tokens; generate without --speculative")


def check_draft_tokens(draft_tokens: int, config: ModelConfig) -> None:
    """Fail in one line unless a model can speculate with this many draft tokens a step
    (0: no speculation)."""
    if not isinstance(draft_tokens, int) or draft_tokens < 0:
        raise LLMScratchError(f"draft_tokens must be a whole number >= 0 (0 = no speculative "
                              f"decoding), got {draft_tokens!r}")
    if draft_tokens:
        check_can_rewind(config, "model")


def check_draft_model(draft: torch.nn.Module, vocab_size: int) -> None:
    """Fail in one line unless `draft` can draft for a model drawing from `vocab_size` ids:
    it can rewind, and its output layer covers those ids."""
    check_can_rewind(draft.config, "draft model")
    if draft.config.vocab_size < vocab_size:
        raise LLMScratchError(f"--speculative: the draft model has {draft.config.vocab_size:,} "
                              f"outputs; the model draws from {vocab_size:,} token ids")


# --- in the engine (engine.py; the module docstring's last paragraph) ---------------------


class EngineDrafter:
    """Drafts for the engine's sequences: prompt lookup (no `model`), or a draft model
    with a `DraftModel` (its own dense cache, sized to the sequence) per sequence, dropped
    once the sequence has finished. vocab_size: the ids both models draw from."""

    def __init__(self, model: torch.nn.Module | None = None, vocab_size: int = 0) -> None:
        self.model, self.vocab_size = model, vocab_size
        self.lookup = PromptLookup()
        self.drafters: dict[int, tuple[EngineSequence, DraftModel]] = {}

    def propose(self, seq: EngineSequence, k: int) -> tuple[list[int], torch.Tensor | None]:
        """Up to k draft tokens to follow `seq`, and the distributions q (k, V) they were
        drawn from (None: prompt lookup's, one-hot)."""
        args = (seq.token_ids, k, seq.sampling, len(seq.prompt_ids), seq.generator)
        if self.model is None:
            return self.lookup.propose(*args)
        if seq.id not in self.drafters:
            longest = len(seq.prompt_ids) + seq.sampling.max_new_tokens
            self.drafters[seq.id] = seq, DraftModel(self.model, self.vocab_size, longest)
        return self.drafters[seq.id][1].propose(*args)

    def forget_finished(self) -> None:
        """Drop the draft caches of the sequences that have ended (or were aborted)."""
        self.drafters = {i: (seq, d) for i, (seq, d) in self.drafters.items()
                         if not seq.finished}


def engine_draft(seq: EngineSequence, drafter: EngineDrafter, blocks: BlockManager,
                 context_length: int) -> tuple[list[int], torch.Tensor | None]:
    """The draft tokens a decoding sequence carries into the step, and their q: at most
    its `draft_tokens`, leaving room in its budget and the context for the model's own
    token after them, and only as many as the free blocks hold (the last token's slot is
    the scheduler's; the drafts fill the positions after it)."""
    k = min(seq.draft_tokens, seq.sampling.max_new_tokens - len(seq.output_ids) - 1,
            context_length - seq.num_tokens - 1)
    if k < 1:
        return [], None
    draft, q = drafter.propose(seq, k)
    if not draft:
        return [], None
    held = blocks.reserve(seq, seq.num_tokens + len(draft))  # positions its blocks hold
    n = held - seq.num_tokens
    return draft[:n], None if q is None else q[:n]


def scored_rows(last: torch.Tensor, drafts: list[list[int]]) -> torch.Tensor:
    """Which of a step's packed tokens get logits: every sequence's last token (`last`, (B,))
    and, before it, its draft tokens and the token before them: its last k + 1."""
    if not any(drafts):
        return last
    ends = last.tolist()
    rows = [row for end, draft in zip(ends, drafts, strict=True)
            for row in range(end - len(draft), end + 1)]
    return torch.tensor(rows, device=last.device)


def accept_drafts(seq: EngineSequence, logits: torch.Tensor, draft: list[int],
                  q: torch.Tensor | None, blocks: BlockManager) -> list[int]:
    """The tokens a sequence gets from its step: the drafts the model accepts and the
    model's own token after them (the rule of the module docstring; q (k, V) the draft
    model's, None for prompt lookup's one-hot), drawn with the sequence's own generator.
    logits (k + 1, V): after its last token and after each draft token. The cache is
    rolled back to the last token and the accepted drafts: the blocks past them are
    given back."""
    p = target_probs(logits, seq.sampling, seq.prompt_ids, seq.output_ids, draft)  # (k + 1, V)
    where = seq.generator.device  # its random numbers are drawn there
    n, token = verify(p.to(where), draft, None if q is None else q.to(where), seq.generator)
    blocks.truncate(seq, seq.num_tokens + n)  # its tokens so far, and n drafts, computed
    return [*draft[:n], token]
