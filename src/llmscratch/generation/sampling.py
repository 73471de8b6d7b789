"""Turning next-token logits into text: sampling and the generation loop.

Generation runs the model once on the whole prompt (prefill), which fills a
KV cache, then once per new token on that token alone (decode). Each step
turns the last position's logits into a probability distribution and draws
the next token from it:

- temperature T divides the logits: T < 1 sharpens, T > 1 flattens, and
  T = 0 means greedy (always the most likely token);
- top-k keeps only the k most likely tokens;
- top-p (nucleus sampling, Holtzman et al., 2019) keeps the smallest set of
  most likely tokens whose probabilities add up to at least p.

Sampling uses its own `torch.Generator`, so the same seed gives the same text.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import torch

from llmscratch.errors import LLMScratchError


@dataclass
class SamplingConfig:
    """How to pick each new token, and how many.

    Fields:
        max_new_tokens: the most tokens to generate (at least 1).
        temperature: divides the logits; 0 = greedy (always the most likely token).
        top_k: keep the k most likely tokens (0 = all).
        top_p: keep the most likely tokens up to this probability mass (1 = all).
        seed: the same seed gives the same text.
    """

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise LLMScratchError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise LLMScratchError(f"temperature must be a finite number >= 0 (0 = greedy), got "
                                  f"{self.temperature}")
        if self.top_k < 0:
            raise LLMScratchError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:  # also false for nan
            raise LLMScratchError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator) -> torch.Tensor:
    """Pick the next token for each row of `logits` (B, V); returns (B,) int64."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
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
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)  # (B,)


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
        for _ in range(budget):
            hidden = model(tokens, cache)[:, -1]  # (1, D): the last position's, prefill or decode
            logits = model.logits(hidden)[:, :vocab_size]  # (1, V)
            next_id = sample_next(logits, cfg, gen)  # (1,)
            token = int(next_id.item())
            if token in stop_ids:
                return
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
