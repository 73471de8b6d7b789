"""`llmscratch demo` and `llmscratch pretrain`: train a model from scratch (recipes/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmscratch.cli.common import add_command, say, split_overrides, training_line
from llmscratch.errors import LLMScratchError


def register(sub) -> None:
    p = add_command(sub, "demo", "Train a tokenizer and a small GPT on Shakespeare, offline, "
                    "on CPU; `demo chat`: then SFT, a reward model, DPO and RL.",
                    "  llmscratch demo\n  llmscratch demo --out runs/demo2 train.max_steps=100\n"
                    "  llmscratch demo chat                  # runs/chat: base -> SFT -> reward "
                    "model -> DPO -> RL\n"
                    "  llmscratch demo chat --base runs/qwen3 --out runs/qwen3-chat\n")
    p.add_argument("--out", help="run directory (default runs/demo; runs/chat for demo chat; "
                   "an earlier demo run there is replaced, any other folder refused)")
    p.add_argument("--config", help="config file (default: configs/demo.yaml)")
    p.add_argument("--base", help="demo chat: the base run (default: runs/demo if it is a run, "
                   "else one is pretrained first)")
    p.add_argument("--seed", type=int, default=1337, help="demo chat: the seed of every stage")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides (or `chat`)")
    p.set_defaults(func=cmd_demo)

    p = add_command(sub, "pretrain", "Pretrain a model from scratch (or resume a run).",
                    "  llmscratch pretrain --config configs/demo.yaml --out runs/mine\n"
                    "  llmscratch pretrain --config configs/demo.yaml --data 'books/*.txt' "
                    "--out runs/books model.n_layer=4\n"
                    "  llmscratch pretrain --resume runs/mine\n"
                    "  llmscratch pretrain --resume runs/mine train.max_steps=4000   "
                    "# train longer\n")
    p.add_argument("--config", help="YAML config (sections model, data, train)")
    p.add_argument("--data", nargs="+", metavar="FILE", help="text files, directories or globs "
                   "(default: the config's data.files, else the embedded Shakespeare corpus)")
    p.add_argument("--out", help="new run directory")
    p.add_argument("--resume", metavar="DIR", help="continue this run from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a run")
    p.add_argument("--fallback", action="store_true", help="with --resume: if the newest "
                   "checkpoint is corrupt, continue from the newest intact one")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. train.max_steps=200 model.n_layer=4")
    p.set_defaults(func=cmd_pretrain)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.overrides[:1] == ["chat"]:
        return cmd_demo_chat(args)
    from llmscratch.recipes.demo import run_demo

    config = Path(args.config) if args.config else None
    _print_result(run_demo(Path(args.out or "runs/demo"), config, args.overrides))
    return 0


def cmd_demo_chat(args: argparse.Namespace) -> int:
    from llmscratch.recipes.demo_chat import REPORT, run_chat_demo
    from llmscratch.runs.run import Run

    if args.config or len(args.overrides) > 1:
        raise LLMScratchError("demo chat takes --out, --base and --seed only")
    base = args.base or ("runs/demo" if Run.is_run("runs/demo") else None)
    if base:
        say(f"demo chat: the base model is {base}")
    result = run_chat_demo(Path(args.out or "runs/chat"), Path(base) if base else None,
                           args.seed)
    say(f"\nreport: {result.out / REPORT}; the final model: {result.out / 'rl'} "
        f"({result.seconds['all'] / 60:.1f} min in all)")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from llmscratch.recipes.pretrain import pretrain, resume
    from llmscratch.runs.config import load_config

    overrides = split_overrides(args)
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


def _print_result(result) -> None:
    if result.rank:  # under torchrun, rank 0 speaks for all
        return
    final = result.final
    say(f"\nvalidation: loss {final.loss:.4f} nats/token, perplexity {final.perplexity:.2f}, "
        f"{final.bpb:.4f} bits/byte ({final.tokens:,} tokens, {final.bytes:,} bytes)")
    say(training_line(result.steps, result.first_step, result.train_seconds,
                      f"{result.tokens_per_second:,.0f} tokens/s"))
    for prompt, completion in result.samples:
        say("\n--- sample " + "-" * 50 + "\n" + prompt + completion)
    say(f"\nrun directory: {result.run_dir}")
