"""LoRA runs and the rest of the world: merge into a full run, export and import PEFT adapters.

    llmscratch lora merge  --run runs/sft-lora --out runs/sft-merged
    llmscratch lora export --run runs/sft-lora --out adapter/        # PEFT's format
    llmscratch lora import --base runs/qwen3 --adapter adapter/ --out runs/qwen3-adapted

A LoRA run's checkpoints hold only its adapters; its run.json names the base
run they apply to. `merge_run` folds them into the weights (W + (alpha/r) B A,
model/lora.py) and writes a run that stands alone. `export_adapter` writes
them for `peft.PeftModel.from_pretrained` on the base run's Hugging Face
export (`llmscratch convert to-hf`); `import_adapter` reads such an adapter
folder into a new run over a base run (runs/peft_adapters.py does the
translation between the two layouts).
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmscratch.errors import LLMScratchError
from llmscratch.io import check_output_folder
from llmscratch.model.lora import lora_layers, remove_lora
from llmscratch.runs.checkpoint import latest_checkpoint, save_weights
from llmscratch.runs.config import FinetuneConfig, RunConfig
from llmscratch.runs.load import load_model
from llmscratch.runs.peft_adapters import (
    export_peft_adapter,
    import_peft_adapter,
    is_adapter_folder,
)
from llmscratch.runs.run import BaseRun, Run, RunInfo


def merge_run(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Run:
    """A new run holding the fine-tuned run's full model, its adapters merged in."""
    run = Run.open(run_dir)
    Run.check_new(out_dir, overwrite, inputs=[run_dir])
    model = load_model(run)
    if not lora_layers(model):
        raise LLMScratchError(f"{run.path} has no LoRA adapters to merge (it was not trained "
                              "with finetune.trainable=lora)")
    remove_lora(model)
    info = run.read_info()
    merged = RunInfo(kind="merged", source=f"{run.path} with its adapters merged",
                     generation=info.generation, labels=info.labels)
    return Run.create(out_dir, RunConfig(model=model.config), merged, run.tokenizer(),
                      overwrite, fill=lambda new: save_weights(new, model), inputs=[run_dir])


def export_adapter(run_dir: str | Path, out: str | Path, base_model: str | None = None,
                   overwrite: bool = False) -> Path:
    """The run's adapters as a PEFT folder (adapter_config.json, adapter_model.safetensors)."""
    run = Run.open(run_dir)
    check_output_folder(out, overwrite, is_adapter_folder, "a PEFT adapter folder")
    model = load_model(run)
    if not lora_layers(model):
        raise LLMScratchError(f"{run.path} has no LoRA adapters to export (it was not trained "
                              "with finetune.trainable=lora)")
    if model.head is not None:
        raise LLMScratchError(f"{run.path} is a classifier: PEFT's adapter for a causal "
                              "language model has no place for its head; use `lora merge`")
    base = run.base_run()
    name = base_model or (str(base[0].path) if base else None)
    return export_peft_adapter(model, out, name, overwrite)


def import_adapter(base_dir: str | Path, adapter: str | Path, out_dir: str | Path,
                   overwrite: bool = False) -> Run:
    """A new fine-tuned run: the PEFT adapter in `adapter` over the base run's model.

    The run's layers share one scaling (alpha / rank, as `runs/load.py: adapt`
    rebuilds them); a layer imported with another scaling has the ratio folded
    into its B, which computes the same update.
    """
    base = Run.open(base_dir)
    out_dir = Path(out_dir)
    Run.check_new(out_dir, overwrite, inputs=[base_dir])
    model = load_model(base)
    layers = {name: lora_layers(model)[name] for name in import_peft_adapter(model, adapter)}
    first = next(iter(layers.values()))
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.mul_(layer.scaling / first.scaling)
            layer.alpha, layer.scaling = first.scaling * layer.rank, first.scaling
    finetune = FinetuneConfig(method="sft", data=f"(imported from {adapter})", trainable="lora",
                              lora_rank=first.rank, lora_alpha=first.alpha,
                              lora_targets=sorted(layers))
    config = RunConfig(model=model.config, finetune=finetune)
    about = RunInfo(kind="finetune", source=f"PEFT adapter {adapter}",
                    base=BaseRun.of(base, latest_checkpoint(base).name, out_dir),
                    generation=base.generation_settings(), labels=base.read_info().labels)
    return Run.create(out_dir, config, about, base.tokenizer(), overwrite,
                      fill=lambda new: save_weights(new, model, trainable_only=True),
                      inputs=[base_dir])
