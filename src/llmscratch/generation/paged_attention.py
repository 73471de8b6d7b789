"""Decode attention that reads the paged cache in place on the CPU: a small C++ kernel.

PyTorch ships no paged attention kernel for the CPU, so the engine's portable
path copies each decode step's keys and values out through the block tables
into one dense, padded buffer and runs PyTorch's attention over that
(paged_cache.py). On a throughput run that copy and the attention over it
took 60% of the time, reading the cache at a fraction of the machine's
bandwidth (docs/benchmarks.md, "Inference"). `paged_attention.cpp`, beside
this file, is the alternative: for each (sequence, key/value head) it walks
the sequence's blocks and reads every key and value once, where it lies,
with the G query heads of a group sharing each row read. It is about a
hundred lines, written to be read.

PyTorch builds it with the machine's C++ compiler the first time it is asked
for (`torch.utils.cpp_extension.load`: about 8 seconds on two cores) and
keeps the build in its extensions cache (~/.cache/torch_extensions, or
TORCH_EXTENSIONS_DIR), so later processes load it at once. Where there is no
compiler, or the build fails, `kernel_missing` says why and the engine reads
through the copy instead.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

SOURCE = Path(__file__).with_suffix(".cpp")
DTYPES = (torch.float32, torch.bfloat16)  # the kernel's: it computes in fp32 either way


@functools.cache
def kernel_missing() -> str | None:
    """Build (or load the cached build of) the kernel: None once `torch.ops.llmscratch
    .paged_decode` is there, else why it is not (one line)."""
    try:
        # -fopenmp: the kernel shares its work out with at::parallel_for, which is OpenMP
        # in PyTorch's CPU builds; without the flag it would run on one thread.
        load(name="llmscratch_paged_attention", sources=[str(SOURCE)],
             extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
             is_python_module=False, verbose=False)
    except Exception as error:  # no compiler, no ninja, a read-only cache: the copy serves
        lines = str(error).strip().splitlines() or [type(error).__name__]
        return f"the paged attention kernel did not build: {lines[-1]}"
    return None


class KernelDecode:
    """Decode attention for a StepBatch (paged_cache.py) through the C++ kernel.

    The same call as FlexDecode's: q (1, H, B, Dh), a layer's keys (Hkv, N, Dh) and
    values (Hkv, N, Dv) -> (1, H, B, Dv). The scale is the layer's own, read from
    its attention (`kernel.__self__`), as in the model's kernels.
    """

    def __call__(self, batch, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 kernel, window: int) -> torch.Tensor:
        queries = q[0].transpose(0, 1).to(keys.dtype).contiguous()  # (B, H, Dh)
        scale = kernel.__self__.scale
        out = torch.ops.llmscratch.paged_decode(
            queries, keys, values, batch.tables[batch.pool(window)], batch.lengths,
            batch.cache.block_size, window, scale)  # (B, H, Dv)
        return out.to(q.dtype).transpose(0, 1).unsqueeze(0)  # (1, H, B, Dv)
