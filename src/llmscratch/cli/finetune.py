"""`llmscratch finetune ...`, `llmscratch classify`, `llmscratch lora ...`: adapt a run.

    llmscratch finetune classify --base RUN --data FILE|genres --out DIR [KEY=VALUE ...]
    llmscratch finetune sft --base RUN --data FILE|synthetic --out DIR [KEY=VALUE ...]
    llmscratch finetune reward|dpo|rl --base RUN --data FILE|synthetic --out DIR [KEY=VALUE ...]
    llmscratch finetune resume DIR [KEY=VALUE ...]
    llmscratch classify --run DIR --text TEXT
    llmscratch reward --run DIR --prompt TEXT --response TEXT
    llmscratch lora merge|export|import ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmscratch.cli.common import add_command, add_group, say, training_line
from llmscratch.errors import LLMScratchError

EXAMPLES = {
    "classify": "  llmscratch finetune classify --base runs/demo --data genres --out runs/genres\n"
                "  llmscratch finetune classify --base runs/gpt2 --data SMSSpamCollection.tsv "
                "--out runs/spam\n"
                "  llmscratch finetune classify --base runs/demo --data reviews.csv "
                "--out runs/reviews finetune.trainable=lora\n",
    "sft": "  llmscratch finetune sft --base runs/demo --data synthetic --out runs/sft\n"
           "  llmscratch finetune sft --base runs/qwen3 --data instruction-data.json "
           "--out runs/qwen3-sft finetune.trainable=lora finetune.lora_rank=16\n"
           "  llmscratch finetune sft --base runs/gpt2 --data instruction-data.json "
           "--out runs/alpaca finetune.prompt_format=alpaca\n",
    "reward": "  llmscratch finetune reward --base runs/sft --data synthetic --out runs/rm\n"
              "  llmscratch finetune reward --base runs/qwen3 --data preferences.jsonl "
              "--out runs/qwen3-rm finetune.trainable=lora\n",
    "dpo": "  llmscratch finetune dpo --base runs/sft --data synthetic --out runs/dpo\n"
           "  llmscratch finetune dpo --base runs/gpt2-sft --data instruction-data-with-"
           "preference.json --out runs/dpo align.beta=0.1 finetune.prompt_format=alpaca\n",
    "rl": "  llmscratch finetune rl --base runs/dpo --data synthetic --out runs/rl\n"
          "  llmscratch finetune rl --base runs/sft --data synthetic --out runs/rl-rm "
          "align.reward_model=runs/rm\n"
          "  llmscratch finetune rl --base runs/sft --data prompts.jsonl --out runs/rl "
          "align.reward=my_rewards:score align.kl_coef=0\n",
}
SUMMARIES = {
    "classify": "Train a classifier on a run's model (a class head on the last token).",
    "sft": "Instruction-tune a run's model (loss on the replies).",
    "reward": "Train a reward model on preference pairs (Bradley-Terry).",
    "dpo": "Align a run's model to preference pairs with DPO (or IPO).",
    "rl": "Align a run's model with RL (GRPO): sampled answers, rewarded, a KL penalty.",
}
DATA = {"classify": "'genres'", "sft": "'synthetic'", "reward": "'synthetic'",
        "dpo": "'synthetic'", "rl": "'synthetic'"}


def register(sub) -> None:
    commands = add_group(sub, "finetune", "Fine-tune a run: a classifier, instruction tuning, "
                         "a reward model, DPO or RL; all weights, the last blocks, a head, or "
                         "LoRA adapters.", "".join(EXAMPLES.values()), dest="finetune_command")
    for method, summary in SUMMARIES.items():
        p = add_command(commands, method, summary, EXAMPLES[method])
        p.add_argument("--base", required=True, help="the run to fine-tune (ours or imported)")
        p.add_argument("--data", help=f"training data: a file, or {DATA[method]} (a task "
                       "shipped with the project)")
        p.add_argument("--out", required=True, help="new run directory")
        p.add_argument("--config", help="YAML config (sections train, finetune, align)")
        p.add_argument("--overwrite", action="store_true", help="replace --out if it is a run")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted config overrides, e.g. finetune.trainable=lora train.lr=1e-4")
        p.set_defaults(func=cmd_finetune, method=method)
    p = add_command(commands, "resume", "Continue a fine-tuning run from its newest checkpoint.",
                    "  llmscratch finetune resume runs/sft\n"
                    "  llmscratch finetune resume runs/sft finetune.epochs=3   # train longer\n"
                    "  llmscratch finetune resume runs/rl align.reward=my_rewards:score  "
                    "# code to run: named here, not by the run's saved config\n")
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

    p = add_command(sub, "reward", "Score responses to a prompt with a reward-model run.",
                    "  llmscratch reward --run runs/rm --prompt 'Calculate the result.\n\n2 + 3' "
                    "--response 5 --response 6\n")
    p.add_argument("--run", required=True, help="a run made by `llmscratch finetune reward`")
    p.add_argument("--prompt", required=True, help="the user's message")
    p.add_argument("--response", required=True, action="append",
                   help="a response to score (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object per response")
    p.set_defaults(func=cmd_reward)

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
    say("\n" + training_line(result.steps, result.first_step, result.train_seconds))
    for key, label in HEADLINES[result.method]:
        if key in result.after:
            form = "{:.3f}" if key == "mean_reward" else "{:.1%}"  # a reward, or a share
            before = form.format(result.before[key]) + " -> " if key in result.before else ""
            say(f"{label}: {before}{form.format(result.after[key])}")
    say(f"run directory: {result.run_dir} (its report: {Run(result.run_dir).report_path.name})")


# What `finetune` prints of each method's held-out scores, before -> after.
HEADLINES = {"classify": [("accuracy", "test accuracy")],
             "sft": [("exact_match", "held-out exact match")],
             "reward": [("pair_accuracy", "held-out pair accuracy")],
             "dpo": [("pair_accuracy", "held-out pair accuracy"),
                     ("exact_match", "held-out exact match")],
             "rl": [("mean_reward", "held-out mean reward"),
                    ("exact_match", "held-out exact match")]}


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


def cmd_reward(args: argparse.Namespace) -> int:
    from llmscratch.data.chat_examples import ChatEncoder
    from llmscratch.recipes.reward import reward_scores
    from llmscratch.runs.load import load_for_inference
    from llmscratch.runs.run import Run

    run = Run.open(args.run)
    model, tokenizer, settings = load_for_inference(args.run)
    if model.head is None or model.config.head_outputs != 1 or run.read_info().labels:
        raise LLMScratchError(f"{args.run} is not a reward model; make one with "
                              "`llmscratch finetune reward`")
    encoder = ChatEncoder(tokenizer, settings, run.read_config().finetune.prompt_format, False)
    scores = reward_scores(model, encoder, [args.prompt] * len(args.response), args.response)
    for response, score in zip(args.response, scores, strict=True):
        if args.json:
            print(json.dumps({"response": response, "reward": round(score, 4)}))
        else:
            say(f"{score:+.3f}  {response}")
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
