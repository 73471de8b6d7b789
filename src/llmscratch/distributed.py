"""Where this process sits among a run's processes, its device, and the collectives we use.

`torchrun --nproc-per-node N` starts N processes and tells each its rank and
the world size through environment variables; `init_distributed` reads them
and joins the process group (NCCL on GPUs, gloo on CPUs). Without torchrun
a process is rank 0 of 1 and every collective here returns its input.

`cpu_bf16_speedup` asks the device one more question: whether this CPU
multiplies bf16 faster than fp32 (training/precision.py explains why it
matters). Checkpoints (runs/) and the training loop (training/) both need
these, so they live below both. How a model is *wrapped* for many processes (DDP,
FSDP2) is training's business: training/parallel.py.
"""

from __future__ import annotations

import datetime
import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

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


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """The device `name` ("auto": a CUDA GPU if there is one, else "cpu"; "cpu"; "cuda")
    means for this process: under torchrun, its own GPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise LLMScratchError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise LLMScratchError("device cuda was asked for, but no CUDA GPU is visible; use cpu")
    if name == "cuda" and info is not None:
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


# bf16 must beat fp32 by this much on a CPU to be chosen: it also costs accuracy.
CPU_BF16_MIN_SPEEDUP = 1.2


def _best_matmul_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    a @ b  # the first call may pick kernels and allocate
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return min(times)


@functools.cache
def cpu_bf16_speedup() -> float:
    """How many times faster a (256 x 512) @ (512 x 256) matmul runs in bf16 than in fp32 here."""
    a, b = torch.randn(256, 512), torch.randn(512, 256)
    fp32 = _best_matmul_seconds(a, b)
    bf16 = _best_matmul_seconds(a.bfloat16(), b.bfloat16())
    return fp32 / max(bf16, 1e-9)


def cpu_bf16_is_fast() -> bool:
    """Whether bf16 is worth computing in on this CPU (`train.dtype=auto` picks it then)."""
    return cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP


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


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Each number summed over all processes, in one collective (the numbers themselves
    with one process). fp64, so counts of tokens stay exact."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t)  # CPU tensors need gloo, which torchrun offers next to NCCL
    return t.tolist()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """The mean of a number over all processes."""
    return all_reduce_sum([value], info)[0] / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    """`obj` from every rank, in rank order ([] with one process)."""
    if not info.distributed:
        return []
    objects = [None] * info.world_size
    dist.all_gather_object(objects, obj)
    return objects


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, without a DDP wrapper (FSDP2 and compile work in place)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """True when parameters are FSDP2 shards (DTensors), which need sharded checkpoints."""
    return any(isinstance(p, DTensor) for p in unwrap(model).parameters())
