"""Exact match: answer held-out instructions greedily, and count the answers that are right.

For each held-out example the model is given the prompt (rendered as in
training), writes greedily until a stop token or `max_new_tokens`, and the
reply counts as right when it equals the reference once whitespace around
both is stripped (data/synthetic_tasks.py: `is_correct`). All prompts are
answered together by the inference engine (generation/engine.py), so a few
hundred held-out examples take seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

from llmscratch.generation.engine import Engine
from llmscratch.generation.sampling import SamplingConfig
from llmscratch.model import GPT
from llmscratch.tokenizer import Tokenizer


@dataclass
class ExactMatch:
    """How many replies equal their reference, overall and per task."""

    correct: int
    total: int
    by_task: dict[str, list[int]] = field(default_factory=dict)  # task -> [correct, total]
    samples: list[dict] = field(default_factory=list)  # the first few: prompt, reference, reply

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@torch.no_grad()
def exact_match(model: GPT, tokenizer: Tokenizer, prompts: Sequence[list[int]],
                references: Sequence[str], tasks: Sequence[str], stop_ids: Collection[int],
                max_new_tokens: int = 32, keep_samples: int = 5) -> ExactMatch:
    """Answer every prompt (token ids) greedily and score the replies against `references`."""
    replies = greedy_replies(model, tokenizer, prompts, stop_ids, max_new_tokens)
    result = ExactMatch(0, len(prompts))
    for i, (reference, task, reply) in enumerate(zip(references, tasks, replies, strict=True)):
        right = reply.strip() == reference.strip()
        result.correct += right
        counts = result.by_task.setdefault(task, [0, 0])
        counts[0] += right
        counts[1] += 1
        if i < keep_samples:
            result.samples.append({"prompt": tokenizer.decode(list(prompts[i])),
                                   "reference": reference, "reply": reply, "right": right})
    return result


@torch.no_grad()
def greedy_replies(model: GPT, tokenizer: Tokenizer, prompts: Sequence[list[int]],
                   stop_ids: Collection[int], max_new_tokens: int = 32) -> list[str]:
    """Each prompt's greedy reply, all generated together by the engine.

    A prompt the context cannot hold with room for `max_new_tokens` gets the
    empty reply (scored as wrong).
    """
    was_training = model.training
    engine = Engine(model, max_batch=64, vocab_size=tokenizer.vocab_size)
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0)
    room = model.config.context_length - max_new_tokens
    replies = [""] * len(prompts)
    fits = [i for i, p in enumerate(prompts) if len(p) <= room]
    outputs = engine.generate([prompts[i] for i in fits], greedy, stop_ids)
    for i, ids in zip(fits, outputs, strict=True):
        replies[i] = tokenizer.decode(ids)
    model.train(was_training)
    return replies
