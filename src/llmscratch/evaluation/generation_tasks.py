"""Generation tasks: a greedy reply to each prompt, its answer extracted, then exact match.

    reply     = the model's greedy continuation of the prompt, cut before the first
                of the task's `until` strings (and ended by the run's stop tokens)
    extracted = the first group of the task's `extract` regular expression in the
                reply (GSM8K: the number after "#### "), or the whole reply when
                the task has none; None when the expression matches nothing
    right     = normalize(extracted) == normalize(reference)

`normalize` strips surrounding whitespace and, from a number, the commas, a
dollar sign and a final full stop ("1,000." and "1000" are the same answer;
lm-evaluation-harness's GSM8K ignores the same characters). A reply whose
extractor matches nothing counts as wrong, and the count of such replies is
reported beside the accuracy: a model that answers in another form scores 0
for a reason that the count makes visible.

All prompts of a chunk are answered together by the inference engine
(generation/engine.py, continuous batching); a reply is stopped as soon as
its text holds an `until` string, so a GSM8K reply does not run on to its
256-token limit after the answer. A prompt longer than the model's context
minus `max_new_tokens` keeps its last tokens, as lm-evaluation-harness does.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import torch

from llmscratch.generation.engine import Engine
from llmscratch.generation.sampling import SamplingConfig
from llmscratch.model import GPT
from llmscratch.tokenizer import Tokenizer

CHUNK = 64  # prompts a chunk: results are written after each
_NUMBER = re.compile(r"^\$?-?[0-9][0-9,]*(\.[0-9]*)?\.?$")


def normalize(answer: str) -> str:
    """Whitespace around, and a number's commas, dollar sign and final full stop, removed."""
    answer = answer.strip()
    if _NUMBER.match(answer):
        answer = answer.replace(",", "").replace("$", "").rstrip(".")
    return answer


def cut_at(reply: str, until: Sequence[str]) -> str:
    """The reply before the first of the `until` strings."""
    ends = [reply.index(u) for u in until if u and u in reply]
    return reply[:min(ends)] if ends else reply


def extract_answer(reply: str, pattern: str) -> str | None:
    """What `pattern` finds in the reply (its first group, if it has one), or None."""
    if not pattern:
        return reply.strip()
    match = re.search(pattern, reply)
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


@dataclass
class Outcome:
    """One example's reply, what was extracted from it, and whether that was right."""

    reply: str
    extracted: str | None
    right: bool


def score_reply(reply: str, reference: str, pattern: str) -> Outcome:
    extracted = extract_answer(reply, pattern)
    right = extracted is not None and normalize(extracted) == normalize(reference)
    return Outcome(reply, extracted, right)


@torch.no_grad()
def generate_replies(model: GPT, tokenizer: Tokenizer, prompts: Sequence[list[int]],
                     max_new_tokens: int, stop_ids: Collection[int] = (),
                     until: Sequence[str] = ()) -> Iterator[list[str]]:
    """Greedy replies, a chunk of CHUNK prompts at a time (yielded as each chunk ends)."""
    engine = Engine(model, max_batch=CHUNK, vocab_size=tokenizer.vocab_size)
    room = model.config.context_length - max_new_tokens
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0)
    for start in range(0, len(prompts), CHUNK):
        seqs = [engine.add(list(p[-room:]) if room > 0 else list(p[-1:]), greedy, stop_ids)
                for p in prompts[start:start + CHUNK]]
        while not engine.scheduler.idle:
            for seq, _ in engine.step():
                if until and not seq.finished and any(
                        u in tokenizer.decode(seq.output_ids) for u in until):
                    engine.abort(seq)
        yield [cut_at(tokenizer.decode(seq.output_ids), until) for seq in seqs]
