"""Preference pairs as the reward model and DPO read them: read, held out, tokenized.

finetune.data is a preference file (data/alignment_files.py) or "synthetic":
for each synthetic task example, its right answer against a plausible wrong
one, and against the right answer badly formatted (data/synthetic_tasks.py:
preference_pairs). The held-out pairs are finetune.val_data, the synthetic
tasks' held-out split, or the last finetune.val_fraction of the file after
a seeded shuffle.

A pair whose chosen and rejected responses are the same text teaches
nothing: it is skipped and counted (the book's chapter 7 file has six), and
only a file with no other pair is refused.

Each response is laid out after its prompt as SFT lays out a reply (the
chat template or the Alpaca prompt: data/chat_examples.py, ChatEncoder), so
a model tuned by SFT sees the text it was tuned on. A pair is never
truncated: one whose longer response does not fit finetune.max_len (or the
context) is skipped and counted. So is one whose prompt alone does not fit, with
finetune.overlong=skip; without it, that is an error naming its record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmscratch.data.alignment_files import Preference, from_pair, read_preferences
from llmscratch.data.chat_examples import ChatEncoder
from llmscratch.data.examples import Example
from llmscratch.data.synthetic_tasks import make_tasks, preference_pairs
from llmscratch.errors import LLMScratchError
from llmscratch.recipes.report import counted, overlong_sentence
from llmscratch.recipes.sft import hold_out
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import Run
from llmscratch.tokenizer import Tokenizer


@dataclass
class EncodedPair:
    """A pair as token ids: prompt + response, targets on the response (SFT's Example)."""

    chosen: Example
    rejected: Example
    preference: Preference


@dataclass
class PairData:
    """The training and held-out pairs of a reward or DPO run (see the module docstring)."""

    train: list[EncodedPair]
    heldout: list[EncodedPair]
    encoder: ChatEncoder
    limit: int  # the most tokens prompt + response may have
    counts: dict[str, int] = field(default_factory=dict)  # read and skipped pairs

    def report(self, config: RunConfig) -> list[str]:
        """report.md's lines on the pairs: how many, and how many were skipped, and why."""
        c, ft = self.counts, config.finetune
        return [f"- {ft.data}: {c['train']:,} training and {c['heldout']:,} held-out "
                "preference pairs.",
                "- " + counted(c["ties"], "pair", "skipped for having the same chosen and "
                               "rejected response"),
                "- " + overlong_sentence("pair", self.limit, bool(ft.max_len), 0,
                                         c["skipped"])]


def read_pairs(config: RunConfig, counts: dict[str, int]
               ) -> tuple[list[Preference], list[Preference]]:
    """(training, held-out) preference pairs, without ties (counted in counts["ties"])."""
    ft, seed = config.finetune, config.train.seed
    if ft.data == "synthetic":
        train = make_tasks(ft.synthetic_train, seed, "train")
        heldout = make_tasks(ft.synthetic_heldout, seed, "heldout")
        return ([from_pair(p) for p in preference_pairs(train, seed)],
                [from_pair(p) for p in preference_pairs(heldout, seed)])
    if not ft.data:
        raise LLMScratchError(f"finetune {ft.method} needs --data: a preference .json/.jsonl "
                              "file, or 'synthetic' (pairs from the tasks shipped with the "
                              "project)")
    pairs = _untied(ft.data, read_preferences(ft.data), counts)
    if ft.val_data:
        return pairs, _untied(ft.val_data, read_preferences(ft.val_data), counts)
    return hold_out(pairs, ft.val_fraction, seed, ft.data)


def _untied(source: str, pairs: list[Preference], counts: dict[str, int]) -> list[Preference]:
    """The pairs that prefer one response to another; the others are counted."""
    kept = [pair for pair in pairs if not pair.is_tie]
    counts["ties"] += len(pairs) - len(kept)
    if pairs and not kept:
        raise LLMScratchError(f"{source}: in all {len(pairs):,} pairs, 'chosen' and "
                              "'rejected' are the same response; a pair must prefer one "
                              "response to another")
    return kept


def prepare_pairs(config: RunConfig, tokenizer: Tokenizer, base: Run,
                  context_length: int) -> PairData:
    """Read, check and tokenize the pairs; raise on the first bad one, before any writing."""
    ft = config.finetune
    settings = base.generation_settings()
    if not settings.stop_token_ids:
        raise LLMScratchError(f"the base run {base.path} has no end-of-text token to end "
                              f"responses with ({base.INFO}: generation.stop_token_ids)")
    encoder = ChatEncoder(tokenizer, settings, ft.prompt_format, train_on_all=False)
    limit = ft.max_len or context_length
    counts = {"ties": 0, "skipped": 0}
    train, heldout = read_pairs(config, counts)
    counts.update(train=len(train), heldout=len(heldout))
    skip = ft.overlong == "skip"
    data = PairData(_encode(train, encoder, limit, skip, counts),
                    _encode(heldout, encoder, limit, skip, counts), encoder, limit, counts)
    if not data.train:
        raise LLMScratchError(f"no training pair is left after skipping those over {limit} "
                              "tokens; raise finetune.max_len")
    return data


def _encode(pairs: list[Preference], encoder: ChatEncoder, limit: int, skip: bool,
            counts: dict[str, int]) -> list[EncodedPair]:
    """The pairs that fit in `limit` tokens, encoded; the others are counted as skipped (a
    prompt that alone does not fit is an error, unless `skip`)."""
    encoded = []
    for preference in pairs:
        chosen, rejected = preference.conversations()
        prompt_tokens = len(encoder.prompt_ids(chosen))
        if prompt_tokens >= limit and not skip:
            raise LLMScratchError(f"{preference.source or 'a synthetic pair'}: the prompt is "
                                  f"{prompt_tokens} tokens, and the model reads at most {limit} "
                                  "(finetune.max_len or the context length); shorten it, or "
                                  "skip such pairs with finetune.overlong=skip")
        pair = EncodedPair(encoder.example(chosen), encoder.example(rejected), preference)
        if prompt_tokens >= limit or max(len(pair.chosen.ids), len(pair.rejected.ids)) > limit:
            counts["skipped"] += 1
            continue
        encoded.append(pair)
    return encoded


def whole_text(example: Example) -> list[int]:
    """All the tokens of prompt + response (an Example's inputs lack the last one)."""
    return example.ids + example.targets[-1:]
