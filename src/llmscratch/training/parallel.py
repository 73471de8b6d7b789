"""Everything applied to a finished model to train it faster or on many devices.

The model (model/) is plain math. Here, from outside, a training run may add:

- activation checkpointing: each block keeps only its input in the forward
  pass and recomputes the rest during backward, trading about a third more
  compute for memory that no longer grows with depth (Chen et al., 2016,
  "Training Deep Nets with Sublinear Memory Cost");
- data parallelism under `torchrun`: every process holds the model and
  trains on its own slice of each global batch, and
  * DDP (`DistributedDataParallel`) averages gradients across processes
    during backward, so all copies take the same optimizer step;
  * FSDP2 (`torch.distributed.fsdp.fully_shard`) stores each parameter,
    gradient and optimizer state in 1/N slices, gathering a block's weights
    just before its forward and backward (Zhao et al., 2023, "PyTorch FSDP").
    Memory per device falls roughly N-fold; the result is the same as DDP;
- `torch.compile` of the forward (in place: parameter names do not change),
  for the training step only: validation and sampling run the plain forward
  (`eager_forward`).

The order matters and is fixed in `parallelize`: checkpointing wraps each
block's forward first, sharding then sees the blocks, compile comes last.

Which process this is, and the collectives, are in distributed.py.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from llmscratch.distributed import DistInfo
from llmscratch.errors import LLMScratchError
from llmscratch.runs.config import TrainConfig


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them.

    The block's `forward` is replaced on the instance, so the module tree and
    its parameter names stay as they are (checkpoints do not change).
    """
    for block in model.blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed


def apply_fsdp(model: nn.Module) -> None:
    """Shard every block, then the rest (embeddings, final norm, output layer).

    One `fully_shard` per block makes each block a unit gathered on its own,
    so only one block's full weights exist at a time (plus the one being
    prefetched); the last call covers the parameters left over.
    """
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)


def parallelize(model: nn.Module, cfg: TrainConfig, info: DistInfo, device: torch.device
                ) -> nn.Module:
    """The model as training runs it; checkpoint with `distributed.unwrap(result)`."""
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if info.distributed and cfg.parallel == "fsdp":
        apply_fsdp(model)
    elif info.distributed:
        ids = [device.index or 0] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        model.compile()
    return model


def eager_forward():
    """A context in which a compiled model runs its plain (eager) forward.

    A pretraining step's shapes never change, so its forward compiles once (fine-tuning's
    batches vary in length: compiled once more, for any length). Validation and sampling
    bring new shapes (a shorter last batch, a cache that grows by a token each step), and
    each would compile the forward again: seconds each on a CPU, minutes for a large model
    on a GPU, and after `torch._dynamo.config.recompile_limit` of them the
    training step too would run uncompiled. Where nothing is compiled, this changes nothing.
    """
    return torch.compiler.set_stance("force_eager")


def check_global_batch(cfg: TrainConfig, info: DistInfo) -> int:
    """Micro-batches per step for this world size; an error if the batch does not divide."""
    if not cfg.global_batch:
        return cfg.grad_accum
    per_step = cfg.batch_size * info.world_size
    if cfg.global_batch % per_step:
        raise LLMScratchError(
            f"train.global_batch={cfg.global_batch} is not a multiple of train.batch_size "
            f"({cfg.batch_size}) x processes ({info.world_size}) = {per_step}; change one of them"
        )
    return cfg.global_batch // per_step
