"""Typed run configuration: YAML file + dotted command-line overrides.

A run is described by one `RunConfig` made of three sections:

    model:  ModelConfig  (model/config.py) - the architecture
    data:   DataConfig   - which text, which tokenizer, how it is split
    train:  TrainConfig  - optimisation, schedule, evaluation, checkpoints

A YAML file gives any subset of fields; `model.preset: NAME` starts the
model section from a named preset. Overrides on the command line use dotted
keys, e.g. `train.max_steps=200 model.n_layer=4`; their values are parsed as
YAML scalars. Unknown keys and values of the wrong type are errors that name
the key, and suggest the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import ModelConfig, get_preset


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


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one pretraining run.

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
        warmup_steps: linear warm-up from 0 to lr.
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
        compile: compile the model's forward with torch.compile.
        activation_checkpointing: recompute each block's activations in backward
            (less memory, about a third more compute).
        parallel: under torchrun: "ddp" (replicate the model) or "fsdp" (shard it, FSDP2).
        peak_flops: peak FLOP/s of one device, for MFU; 0 = known GPUs only (CPUs: measure
            it, e.g. with bench/train_speed.py, and set it).
        seed: seeds the weights and the batch order.
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


@dataclass
class RunConfig:
    """Everything that defines a run; saved as config.yaml in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --- building dataclasses from plain data, with errors that name the key ----------


def _suggest(key: str, valid: typing.Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against the annotation `kind`; int is accepted where float is."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        if isinstance(value, (str, int, float)):  # a lone value where a list is expected
            value = [value]
        if not isinstance(value, list):
            raise LLMScratchError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item_kind, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LLMScratchError(
            f"{key} must be of type {kind.__name__}, got {value!r} ({type(value).__name__})"
        )
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, checking every key and type."""
    if not isinstance(data, dict):
        raise LLMScratchError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise LLMScratchError(
                f"unknown config key '{prefix}{key}'{_suggest(key, names, prefix)}"
            )
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = section_from_dict(kind, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, kind, f"{prefix}{key}")
    return cls(**kwargs)


def section_from_dict(cls: type, data: dict, prefix: str) -> Any:
    """Like `from_dict`, but a model section may start from `preset: NAME`."""
    if cls is ModelConfig and isinstance(data, dict) and "preset" in data:
        data = dict(data)
        preset = data.pop("preset")
        base = dataclasses.asdict(get_preset(str(preset)))
        return from_dict(cls, {**base, **data}, prefix)
    return from_dict(cls, data, prefix)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description from the class docstring's "Fields:" section (for --help)."""
    docs: dict[str, str] = {}
    names: list[str] = []
    in_fields = False
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Fields:":
            in_fields = True
            continue
        if not in_fields or not stripped:
            continue
        head, sep, text = stripped.partition(": ")
        candidates = [n.strip() for n in head.split(",")]
        if sep and all(n.isidentifier() for n in candidates):
            names = candidates
            for name in names:
                docs[name] = text
        else:
            for name in names:
                docs[name] += " " + stripped
    return docs


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict:
    """Set dotted keys (`train.lr=3e-4`) in a nested dict, parsing values as YAML."""
    data = {section: dict(values or {}) for section, values in data.items()}
    for item in overrides:
        if "=" not in item:
            raise LLMScratchError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        sections = [f.name for f in dataclasses.fields(RunConfig)]
        if len(parts) != 2 or parts[0] not in sections:
            raise LLMScratchError(
                f"unknown config key '{dotted}'{_suggest(parts[0], sections)} "
                f"(keys look like {'|'.join(sections)}.name)"
            )
        data.setdefault(parts[0], {})[parts[1]] = yaml.safe_load(raw) if raw else ""
    return data


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LLMScratchError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise LLMScratchError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise LLMScratchError(f"config file {path} must hold a mapping of sections")
    return from_dict(RunConfig, apply_overrides(data, overrides))


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically; see training/checkpoint.py)."""
    from llmscratch.training.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
