"""A run's newest model, ready for inference: what `generate`, `eval` and export read.

    model = load_model(run)                        # eval mode, on the CPU, in its own dtype
    reference = load_reference("runs/sft", policy, tokenizer)   # DPO, RL: frozen, fp32
    draft = load_draft("runs/small", tokenizer, device="cpu")   # speculative decoding
    model, tokenizer, settings = load_for_inference("runs/demo", device="cuda", dtype="bf16")

`dtype=None` keeps the checkpoint's dtype, but for one case: bf16 weights
bound for a CPU without fast bf16 matmuls (an AVX2-only x86, say) are
widened to fp32, exactly. There PyTorch multiplies bf16 matrices through a
slow fallback: on an AVX2-only EPYC, GPT-2 124M read a 128-token prompt in
1.39 s in bf16 against 0.22 s in fp32, and the engine wrote 8 answers at 30
tokens/s against 71. Decoding one sequence alone is the exception (26 ms a
token in bf16 against 40: a matrix-vector product only streams the weights,
and bf16 weights are half the bytes); `dtype="bf16"` keeps bf16 for it.

The weights come from the newest checkpoint, verified against its manifest,
and the architecture from the config that checkpoint was written with (so an
edited config.yaml cannot make the weights be read as another model). A run
whose checkpoints hold only what it trained (a fine-tuned head, LoRA
adapters) names a base run in run.json: the base model is loaded first and
the run's tensors replace those it holds.

DPO and RL may measure the policy against another run's model
(align.reference): `load_reference` loads it frozen, in fp32, once it has
checked that it reads the policy's tokens.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from llmscratch.distributed import cpu_bf16_is_fast
from llmscratch.errors import LLMScratchError
from llmscratch.model import GPT
from llmscratch.model.config import DTYPES, torch_dtype
from llmscratch.model.lora import add_lora_layer, lora_layers, remove_lora
from llmscratch.runs import sharded
from llmscratch.runs.checkpoint import (
    checkpoint_config,
    is_sharded_checkpoint,
    latest_checkpoint,
    load_weights,
    read_weights,
    verify_checkpoint,
)
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import MAX_BASE_DEPTH, GenerationSettings, Run
from llmscratch.tokenizer import Tokenizer


def load_model(run: Run, checkpoint: str | None = None, _depth: int = 0) -> GPT:
    """The model of `run`'s newest checkpoint (or the one named), on the CPU, in eval mode."""
    if _depth > MAX_BASE_DEPTH:
        raise LLMScratchError(f"{run.path}: base runs nest more than {MAX_BASE_DEPTH} deep "
                              "(a cycle in run.json?)")
    if checkpoint is None:
        ckpt = latest_checkpoint(run)
        manifest = verify_checkpoint(ckpt, run)
    else:
        ckpt = run.checkpoints_dir / checkpoint
        if not ckpt.is_dir():
            raise LLMScratchError(f"{run.path} has no checkpoint {checkpoint}")
        manifest = verify_checkpoint(ckpt, run)
    run_config = checkpoint_config(ckpt) or run.read_config()
    config = run_config.model
    base = run.base_run()
    if base is not None:
        model = load_model(*base, _depth=_depth + 1)
        tensors = None if is_sharded_checkpoint(manifest) else read_weights(ckpt)
        adapt(model, run_config, tensors or {})
        load_weights(model, ckpt, manifest, tensors)  # the run's own tensors over the base's
    elif is_sharded_checkpoint(manifest):
        model = GPT(config)
        sharded.load_model(model, ckpt / sharded.DCP_DIR)
    else:
        # Built on the meta device, the model adopts the tensors in their own dtype:
        # no random initialisation and no second copy (imported models can be large).
        model = GPT.from_state_dict(config, read_weights(ckpt))
    return model.eval()


def load_reference(path: str, policy: GPT, tokenizer: Tokenizer) -> GPT:
    """align.reference's model, frozen, after checking it reads the policy's tokens."""
    run = Run.open(path)
    theirs = run.tokenizer()
    if not theirs.reads_like(tokenizer):
        raise LLMScratchError(f"align.reference={path}: its tokenizer differs from the policy's "
                              f"({theirs.vocab_size:,} against {tokenizer.vocab_size:,} tokens); "
                              "the reference must read the same tokens")
    model = load_model(run).float()
    if model.config.vocab_size != policy.config.vocab_size:
        raise LLMScratchError(f"align.reference={path}: its vocabulary has "
                              f"{model.config.vocab_size:,} entries, the policy's "
                              f"{policy.config.vocab_size:,}")
    return model.requires_grad_(False)


def load_draft(path: str | Path, tokenizer: Tokenizer, device: str | torch.device = "cpu",
               dtype: str | None = None) -> GPT:
    """The model of the run at `path`, for speculative decoding (generation/speculative.py):
    ready for inference as `load_for_inference` makes it, once its tokenizer is checked
    (before any weights are read) to read the same tokens as `tokenizer`."""
    theirs = Run.open(path).tokenizer()
    if not theirs.reads_like(tokenizer):
        raise LLMScratchError(f"--speculative {path}: its tokenizer differs from the model's "
                              f"({theirs.vocab_size:,} against {tokenizer.vocab_size:,} tokens); "
                              "a draft model must read the same tokens")
    return load_for_inference(path, device, dtype)[0]


def adapt(model: GPT, config: RunConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Give a base run's model what a fine-tuned run adds to it: its head, its adapters.

    The head's size comes from the run's model config. The adapters' layers
    and ranks come from the checkpoint's tensors (`NAME.lora_A` is (rank, in)),
    all with the run's scaling, finetune.lora_alpha / finetune.lora_rank: an
    imported PEFT adapter may have another rank on some layers (runs/peft_adapters.py).
    """
    if config.model.head_outputs and model.head is None:
        model.add_head(config.model.head_outputs, config.model.head_pooling)
    scaling = config.finetune.lora_alpha / config.finetune.lora_rank
    for name, tensor in tensors.items():
        if name.endswith(".lora_A") and name[:-len(".lora_A")] not in lora_layers(model):
            rank = tensor.shape[0]
            add_lora_layer(model, name[:-len(".lora_A")], rank, alpha=scaling * rank)


def load_for_inference(path: str | Path, device: str | torch.device = "cpu",
                       dtype: str | None = None) -> tuple[GPT, Tokenizer, GenerationSettings]:
    """(model, tokenizer, generation settings) of the run at `path`.

    The model is in eval mode on `device`, its weights in `dtype` ("fp32",
    "bf16"; None keeps the checkpoint's, but on a slow-bf16 CPU: module docstring),
    LoRA adapters merged into them.
    """
    if dtype is not None and dtype not in DTYPES:
        raise LLMScratchError(f"unsupported dtype {dtype!r}; choose {' or '.join(DTYPES)}")
    run = Run.open(path)
    model = load_model(run)
    if lora_layers(model):  # fold the adapters into the weights: as fast as a full model
        remove_lora(model)
    if dtype is None and torch.device(device).type == "cpu" \
            and model.tok_emb.weight.dtype == torch.bfloat16 and not cpu_bf16_is_fast():
        dtype = "fp32"
    if dtype is not None:
        model = model.to(torch_dtype(dtype))
        model.config = replace(model.config, dtype=dtype)
    return model.to(device), run.tokenizer(), run.generation_settings()
