"""A run's configuration: the typed sections of its config.yaml.

    model:     ModelConfig    (model/config.py) - the architecture
    data:      DataConfig     - which text, which tokenizer, how it is split
    train:     TrainConfig    - optimisation, schedule, evaluation, checkpoints
    finetune:  FinetuneConfig - a fine-tuning run's method, data and what trains
    align:     AlignConfig    - the reward model, DPO and RL methods' own settings

A YAML file gives any subset of fields; `model.preset: NAME` starts the
model section from a named preset. Overrides on the command line use dotted
keys, e.g. `train.max_steps=200 model.n_layer=4` (config.py: how they are
checked). A run saves its resolved config as config.yaml (runs/run.py);
an imported model's run holds only its model section.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from llmscratch.config import apply_overrides, check_seed, from_dict, read_yaml, to_dict
from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_text
from llmscratch.model.config import ModelConfig
from llmscratch.model.lora import DEFAULT_TARGETS, LoRAConfig
from llmscratch.model.presets import get_preset
from llmscratch.tokenizer.patterns import PATTERNS


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes tokens.

    Fields:
        files: text files, directories or globs; empty means the embedded
            Shakespeare corpus (data/corpus.py).
        val_fraction: final fraction of the UTF-8 bytes held out for validation.
        tokenizer: directory of a saved tokenizer, or "gpt2"; empty means train
            one on the training text with the two fields below.
        vocab_size: vocabulary size when a tokenizer is trained here.
        pattern: pre-tokenizer regex for training: "gpt2" or "gpt4".
        prepared: a directory written by `llmscratch data prepare`; when set, training
            reads its token shards (memory-mapped) instead of `files`, and its tokenizer.
        verify: check each prepared shard's SHA-256 against the manifest at start.
    """

    files: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    tokenizer: str = ""
    vocab_size: int = 4096
    pattern: str = "gpt2"
    prepared: str = ""
    verify: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise LLMScratchError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.pattern not in PATTERNS:
            raise LLMScratchError(f"data.pattern must be one of {', '.join(PATTERNS)}, "
                                  f"got {self.pattern!r}")
        if self.vocab_size < 257:
            raise LLMScratchError(f"data.vocab_size must be at least 257 (the 256 bytes and "
                                  f"<|endoftext|>), got {self.vocab_size}")


@dataclass
class TrainConfig:
    """How a run trains: the train section of its config.yaml.

    The loop reads its share (training/loop.py, Trainer: steps, accumulation,
    clipping, precision, logging, validation, checkpoints, the time limit),
    the optimizer and schedule theirs (training/optim.py). A few
    fields are the pretraining recipe's alone: budget_seconds, the samples
    (sample_every, sample_tokens, prompts) and the parallel setup.

    Fields:
        max_steps: optimizer steps in the whole run.
        max_seconds: a safety limit: stop after this many seconds of training in this
            process, even before max_steps, then evaluate and checkpoint as at the end
            (0 = no limit). `--resume` continues towards max_steps.
        budget_seconds: size the run to this machine: after timing the first steps, lower
            max_steps so that training takes about this many seconds (never raises it;
            0 = off). With schedule "wsd" the length is planned again every 100 steps
            until the decay begins. The chosen max_steps is written to the run's
            config.yaml.
        batch_size: sequences per micro-batch, in each process.
        grad_accum: micro-batches summed into one optimizer step.
        global_batch: sequences per optimizer step over all processes; when set, grad_accum
            is derived from it (it must divide by batch_size x processes). 0 = not set.
        seq_len: tokens per sequence; 0 means the model's context length.
        lr: peak learning rate, reached after `warmup_steps`.
        schedule: "cosine" (warm-up, cosine decay) or "wsd" (warm-up, stable, decay).
        min_lr_ratio: the decay ends at lr * min_lr_ratio.
        decay_fraction: wsd only: the final fraction of steps that decays linearly.
        warmup_steps: steps of linear warm-up to lr (step s of them at lr * (s + 1) / warmup_steps).
        optimizer: "adamw", or "muon": Muon (training/muon.py) for the weight matrices
            inside the blocks, AdamW for embeddings, output layer and vectors.
        weight_decay: AdamW decay on matrices (not on biases, norms, embeddings' positions).
        beta1, beta2: AdamW moment coefficients.
        muon_lr: optimizer=muon: peak learning rate of the block matrices (train.lr is
            the AdamW parameters'); the schedule scales both alike.
        muon_momentum: optimizer=muon: the matrices' (Nesterov) momentum.
        muon_weight_decay: optimizer=muon: decoupled decay of the block matrices
            (each step shrinks them by muon_lr x this).
        grad_clip: clip the global gradient norm to this (0 = off).
        dtype: "bf16" (autocast: matmuls in bfloat16, weights fp32), "fp32", or "auto":
            bf16 where this hardware runs it faster than fp32 (training/precision.py).
        device: "auto" (cuda if present), "cpu" or "cuda".
        threads: CPU threads PyTorch's operations use; 0 = PyTorch's own count here
            (OMP_NUM_THREADS, else the cores). A sum split between threads is added in
            another order, so results depend on the count: the one used is written into
            the run's config.yaml, and a resume uses it again (recipes/processes.py).
        compile: compile the model's forward with torch.compile.
        activation_checkpointing: recompute each block's activations in backward
            (less memory, about a third more compute).
        parallel: under torchrun: "ddp" (replicate the model) or "fsdp" (shard it, FSDP2).
        peak_flops: peak FLOP/s of one device, for MFU; 0 = known GPUs only (CPUs: measure
            it, e.g. with bench/train_speed.py, and set it).
        seed: seeds the weights and the batch order (a whole number from 0 to 2^63 - 1).
        log_every: steps between metric lines in metrics.jsonl.
        eval_every: steps between validation passes (0 = only at the end).
        eval_batches: batches per periodic validation (the final one reads all of it).
        checkpoint_every: steps between checkpoints (0 = only at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        tensorboard: also write TensorBoard event files to RUN/tensorboard.
        sample_every: steps between text samples (0 = only at the end).
        sample_tokens: length of each sample, in tokens.
        prompts: sample prompts.
    """

    max_steps: int = 1000
    max_seconds: float = 0.0
    budget_seconds: float = 0.0
    batch_size: int = 16
    grad_accum: int = 1
    global_batch: int = 0
    seq_len: int = 0
    lr: float = 1e-3
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    warmup_steps: int = 50
    optimizer: str = "adamw"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    grad_clip: float = 1.0
    dtype: str = "auto"
    device: str = "auto"
    threads: int = 0
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "ddp"
    peak_flops: float = 0.0
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    tensorboard: bool = False
    sample_every: int = 0
    sample_tokens: int = 200
    prompts: list[str] = field(default_factory=lambda: ["ROMEO:\n", "HAMLET:\nTo be"])

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) <= 0:
                raise LLMScratchError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise LLMScratchError(
                f"train.dtype must be 'auto', 'bf16' or 'fp32', got {self.dtype!r}")
        if self.max_seconds < 0 or self.budget_seconds < 0:
            raise LLMScratchError("train.max_seconds and train.budget_seconds must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise LLMScratchError(
                f"train.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}"
            )
        if self.warmup_steps < 0 or self.lr <= 0:
            raise LLMScratchError("train.lr must be > 0 and train.warmup_steps >= 0")
        if self.schedule not in ("cosine", "wsd"):
            raise LLMScratchError(
                f"train.schedule must be 'cosine' or 'wsd', got {self.schedule!r}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise LLMScratchError(
                f"train.decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.optimizer not in ("adamw", "muon"):
            raise LLMScratchError(
                f"train.optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.optimizer == "muon" and self.parallel == "fsdp":
            raise LLMScratchError("train.optimizer=muon needs whole matrices; it does not run "
                                  "with train.parallel=fsdp yet: use train.parallel=ddp")
        if self.parallel not in ("ddp", "fsdp"):
            raise LLMScratchError(f"train.parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        if self.keep_checkpoints < 1 or self.global_batch < 0 or self.peak_flops < 0:
            raise LLMScratchError("train.keep_checkpoints must be >= 1, train.global_batch and "
                                  "train.peak_flops >= 0")
        for name in ("log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise LLMScratchError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "sample_every", "sample_tokens",
                     "seq_len", "grad_clip", "weight_decay", "muon_weight_decay", "threads"):
            if getattr(self, name) < 0:
                raise LLMScratchError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.muon_lr <= 0:
            raise LLMScratchError(f"train.muon_lr must be > 0, got {self.muon_lr}")
        for name in ("beta1", "beta2", "muon_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise LLMScratchError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise LLMScratchError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check_seed(self.seed, "train.seed")


METHODS = ("classify", "sft", "reward", "dpo", "rl")


@dataclass
class FinetuneConfig:
    """How a fine-tuning run adapts its base run's model: the finetune section.

    Fields:
        method: "classify" (a class head on the last real token), "sft"
            (instruction tuning: next-token loss on the answers), "reward" (a reward
            model: a scalar head trained on preference pairs), "dpo" (direct preference
            optimisation) or "rl" (sampled responses, rewarded; GRPO): see AlignConfig.
        data: the training file, or a task shipped with the project: "genres"
            (classify: which genre a passage of the plays is from) or "synthetic"
            (sft, reward, dpo, rl: checkable instruction tasks, data/synthetic_tasks.py;
            for reward and dpo their preference pairs). reward and dpo read preference
            .json/.jsonl, rl prompt .jsonl (data/alignment_files.py).
            classify reads .csv, .tsv, .jsonl, or the SMS Spam Collection (under any
            name); sft reads Alpaca .json/.jsonl or chat .jsonl.
        val_data, test_data: held-out files; when empty, the training file is split
            (classify: 70/10/20 as in the book; sft: val_fraction of it).
        data_format: "auto" (from the file's extension; the SMS Spam Collection is known
            by its first line, `ham<TAB>...`) or "sms" (label<TAB>text, no header: the
            book's balancing and split).
        text_field, label_field: classify: the fields holding the text and its label.
        val_fraction: sft: the share of a single file held out for validation.
        trainable: what trains: "auto" (classify: "last:1", as in the book; sft, or
            init "random": "all"),
            "all", "head" (classify: the new head alone), "last:N" (the last N blocks,
            the final norm and the head), or "lora" (adapters only, below).
        lora_rank, lora_alpha, lora_dropout, lora_targets: the adapters (model/lora.py).
        pooling: classify: what the head reads: "last" (the last real token) or "mean".
        prompt_format: sft: "chat" (the model's chat template) or "alpaca" (the book's
            "### Instruction:" prompt).
        train_on: sft: "response" (the loss on the answer's tokens only) or "all".
        packing: sft: lay examples end to end in rows of max_len tokens (each still
            sees only itself) instead of one padded example per row.
        max_len: longest example in tokens (0 = the model's context length).
        overlong: what happens to a longer one: "truncate" or "skip" (counted either way
            in report.md). A preference pair is never truncated: a longer one is skipped,
            and one whose prompt alone is longer is an error unless "skip"; so is an RL
            prompt that leaves no room for a response.
        epochs: passes over the training examples; sets train.max_steps
            (0 = keep train.max_steps). A train.max_steps given in the config file or
            on the command line wins: epochs then count only if given too, and giving
            both (epochs not 0) is refused.
        init: "base" (start from the base run's weights) or "random" (the same
            architecture and tokenizer, freshly initialised: the control experiment
            that shows what pretraining brings).
        synthetic_train, synthetic_heldout: sft with data "synthetic": how many examples.
        eval_examples: how many held-out examples every method scores before and
            after training (0 = none, -1 = all of them): classify's test texts (its
            default is -1, the whole test split, as the book scores it), sft's and
            rl's prompts answered greedily, reward's and dpo's pairs.
    """

    method: str = "sft"
    data: str = ""
    val_data: str = ""
    test_data: str = ""
    data_format: str = "auto"
    text_field: str = "text"
    label_field: str = "label"
    val_fraction: float = 0.1
    trainable: str = "auto"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    pooling: str = "last"
    prompt_format: str = "chat"
    train_on: str = "response"
    packing: bool = False
    max_len: int = 0
    overlong: str = "truncate"
    epochs: float = 1.0
    init: str = "base"
    synthetic_train: int = 2000
    synthetic_heldout: int = 200
    eval_examples: int = 200

    def __post_init__(self) -> None:
        choices = {"method": METHODS, "data_format": ("auto", "sms"),
                   "pooling": ("last", "mean"), "prompt_format": ("chat", "alpaca"),
                   "train_on": ("response", "all"), "overlong": ("truncate", "skip"),
                   "init": ("base", "random")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LLMScratchError(f"finetune.{name} must be one of {', '.join(allowed)}, "
                                      f"got {getattr(self, name)!r}")
        if self.trainable not in ("auto", "all", "head", "lora") and not (
                self.trainable.startswith("last:") and self.trainable[5:].isdigit()
                and int(self.trainable[5:]) >= 1):
            raise LLMScratchError(f"finetune.trainable must be auto, all, head, lora or last:N "
                                  f"(N >= 1), got {self.trainable!r}")
        if self.init == "random" and self.what_trains != "all":
            raise LLMScratchError("finetune.init=random trains every weight: its checkpoints "
                                  "cannot lie over the base run's; use finetune.trainable=all")
        if self.trainable == "head" and self.method != "classify":
            raise LLMScratchError("finetune.trainable=head needs finetune.method=classify")
        if not 0.0 < self.val_fraction < 1.0:
            raise LLMScratchError(f"finetune.val_fraction must be in (0, 1), "
                                  f"got {self.val_fraction}")
        for name in ("max_len", "epochs", "synthetic_train", "synthetic_heldout"):
            if getattr(self, name) < 0:
                raise LLMScratchError(f"finetune.{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_examples < -1:
            raise LLMScratchError(f"finetune.eval_examples must be >= 0, or -1 for all, "
                                  f"got {self.eval_examples}")
        _ = self.lora  # the adapter's fields are checked now, not when training starts

    def scored(self, heldout: list) -> list:
        """The held-out examples scored before and after training: the first
        `eval_examples` (all of them with -1)."""
        return list(heldout) if self.eval_examples < 0 else heldout[:self.eval_examples]

    @property
    def lora(self) -> LoRAConfig:
        return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout,
                          list(self.lora_targets))

    @property
    def what_trains(self) -> str:
        """`trainable`, with "auto" resolved for the method."""
        if self.trainable != "auto":
            return self.trainable
        return "last:1" if self.method == "classify" and self.init == "base" else "all"


@dataclass
class AlignConfig:
    """The alignment methods' settings: the align section (recipes/reward.py, dpo.py, rl.py).

    How many held-out pairs or prompts are scored is finetune.eval_examples, as
    for every method.

    Fields:
        reference: the run whose model is the reference of DPO and of RL's KL
            penalty ("" = the base run: the model as it was before this run trained).
            It must have the policy's vocabulary.
        beta: DPO: how far the policy may move from the reference (the inverse
            temperature of the implicit reward, 0.1 as in the DPO paper and TRL).
        loss: DPO: "sigmoid" (the DPO paper's) or "ipo" (IPO: a squared loss on the
            mean log-probability ratios, which does not push the margin to infinity).
            TRL's loss_type.
        rpo_alpha: DPO: add this times the chosen response's mean negative
            log-likelihood to each pair's loss (RPO; 0 = plain DPO), which keeps the
            chosen answers likely while the pair's margin grows.
        reward: RL: the reward of a response: "synthetic" (the synthetic tasks'
            verifiable reward, data/synthetic_tasks.py: task_rewards) or a Python callable
            "module:function" taking (prompts, completions, **columns) and returning a
            number a completion, as TRL's reward functions do.
        reward_model: RL: a reward-model run (`finetune reward`) that scores responses
            instead of `reward`.
        group_size: RL: responses sampled a prompt; advantages are normalised within them
            (train.batch_size is the number of prompts a micro-batch, in each process).
            TRL's num_generations.
        kl_coef: RL: the weight of the KL penalty to the reference (0 = no penalty, and no
            reference model is loaded). TRL's GRPO calls it beta.
        clip: RL: the policy ratio is clipped to [1 - clip, 1 + clip]. TRL's epsilon.
        scale_rewards: RL: divide advantages by the group's standard deviation (GRPO);
            false keeps only the mean subtracted (Dr. GRPO).
        updates_per_batch: RL: optimizer steps on each batch of responses (GRPO's mu);
            from the second on, the ratio and its clipping matter. TRL's num_iterations.
        temperature, max_new_tokens: RL: how responses are sampled (TRL: temperature,
            max_completion_length).
    """

    # A key this section had, and where it went: given, it is refused with the new
    # name; an old run's config.yaml is read with it moved (`load_config`).
    RENAMED: typing.ClassVar[dict[str, str]] = {"eval_examples": "finetune.eval_examples"}

    reference: str = ""
    beta: float = 0.1
    loss: str = "sigmoid"
    rpo_alpha: float = 0.0
    reward: str = "synthetic"
    reward_model: str = ""
    group_size: int = 8
    kl_coef: float = 0.04
    clip: float = 0.2
    scale_rewards: bool = True
    updates_per_batch: int = 1
    temperature: float = 1.0
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.loss not in ("sigmoid", "ipo"):
            raise LLMScratchError(f"align.loss must be sigmoid or ipo, got {self.loss!r}")
        if self.beta <= 0:
            raise LLMScratchError(f"align.beta must be > 0, got {self.beta}")
        for name in ("updates_per_batch", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise LLMScratchError(f"align.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise LLMScratchError("align.group_size must be >= 2: advantages compare the "
                                  "responses to one prompt")
        for name in ("kl_coef", "clip", "rpo_alpha"):
            if getattr(self, name) < 0:
                raise LLMScratchError(f"align.{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise LLMScratchError(f"align.temperature must be > 0 (RL samples), "
                                  f"got {self.temperature}")
        if self.reward != "synthetic" and ":" not in self.reward:
            raise LLMScratchError(f"align.reward must be 'synthetic' or 'module:function', "
                                  f"got {self.reward!r}")


@dataclass
class RunConfig:
    """Everything that defines a run; saved as config.yaml in the run directory.

    A pretraining run uses model, data and train; a fine-tuning run model,
    train and finetune (its data is named in finetune); an imported model's
    run only model.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    align: AlignConfig = field(default_factory=AlignConfig)


SECTIONS = tuple(f.name for f in fields(RunConfig))


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate."""
    data = _upgrade(read_yaml(path)) if path is not None else {}
    return run_config_from(apply_overrides(data, overrides, SECTIONS))


def run_config_from(data: dict) -> RunConfig:
    """A RunConfig from plain data; its model section may start from `preset: NAME`."""
    return from_dict(RunConfig, data, presets={ModelConfig: get_preset})


def _upgrade(document: dict) -> dict:
    """A config saved before align.eval_examples became finetune.eval_examples, with the
    held-out size the run used: align's for reward, dpo and rl, finetune's for sft, and
    the whole test split for classify (which had no such limit)."""
    align, finetune = document.get("align"), document.get("finetune")
    if not isinstance(align, dict) or "eval_examples" not in align:
        return document
    document = {**document, "align": dict(align)}
    old = document["align"].pop("eval_examples")
    if isinstance(finetune, dict):
        method = finetune.get("method")
        if method in ("reward", "dpo", "rl", "classify"):
            document["finetune"] = {**finetune,
                                    "eval_examples": -1 if method == "classify" else old}
    return document


def save_config(config: RunConfig, path: Path, sections: typing.Sequence[str] = SECTIONS
                ) -> None:
    """Write the resolved config (its `sections`) as YAML, atomically."""
    document = {name: value for name, value in to_dict(config).items() if name in sections}
    atomic_write_text(path, yaml.safe_dump(document, sort_keys=False))
