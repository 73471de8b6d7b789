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

Sampling uses its own `torch.Generator`, so the same seed gives the same text.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
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


def apply_penalties(logits: torch.Tensor, cfg: SamplingConfig, prompt_ids: Collection[int],
                    output_ids: Collection[int]) -> torch.Tensor:
    """Logits (B, V) with the repetition, frequency and presence penalties of one sequence,
    and its logit bias, applied (see the module docstring); every row gets the same."""
    if not cfg.penalizes:
        return logits
    logits = logits.float().clone()  # (B, V)
    V = logits.size(-1)
    if cfg.repetition_penalty != 1.0:
        seen = torch.tensor(sorted({t for t in [*prompt_ids, *output_ids] if t < V}),
                            dtype=torch.int64, device=logits.device)
        picked = logits[:, seen]  # (B, n)
        logits[:, seen] = torch.where(picked > 0, picked / cfg.repetition_penalty,
                                      picked * cfg.repetition_penalty)
    if output_ids and (cfg.frequency_penalty or cfg.presence_penalty):
        counts = torch.bincount(torch.tensor([t for t in output_ids if t < V],
                                             dtype=torch.int64, device=logits.device),
                                minlength=V).float()  # (V,)
        logits -= cfg.frequency_penalty * counts + cfg.presence_penalty * (counts > 0).float()
    if cfg.logit_bias:
        biased = {t: b for t, b in cfg.logit_bias.items() if t < V}
        ids = torch.tensor(list(biased), dtype=torch.int64, device=logits.device)
        logits[:, ids] += torch.tensor(list(biased.values()), device=logits.device)
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator,
                prompt_ids: Collection[int] = (), output_ids: Collection[int] = ()
                ) -> torch.Tensor:
    """Pick the next token for each row of `logits` (B, V); returns (B,) int64.

    prompt_ids, output_ids: the sequence so far, for the penalties.
    """
    if cfg.temperature == 0:
        return apply_penalties(logits, cfg, prompt_ids, output_ids).argmax(dim=-1)
    probs = next_token_probs(logits, cfg, prompt_ids, output_ids)  # (B, V)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # (B,)


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
        new_ids: list[int] = []
        for _ in range(budget):
            hidden = model(tokens, cache)[:, -1]  # (1, D): the last position's, prefill or decode
            logits = model.logits(hidden)[:, :vocab_size]  # (1, V)
            next_id = sample_next(logits, cfg, gen, prompt_ids, new_ids)  # (1,)
            token = int(next_id.item())
            if token in stop_ids:
                return
            new_ids.append(token)
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
