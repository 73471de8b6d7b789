"""Fine-tuning, end to end: a base run -> an adapted model -> a new run and its report.

    llmscratch finetune classify --base runs/demo --data genres --out runs/genres
    llmscratch finetune sft --base runs/demo --data synthetic --out runs/sft
    llmscratch finetune reward|dpo|rl --base runs/sft --data synthetic --out runs/...

Every method shares this flow; what differs is a `Method` (classify.py,
sft.py, reward.py, dpo.py, rl.py): how the data is read and tokenized, the
batches, the objective, how held-out data is scored. `finetune(config, base_dir, out_dir)`:

1. open the base run and load its newest model; the method reads and checks
   all its data (and adds its head); choose what trains (`finetune.trainable`:
   everything, the last N blocks with the final norm and the head, the head
   alone, or LoRA adapters, the rest frozen: `set_trainable`). Any mistake
   stops here, before anything is written;
2. create the run: run.json names the base run and checkpoint, and the
   checkpoints hold only what trains (a few MB for LoRA); train it with the
   one training loop (training/loop.py) and the method's objective, having
   scored the held-out data before training;
3. score the held-out data again; write eval/before.json, eval/after.json,
   the plots and report.md.

`resume(run_dir)` rebuilds the same model and data and continues from the
newest checkpoint, as pretraining does. Under torchrun the model is
replicated (DDP); FSDP is for pretraining large models.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from llmscratch.config import apply_overrides, read_yaml
from llmscratch.data.examples import Example
from llmscratch.distributed import DistInfo, barrier
from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_text, read_json
from llmscratch.model import GPT
from llmscratch.model.lora import apply_lora
from llmscratch.recipes.classify import Classification
from llmscratch.recipes.dpo import PreferenceOptimization
from llmscratch.recipes.processes import processes
from llmscratch.recipes.report import plural
from llmscratch.recipes.reward import RewardModeling
from llmscratch.recipes.rl import ReinforcementLearning
from llmscratch.recipes.sft import InstructionTuning
from llmscratch.runs.checkpoint import (
    TrainState,
    checkpoint_config,
    latest_checkpoint,
    load_checkpoint,
    resumable_checkpoint,
)
from llmscratch.runs.config import SECTIONS, RunConfig, run_config_from
from llmscratch.runs.load import load_model
from llmscratch.runs.run import BaseRun, Run, RunInfo
from llmscratch.tokenizer import Tokenizer
from llmscratch.training.loop import BatchSource, Trainer
from llmscratch.training.objectives import Objective
from llmscratch.training.optim import Schedule, build_optimizer
from llmscratch.training.parallel import check_global_batch, eager_forward, parallelize
from llmscratch.training.plots import plot_losses, plot_training


class Method(Protocol):
    """What a fine-tuning method adds to the shared flow (see the module docstring)."""

    train_examples: list[Example]
    label_names: list[str]  # a classifier's classes, in the order of its outputs; else []

    def prepare(self, model: GPT, tokenizer: Tokenizer, base: Run, run: Run | None) -> None:
        """Read, check and tokenize the data (a resumed `run`'s saved splits, if it has
        them); add a head to `model` if the method has one."""

    def save_data(self, run: Run) -> None:
        """Keep in the new run what is needed to read the same data again."""

    def batches(self, model: GPT, info: DistInfo, run: Run) -> BatchSource:
        """The loop's data source: this process's share, in an order a resume continues
        (`model` is on the training device, not yet trained in this process)."""

    def objective(self, device: torch.device) -> Objective: ...

    def validate(self, model: GPT) -> dict:
        """Periodic validation: {"val_loss": ..., ...} on the validation examples, or {}
        when none are held out (the loop then logs nothing)."""

    def score(self, model: GPT, stage: str, run: Run | None) -> dict:
        """Held-out scores ("before" or "after" training); plots go into `run`."""

    def report(self, before: dict, after: dict, run: Run) -> list[str]:
        """report.md's section on the method's data and scores (Markdown lines)."""


@dataclass
class FinetuneResult:
    run_dir: Path
    method: str
    before: dict  # held-out scores of the base model (with a fresh head, for a classifier)
    after: dict  # the same, after training
    steps: int  # the run's steps in all
    train_seconds: float  # this process's training time
    rank: int = 0  # under torchrun, only rank 0 reports
    first_step: int = 0  # the step this process started from (0, or a resumed checkpoint's)


# Each method's defaults, under the user's config file and overrides: the book's choices
# (chapter 6: AdamW, lr 5e-5, weight decay 0.1, batch 8, the whole test set scored;
# chapter 7 the same), with validation and checkpoints at a pace that suits runs of a few
# hundred steps.
METHOD_DEFAULTS = {
    "classify": {"train": {"lr": 5e-5, "batch_size": 8, "warmup_steps": 0, "eval_every": 100,
                           "checkpoint_every": 500, "weight_decay": 0.1},
                 "finetune": {"epochs": 1.0, "eval_examples": -1}},
    "sft": {"train": {"lr": 5e-5, "batch_size": 8, "warmup_steps": 0, "eval_every": 100,
                      "checkpoint_every": 500, "weight_decay": 0.1},
            "finetune": {"epochs": 2.0}},
    # TRL's RewardTrainer and DPOTrainer defaults where they suit small models; the book's
    # DPO notebook also trains one epoch at a small learning rate.
    "reward": {"train": {"lr": 5e-5, "batch_size": 8, "warmup_steps": 0, "eval_every": 100,
                         "checkpoint_every": 500, "weight_decay": 0.0},
               "finetune": {"epochs": 1.0}},
    "dpo": {"train": {"lr": 5e-6, "batch_size": 8, "warmup_steps": 0, "eval_every": 100,
                      "checkpoint_every": 500, "weight_decay": 0.0},
            "finetune": {"epochs": 1.0}},
    # RL: a step samples group_size responses to each of batch_size prompts.
    "rl": {"train": {"lr": 1e-5, "batch_size": 8, "warmup_steps": 0, "eval_every": 50,
                     "checkpoint_every": 100, "weight_decay": 0.0, "max_steps": 100},
           "finetune": {"epochs": 0.0}},
}


def finetune_config(method: str, path: str | None, data: str | None,
                    overrides: list[str] | tuple = ()) -> RunConfig:
    """A fine-tuning run's config: the method's defaults, then the YAML file at `path`
    (sections train, finetune and align), then `data` and the command line's overrides."""
    document = {section: dict(values) for section, values in METHOD_DEFAULTS[method].items()}
    given = apply_overrides(read_yaml(path) if path else {}, overrides, SECTIONS)
    if "model" in given or "data" in given:
        raise LLMScratchError("a fine-tuning config has no model or data section, and takes "
                              "no model.* or data.* overrides: the model is the base run's, "
                              "and the data is finetune.data")
    for section, values in given.items():
        document.setdefault(section, {}).update(values)
    document["finetune"]["method"] = method
    if data:
        document["finetune"]["data"] = data
    return run_config_from(apply_overrides(document, length_overrides(given), SECTIONS))


def length_overrides(given: dict) -> list[str]:
    """What the user's own settings (`given`: their config file and overrides, as nested
    sections) say of the run's length, which is train.max_steps or finetune.epochs: a
    max_steps given wins over the epochs of the method's defaults or of the run's saved
    config (["finetune.epochs=0"]); given both, with epochs not 0, is refused."""
    steps, epochs = given.get("train", {}).get("max_steps"), given.get("finetune", {}).get(
        "epochs")
    if steps is None:
        return []
    if epochs is None:
        return ["finetune.epochs=0"]
    if epochs:
        raise LLMScratchError(f"train.max_steps={steps} and finetune.epochs={epochs} both set "
                              "the run's length; give one (finetune.epochs=0 keeps "
                              "train.max_steps)")
    return []


def new_method(config: RunConfig) -> Method:
    methods = {"classify": Classification, "sft": InstructionTuning, "reward": RewardModeling,
               "dpo": PreferenceOptimization, "rl": ReinforcementLearning}
    return methods[config.finetune.method](config)


def finetune(config: RunConfig, base_dir: Path, out_dir: Path,
             overwrite: bool = False) -> FinetuneResult:
    """Fine-tune the newest model of the run at `base_dir` into a new run at `out_dir`."""
    out_dir = Path(out_dir)
    resolve_paths(config)
    inputs = [base_dir, *filter(None, (config.align.reference, config.align.reward_model))]
    Run.check_new(out_dir, overwrite, inputs)  # before anything is read: fail fast
    base = Run.open(base_dir)
    base_checkpoint = latest_checkpoint(base).name
    model, method = _model_and_data(config, base, None)
    with processes(config) as (info, device):
        if info.is_main:
            about = RunInfo(kind="finetune", source=f"{config.finetune.method} on {base.path}",
                            base=BaseRun.of(base, base_checkpoint, out_dir),
                            generation=base.generation_settings(),
                            labels=method.label_names)
            Run.create(out_dir, config, about, base.tokenizer(), overwrite,
                       fill=method.save_data, inputs=inputs)
        barrier(info)
        run = Run(out_dir)
        with run.removed_without_checkpoint() if info.is_main else contextlib.nullcontext():
            with run.lock() if info.is_main else contextlib.nullcontext():
                return _train(config, run, method, model, None, info, device)


def resume(run_dir: Path, overrides: list[str] | tuple = (), fallback: bool = False
           ) -> FinetuneResult:
    """Continue the fine-tuning run in `run_dir` from its newest (good) checkpoint.

    The run's config.yaml gives the settings, the command line's `overrides`
    may change how it goes on (train.*, finetune.epochs...), not what it is
    (`check_resume`). One setting must be on the command line: a reward
    function to import (align.reward=module:function), since a run's folder
    may come from someone else, and its config.yaml must not choose code to run.
    """
    run = Run.open(run_dir)
    ckpt = resumable_checkpoint(run, "finetune", fallback=fallback)
    given = apply_overrides({}, overrides, SECTIONS)
    config = run.read_config([*overrides, *length_overrides(given)])
    check_resume(run, checkpoint_config(ckpt) or run.read_config(), config, overrides)
    resolve_paths(config)
    base, _ = run.base_run()
    model, method = _model_and_data(config, base, run)
    with processes(config) as (info, device):
        with run.lock() if info.is_main else contextlib.nullcontext():
            return _train(config, run, method, model, ckpt, info, device)


# What a resume may not change: what the checkpoints' tensors are, and how they were trained.
FIXED_ON_RESUME = ("method", "trainable", "init", "lora_rank", "lora_alpha", "lora_targets",
                   "pooling")
NAMED_DATA = ("synthetic", "genres")  # finetune.data naming a task shipped with the project


def check_resume(run: Run, saved: RunConfig, config: RunConfig, overrides) -> None:
    """Refuse, changing nothing, a resume that would make the run something else than
    `saved` (the config its checkpoint was written with), or that would import code that
    only the run's config.yaml names."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    if any(key.startswith("model.") for key in keys):
        raise LLMScratchError("a fine-tuning run's model is its base run's: no model.* "
                              "overrides on resume")
    for name in FIXED_ON_RESUME:
        old, new = getattr(saved.finetune, name), getattr(config.finetune, name)
        if old != new:
            raise LLMScratchError(f"finetune.{name}={new!r} does not fit {run.path}, trained "
                                  f"with finetune.{name}={old!r}; that cannot change on resume "
                                  "(start a new run with `llmscratch finetune ...` instead)")
    align = config.align
    if config.finetune.method == "rl" and not align.reward_model \
            and align.reward != "synthetic" and "align.reward" not in keys:
        raise LLMScratchError(
            f"{run.path} is rewarded by align.reward={align.reward}, Python code that resuming "
            "imports and runs; a run's saved config does not choose code to run: name it on "
            f"the command line if you trust it: `llmscratch finetune resume {run.path} "
            f"align.reward={align.reward}`")


def resolve_paths(config: RunConfig) -> None:
    """The files and runs a fine-tuning run reads, as absolute paths (in place): its saved
    config.yaml then names the same ones wherever `finetune resume` is run from."""
    ft, align = config.finetune, config.align
    if ft.data and ft.data not in NAMED_DATA:
        ft.data = os.path.abspath(ft.data)
    for section, name in ((ft, "val_data"), (ft, "test_data"), (align, "reference"),
                          (align, "reward_model")):
        if getattr(section, name):
            setattr(section, name, os.path.abspath(getattr(section, name)))


def _model_and_data(config: RunConfig, base: Run, run: Run | None) -> tuple[GPT, Method]:
    """The base run's newest model in fp32, the method's head on it, the data read."""
    if config.train.parallel == "fsdp":
        raise LLMScratchError("fine-tuning runs under torchrun with train.parallel=ddp")
    torch.manual_seed(config.train.seed)  # for the new head's and adapters' first weights
    model = load_model(base).float()  # fp32 weights; train.dtype=bf16 autocasts the matmuls
    if config.finetune.init == "random":
        model.init_weights()  # the control: what the same training does without pretraining
    if config.finetune.max_len > model.config.context_length:
        raise LLMScratchError(f"finetune.max_len={config.finetune.max_len} is over the base "
                              f"model's context length, {model.config.context_length}")
    method = new_method(config)
    method.prepare(model, base.tokenizer(), base, run)
    config.model = model.config  # the base's architecture, and the method's head
    set_trainable(model, config)
    return model, method


def set_trainable(model: GPT, config: RunConfig) -> tuple[int, int]:
    """Freeze what does not train (finetune.trainable); returns (trainable, all) parameters.

    "all": every parameter. "head": the sequence head alone. "last:N": the last
    N blocks, the final norm and the head (the book's chapter 6 trains the last
    block and the final norm with the new head). "lora": LoRA adapters on
    finetune.lora_targets, and the head (model/lora.py).
    """
    what = config.finetune.what_trains
    model.requires_grad_(what == "all")
    if what == "lora":
        apply_lora(model, config.finetune.lora)  # adds the adapters, freezes the rest
    elif what.startswith("last:"):
        n = int(what[5:])
        if n > len(model.blocks):
            raise LLMScratchError(f"finetune.trainable={what}: the model has only "
                                  f"{len(model.blocks)} blocks")
        for block in model.blocks[-n:]:
            block.requires_grad_(True)
        model.ln_f.requires_grad_(True)
    if model.head is not None:
        model.head.requires_grad_(True)
        if model.lm_head.weight is not model.tok_emb.weight:  # a classifier never uses it
            model.lm_head.requires_grad_(False)  # (and DDP wants no trainable unused weight)
    return count_parameters(model)


def count_parameters(model: GPT) -> tuple[int, int]:
    """(trainable, all) parameters, tied weights counted once."""
    counted = {p.data_ptr(): p for p in model.parameters()}.values()
    return sum(p.numel() for p in counted if p.requires_grad), sum(p.numel() for p in counted)


def _train(config: RunConfig, run: Run, method: Method, model: GPT, ckpt: Path | None,
           info: DistInfo, device: torch.device) -> FinetuneResult:
    """Train (from `ckpt` if given) with the shared loop; score before and after; report."""
    cfg, ft = config.train, config.finetune
    say = print if info.is_main else (lambda *args, **kwargs: None)
    torch.manual_seed(cfg.seed)  # training starts from one random state, whatever scoring drew
    trainable, total = count_parameters(model)
    model.to(device)
    grad_accum = cfg.grad_accum = check_global_batch(cfg, info)  # for this many processes
    batches = method.batches(model, info, run)
    if ft.epochs:  # the run's length in passes over the data
        cfg.max_steps = max(1, math.ceil(ft.epochs * len(batches.rows)
                                         / (batches.global_batch * grad_accum)))
    before_path = run.eval_dir / "before.json"
    if ckpt is None:
        before = method.score(model, "before", run if info.is_main else None)
        if info.is_main:
            _write_json(before_path, before)
            run.save_config(config)  # with the steps the epochs came to
    else:
        before = read_json(before_path, "the scores before training") \
            if before_path.is_file() else {}
    wrapped = parallelize(model, cfg, info, device)
    optimizer = build_optimizer(wrapped, cfg)
    state = TrainState()
    if ckpt is not None:
        state = load_checkpoint(ckpt, wrapped, optimizer, info)
        batches.load_state_dict(state.data)
        if info.is_main:
            run.save_config(config)
            run.metrics.truncate_after(state.step)
        say(f"resuming from {ckpt.name} (step {state.step} of {cfg.max_steps})")
    say(f"{ft.method}: {trainable:,} of {total:,} parameters train "
        f"({ft.what_trains}); {len(method.train_examples):,} examples, {cfg.max_steps} steps "
        f"({batches.epochs(cfg.max_steps * grad_accum):.2f} epochs) on {info.world_size} x "
        f"{device}")
    trainer = Trainer(wrapped, method.objective(device), batches, optimizer,
                      Schedule.from_train(cfg), cfg, run, device, info, method.validate,
                      trainable_only=ft.what_trains != "all", label=f"finetune {ft.method}")
    started, first_step = time.perf_counter(), state.step
    state = trainer.fit(state)
    train_seconds = time.perf_counter() - started
    with eager_forward():  # scoring generates and reads other shapes than training
        after = method.score(model, "after", run if info.is_main else None)
    if info.is_main:
        _write_json(run.eval_dir / "after.json", after)
        records = run.metrics.read()
        plot_losses(records, run.loss_plot_path, title=f"{run.path.name}: loss")
        plot_training(records, run.training_plot_path, title=run.path.name)
        _write_report(run, config, method, before, after, trainable, total, state.step,
                      train_seconds)
    return FinetuneResult(run.path, ft.method, before, after, state.step, train_seconds,
                          info.rank, first_step)


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(document, indent=1) + "\n")


def _write_report(run: Run, config: RunConfig, method: Method, before: dict, after: dict,
                  trainable: int, total: int, steps: int, seconds: float) -> None:
    """report.md: what was adapted from what, the scores before and after, the plots."""
    ft, base = config.finetune, run.read_info().base
    lines = [f"# Fine-tuning report: {run.path.name}", "",
             f"- base: `{base.run}` ({base.checkpoint})",
             f"- method: {ft.method}; what trains: {ft.what_trains} "
             f"({trainable:,} of {total:,} parameters, {trainable / total:.2%})",
             f"- {plural(steps, 'step')} in {seconds:.0f} s; batch {config.train.batch_size}, "
             f"lr {config.train.lr:g}, {config.train.dtype}", ""]
    lines += method.report(before, after, run)
    lines += ["", "## Loss", "", f"![loss curve]({run.loss_plot_path.name})", "",
              "Files: `eval/before.json` and `eval/after.json` hold the scores; the "
              f"checkpoints hold only what trained, over the base run named in `{run.INFO}`.",
              ""]
    atomic_write_text(run.report_path, "\n".join(lines))
