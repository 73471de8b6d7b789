"""The processes a training recipe runs in: one, or one per device under torchrun.

    with processes(config) as (info, device):
        ...   # build, train, report: every process runs this

`processes` joins torchrun's process group when the command was launched by
it (training/parallel.py shards or replicates the model over the group),
and settles `train.dtype=auto` to what this hardware computes fastest
(training/precision.py). Every process must compute in the same dtype, so
bf16 is chosen only where all of them would choose it.

It also settles how many CPU threads PyTorch's operations use
(`train.threads`). On a CPU a large sum (a LayerNorm's weight gradient over
every token, a loss over a batch) is split between the threads and their
partial sums are added at the end, so 1 thread and 2 threads add the same
numbers in different orders and differ in the last bits (about 1e-7 a step
for the tests' tiny model, growing as training goes on). With the same count,
two runs on the same machine are bit-identical. The count is written into
the run's config.yaml like the dtype, so a resume uses the count the run
started with, whatever OMP_NUM_THREADS says when it resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from llmscratch.distributed import (
    DistInfo,
    all_reduce_mean,
    close_distributed,
    init_distributed,
    resolve_device,
)
from llmscratch.runs.config import RunConfig, TrainConfig
from llmscratch.training.precision import resolve_dtype


@contextlib.contextmanager
def processes(config: RunConfig) -> Iterator[tuple[DistInfo, torch.device]]:
    """Join torchrun's process group (if launched by it) for the length of a run."""
    info = init_distributed(resolve_device(config.train.device))
    threads = torch.get_num_threads()  # (given back at the end: tests run many runs)
    try:
        _settle_threads(config.train, info)
        device = resolve_device(config.train.device, info)
        if config.train.dtype == "auto":
            bf16 = float(resolve_dtype("auto", device) == "bf16")
            config.train.dtype = "bf16" if all_reduce_mean(bf16, info) == 1.0 else "fp32"
            if info.is_main:
                print(f"train.dtype=auto: computing in {config.train.dtype} on {device.type}")
        yield info, device
    finally:
        torch.set_num_threads(threads)
        close_distributed()


def _settle_threads(train: TrainConfig, info: DistInfo) -> None:
    """train.threads=0 becomes PyTorch's own count; any other count is applied."""
    default = torch.get_num_threads()
    if train.threads == 0:
        train.threads = default
    elif train.threads != default:
        torch.set_num_threads(train.threads)
        if info.is_main:
            print(f"train.threads={train.threads}: computing with {train.threads} CPU threads "
                  f"(the run's count; {default} by default here)")
