"""Classification fine-tuning (the book's chapter 6): a class head on a language model.

The head (model/heads.py: SequenceHead) reads one vector per text, the last
real token's hidden state (the only one that has seen the whole text under
causal attention) or the mean over the text, and gives one logit per class;
the loss is the cross-entropy of the true class:

    loss = -log softmax(W h_last)[label]          W: (C, D), one row per class

Data (finetune.data): a .csv, .tsv or .jsonl file with text and label fields,
the SMS Spam Collection (under any name, known by its first line, or named by
finetune.data_format=sms: the book's balancing and 70/10/20 split), or
"genres", the task shipped with the project (which genre a passage of the
plays comes from, split by play: data/genres.py). A single
file is split 70/10/20 (train / validation / test) as the book splits; with
finetune.val_data (and test_data) the files given are used. Texts longer than
finetune.max_len tokens are truncated (their first tokens kept) or skipped.
The splits, as read, are saved in the run (splits/*.jsonl): a resume reads
them, not the source again.

Validation reports loss and accuracy during training; the test split (all of
it, as the book scores it, or its first finetune.eval_examples texts) is
scored before and after: accuracy, macro precision / recall / F1 and a
confusion matrix (evaluation/classification.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch

from llmscratch.data.examples import Example, ExampleBatches
from llmscratch.data.genres import genre_splits
from llmscratch.data.labeled_files import (
    LabeledTexts,
    check_labels,
    is_sms_spam,
    read_labeled,
    sms_spam_splits,
    split_three_ways,
)
from llmscratch.distributed import DistInfo
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.classification import plot_confusion, predict, score
from llmscratch.io import atomic_write_text
from llmscratch.model import GPT
from llmscratch.recipes.report import overlong_sentence, score_table
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import Run
from llmscratch.tokenizer import Tokenizer
from llmscratch.training.objectives import SequenceClassification
from llmscratch.training.precision import autocast_dtype


class Classification:
    """The classification method of recipes/finetune.py (see the module docstring)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.examples: dict[str, list[Example]] = {}
        self.label_names: list[str] = []
        self.counts = {"truncated": 0, "skipped": 0}
        self.splits: dict[str, LabeledTexts] = {}
        self.limit = 0  # the most tokens a text may have

    @property
    def train_examples(self) -> list[Example]:
        return self.examples["train"]

    def prepare(self, model: GPT, tokenizer: Tokenizer, base: Run, run: Run | None) -> None:
        ft = self.config.finetune
        self.splits = splits = self._saved(run) if run is not None else self._read()
        self.label_names = splits["train"].label_names
        if len(self.label_names) < 2:
            raise LLMScratchError(f"{ft.data}: the training data has one label "
                                  f"({self.label_names[0]!r}); a classifier needs two or more")
        self.limit = limit = ft.max_len or model.config.context_length
        self.examples = {name: self._tokenize(data, tokenizer, limit)
                         for name, data in splits.items()}
        for name, examples in self.examples.items():
            if not examples:
                raise LLMScratchError(f"no {name} example is left after skipping those over "
                                      f"{limit} tokens; raise finetune.max_len or use "
                                      "finetune.overlong=truncate")
        if model.head is None:
            model.add_head(len(self.label_names), ft.pooling)
        elif model.config.head_outputs != len(self.label_names):
            raise LLMScratchError(f"the base model's head has {model.config.head_outputs} "
                                  f"outputs; the data has {len(self.label_names)} labels")

    def _read(self) -> dict[str, LabeledTexts]:
        ft = self.config.finetune
        if ft.data == "genres":
            return genre_splits()
        if not ft.data:
            raise LLMScratchError("finetune classify needs --data: a .csv, .tsv or .jsonl "
                                  "file, or 'genres' (the task shipped with the project)")
        if ft.data_format == "sms" or is_sms_spam(ft.data):
            return sms_spam_splits(ft.data)
        train = read_labeled(ft.data, ft.text_field, ft.label_field)
        if not ft.val_data:
            train, validation, test = split_three_ways(train, seed=self.config.train.seed)
            return {"train": train, "validation": validation, "test": test}
        validation = check_labels(read_labeled(ft.val_data, ft.text_field, ft.label_field),
                                  train)
        test = validation if not ft.test_data else check_labels(
            read_labeled(ft.test_data, ft.text_field, ft.label_field), train)
        return {"train": train, "validation": validation, "test": test}

    def save_data(self, run: Run) -> None:
        """The splits as read, one JSON object a line ({"text", "label"}): the run keeps
        its test set, and a resume reads exactly the data the run started with."""
        for name, data in self.splits.items():
            lines = [json.dumps({"text": text, "label": data.label_names[label]},
                                ensure_ascii=False) for text, label in zip(
                         data.texts, data.labels, strict=True)]
            path = run.split_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, "\n".join(lines) + "\n")

    def _saved(self, run: Run) -> dict[str, LabeledTexts]:
        """The splits a run saved when it started (`save_data`)."""
        names = run.read_info().labels
        splits = {}
        for name in ("train", "validation", "test"):
            data = read_labeled(run.split_path(name))
            splits[name] = LabeledTexts(data.texts, [names.index(data.label_names[i])
                                                     for i in data.labels], names,
                                        data.source, data.lines)
        return splits

    def _tokenize(self, data: LabeledTexts, tokenizer: Tokenizer, limit: int) -> list[Example]:
        examples = []
        # Special-token text in a message ("<|endoftext|>") is read as plain text.
        encoded = tokenizer.encode_batch(data.texts, disallowed_special="none")
        for ids, label in zip(encoded, data.labels, strict=True):
            if len(ids) > limit:
                key = "skipped" if self.config.finetune.overlong == "skip" else "truncated"
                self.counts[key] += 1
                if key == "skipped":
                    continue
                ids = ids[:limit]
            examples.append(Example(ids or [0], label=label))
        return examples

    def batches(self, model: GPT, info: DistInfo, run: Run) -> ExampleBatches:
        cfg = self.config.train
        return ExampleBatches(self.train_examples, cfg.batch_size, cfg.seed, info.rank,
                              info.world_size)

    def objective(self, device: torch.device) -> SequenceClassification:
        return SequenceClassification(device)

    def _probabilities(self, model: torch.nn.Module, split: str) -> tuple[torch.Tensor, list[int]]:
        examples = self.examples[split]
        if split == "test":
            examples = self.config.finetune.scored(examples)
        amp = autocast_dtype(self.config.train.dtype)
        probs = predict(model, examples, self.config.train.batch_size * 2, amp)  # (N, C)
        return probs, [e.label for e in examples]

    def validate(self, model: torch.nn.Module) -> dict:
        probs, labels = self._probabilities(model, "validation")
        truth = torch.tensor(labels)
        picked = probs[torch.arange(len(labels)), truth].clamp_min(1e-12)
        return {"val_loss": float(-picked.log().mean()),
                "val_accuracy": float((probs.argmax(-1) == truth).float().mean())}

    def score(self, model: GPT, stage: str, run: Run | None) -> dict:
        """Test scores (of finetune.eval_examples test texts; {} when none) and the
        confusion matrix's plot."""
        if not self.config.finetune.scored(self.examples["test"]):
            return {}
        probs, labels = self._probabilities(model, "test")
        result = score(labels, probs.argmax(-1).tolist(), self.label_names)
        if run is not None:
            run.eval_dir.mkdir(parents=True, exist_ok=True)
            plot_confusion(result, run.eval_dir / f"confusion-{stage}.png",
                           f"{stage} training: test accuracy {result.accuracy:.1%}")
        return {"split": "test", **asdict(result)}

    def report(self, before: dict, after: dict, run: Run) -> list[str]:
        ft, sizes = self.config.finetune, {k: len(v) for k, v in self.examples.items()}
        lines = ["## Data", "",
                 f"- {ft.data}: {sizes['train']:,} training, {sizes['validation']:,} "
                 f"validation and {sizes['test']:,} test texts; labels "
                 f"{', '.join(self.label_names[:-1])} and {self.label_names[-1]}.",
                 "- " + overlong_sentence("text", self.limit, bool(ft.max_len),
                                          self.counts["truncated"], self.counts["skipped"]),
                 "",
                 "## Test scores", ""]
        lines += score_table(["accuracy", "macro precision", "macro recall", "macro F1"],
                             before, after, lambda s: [f"{s['accuracy']:.2%}",
                                                       f"{s['precision']:.3f}",
                                                       f"{s['recall']:.3f}", f"{s['f1']:.3f}"])
        plots = [f"![confusion matrix {stage}](eval/confusion-{stage}.png)"
                 for stage, scores in (("before", before), ("after", after)) if scores]
        return lines + (["", " ".join(plots)] if plots else [])
