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
- `torch.compile` of the forward (in place: parameter names do not change).

The order matters and is fixed in `parallelize`: checkpointing wraps each
block's forward first, sharding then sees the blocks, compile comes last.

`torchrun --nproc-per-node N` starts N processes and tells each its rank
and the world size through environment variables; `init_distributed` reads
them and joins the process group (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmscratch.config import TrainConfig
from llmscratch.errors import LLMScratchError


@dataclass
class DistInfo:
    """Where this process sits among the processes of a run (1 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, metrics and non-sharded files; the others stay quiet."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that torchrun set up (if any) and pick this rank's GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return info


def close_distributed() -> None:
    if dist.is_initialized():
        # Wait until every rank is done communicating: a rank tearing down gloo
        # while another still sends made the other abort at exit.
        dist.barrier()
        dist.destroy_process_group()


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
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)


def parallelize(model: nn.Module, cfg: TrainConfig, info: DistInfo, device: torch.device
                ) -> nn.Module:
    """The model as training runs it; checkpoint with `unwrap(result)`."""
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if info.distributed and cfg.parallel == "fsdp":
        apply_fsdp(model)
    elif info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index or 0] if device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        model.compile()
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, without a DDP wrapper (FSDP2 and compile work in place)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """True when parameters are FSDP2 shards (DTensors), which need sharded checkpoints."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in unwrap(model).parameters())


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """The mean of a number over all processes (the number itself with one process)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)  # gloo and NCCL both sum; CPU tensors need gloo, which torchrun offers
    return float(t) / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


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
