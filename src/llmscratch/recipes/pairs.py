"""Preference pairs as the reward model and DPO read them: read, held out, tokenized.

finetune.data is a preference file (data/alignment_files.py) or "synthetic":
for each synthetic task example, its right answer against a plausible wrong
one, and against the right answer badly formatted (data/synthetic_tasks.py:
preference_pairs). The held-out pairs are finetune.val_data, the synthetic
tasks' held-out split, or the last finetune.val_fraction of the file after
a seeded shuffle.

Each response is laid out after its prompt as SFT lays out a reply (the
chat template or the Alpaca prompt: data/chat_examples.py, ChatEncoder), so
a model tuned by SFT sees the text it was tuned on. A prompt longer than the context
is an error naming its record; a pair whose longer response does not fit is
skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmscratch.data.alignment_files import Preference, from_pair, read_preferences
from llmscratch.data.chat_examples import ChatEncoder
from llmscratch.data.examples import Example
from llmscratch.data.synthetic_tasks import make_tasks, preference_pairs
from llmscratch.errors import LLMScratchError
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
    counts: dict[str, int] = field(default_factory=dict)  # read and skipped pairs


def read_pairs(config: RunConfig) -> tuple[list[Preference], list[Preference]]:
    """(training, held-out) preference pairs."""
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
    pairs = read_preferences(ft.data)
    if ft.val_data:
        return pairs, read_preferences(ft.val_data)
    return hold_out(pairs, ft.val_fraction, seed, ft.data)


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
    train, heldout = read_pairs(config)
    counts = {"train": len(train), "heldout": len(heldout), "skipped": 0}
    data = PairData(_encode(train, encoder, limit, counts), _encode(heldout, encoder, limit,
                                                                    counts), encoder, counts)
    if not data.train:
        raise LLMScratchError(f"no training pair is left after skipping those over {limit} "
                              "tokens; raise finetune.max_len")
    return data


def _encode(pairs: list[Preference], encoder: ChatEncoder, limit: int,
            counts: dict[str, int]) -> list[EncodedPair]:
    encoded = []
    for preference in pairs:
        chosen, rejected = preference.conversations()
        prompt_tokens = len(encoder.prompt_ids(chosen))
        if prompt_tokens >= limit:
            raise LLMScratchError(f"{preference.source or 'a synthetic pair'}: the prompt is "
                                  f"{prompt_tokens} tokens, and the model reads at most {limit} "
                                  "(finetune.max_len or the context length); shorten it")
        pair = EncodedPair(encoder.example(chosen), encoder.example(rejected), preference)
        if max(len(pair.chosen.ids), len(pair.rejected.ids)) > limit:
            counts["skipped"] += 1
            continue
        encoded.append(pair)
    return encoded


def whole_text(example: Example) -> list[int]:
    """All the tokens of prompt + response (an Example's inputs lack the last one)."""
    return example.ids + example.targets[-1:]
