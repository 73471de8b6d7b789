"""Turning next-token logits into text: sampling and the generation loop.

Generation runs the model once on the whole prompt (prefill), which fills a
KV cache, then once per new token on that token alone (decode). Each step
turns the last position's logits into a probability distribution and draws
the next token from it. First the penalties, which discourage repeating
(applied before greedy decoding too):

- repetition_penalty r (Keskar et al., 2019, "CTRL"): the logit of a token
  already in the prompt or the output is divided by r if positive and
  multiplied by r if negative;
- frequency_penalty f and presence_penalty p (as OpenAI's API defines them):
  a token's logit drops by f times the number of times it was generated,
  and by p once if it was generated at all;
- logit_bias (OpenAI's too): a number from -100 to 100 added to the logit of
  each token named; -100 in effect bans a token, +100 all but forces it;

then the distribution:

- temperature T divides the logits: T < 1 sharpens, T > 1 flattens, and
  T = 0 means greedy (always the most likely token);
- top-k keeps only the k most likely tokens;
- top-p (nucleus sampling, Holtzman et al., 2019) keeps the smallest set of
  most likely tokens whose probabilities add up to at least p;
- min-p (Nguyen et al., 2024) keeps the tokens at least min_p times as likely
  as the most likely one.

The draw is torch.multinomial's own (for one sample): with q a vector of
exponential random numbers from the sequence's `torch.Generator`, the token
is argmax(p / q), which picks each token with probability p (the
exponential race). Done by hand, it runs for a whole batch at once, every
row with its own settings (as (B,) tensors) and its own generator's numbers:
`sample_rows`, which the engine calls once a step for all its sequences,
keeping each one's token counts for the penalties as it goes
(`TokenCounts`). The same seed gives the same text, alone or in a batch,
and the same as `torch.multinomial` would draw.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from llmscratch.config import check_seed
from llmscratch.errors import LLMScratchError


@dataclass
class SamplingConfig:
    """How to pick each new token, and how many.

    Fields:
        max_new_tokens: the most tokens to generate (at least 1).
        temperature: divides the logits; 0 = greedy (always the most likely token).
        top_k: keep the k most likely tokens (0 = all).
        top_p: keep the most likely tokens up to this probability mass (1 = all).
        min_p: keep tokens at least this fraction as likely as the most likely (0 = all).
        repetition_penalty: > 1 discourages tokens of the prompt and output (1 = off).
        frequency_penalty: subtracted from a logit per time its token was generated.
        presence_penalty: subtracted once from the logit of any token generated.
        seed: the same seed gives the same text (a whole number from 0 to 2^63 - 1).
        logprobs: None, or k: report each chosen token's log-probability under the model
            and the k most likely alternatives' (engine only; 0 to 20).
        logit_bias: token id -> a number from -100 to 100 added to its logit (None = off).
    """

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None
    logit_bias: dict[int, float] | None = None

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.max_new_tokens < 1:
            raise LLMScratchError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise LLMScratchError(f"temperature must be a finite number >= 0 (0 = greedy), got "
                                  f"{self.temperature}")
        if self.top_k < 0:
            raise LLMScratchError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:  # also false for nan
            raise LLMScratchError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise LLMScratchError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise LLMScratchError(f"repetition_penalty must be a finite number > 0 (1 = off), "
                                  f"got {self.repetition_penalty}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise LLMScratchError(f"logprobs must be between 0 and 20, got {self.logprobs}")
        for token, bias in (self.logit_bias or {}).items():
            number = isinstance(bias, (int, float)) and -100 <= bias <= 100  # not nan
            if not (isinstance(token, int) and token >= 0 and number):
                raise LLMScratchError(f"logit_bias maps token ids (>= 0) to numbers from -100 "
                                      f"to 100, got {token!r}: {bias!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:  # OpenAI's range; also false for nan
                raise LLMScratchError(f"{name} must be in [-2, 2] (0 = off), got "
                                      f"{getattr(self, name)}")

    @property
    def penalizes(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0 or bool(self.logit_bias))


class TokenCounts:
    """One sequence's tokens so far, as the penalties need them: which tokens its prompt
    holds, and how many times each was generated; (V,) tensors, updated by one write per
    new token instead of being rebuilt from the whole sequence at every step."""

    def __init__(self, prompt_ids: Collection[int], vocab: int,
                 device: torch.device | str = "cpu") -> None:
        self.vocab = vocab
        self.in_prompt = torch.zeros(vocab, dtype=torch.bool, device=device)  # (V,)
        ids = [t for t in prompt_ids if t < vocab]
        self.in_prompt[torch.tensor(ids, dtype=torch.int64, device=device)] = True
        self.generated = torch.zeros(vocab, device=device)  # (V,) fp32 counts

    def add(self, token: int) -> None:
        if token < self.vocab:
            self.generated[token] += 1


def row_settings(configs: Seq[SamplingConfig], name: str, device: torch.device) -> torch.Tensor:
    """One setting of every row's config as a (B,) tensor."""
    return torch.tensor([getattr(cfg, name) for cfg in configs], device=device)


def penalize(logits: torch.Tensor, configs: Seq[SamplingConfig],
             counts: Seq[TokenCounts | None]) -> torch.Tensor:
    """Logits (B, V) with each row's repetition, frequency and presence penalties and its
    logit bias applied (see the module docstring), all rows that have any at once.

    counts: each row's `TokenCounts` (None where its config penalises nothing).
    """
    rows = [i for i, cfg in enumerate(configs) if cfg.penalizes]
    if not rows:
        return logits
    logits = logits.float().clone()  # (B, V)
    index = torch.tensor(rows, device=logits.device)
    picked = logits[index]  # (R, V): the rows that penalise
    chosen = [configs[i] for i in rows]
    generated = torch.stack([counts[i].generated for i in rows])  # (R, V)
    seen = torch.stack([counts[i].in_prompt for i in rows]) | (generated > 0)  # (R, V)
    r = row_settings(chosen, "repetition_penalty", logits.device)[:, None]  # (R, 1)
    picked = torch.where(seen, torch.where(picked > 0, picked / r, picked * r), picked)
    f = row_settings(chosen, "frequency_penalty", logits.device)[:, None]  # (R, 1)
    p = row_settings(chosen, "presence_penalty", logits.device)[:, None]  # (R, 1)
    picked = picked - (f * generated + p * (generated > 0).float())
    for j, cfg in enumerate(chosen):
        biased = {t: b for t, b in (cfg.logit_bias or {}).items() if t < picked.size(-1)}
        if biased:
            ids = torch.tensor(list(biased), dtype=torch.int64, device=logits.device)
            picked[j, ids] += torch.tensor(list(biased.values()), device=logits.device)
    logits[index] = picked
    return logits


def apply_penalties(logits: torch.Tensor, cfg: SamplingConfig, prompt_ids: Collection[int],
                    output_ids: Collection[int]) -> torch.Tensor:
    """Logits (B, V) with the penalties of one sequence (prompt and output so far) and its
    logit bias applied; every row gets the same."""
    if not cfg.penalizes:
        return logits
    counts = TokenCounts(prompt_ids, logits.size(-1), logits.device)
    for token in output_ids:
        counts.add(token)
    return penalize(logits, [cfg] * logits.size(0), [counts] * logits.size(0))


def truncate(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Each row's top-k, then its top-p: logits (R, V) with the tokens cut set to -inf.

    top_k (R,): 0 keeps all; top_p (R,): 1 keeps all. One sort serves both.
    """
    V = logits.size(-1)
    sorted_logits, order = torch.sort(logits, descending=True)  # (R, V)
    k = torch.where(top_k > 0, top_k.clamp(max=V), V)  # (R,)
    kth_best = sorted_logits.gather(-1, (k - 1)[:, None])  # (R, 1)
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth_best, float("-inf"))
    sorted_probs = torch.softmax(sorted_logits, dim=-1)  # (R, V)
    # Drop a token if the tokens ranked above it already reach top_p.
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (R, V)
    drop = (mass_before >= top_p[:, None]) & (top_p[:, None] < 1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def exponential_noise(like: torch.Tensor, generators: torch.Generator | Seq[torch.Generator],
                      drawn: torch.Tensor) -> torch.Tensor:
    """Exponential random numbers shaped like `like` (B, V): all rows from one generator,
    or row i from generators[i] (only the rows where `drawn`, (B,) bool, is True; 1 elsewhere).

    Each row is filled on its generator's device, as torch.multinomial fills it.
    """
    if isinstance(generators, torch.Generator):
        noise = torch.empty(like.shape, device=generators.device)
        return noise.exponential_(1, generator=generators).to(like.device)
    noise = torch.ones(like.shape, device=generators[0].device if generators else "cpu")
    for i in drawn.nonzero().flatten().tolist():
        noise[i].exponential_(1, generator=generators[i])
    return noise.to(like.device)


def sample_rows(logits: torch.Tensor, configs: Seq[SamplingConfig],
                generators: torch.Generator | Seq[torch.Generator],
                counts: Seq[TokenCounts | None] | None = None) -> torch.Tensor:
    """Pick the next token of every row of `logits` (B, V), each row with its own config;
    returns (B,) int64. Every step is one tensor operation for all rows, but the
    random numbers, which come from each row's own generator (or one for all rows), so
    a row's token never depends on the others. counts: each row's `TokenCounts`, for
    the penalties.
    """
    if counts is not None:
        logits = penalize(logits, configs, counts)
    device = logits.device
    temperature = row_settings(configs, "temperature", device)  # (B,)
    greedy = temperature == 0
    best = logits.argmax(dim=-1)  # (B,)
    if bool(greedy.all()):
        return best
    logits = logits.float() / torch.where(greedy, 1.0, temperature)[:, None]  # (B, V)
    top_k, top_p = row_settings(configs, "top_k", device), row_settings(configs, "top_p", device)
    cut = (top_k > 0) | (top_p < 1)  # (B,) rows that truncate
    if bool(cut.any()):
        logits[cut] = truncate(logits[cut], top_k[cut], top_p[cut])
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    min_p = row_settings(configs, "min_p", device)[:, None]  # (B, 1)
    probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
    noise = exponential_noise(probs, generators, ~greedy.cpu())  # (B, V)
    drawn = (probs / noise).argmax(dim=-1)  # (B,): the exponential race
    return torch.where(greedy, best, drawn)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator,
                prompt_ids: Collection[int] = (), output_ids: Collection[int] = ()
                ) -> torch.Tensor:
    """Pick the next token for each row of `logits` (B, V) with one config and one
    generator; returns (B,) int64. prompt_ids, output_ids: the sequence so far, for the
    penalties."""
    logits = apply_penalties(logits, cfg, prompt_ids, output_ids)
    return sample_rows(logits, [cfg] * logits.size(0), gen)


def next_token_probs(logits: torch.Tensor, cfg: SamplingConfig, prompt_ids: Collection[int] = (),
                     output_ids: Collection[int] = ()) -> torch.Tensor:
    """The distribution `sample_next` draws from, (B, V) fp32, each row summing to 1.

    Greedy decoding (temperature 0) is the distribution that puts all its mass on
    the most likely token: one-hot rows. Speculative decoding (speculative.py)
    compares these probabilities with a draft's.
    """
    logits = apply_penalties(logits, cfg, prompt_ids, output_ids)
    if cfg.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    logits = logits.float() / cfg.temperature  # (B, V)
    if cfg.top_k > 0:
        kth_best = torch.topk(logits, min(cfg.top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)  # (B, V)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token if the tokens ranked above it already reach top_p.
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= cfg.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if cfg.min_p > 0:
        top_prob = probs.amax(dim=-1, keepdim=True)  # (B, 1)
        probs = probs.masked_fill(probs < cfg.min_p * top_prob, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


@torch.no_grad()
def generate_tokens(
    model: torch.nn.Module,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    stop_ids: Collection[int] = (),
    vocab_size: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time, until `max_new_tokens` or one of `stop_ids`.

    The stop token itself is not yielded (a run's stop ids: runs/run.py). The
    prompt plus the new tokens must fit the model's context length; generation
    stops early when it is full.
    `vocab_size` is the tokenizer's: a model's output layer may be wider (a
    tokenizer that learned fewer merges than asked for, or rows padded for
    speed), and ids past the tokenizer's last one are never sampled.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    context_length = model.config.context_length
    budget = min(cfg.max_new_tokens, context_length - len(prompt_ids))
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(batch_size=1, max_len=min(context_length, len(prompt_ids) + budget))
        tokens = torch.tensor([prompt_ids], dtype=torch.int64, device=device)  # (1, T)
        counts = None  # the penalties' token counts, kept as the text grows
        for _ in range(budget):
            hidden = model(tokens, cache)[:, -1]  # (1, D): the last position's, prefill or decode
            logits = model.logits(hidden)[:, :vocab_size]  # (1, V)
            if cfg.penalizes and counts is None:
                counts = TokenCounts(prompt_ids, logits.size(-1), device)
            next_id = sample_rows(logits, [cfg], gen, [counts])  # (1,)
            token = int(next_id.item())
            if token in stop_ids:
                return
            if counts is not None:
                counts.add(token)
            yield token
            tokens = next_id.view(1, 1)  # (1, 1)
    finally:
        model.train(was_training)


def generate(
    model: torch.nn.Module,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    stop_ids: Collection[int] = (),
    vocab_size: int | None = None,
) -> list[int]:
    """All new token ids at once (see `generate_tokens`)."""
    return list(generate_tokens(model, prompt_ids, cfg, stop_ids, vocab_size))
