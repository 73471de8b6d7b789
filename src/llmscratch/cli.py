"""The `llmscratch` command: one entry point, a subcommand per pipeline stage.

    llmscratch demo                       the whole first half of the pipeline, offline
    llmscratch tokenizer train|encode|... byte-level BPE (tokenizer/cli.py)
    llmscratch pretrain --config FILE     train a model from scratch
    llmscratch generate --run DIR         sample text from a trained model
    llmscratch eval --run DIR --data FILE loss, perplexity, bits per byte

Each subcommand is thin: arguments -> typed config -> one library call.
User mistakes raise `LLMScratchError`; `main` prints its one line and
returns 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from llmscratch import __version__
from llmscratch.errors import LLMScratchError, TrainingInterrupted

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
_OVERRIDE = re.compile(r"^(model|data|train)\.\w+=")


def _parser(subparsers, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, help=summary, description=summary, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _split_overrides(args: argparse.Namespace) -> list[str]:
    """`--data a.txt train.lr=1e-3`: argparse gives both to --data; take the override back."""
    data = getattr(args, "data", None) or []
    args.data = [d for d in data if not _OVERRIDE.match(d)]
    return [d for d in data if _OVERRIDE.match(d)] + list(args.overrides)


# --- pretrain and demo -------------------------------------------------------------


def cmd_pretrain(args: argparse.Namespace) -> int:
    from llmscratch.config import load_config
    from llmscratch.training.pretrain import pretrain, resume

    overrides = _split_overrides(args)
    if args.resume:
        if args.config or args.data or args.out:
            raise LLMScratchError("--resume takes the run's own config and data; "
                                  "give only --resume DIR (and KEY=VALUE overrides)")
        result = resume(Path(args.resume), overrides, fallback=args.fallback)
    else:
        if not args.out:
            raise LLMScratchError("pretrain needs --out DIR (or --resume DIR)")
        config = load_config(args.config, overrides)
        if args.data:
            config.data.files = list(args.data)
        result = pretrain(config, Path(args.out), overwrite=args.overwrite)
    _print_result(result)
    return 0


# configs/demo.yaml's model, gpt2-demo (4 layers x 256), learns more per step than
# gpt2-demo-small (2 x 192), whose steps take a third to two fifths of the time. Which
# learns more in the demo's budget depends on how many steps fit (docs/benchmarks.md,
# "Demo quality", seventh and ninth rounds). With about 2,800 steps of gpt2-demo (a CPU
# with fast bf16) gpt2-demo is at least as good: 1.94 to 1.97 bpb at 2,700 steps (seeds,
# threads) against 1.96 for gpt2-demo-small at 6,000. With about 1,300 (a slower CPU)
# or 900 (fp32), gpt2-demo-small wins: 1.99 against 2.08, and 2.02 against 2.15. So the
# demo times a few steps of its model first, and trains gpt2-demo-small where fewer
# than DEMO_MIN_STEPS of them fit.
DEMO_MIN_STEPS = 2000
DEMO_SMALL_OVERRIDES = ["model.preset=gpt2-demo-small"]


def demo_config(overrides: list[str], say=print):
    """configs/demo.yaml with `overrides`, its model swapped for the smaller one if needed."""
    from llmscratch.config import load_config
    from llmscratch.training.pretrain import resolve_device
    from llmscratch.training.throughput import seconds_per_step

    config = load_config(DEMO_CONFIG, overrides)
    budget = config.train.budget_seconds
    if not budget:
        return config
    per_step = seconds_per_step(config.model, config.train, resolve_device(config.train.device))
    fits = int(budget / per_step)
    if fits >= DEMO_MIN_STEPS:
        return config
    big_model = config.model
    # The user's own overrides come last, so they still win.
    config = load_config(DEMO_CONFIG, DEMO_SMALL_OVERRIDES + list(overrides))
    say(f"{_shape(big_model)}: {per_step:.2f} s a step here, so about {fits:,} steps fit in "
        f"{budget:g} s (fewer than {DEMO_MIN_STEPS:,}): the demo trains a smaller model, "
        f"{_shape(config.model)} ({', '.join(DEMO_SMALL_OVERRIDES)})")
    return config


def cmd_demo(args: argparse.Namespace) -> int:
    from llmscratch.config import load_config
    from llmscratch.training.pretrain import pretrain

    config_path = Path(args.config) if args.config else DEMO_CONFIG
    print(f"llmscratch demo: config {config_path}, run directory {args.out}\n"
          "1) train a BPE tokenizer  2) tokenize and split the corpus  3) pretrain a GPT\n"
          "4) evaluate on held-out text  5) generate samples  6) write the run report\n")
    if args.config:  # the user's own config: trained as written
        config = load_config(config_path, args.overrides)
    else:
        config = demo_config(args.overrides)
    result = pretrain(config, Path(args.out), overwrite=True)
    _print_result(result)
    return 0


def _shape(model) -> str:
    return f"{model.n_layer} layers x {model.n_embd}"


def _print_result(result) -> None:
    if result.rank:  # under torchrun, rank 0 speaks for all
        return
    final = result.final
    print(f"\nvalidation: loss {final.loss:.4f} nats/token, perplexity {final.perplexity:.2f}, "
          f"{final.bpb:.4f} bits/byte ({final.tokens:,} tokens, {final.bytes:,} bytes)")
    print(f"training: {result.steps:,} steps in {result.train_seconds:.0f} s, "
          f"{result.tokens_per_second:,.0f} tokens/s")
    for prompt, completion in result.samples:
        print("\n--- sample " + "-" * 50 + "\n" + prompt + completion)
    print(f"\nrun directory: {result.run_dir}  (report: {result.run_dir / 'report.md'})")


# --- generate and eval --------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from llmscratch.generation.sampling import SamplingConfig, generate_tokens
    from llmscratch.tokenizer import StreamDecoder
    from llmscratch.training.checkpoint import load_run

    if not args.prompt:
        raise LLMScratchError("the prompt is empty; give some text with --prompt")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise LLMScratchError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
    model, tokenizer, _ = load_run(Path(args.run))
    prompt_ids = tokenizer.encode(args.prompt)
    if len(prompt_ids) >= model.config.context_length:
        raise LLMScratchError(
            f"the prompt is {len(prompt_ids)} tokens; the model's context length is "
            f"{model.config.context_length}; shorten the prompt"
        )
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                              args.seed)
    new_ids = []
    stream = StreamDecoder(tokenizer)
    if not args.json:
        sys.stdout.write(args.prompt)
    specials = tokenizer.special_tokens  # Llama 3 (imported) ends a text with <|end_of_text|>
    stop_id = specials.get("<|endoftext|>", specials.get("<|end_of_text|>"))
    for token in generate_tokens(model, prompt_ids, sampling, stop_id, tokenizer.vocab_size):
        new_ids.append(token)
        if not args.json:
            sys.stdout.write(stream.push(token))
            sys.stdout.flush()
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": tokenizer.decode(new_ids),
                          "token_ids": new_ids, "prompt_token_ids": prompt_ids}))
    else:
        sys.stdout.write(stream.flush() + "\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from llmscratch.data.corpus import read_text_file
    from llmscratch.evaluation.perplexity import evaluate_text
    from llmscratch.training.checkpoint import load_run

    model, tokenizer, _ = load_run(Path(args.run))
    text = read_text_file(Path(args.data))
    result = evaluate_text(model, tokenizer, text, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(vars(result)))
    else:
        print(f"loss {result.loss:.4f} nats/token  perplexity {result.perplexity:.2f}  "
              f"bpb {result.bpb:.4f}  ({result.tokens:,} tokens, {result.bytes:,} bytes)")
    return 0


# --- the parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from llmscratch.data.cli import register as register_data
    from llmscratch.model.cli import register as register_model
    from llmscratch.tokenizer.cli import register as register_tokenizer
    from llmscratch.training.cli import register as register_training

    parser = argparse.ArgumentParser(
        prog="llmscratch", description="Build a large language model from scratch.",
        epilog="run `llmscratch COMMAND --help` for each command's options and examples",
    )
    parser.add_argument("--version", action="version", version=f"llmscratch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _parser(sub, "demo", "Train a tokenizer and a small GPT on Shakespeare, offline, on CPU.",
                "  llmscratch demo\n  llmscratch demo --out runs/demo2 train.max_steps=100\n")
    p.add_argument("--out", default="runs/demo", help="run directory (replaced if it exists)")
    p.add_argument("--config", help=f"config file (default: {DEMO_CONFIG.relative_to(REPO_ROOT)})")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_demo)

    register_tokenizer(sub)
    register_model(sub)
    register_data(sub)
    register_training(sub)

    p = _parser(sub, "pretrain", "Pretrain a model from scratch (or resume a run).",
                "  llmscratch pretrain --config configs/demo.yaml --out runs/mine\n"
                "  llmscratch pretrain --config configs/demo.yaml --data 'books/*.txt' "
                "--out runs/books model.n_layer=4\n"
                "  llmscratch pretrain --resume runs/mine\n"
                "  llmscratch pretrain --resume runs/mine train.max_steps=4000   # train longer\n")
    p.add_argument("--config", help="YAML config (sections model, data, train)")
    p.add_argument("--data", nargs="+", metavar="FILE", help="text files, directories or globs "
                   "(default: the config's data.files, else the embedded Shakespeare corpus)")
    p.add_argument("--out", help="new run directory")
    p.add_argument("--resume", metavar="DIR", help="continue this run from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--fallback", action="store_true", help="with --resume: if the newest "
                   "checkpoint is corrupt, continue from the newest intact one")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. train.max_steps=200 model.n_layer=4")
    p.set_defaults(func=cmd_pretrain)

    p = _parser(sub, "generate", "Generate text from a trained model.",
                "  llmscratch generate --run runs/demo --prompt 'ROMEO:'\n"
                "  llmscratch generate --run runs/demo --prompt 'To be' --temperature 0 --json\n")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same text")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_generate)

    p = _parser(sub, "eval", "Loss, perplexity and bits per byte of a model on a text file.",
                "  llmscratch eval --run runs/demo --data my_text.txt --json\n")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--data", required=True, help="a UTF-8 text file")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except LLMScratchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"\ninterrupted at step {stop.step}; checkpoint saved. Continue with "
              f"`llmscratch pretrain --resume DIR`.", file=sys.stderr)
        return 130
