"""Instruction tuning (supervised fine-tuning, the book's chapter 7).

Each example is a prompt (an instruction, or the messages of a chat) and the
reply the model should write. Both become one token sequence, and the loss
is the usual next-token cross-entropy, but only on the reply's tokens (and
the end-of-text token after it): the model learns to answer, not to write
prompts. With P the prompt's tokens and R the reply's,

    loss = - sum over t in R of log p(token_t | tokens before t)  /  |R|

(finetune.train_on=all also trains on the prompt's tokens, as the book's
chapter 7 does.) Masking is by target: a target of -100 is not predicted
(data/examples.py), so changing a prompt token's target changes nothing.

The text is laid out by the model's chat template (tokenizer/chat.py: our
documented one, or an imported model's Jinja template: the code serving
uses) or, with finetune.prompt_format=alpaca, by the book's Alpaca prompt
("### Instruction: ... ### Response:") followed by the reply and the end-of-
text token (data/chat_examples.py: ChatEncoder, which the alignment methods
share). Examples over finetune.max_len tokens are truncated (if some of
the reply is left) or skipped, and counted. With finetune.packing, several
examples share a row, each attending only to itself.

Data (finetune.data): Alpaca .json / .jsonl, chat .jsonl (data/
instruction_files.py), or "synthetic": checkable tasks generated from a seed
(data/synthetic_tasks.py), whose held-out split is answered greedily before
and after training and scored by exact match (evaluation/exact_match.py).
For a file, held-out examples are the last finetune.val_fraction of it
after a seeded shuffle, and are scored the same way; finetune.eval_examples
of them are answered.
"""

from __future__ import annotations

import torch

from llmscratch.data.chat_examples import ChatEncoder
from llmscratch.data.examples import IGNORE, Example, ExampleBatches, collate
from llmscratch.data.instruction_files import Conversation, read_instructions
from llmscratch.data.synthetic_tasks import make_tasks
from llmscratch.distributed import DistInfo, unwrap
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.exact_match import exact_match
from llmscratch.model import GPT
from llmscratch.recipes.report import overlong_sentence
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import Run
from llmscratch.tokenizer import Tokenizer
from llmscratch.training.objectives import NextTokenPrediction
from llmscratch.training.precision import autocast_dtype

MAX_ANSWER_TOKENS = 64  # a held-out answer is cut off after this many tokens


class InstructionTuning:
    """The SFT method of recipes/finetune.py (see the module docstring)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.heldout: list[tuple[list[int], str, str]] = []  # prompt ids, reference, task
        self.counts = {"train": 0, "validation": 0, "truncated": 0, "skipped": 0}
        self.stop_ids: list[int] = []
        self.tokenizer: Tokenizer | None = None
        self.label_names: list[str] = []  # (not a classifier)
        self.limit = 0  # the most tokens an example may have

    def prepare(self, model: GPT, tokenizer: Tokenizer, base: Run, run: Run | None) -> None:
        ft = self.config.finetune
        settings = base.generation_settings()
        self.tokenizer, self.stop_ids = tokenizer, list(settings.stop_token_ids)
        if not self.stop_ids:
            raise LLMScratchError(f"the base run {base.path} has no end-of-text token to end "
                                  f"replies with ({base.INFO}: generation.stop_token_ids)")
        train, validation, tasks = self._read()
        self.limit = limit = ft.max_len or model.config.context_length
        encode = ChatEncoder(tokenizer, settings, ft.prompt_format, ft.train_on == "all")
        self.train_examples = self._fit(encode.examples(train), limit)
        self.val_examples = self._fit(encode.examples(validation), limit)
        if not self.train_examples:
            raise LLMScratchError(f"no training example is left after skipping those over "
                                  f"{limit} tokens; raise finetune.max_len")
        self.counts["train"], self.counts["validation"] = len(train), len(validation)
        kept = ft.scored(validation)
        self.heldout = [(encode.prompt_ids(c), c.response, task)
                        for c, task in zip(kept, tasks, strict=False)]

    def save_data(self, run: Run) -> None:
        """Nothing: synthetic data is generated again from the seed, a file's held-out
        part is chosen again by the seed, and a resume checks the count of rows."""

    def _read(self) -> tuple[list[Conversation], list[Conversation], list[str]]:
        """Training and held-out conversations, and the held-out ones' task names."""
        ft, seed = self.config.finetune, self.config.train.seed
        if ft.data == "synthetic":
            train = make_tasks(ft.synthetic_train, seed, "train")
            heldout = make_tasks(ft.synthetic_heldout, seed, "heldout")
            return ([e.conversation() for e in train], [e.conversation() for e in heldout],
                    [e.task for e in heldout])
        if not ft.data:
            raise LLMScratchError("finetune sft needs --data: an Alpaca .json/.jsonl or chat "
                                  ".jsonl file, or 'synthetic' (tasks shipped with the project)")
        records = read_instructions(ft.data)
        if ft.val_data:
            validation = read_instructions(ft.val_data)
        else:
            records, validation = hold_out(records, ft.val_fraction, seed, ft.data)
        return records, validation, ["all"] * len(validation)

    def _fit(self, examples: list[Example], limit: int) -> list[Example]:
        """Examples of at most `limit` input tokens: longer ones truncated or skipped."""
        kept = []
        for example in examples:
            if len(example.ids) > limit:
                if self.config.finetune.overlong == "skip" or all(
                        t == IGNORE for t in example.targets[:limit]):
                    self.counts["skipped"] += 1  # (truncating would leave nothing to learn)
                    continue
                self.counts["truncated"] += 1
                example = Example(example.ids[:limit], example.targets[:limit])
            kept.append(example)
        return kept

    def batches(self, model: GPT, info: DistInfo, run: Run) -> ExampleBatches:
        """The training examples, padded one a row, or packed (finetune.packing)."""
        ft, cfg = self.config.finetune, self.config.train
        pack_len = (ft.max_len or model.config.context_length) if ft.packing else 0
        return ExampleBatches(self.train_examples, cfg.batch_size, cfg.seed, info.rank,
                              info.world_size, pack_len=pack_len)

    def objective(self, device: torch.device) -> NextTokenPrediction:
        return NextTokenPrediction(device)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module) -> dict:
        """Mean next-token loss over the held-out examples' trained tokens (`model` as the
        loop runs it, perhaps wrapped: its forward through the wrapper, its head inside)."""
        if not self.val_examples:
            return {}
        device = unwrap(model).tok_emb.weight.device
        amp = autocast_dtype(self.config.train.dtype)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        size = self.config.train.batch_size
        for start in range(0, len(self.val_examples), size):
            batch = collate([[e] for e in self.val_examples[start:start + size]]).to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                hidden = model(batch.input_ids, attention_mask=batch.model_mask)
                loss_sum, n = unwrap(model).next_token_loss(hidden, batch.targets)
            total, count = total + float(loss_sum), count + int(n)
        model.train(was_training)
        return {"val_loss": total / max(count, 1)}

    def score(self, model: GPT, stage: str, run: Run | None) -> dict:
        """Exact match of greedy answers to the held-out prompts."""
        if not self.heldout:
            return {}
        prompts, references, tasks = zip(*self.heldout, strict=True)
        return score_answers(model, self.tokenizer, list(prompts), list(references),
                             list(tasks), self.stop_ids)

    def report(self, before: dict, after: dict, run: Run) -> list[str]:
        ft, c = self.config.finetune, self.counts
        lines = ["## Data", "",
                 f"- {ft.data}: {c['train']:,} training and {c['validation']:,} held-out "
                 f"examples; prompts as {ft.prompt_format}, loss on "
                 f"{'every token' if ft.train_on == 'all' else 'the replies'}"
                 f"{', packed' if ft.packing else ''}.",
                 "- " + overlong_sentence("example", self.limit, bool(ft.max_len),
                                          c["truncated"], c["skipped"]), ""]
        if not after:
            return lines
        lines += ["## Held-out exact match", "", "| task | before | after |", "|---|---:|---:|"]
        for task, (right, total) in sorted(after["by_task"].items()):
            was = before.get("by_task", {}).get(task, [0, total])[0]
            lines.append(f"| {task} | {was}/{total} | {right}/{total} |")
        lines.append(f"| **all** | **{before.get('exact_match', 0):.1%}** | "
                     f"**{after['exact_match']:.1%}** |")
        lines += ["", "Replies after training (greedy):", ""]
        for sample in after["samples"]:
            mark = "right" if sample["right"] else "wrong"
            lines += ["```text", sample["prompt"] + sample["reply"], "```",
                      f"({mark}; the reference is {sample['reference']!r})", ""]
        return lines


def score_answers(model: GPT, tokenizer: Tokenizer, prompts: list[list[int]],
                  references: list[str], tasks: list[str], stop_ids: list[int]) -> dict:
    """Held-out exact match of greedy answers, as the scores of a run store it."""
    result = exact_match(model, tokenizer, prompts, references, tasks, stop_ids,
                         MAX_ANSWER_TOKENS)
    return {"exact_match": result.accuracy, "correct": result.correct, "total": result.total,
            "by_task": result.by_task, "samples": result.samples}


def hold_out(records: list, fraction: float, seed: int, source: str) -> tuple[list, list]:
    """(kept, held out): the last `fraction` of the records after a seeded shuffle."""
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))
    held = max(1, int(len(records) * fraction))
    if len(records) - held < 1:
        raise LLMScratchError(f"{source} has {len(records)} records: too few to hold some out; "
                              "give more, or finetune.val_data")
    return ([records[i] for i in order[:-held].tolist()],
            [records[i] for i in order[-held:].tolist()])
