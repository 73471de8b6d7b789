"""The processes a training recipe runs in: one, or one per device under torchrun.

    with processes(config) as (info, device):
        ...   # build, train, report: every process runs this

`processes` joins torchrun's process group when the command was launched by
it (training/parallel.py shards or replicates the model over the group),
and settles `train.dtype=auto` to what this hardware computes fastest
(training/precision.py). Every process must compute in the same dtype, so
bf16 is chosen only where all of them would choose it.
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
from llmscratch.runs.config import RunConfig
from llmscratch.training.precision import resolve_dtype


@contextlib.contextmanager
def processes(config: RunConfig) -> Iterator[tuple[DistInfo, torch.device]]:
    """Join torchrun's process group (if launched by it) for the length of a run."""
    info = init_distributed(resolve_device(config.train.device))
    try:
        device = resolve_device(config.train.device, info)
        if config.train.dtype == "auto":
            bf16 = float(resolve_dtype("auto", device) == "bf16")
            config.train.dtype = "bf16" if all_reduce_mean(bf16, info) == 1.0 else "fp32"
            if info.is_main:
                print(f"train.dtype=auto: computing in {config.train.dtype} on {device.type}")
        yield info, device
    finally:
        close_distributed()
