"""Which precision a run computes in: `train.dtype` = "auto", "bf16" or "fp32".

With "bf16" the forward runs under `torch.autocast`: matmuls in bfloat16,
weights, gradients and optimizer state in fp32 (training/loop.py). That is
only worth it where bfloat16 matmuls are fast:

- CUDA GPUs from Ampere on (A100, H100, RTX 30xx/40xx) have bf16 tensor
  cores: bf16 is the right choice there;
- CPUs differ. Those with bf16 dot-product instructions (x86 AVX512_BF16 or
  AMX, Arm's BF16 extension) can multiply bf16 faster than fp32 (about 2.2x
  on the AVX512_BF16 EPYC of docs/benchmarks.md, "Machines"); on one without them,
  PyTorch falls back to a plain loop that can be a hundred times *slower*
  than fp32 (measured: 0.8 against 85 GFLOP/s on an AVX2-only
  2-core EPYC; docs/benchmarks.md, "Machines").

So "auto" asks the hardware: `torch.cuda.is_bf16_supported()` on a GPU,
and on a CPU a few milliseconds of timing the same matmul in both dtypes
(`cpu_bf16_speedup`, in distributed.py beside the other questions about the
device, since loading a model for inference asks it too: runs/load.py).
The choice is made once, when a run starts, and written into the run's
config.yaml, so a resumed run keeps the precision it started with.
"""

from __future__ import annotations

import torch

from llmscratch.distributed import CPU_BF16_MIN_SPEEDUP, cpu_bf16_speedup


def resolve_dtype(name: str, device: torch.device) -> str:
    """The concrete compute dtype ("bf16" or "fp32") that `train.dtype=name` means on `device`."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_speedup() >= CPU_BF16_MIN_SPEEDUP else "fp32"
    return "fp32"


def autocast_dtype(name: str) -> torch.dtype | None:
    """The dtype to autocast to for a resolved `train.dtype`, or None for plain fp32."""
    if name == "auto":
        raise ValueError("train.dtype 'auto' must be resolved (resolve_dtype) before training")
    return torch.bfloat16 if name == "bf16" else None
