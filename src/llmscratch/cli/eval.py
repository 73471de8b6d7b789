"""`llmscratch eval`: measure a run (evaluation/, recipes/eval_tasks.py).

    llmscratch eval --run DIR --data FILE.txt        loss, perplexity, bits per byte of a text
    llmscratch eval tasks --run DIR --tasks a,b      benchmark tasks -> RUN/eval/TASK.json
    llmscratch eval compare RUN1 RUN2 ...            the runs' task results side by side
    llmscratch eval judge --run DIR --data FILE --endpoint URL --model NAME
    llmscratch eval harness --model llmscratch --model_args run=DIR --tasks ...   (lm_eval)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmscratch.cli.common import add_command, add_group, say
from llmscratch.cli.generate import add_device_options
from llmscratch.errors import LLMScratchError

EXAMPLES = (
    "  llmscratch eval --run runs/demo --data my_text.txt --json\n"
    "  llmscratch eval tasks --run runs/demo --tasks next-line,synthetic,plays-bpb\n"
    "  llmscratch eval tasks --run runs/demo --tasks my_task.yaml --limit 100 --shots 5\n"
    "  llmscratch eval compare runs/demo runs/sft\n"
    "  llmscratch eval judge --run runs/sft --data heldout.jsonl "
    "--endpoint http://localhost:11434/v1 --model llama3\n"
    "  llmscratch eval harness --model llmscratch --model_args run=runs/demo --tasks hellaswag\n")


def register(sub) -> None:
    commands = add_group(sub, "eval", "Evaluate a run: a text's perplexity, benchmark tasks, "
                         "an LLM judge, lm-evaluation-harness.", EXAMPLES, "eval_command")
    group = sub.choices["eval"]
    # The first form, kept: `llmscratch eval --run DIR --data FILE`.
    group.add_argument("--run", help="run directory (with --data: a text's perplexity)")
    group.add_argument("--data", help="a UTF-8 text file")
    group.add_argument("--batch-size", type=int, default=8, help="windows scored at once (>= 1)")
    group.add_argument("--json", action="store_true", help="print one JSON object")
    add_device_options(group)
    missing = group.get_default("func")
    group.set_defaults(func=lambda args: cmd_text(args) if args.run or args.data
                       else missing(args))

    p = add_command(commands, "tasks", "Score a run on benchmark tasks; results go to "
                    "RUN/eval/TASK.json.",
                    "  llmscratch eval tasks --run runs/demo --tasks next-line,synthetic\n"
                    "  llmscratch eval tasks --run runs/demo --tasks hellaswag --limit 500\n"
                    "  llmscratch eval tasks --list\n")
    p.add_argument("--run", help="run directory")
    p.add_argument("--tasks", default="", help="comma-separated: offline tasks (next-line, "
                   "synthetic, plays-bpb), public ones (hellaswag, arc_easy, arc_challenge, "
                   "mmlu, gsm8k: downloaded once), task files (.yaml, .json) or text files")
    p.add_argument("--limit", type=int, help="score only the first N examples of each task")
    p.add_argument("--shots", type=int, default=0, help="solved examples before each question")
    p.add_argument("--batch-tokens", type=int,
                   help="tokens in one multiple-choice batch (default: 4096 on a CPU, "
                   "16384 on a GPU)")
    p.add_argument("--list", action="store_true", help="list the named tasks and exit")
    p.add_argument("--json", action="store_true", help="print the results as one JSON list")
    add_device_options(p)
    p.set_defaults(func=cmd_tasks)

    p = add_command(commands, "compare", "The task results of several runs, side by side.",
                    "  llmscratch eval compare runs/demo runs/sft\n")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_compare)

    p = add_command(commands, "judge", "Answer held-out instructions with the run; an "
                    "OpenAI-compatible model scores each answer 0-100 against the reference.",
                    "  llmscratch eval judge --run runs/sft --data synthetic "
                    "--endpoint http://localhost:11434/v1 --model llama3\n"
                    "  llmscratch eval judge --run runs/sft --data heldout.json --endpoint "
                    "https://api.example.com/v1 --model big --api-key-env EXAMPLE_KEY\n")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--data", required=True, help="an Alpaca .json/.jsonl or chat .jsonl file "
                   "with reference answers, or 'synthetic' (held-out synthetic tasks)")
    p.add_argument("--endpoint", required=True, help="the judge's OpenAI-compatible base URL")
    p.add_argument("--model", required=True, help="the judge model's name on that server")
    p.add_argument("--api-key-env", default="", help="environment variable holding an API key")
    p.add_argument("--out", default="", help="the JSONL file of prompts, responses and scores "
                   "(default: RUN/eval/judge.examples.jsonl)")
    p.add_argument("--limit", type=int, help="judge only the first N instructions")
    p.add_argument("--max-new-tokens", type=int, default=256, help="a response's length limit")
    p.add_argument("--seed", type=int, default=123, help="the seed sent to the judge")
    p.add_argument("--retries", type=int, default=4, help="tries again after a failed call")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="seconds before the first retry, doubled after each")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a call may take")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_device_options(p)
    p.set_defaults(func=cmd_judge)

    # Every argument is lm_eval's (its --help too): this parser reads no option of its own.
    p = commands.add_parser(
        "harness", prefix_chars="+", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="lm-evaluation-harness's command line, with runs as its model `llmscratch`",
        description="lm_eval's command line, with runs as its model `llmscratch` (needs the "
        "`eval` extra: pip install 'llmscratch[eval]'); every argument is lm_eval's.",
        epilog="examples:\n"
        "  llmscratch eval harness --model llmscratch --model_args run=runs/demo "
        "--tasks hellaswag\n"
        "  llmscratch eval harness --model llmscratch --model_args run=runs/demo "
        "--tasks my_task --include_path tasks/\n")
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER,
                   help="lm_eval's own arguments (see `lm_eval --help`)")
    p.set_defaults(func=cmd_harness)

    p = add_command(sub, "report", "A run's report (what it did), with its evaluation results.",
                    "  llmscratch report runs/demo\n")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_report)


def cmd_text(args: argparse.Namespace) -> int:
    """Loss, perplexity and bits per byte of a text file (the first `eval`)."""
    from llmscratch.data.corpus import read_text_file
    from llmscratch.distributed import resolve_device
    from llmscratch.evaluation.perplexity import evaluate_text
    from llmscratch.generation.quantize import quantize_linear_weights
    from llmscratch.runs.load import load_for_inference

    if not (args.run and args.data):
        raise LLMScratchError("eval of a text needs both --run and --data (or a command: "
                              "tasks, compare, judge, harness)")
    if args.batch_size < 1:
        raise LLMScratchError(f"--batch-size must be at least 1, got {args.batch_size}")
    text = read_text_file(Path(args.data))
    model, tokenizer, _ = load_for_inference(args.run, resolve_device(args.device), args.dtype)
    quantize_linear_weights(model, args.quantize)  # --quantize int8|int4 (None: unchanged)
    result = evaluate_text(model, tokenizer, text, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(vars(result)))
    else:
        print(f"loss {result.loss:.4f} nats/token  perplexity {result.perplexity:.2f}  "
              f"bpb {result.bpb:.4f}  ({result.tokens:,} tokens, {result.bytes:,} bytes)")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from llmscratch.evaluation.tasks import CATALOG
    from llmscratch.recipes.eval_report import update_report
    from llmscratch.recipes.eval_tasks import EvalTasksConfig, evaluate_tasks
    from llmscratch.runs.run import Run

    if args.list:
        for spec in CATALOG.values():
            where = "offline" if spec.format == "builtin" else f"download: {spec.data}"
            say(f"{spec.name:<14} {spec.kind:<16} {where}")
        return 0
    if not args.run:
        raise LLMScratchError("eval tasks needs --run DIR")
    config = EvalTasksConfig(args.run, [t.strip() for t in args.tasks.split(",") if t.strip()],
                             args.limit, args.shots, args.batch_tokens, args.device, args.dtype,
                             args.quantize)
    results = evaluate_tasks(config, say=(lambda line: None) if args.json else say)
    update_report(Run.open(args.run))
    if args.json:
        print(json.dumps(results))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from llmscratch.recipes.eval_report import compare_runs, compare_table

    table = compare_runs(args.runs)
    if args.json:
        print(json.dumps(table))
    else:
        sys.stdout.write(compare_table(table))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from llmscratch.recipes.eval_report import report_text
    from llmscratch.runs.run import Run

    sys.stdout.write(report_text(Run.open(args.run)))
    return 0


def cmd_harness(args: argparse.Namespace) -> int:
    try:
        from llmscratch.evaluation.lm_eval_adapter import main as harness
    except ImportError as err:
        raise LLMScratchError(f"lm-evaluation-harness is not installed ({err.name}): "
                              "pip install 'llmscratch[eval]'") from None
    if not args.lm_eval_args:
        raise LLMScratchError("eval harness needs lm_eval's arguments, e.g. --model llmscratch "
                              "--model_args run=DIR --tasks hellaswag")
    harness(args.lm_eval_args)
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    import os

    try:
        from llmscratch.evaluation.judge import JudgeConfig
        from llmscratch.recipes.judge import JudgeRunConfig, judge_run
    except ImportError as err:
        raise LLMScratchError(f"the judge needs {err.name}: pip install 'llmscratch[eval]'"
                              ) from None

    api_key = ""
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env, "")
        if not api_key:
            raise LLMScratchError(f"--api-key-env {args.api_key_env}: that variable is not set")
    judge = JudgeConfig(args.endpoint, args.model, api_key, args.seed, args.retries,
                        args.backoff, args.timeout)
    config = JudgeRunConfig(args.run, args.data, judge, args.out, args.limit,
                            args.max_new_tokens, args.device, args.dtype, args.quantize)
    summary = judge_run(config, say=(lambda line: None) if args.json else say)
    if args.json:
        print(json.dumps(summary))
    return 0
