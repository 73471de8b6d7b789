"""One request inside the engine: its tokens, where its K/V live, how it samples, when it ends."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

import torch

from llmscratch.generation.sampling import SamplingConfig, TokenCounts

_ids = itertools.count()


@dataclass
class TokenLogprobs:
    """A generated token's log-probability under the model (before any sampling setting
    reshapes it), and the most likely tokens at that step with theirs, best first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class Status(Enum):
    WAITING = "waiting"  # not yet prefilled (or preempted: to be prefilled again)
    RUNNING = "running"  # its K/V are in the cache; it decodes a token each step
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """A prompt and the tokens generated for it so far.

    `num_computed` counts the leading tokens whose keys and values are in the
    cache; the engine computes the rest. `block_table` lists the cache blocks
    that hold them, in order (block_manager.py). Sampling draws from the
    sequence's own generator, seeded by its request: the same seed gives the
    same text whatever else shares the batch, and a preempted sequence picks
    up exactly where it stopped.
    """

    prompt_ids: list[int]
    sampling: SamplingConfig
    stop_ids: Collection[int] = ()
    id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    # Sliding-window layers' blocks (None where no query sees them any more), when the
    # model has such layers: block_manager.py.
    window_table: list[int | None] = field(default_factory=list)
    window_released: int = 0  # leading entries of window_table already given back
    # Its Gated DeltaNet layers' states, when the model has such layers: state_pool.py.
    state_slot: int | None = None
    num_hashed: int = 0  # leading blocks of block_table hashed for prefix sharing
    last_hash: bytes | None = None  # the hash of the last of them (the next one chains to it)
    finish_reason: str | None = None  # "stop" (a stop id), "length", "abort" or "error"
    stop_token: int | None = None  # the stop id that ended it (not in output_ids)
    # With sampling.logprobs = k: per new token, its log-probability and the k likeliest.
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    generator: torch.Generator = field(init=False)
    counts: TokenCounts | None = None  # its tokens, counted for the penalties (when it has any)
    draft_tokens: int = 0  # > 0: up to this many draft tokens a decode step (speculative.py)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.sampling.seed)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
