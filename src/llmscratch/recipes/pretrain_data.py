"""The tokens a pretraining run reads: its text and tokenizer, or prepared shards.

Two sources, chosen by the config's data section:

- text (`data.files`, or the embedded corpus): read it, hold out the final
  `data.val_fraction` of its bytes for validation, load the tokenizer that
  `data.tokenizer` names or train one on the training part only (the
  validation text stays unseen), and encode both halves;
- prepared shards (`data.prepared`, written by `llmscratch data prepare`):
  memory-map them, after checking them against their manifest, with the
  tokenizer they were prepared with.

Everything is read and checked here, before the run directory is created
or changed: a missing file or a text too short to train on is an error that
leaves nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from llmscratch.data.corpus import load_texts, split_train_val
from llmscratch.data.manifest import read_manifest, tokenizer_hash
from llmscratch.distributed import DistInfo
from llmscratch.errors import LLMScratchError
from llmscratch.runs.config import RunConfig
from llmscratch.tokenizer import Tokenizer, open_tokenizer, train_bpe


@dataclass
class RunData:
    """The tokens a run trains and validates on."""

    tokenizer: Tokenizer
    train_arrays: list[np.ndarray]  # 1-D token ids: one in-memory array, or memory-mapped shards
    val_ids: torch.Tensor  # (M,) int64 token ids of the validation text
    val_bytes: int  # UTF-8 bytes of the validation text (for bits per byte)


def load_data(config: RunConfig, info: DistInfo, tokenizer: Tokenizer | None = None,
              say=print) -> RunData:
    """The run's tokens. `tokenizer`: the run's own (a resume, or a rank other than 0 once
    rank 0 has saved it); None to take or train the one the config names."""
    if config.data.prepared:
        data = _prepared_data(config, tokenizer, say if info.is_main else _quiet)
    else:
        data = _text_data(config, tokenizer, say if info.is_main else _quiet)
    if data.tokenizer.vocab_size > config.model.vocab_size:
        raise LLMScratchError(
            f"the tokenizer has {data.tokenizer.vocab_size} tokens but model.vocab_size is "
            f"{config.model.vocab_size}; set model.vocab_size >= {data.tokenizer.vocab_size}")
    if len(data.val_ids) < 2:
        raise LLMScratchError(
            f"the validation text is {len(data.val_ids)} token(s) long; at least 2 are needed "
            "to score it: give more text, or a larger data.val_fraction")
    return data


def _quiet(*args, **kwargs) -> None:
    pass


def _text_data(config: RunConfig, tokenizer: Tokenizer | None, say) -> RunData:
    """Read and split the text, get the tokenizer (train it if need be), encode both halves."""
    data = config.data
    text = "\n".join(load_texts(data.files))
    train_text, val_text = split_train_val(text, data.val_fraction)
    if not train_text.strip():
        raise LLMScratchError("the training text is empty once the validation part is held "
                              "out; give more text")
    if tokenizer is None and data.tokenizer:
        tokenizer = open_tokenizer(data.tokenizer)
    elif tokenizer is None:
        started = time.perf_counter()
        tokenizer = train_bpe([train_text], vocab_size=data.vocab_size, pattern=data.pattern)
        say(f"trained a {tokenizer.vocab_size}-token BPE tokenizer on "
            f"{len(train_text.encode()) / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    train_ids = np.array(tokenizer.encode_batch([train_text])[0], dtype=np.int32)
    val_ids = torch.tensor(tokenizer.encode_batch([val_text])[0], dtype=torch.int64)
    say(f"encoded {len(train_ids):,} training and {len(val_ids):,} validation tokens "
        f"({len(text.encode()) / max(len(train_ids) + len(val_ids), 1):.2f} bytes/token) in "
        f"{time.perf_counter() - started:.1f} s")
    return RunData(tokenizer, [train_ids], val_ids, len(val_text.encode("utf-8")))


def _prepared_data(config: RunConfig, tokenizer: Tokenizer | None, say) -> RunData:
    """Open `data.prepared`: check its tokenizer against the run's, memory-map its shards."""
    prepared = config.data.prepared
    manifest = read_manifest(prepared)
    if tokenizer is None:
        tokenizer = manifest.tokenizer()
        if config.data.tokenizer and tokenizer_hash(open_tokenizer(config.data.tokenizer)
                                                    ) != manifest.tokenizer_sha256:
            raise LLMScratchError(
                f"data.tokenizer {config.data.tokenizer} is not the tokenizer {prepared} was "
                "prepared with (hash mismatch); drop data.tokenizer or prepare the data again "
                "with it")
    if tokenizer_hash(tokenizer) != manifest.tokenizer_sha256:
        raise LLMScratchError(
            f"{prepared} was prepared with another tokenizer than this run's (hash mismatch); "
            "resume with the data the run started with")
    train = manifest.shards("train", verify=config.data.verify)
    val = manifest.shards("val", verify=config.data.verify)
    val_ids = torch.from_numpy(np.concatenate([v.astype(np.int64) for v in val])
                               if val else np.zeros(0, dtype=np.int64))
    split = manifest.split("train")
    say(f"prepared data {prepared}: {split['tokens']:,} training tokens in "
        f"{len(split['shards'])} shard(s), {len(val_ids):,} validation tokens")
    return RunData(tokenizer, train, val_ids, manifest.split("val")["bytes"])
