"""CPU training at memory speed: keep freed memory for the next step instead of returning it.

A training step allocates and frees the same large buffers every time
(activations, a chunk of logits, gradients). glibc's malloc serves a block
over its mmap threshold (128 kB at first, adapting up to 32 MB) with a fresh
mapping from the kernel and unmaps it when it is freed, so every step touches
every page of those buffers anew, and the kernel zero-fills each 4 kB page on
its first touch. On this project's 2-core machines, turning a 1,024 x 50,257
bf16 logit chunk into fp32 took 56 ms in a fresh buffer and 8 ms in a reused
one; a GPT-2 124M fine-tuning step took 3.5 s, and 2.5 s once freed memory
stayed in the heap (docs/benchmarks.md, "Fine-tuning").

`keep_freed_memory()` raises malloc's mmap and trim thresholds (`mallopt`),
as the `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` environment
variables would if set before the process started: blocks up to 2 GB come
from the heap, and freed ones stay there for the next step. The process's
peak memory is unchanged; it keeps it until it ends instead of handing it
back between steps. The training loop calls it when it trains on the CPU;
where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
LARGEST = 2**31 - 1  # bytes: the largest value these parameters take


def keep_freed_memory() -> bool:
    """Keep blocks under 2 GB in the heap, freed ones included; True if glibc took it."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGEST)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, LARGEST))
