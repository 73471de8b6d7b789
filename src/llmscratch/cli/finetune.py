"""`llmscratch finetune ...`, `llmscratch classify`, `llmscratch lora ...`: adapt a run.

    llmscratch finetune classify --base RUN --data FILE|genres --out DIR [KEY=VALUE ...]
    llmscratch finetune sft --base RUN --data FILE|synthetic --out DIR [KEY=VALUE ...]
    llmscratch finetune resume DIR [KEY=VALUE ...]
    llmscratch classify --run DIR --text TEXT
    llmscratch lora merge|export|import ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmscratch.cli.common import add_command, add_group, say
from llmscratch.errors import LLMScratchError

EXAMPLES = {
    "classify": "  llmscratch finetune classify --base runs/demo --data genres --out runs/genres\n"
                "  llmscratch finetune classify --base runs/gpt2 --data SMSSpamCollection "
                "--out runs/spam finetune.data_format=sms\n"
                "  llmscratch finetune classify --base runs/demo --data reviews.csv "
                "--out runs/reviews finetune.trainable=lora\n",
    "sft": "  llmscratch finetune sft --base runs/demo --data synthetic --out runs/sft\n"
           "  llmscratch finetune sft --base runs/qwen3 --data instruction-data.json "
           "--out runs/qwen3-sft finetune.trainable=lora finetune.lora_rank=16\n"
           "  llmscratch finetune sft --base runs/gpt2 --data instruction-data.json "
           "--out runs/alpaca finetune.prompt_format=alpaca\n",
}


def register(sub) -> None:
    commands = add_group(sub, "finetune", "Fine-tune a run: a classifier, or instruction "
                         "tuning; all weights, the last blocks, a head, or LoRA adapters.",
                         EXAMPLES["classify"] + EXAMPLES["sft"], dest="finetune_command")
    for method, summary in (("classify", "Train a classifier on a run's model (a class head "
                             "on the last token)."),
                            ("sft", "Instruction-tune a run's model (loss on the replies).")):
        p = add_command(commands, method, summary, EXAMPLES[method])
        p.add_argument("--base", required=True, help="the run to fine-tune (ours or imported)")
        p.add_argument("--data", help="training data: a file, or "
                       + ("'genres'" if method == "classify" else "'synthetic'")
                       + " (a task shipped with the project)")
        p.add_argument("--out", required=True, help="new run directory")
        p.add_argument("--config", help="YAML config (sections train, finetune)")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it is a run")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted config overrides, e.g. finetune.trainable=lora train.lr=1e-4")
        p.set_defaults(func=cmd_finetune, method=method)
    p = add_command(commands, "resume", "Continue a fine-tuning run from its newest checkpoint.",
                    "  llmscratch finetune resume runs/sft\n"
                    "  llmscratch finetune resume runs/sft finetune.epochs=3   # train longer\n")
    p.add_argument("run", help="the fine-tuning run")
    p.add_argument("--fallback", action="store_true", help="if the newest checkpoint is "
                   "corrupt, continue from the newest intact one")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_resume)

    p = add_command(sub, "classify", "Predict the class of a text with a classifier run.",
                    "  llmscratch classify --run runs/genres --text 'My lord, the king!'\n")
    p.add_argument("--run", required=True, help="a run made by `llmscratch finetune classify`")
    p.add_argument("--text", required=True, action="append", help="a text (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    p.set_defaults(func=cmd_classify)

    commands = add_group(sub, "lora", "Merge LoRA adapters into a full run; export or import "
                         "them in PEFT's format.",
                         "  llmscratch lora merge --run runs/sft --out runs/sft-full\n"
                         "  llmscratch lora export --run runs/sft --out sft-adapter\n"
                         "  llmscratch lora import --base runs/qwen3 --adapter sft-adapter "
                         "--out runs/qwen3-sft\n", dest="lora_command")
    p = add_command(commands, "merge", "Write a run whose weights have the adapters folded in.",
                    "  llmscratch lora merge --run runs/sft --out runs/sft-full\n")
    p.add_argument("--run", required=True, help="a run trained with finetune.trainable=lora")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a run")
    p.set_defaults(func=cmd_merge)
    p = add_command(commands, "export", "Write a run's adapters as a PEFT adapter folder (for "
                    "the base run's `convert to-hf` export).",
                    "  llmscratch lora export --run runs/sft --out sft-adapter\n")
    p.add_argument("--run", required=True, help="a run trained with finetune.trainable=lora")
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--base-model", help="base_model_name_or_path to record (default: the "
                   "base run's path)")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.set_defaults(func=cmd_export_adapter)
    p = add_command(commands, "import", "A new run from a PEFT adapter folder over a base run.",
                    "  llmscratch lora import --base runs/qwen3 --adapter my-adapter "
                    "--out runs/qwen3-mine\n")
    p.add_argument("--base", required=True, help="the run the adapter was trained on")
    p.add_argument("--adapter", required=True, help="folder with adapter_config.json and "
                   "adapter_model.safetensors")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a run")
    p.set_defaults(func=cmd_import_adapter)


def cmd_finetune(args: argparse.Namespace) -> int:
    from llmscratch.recipes.finetune import finetune, finetune_config

    config = finetune_config(args.method, args.config, args.data, args.overrides)
    _print_result(finetune(config, Path(args.base), Path(args.out), args.overwrite))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from llmscratch.recipes.finetune import resume

    _print_result(resume(Path(args.run), args.overrides, fallback=args.fallback))
    return 0


def _print_result(result) -> None:
    from llmscratch.runs.run import Run

    if result.rank:
        return
    say(f"\ntraining: {result.steps:,} steps in {result.train_seconds:.0f} s")
    key = "accuracy" if result.method == "classify" else "exact_match"
    label = "test accuracy" if result.method == "classify" else "held-out exact match"
    if key in result.after:
        before = f"{result.before[key]:.1%} -> " if key in result.before else ""
        say(f"{label}: {before}{result.after[key]:.1%}")
    say(f"run directory: {result.run_dir} (its report: {Run(result.run_dir).report_path.name})")


def cmd_classify(args: argparse.Namespace) -> int:
    import torch

    from llmscratch.data.examples import Example
    from llmscratch.evaluation.classification import predict
    from llmscratch.runs.load import load_for_inference
    from llmscratch.runs.run import Run

    labels = Run.open(args.run).read_info().labels
    model, tokenizer, _ = load_for_inference(args.run)
    if model.head is None or not labels:
        raise LLMScratchError(f"{args.run} is not a classifier; make one with "
                              "`llmscratch finetune classify`")
    context = model.config.context_length
    examples = [Example(tokenizer.encode(t, disallowed_special="none")[:context] or [0],
                        label=0) for t in args.text]
    probabilities = predict(model, examples)  # (N, C)
    for text, row in zip(args.text, probabilities, strict=True):
        best = int(torch.argmax(row))
        scores = {name: round(float(p), 4) for name, p in zip(labels, row, strict=True)}
        if args.json:
            print(json.dumps({"text": text, "label": labels[best], "probabilities": scores}))
        else:
            ranked = sorted(scores.items(), key=lambda item: -item[1])
            say(f"{labels[best]}  (" + ", ".join(f"{n} {p:.1%}" for n, p in ranked) + ")")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from llmscratch.recipes.adapters import merge_run

    run = merge_run(args.run, args.out, args.overwrite)
    say(f"wrote {run.path}: {args.run} with its adapters merged into the weights")
    return 0


def cmd_export_adapter(args: argparse.Namespace) -> int:
    from llmscratch.recipes.adapters import export_adapter

    out = export_adapter(args.run, args.out, args.base_model, args.overwrite)
    say(f"wrote {out} (load it with peft.PeftModel.from_pretrained on the base run's "
        "`llmscratch convert to-hf` export)")
    return 0


def cmd_import_adapter(args: argparse.Namespace) -> int:
    from llmscratch.recipes.adapters import import_adapter

    run = import_adapter(args.base, args.adapter, args.out, args.overwrite)
    say(f"wrote {run.path}: {args.adapter} over {args.base}")
    return 0
