"""`llmscratch eval judge`: the run answers held-out instructions; another model grades them.

    1. read the instructions and their reference answers (an Alpaca .json/.jsonl or chat
       .jsonl file, or "synthetic": held-out synthetic tasks), check the output file's folder;
    2. the run answers every instruction greedily, in the prompt format it was
       fine-tuned with (the run's finetune.prompt_format; else its chat template);
    3. each (instruction, reference, response) goes to the judge (evaluation/judge.py);
       its line is appended to OUT.partial as soon as the judge has answered;
    4. the mean score over scored responses, and the count of unscored ones, go to
       RUN/eval/judge.json, and OUT.partial becomes OUT.

Earlier results are never lost to a worse evaluation: they are replaced by a
complete one with at least one score, or, when the judge fails halfway (then
"complete": false), by what it scored only if no complete result is there. An
evaluation with no score at all (every reply unusable, or none before a failure)
changes nothing but OUT.partial, and is an error: a judge that cannot grade is
not a score of 0.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from llmscratch.data.instruction_files import format_alpaca_prompt, read_instructions
from llmscratch.data.synthetic_tasks import make_tasks
from llmscratch.distributed import resolve_device
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.generation_tasks import generate_replies
from llmscratch.evaluation.judge import Judge, JudgeConfig, judge_prompt, parse_score
from llmscratch.evaluation.tasks import Doc, TaskSpec
from llmscratch.generation.cpu_weights import pack_linear_weights
from llmscratch.generation.quantize import quantize_linear_weights
from llmscratch.io import atomic_write_json, read_json
from llmscratch.recipes.eval_tasks import RESULT_FORMAT, prompt_ids, run_prompt_format
from llmscratch.runs.load import load_for_inference
from llmscratch.runs.run import Run

SYNTHETIC_JUDGED = 100  # held-out synthetic examples judged unless --limit says otherwise


@dataclass
class JudgeRunConfig:
    """What `llmscratch eval judge` does (see the module docstring).

    data: instructions with reference answers, or "synthetic". out: the JSONL file of
    every prompt, response and score (default RUN/eval/judge.examples.jsonl).
    limit: judge only the first N. max_new_tokens: a response's length limit.
    """

    run: str
    data: str
    judge: JudgeConfig
    out: str = ""
    limit: int | None = None
    max_new_tokens: int = 256
    device: str = "auto"
    dtype: str | None = None
    quantize: str | None = None  # int8, int4 or None (generation/quantize.py)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise LLMScratchError(f"--limit must be at least 1, got {self.limit}")
        if self.max_new_tokens < 1:
            raise LLMScratchError(f"--max-new-tokens must be at least 1, "
                                  f"got {self.max_new_tokens}")


def read_heldout(data: str, limit: int | None) -> list[Doc]:
    """Instructions (query, input) and references, as Docs."""
    if data == "synthetic":
        return [Doc(query=e.instruction, input=e.input, reference=e.output, target=e.output,
                    task=e.task, where=f"synthetic #{i}")
                for i, e in enumerate(make_tasks(limit or SYNTHETIC_JUDGED, 1234, "heldout"))]
    docs = []
    for i, c in enumerate(read_instructions(data)[:limit]):
        if c.instruction is not None:
            docs.append(Doc(query=c.instruction, input=c.input, reference=c.response,
                            where=c.source or f"{data} #{i}"))
        else:
            docs.append(Doc(query=c.prompt[-1]["content"], reference=c.response,
                            where=c.source or f"{data} #{i}"))
    return docs


def judge_run(config: JudgeRunConfig, say: Callable[[str], None] = print) -> dict:
    """Answer, judge, write (module docstring); returns the summary."""
    run = Run.open(config.run)
    docs = read_heldout(config.data, config.limit)
    out = Path(config.out) if config.out else run.eval_examples_path("judge")
    if config.out and not out.parent.is_dir():
        raise LLMScratchError(f"--out {out}: folder {out.parent} does not exist")
    model, tokenizer, settings = load_for_inference(run.path, resolve_device(config.device),
                                                    config.dtype)
    quantize_linear_weights(model, config.quantize)
    pack_linear_weights(model)
    spec = TaskSpec("judge", "generation", format="builtin")
    fmt = run_prompt_format(run)
    prompts = [prompt_ids(tokenizer, settings, spec, docs, i, 0, fmt) for i in range(len(docs))]
    say(f"answering {len(docs)} instructions ...")
    responses = [r for chunk in generate_replies(model, tokenizer, prompts,
                                                 config.max_new_tokens,
                                                 settings.stop_token_ids) for r in chunk]
    results = Results(run, config, out)
    judge = Judge(config.judge)
    try:
        _judge_all(judge, docs, responses, results)
    except LLMScratchError as err:
        raise LLMScratchError(f"{err}; {results.unfinished()}") from None
    except BaseException:
        results.unfinished()
        raise
    finally:
        judge.close()
    if not results.scores:
        raise LLMScratchError(f"no reply of the judge {config.judge.model} was a score (a "
                              f"number from 0 to 100) for any of {results.unscored} "
                              f"responses; {results.unfinished()}")
    summary = results.keep(complete=True)
    say(f"judge {config.judge.model}: mean score {summary['metrics']['mean_score']:.1f} over "
        f"{len(results.scores)} scored responses ({results.unscored} unscored: the reply was "
        f"not a number from 0 to 100); every line in {out}")
    return summary


def _judge_all(judge: Judge, docs: list[Doc], responses: list[str], results: Results) -> None:
    """Ask the judge about each response; each line goes to OUT.partial as it comes."""
    results.out.parent.mkdir(parents=True, exist_ok=True)
    with results.partial.open("w", encoding="utf-8") as lines:
        for i, (doc, response) in enumerate(zip(docs, responses, strict=True)):
            question = format_alpaca_prompt(doc.query, doc.input).removesuffix(
                "\n\n### Response:\n")
            prompt = judge_prompt(question, doc.reference, response.strip())
            reply = judge.ask(prompt)
            score = parse_score(reply)
            if score is None:
                results.unscored += 1
            else:
                results.scores.append(score)
            lines.write(json.dumps({"index": i, "where": doc.where, "instruction": doc.query,
                                    "input": doc.input, "reference": doc.reference,
                                    "response": response, "judge_prompt": prompt,
                                    "judge_reply": reply, "score": score},
                                   ensure_ascii=False) + "\n")
            lines.flush()


@dataclass
class Results:
    """What an evaluation has judged so far, and whether it may replace the earlier
    results (module docstring)."""

    run: Run
    config: JudgeRunConfig
    out: Path
    scores: list[float] = field(default_factory=list)
    unscored: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def partial(self) -> Path:
        return self.out.with_name(self.out.name + ".partial")

    def keep(self, complete: bool) -> dict:
        """OUT.partial becomes OUT; the summary goes to RUN/eval/judge.json."""
        os.replace(self.partial, self.out)
        return _summary(self.run, self.config, self.scores, self.unscored, complete, self.out,
                        time.perf_counter() - self.started)

    def unfinished(self) -> str:
        """An evaluation that failed, or scored nothing: keep what it scored only where no
        complete result is; says what was kept, for the error message."""
        result = self.run.eval_result_path("judge")
        if self.scores and not _is_complete(result):
            self.keep(complete=False)
            return (f"the {len(self.scores) + self.unscored} responses judged so far are in "
                    f"{self.out}, their scores in {result} (complete: false)")
        earlier = (f"the earlier results in {result} were left as they were"
                   if result.is_file() else "no results were written")
        if not self.partial.is_file() or self.partial.stat().st_size == 0:
            self.partial.unlink(missing_ok=True)
            return earlier
        return f"{earlier}; the judge's replies are in {self.partial}"


def _is_complete(result: Path) -> bool:
    """Whether `result` holds the results of a complete evaluation."""
    try:
        return bool(read_json(result).get("complete"))
    except LLMScratchError:  # missing or unreadable: nothing to keep
        return False


def _summary(run: Run, config: JudgeRunConfig, scores: list[float], unscored: int,
             complete: bool, out: Path, seconds: float) -> dict:
    mean = sum(scores) / len(scores) if scores else None
    summary = {
        "format": RESULT_FORMAT, "task": "judge", "kind": "judge",
        "metrics": {"mean_score": mean, "scored": len(scores), "unscored": unscored},
        "examples": len(scores) + unscored, "shots": 0, "limit": config.limit,
        "random_baseline": None, "centred": None, "complete": complete, "seconds": seconds,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.path), "judge": {"endpoint": config.judge.endpoint,
                                        "model": config.judge.model, "seed": config.judge.seed},
        "data": config.data, "responses": str(out),
    }
    atomic_write_json(run.eval_result_path("judge"), summary)
    return summary
