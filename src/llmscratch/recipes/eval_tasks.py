"""`llmscratch eval tasks`: score a run on benchmark tasks and keep the results in the run.

    results = evaluate_tasks(EvalTasksConfig(run="runs/demo", tasks=["next-line", "synthetic"]))

Everything is checked before the model loads and before anything is
written: every task's spec and every example of its file (a missing field,
an answer out of range are one line naming the file and line). Then each
task, in turn:

    multiple_choice   acc, acc_norm        evaluation/multiple_choice.py
    generation        exact_match          evaluation/generation_tasks.py
    perplexity        loss, ppl, bpb       evaluation/perplexity.py

Results go to the run as they come: each example's record is appended to
eval/TASK.examples.jsonl once its chunk is scored, and eval/TASK.json (the
metrics so far, "complete": false) is replaced after every chunk, so a run
stopped halfway keeps what it scored. The centred score (evaluation/aggregate.py)
sits beside each task's accuracy, and their mean beside the set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from llmscratch.data.instruction_files import format_alpaca_prompt, from_alpaca
from llmscratch.distributed import resolve_device
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.aggregate import centred, centred_mean, headline_accuracy
from llmscratch.evaluation.generation_tasks import generate_replies, score_reply
from llmscratch.evaluation.multiple_choice import choose, encode_pair, score_requests
from llmscratch.evaluation.offline_tasks import offline_docs
from llmscratch.evaluation.perplexity import evaluate_text
from llmscratch.evaluation.task_formats import fewshot_query, read_docs, shot_indices
from llmscratch.evaluation.tasks import Doc, TaskSpec, resolve_task
from llmscratch.generation.cpu_weights import pack_linear_weights
from llmscratch.generation.quantize import quantize_linear_weights
from llmscratch.io import atomic_write_json, parse_json
from llmscratch.model import GPT
from llmscratch.runs.load import load_for_inference
from llmscratch.runs.run import GenerationSettings, Run
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.chat import render_chat
from llmscratch.training.allocator import keep_freed_memory

RESULT_FORMAT = "llmscratch-eval"
MC_CHUNK = 256  # multiple-choice examples scored between two writes of the results


@dataclass
class EvalTasksConfig:
    """What `llmscratch eval tasks` runs.

    run: the run directory. tasks: names of offline or public tasks, or task files.
    limit: score only the first N examples of each task (None: all).
    shots: solved examples put before each question (few-shot), drawn with the task's seed.
    batch_tokens: tokens a multiple-choice batch holds (None: by device, multiple_choice.py).
    device, dtype: where and in
    what the model runs (dtype None: the checkpoint's). quantize: int8, int4 or None
    (generation/quantize.py).
    """

    run: str
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    shots: int = 0
    batch_tokens: int | None = None
    device: str = "auto"
    dtype: str | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise LLMScratchError("--tasks names no task; give one or more, comma-separated")
        if self.limit is not None and self.limit < 1:
            raise LLMScratchError(f"--limit must be at least 1, got {self.limit} (leave it out "
                                  "to score every example)")
        if self.shots < 0:
            raise LLMScratchError(f"--shots must be 0 or more, got {self.shots}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise LLMScratchError(f"--batch-tokens must be at least 1, got {self.batch_tokens}")


def load_docs(spec: TaskSpec) -> list[Doc]:
    return offline_docs(spec) if spec.format == "builtin" else read_docs(spec)


def evaluate_tasks(config: EvalTasksConfig, say: Callable[[str], None] = print) -> list[dict]:
    """Score every task (module docstring); returns their results in the order asked."""
    run = Run.open(config.run)
    read_results(run)  # the report is rebuilt from the results kept: they must be readable
    specs = [resolve_task(name) for name in config.tasks]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise LLMScratchError(f"a task is named twice in --tasks: {', '.join(names)}")
    docs = {spec.name: load_docs(spec)[:config.limit] for spec in specs}
    for spec in specs:
        if config.shots and spec.kind != "perplexity":
            fewshot_query(spec, docs[spec.name], 0, config.shots)  # enough examples?
    model, tokenizer, settings = load_for_inference(run.path, resolve_device(config.device),
                                                    config.dtype)
    quantize_linear_weights(model, config.quantize)
    if model.tok_emb.weight.device.type == "cpu":
        keep_freed_memory()  # batches reuse their buffers instead of faulting fresh pages in
    prompt_format = run_prompt_format(run)
    results = {}
    # Perplexity reads the output layer's weight, which packing (faster inference) replaces.
    for spec in sorted(specs, key=lambda s: s.kind != "perplexity"):
        if spec.kind != "perplexity":
            pack_linear_weights(model)
        writer = _Writer(run, spec, config)
        started = time.perf_counter()
        if spec.kind == "multiple_choice":
            _multiple_choice(model, tokenizer, spec, docs[spec.name], config, writer)
        elif spec.kind == "generation":
            fmt = prompt_format if spec.format == "builtin" else spec.prompt_format
            _generation(model, tokenizer, settings, spec, docs[spec.name], config, fmt, writer)
        else:
            writer.metrics = _perplexity(model, tokenizer, docs[spec.name][0].text)
        results[spec.name] = writer.finish(time.perf_counter() - started)
        say(summary_line(results[spec.name]))
    ordered = [results[name] for name in names]
    if len(ordered) > 1 and (mean := centred_mean(ordered)) is not None:
        say(f"centred mean over {sum(headline_accuracy(r['metrics']) is not None for r in ordered)}"
            f" task(s): {mean:.4f}")
    return ordered


def run_prompt_format(run: Run) -> str:
    """How the run was instruction-tuned: its finetune.prompt_format; else "chat"."""
    if run.read_info().kind == "finetune":
        return run.read_config().finetune.prompt_format
    return "chat"


class _Writer:
    """eval/TASK.examples.jsonl line by line, and eval/TASK.json after every chunk."""

    def __init__(self, run: Run, spec: TaskSpec, config: EvalTasksConfig) -> None:
        self.run, self.spec, self.config = run, spec, config
        self.metrics: dict = {}
        self.baseline = spec.random_baseline
        self.count = 0
        self.examples = None  # opened at the first records (a perplexity task has none)

    def add(self, records: list[dict], metrics: dict, baseline: float) -> None:
        if self.examples is None:
            self.run.eval_dir.mkdir(parents=True, exist_ok=True)
            self.examples = self.run.eval_examples_path(self.spec.name).open("w",
                                                                             encoding="utf-8")
        for record in records:
            self.examples.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.examples.flush()
        self.count += len(records)
        self.metrics = metrics
        if self.spec.random_baseline is None:
            self.baseline = baseline
        self._write(complete=False)

    def finish(self, seconds: float) -> dict:
        if self.examples is not None:
            self.examples.close()
        return self._write(complete=True, seconds=seconds)

    def _write(self, complete: bool, seconds: float | None = None) -> dict:
        accuracy = headline_accuracy(self.metrics)
        result = {
            "format": RESULT_FORMAT, "task": self.spec.name, "kind": self.spec.kind,
            "metrics": self.metrics, "examples": self.count or self.metrics.get("tokens", 0),
            "shots": self.config.shots if self.spec.kind != "perplexity" else 0,
            "limit": self.config.limit, "random_baseline": self.baseline,
            "centred": None if accuracy is None else centred(accuracy, self.baseline or 0.0),
            "complete": complete, "seconds": seconds,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run": str(self.run.path), "spec": asdict(self.spec),
        }
        atomic_write_json(self.run.eval_result_path(self.spec.name), result)
        return result


def _multiple_choice(model: GPT, tokenizer: Tokenizer, spec: TaskSpec, docs: list[Doc],
                     config: EvalTasksConfig, writer: _Writer) -> None:
    right = right_norm = 0
    inverse_choices = 0.0
    for start in range(0, len(docs), MC_CHUNK):
        chunk = range(start, min(start + MC_CHUNK, len(docs)))
        requests, spans = [], []
        for i in chunk:
            context = fewshot_query(spec, docs, i, config.shots)
            spans.append((len(requests), len(docs[i].choices)))
            requests += [encode_pair(tokenizer, context, spec.target_delimiter + choice)
                         for choice in docs[i].choices]
        scored = score_requests(model, requests, config.batch_tokens)
        records = []
        for i, (first, n) in zip(chunk, spans, strict=True):
            doc = docs[i]
            scores = choose([s.log_prob for s in scored[first:first + n]], doc.choices, doc.gold)
            right += scores.pred == doc.gold
            right_norm += scores.pred_norm == doc.gold
            inverse_choices += 1 / len(doc.choices)
            records.append({"index": i, "where": doc.where, "gold": doc.gold,
                            "pred": scores.pred, "pred_norm": scores.pred_norm,
                            "log_probs": scores.log_probs})
        n = chunk.stop
        writer.add(records, {"acc": right / n, "acc_norm": right_norm / n, "correct": right,
                             "correct_norm": right_norm}, inverse_choices / n)


def _generation(model: GPT, tokenizer: Tokenizer, settings: GenerationSettings, spec: TaskSpec,
                docs: list[Doc], config: EvalTasksConfig, prompt_format: str,
                writer: _Writer) -> None:
    prompts = [prompt_ids(tokenizer, settings, spec, docs, i, config.shots, prompt_format)
               for i in range(len(docs))]
    right = unmatched = 0
    by_task: dict[str, list[int]] = {}
    done = 0
    for replies in generate_replies(model, tokenizer, prompts, spec.max_new_tokens,
                                    settings.stop_token_ids, spec.until):
        records = []
        for i, reply in enumerate(replies, done):
            doc = docs[i]
            outcome = score_reply(reply, doc.reference, spec.extract)
            right += outcome.right
            unmatched += outcome.extracted is None
            if doc.task:
                counts = by_task.setdefault(doc.task, [0, 0])
                counts[0] += outcome.right
                counts[1] += 1
            records.append({"index": i, "where": doc.where, "reference": doc.reference,
                            "reply": reply, "extracted": outcome.extracted,
                            "right": outcome.right})
        done += len(replies)
        metrics = {"exact_match": right / done, "correct": right, "unmatched": unmatched}
        if by_task:
            metrics["by_task"] = {t: c / n for t, (c, n) in by_task.items()}
        writer.add(records, metrics, 0.0)


def prompt_ids(tokenizer: Tokenizer, settings: GenerationSettings, spec: TaskSpec,
                docs: list[Doc], index: int, shots: int, prompt_format: str) -> list[int]:
    """A generation prompt in the task's format: text, the run's chat template, or Alpaca."""
    if prompt_format == "text":
        return tokenizer.encode(fewshot_query(spec, docs, index, shots),
                                disallowed_special="none")
    solved = []
    if shots:  # the same draw as fewshot_query's, as earlier turns of the conversation
        solved = [docs[j] for j in shot_indices(spec, len(docs), index, shots)]
    if prompt_format == "alpaca":
        text = "".join(format_alpaca_prompt(d.query, d.input) + d.target + "\n\n"
                       for d in solved)
        return tokenizer.encode(text + format_alpaca_prompt(docs[index].query,
                                                            docs[index].input),
                                disallowed_special="none")
    messages = []
    for d in solved + [docs[index]]:
        messages += from_alpaca(d.query, d.input, "").prompt
        if d is not docs[index]:
            messages.append({"role": "assistant", "content": d.target})
    text = render_chat(messages, settings.chat_template, True, bos_token=settings.bos_token,
                       eos_token=settings.eos_token)
    return tokenizer.encode(text, allowed_special="all")


def _perplexity(model: GPT, tokenizer: Tokenizer, text: str) -> dict:
    result = evaluate_text(model, tokenizer, text)
    return {"loss": result.loss, "perplexity": result.perplexity, "bpb": result.bpb,
            "tokens": result.tokens, "bytes": result.bytes}


def summary_line(result: dict) -> str:
    """One task's result in one line."""
    m = result["metrics"]
    name = f"{result['task']:<14}"
    if result["kind"] == "multiple_choice":
        return (f"{name} acc {m['acc']:.4f}  acc_norm {m['acc_norm']:.4f}  centred "
                f"{result['centred']:+.4f}  ({result['examples']} examples, "
                f"{result['shots']}-shot)")
    if result["kind"] == "generation":
        return (f"{name} exact_match {m['exact_match']:.4f}  centred {result['centred']:+.4f}  "
                f"({result['examples']} examples, {result['shots']}-shot; extractor matched "
                f"nothing in {m['unmatched']})")
    return (f"{name} loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f}  bpb "
            f"{m['bpb']:.4f}  ({m['tokens']:,} tokens)")


def read_results(run: Run) -> list[dict]:
    """The task results kept in a run's eval/ folder (fine-tuning's own files left out).

    A file of ours that has been edited into something the tables cannot show
    (`metrics` a string, a score missing) is one line naming it.
    """
    results = []
    for path in run.eval_result_paths():
        try:
            document = parse_json(Path(path).read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError, LLMScratchError):
            continue  # a file we did not write; nothing to report from it
        if isinstance(document, dict) and document.get("format") == RESULT_FORMAT:
            problem = result_problem(document)
            if problem:
                raise LLMScratchError(f"{path} is not a result as llmscratch writes it: "
                                      f"{problem}; run the task again or remove the file")
            results.append(document)
    return results


# The metrics each kind of result holds, which summaries and tables show (eval_report.py).
RESULT_METRICS = {"multiple_choice": ("acc", "acc_norm"), "generation": ("exact_match",),
                  "perplexity": ("loss", "perplexity", "bpb", "tokens"),
                  "judge": ("mean_score", "unscored")}


def result_problem(result: dict) -> str | None:
    """What is wrong with a result document's shape, or None when it can be shown."""
    kind, metrics = result.get("kind"), result.get("metrics")
    if kind not in RESULT_METRICS:
        return f"kind {kind!r} is not one of {', '.join(RESULT_METRICS)}"
    if not isinstance(result.get("task"), str):
        return f"task {result.get('task')!r} is not a name"
    if not isinstance(metrics, dict):
        return f"metrics must be a mapping of numbers, not {type(metrics).__name__}"
    numbers = {f"metrics.{m}": metrics.get(m) for m in RESULT_METRICS[kind]}
    numbers |= {name: result.get(name) for name in ("examples", "shots", "centred",
                                                    "random_baseline")}
    # A judge that scored nothing has no mean; tasks without an accuracy have no centred score.
    may_be_none = {"metrics.mean_score", "random_baseline"} | (
        {"centred"} if kind in ("perplexity", "judge") else set())
    for name, value in numbers.items():
        if value is None and name in may_be_none:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name} must be a number, got {value!r}"
    return None
