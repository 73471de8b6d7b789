"""How well a run uses its hardware: model FLOPs utilisation (MFU) and memory.

MFU = achieved model FLOP/s / peak FLOP/s of the device (Chowdhery et al.,
2022, "PaLM", appendix B). Achieved FLOP/s is tokens/s times the training
FLOPs per token the model states (`GPT.flops_per_token`: 6 per weight plus
attention), so recomputation (activation checkpointing) does not count: MFU
measures useful work, and 40-55% is good for a GPT on modern GPUs.

The peak is a datasheet number for GPUs (dense bf16 tensor cores, no
sparsity). A CPU has no such number worth trusting: measure its matmul peak
(bench/train_speed.py prints it) and set `train.peak_flops`.
"""

from __future__ import annotations

import resource
import sys

import torch

# Dense bf16 FLOP/s per GPU from vendor datasheets; first substring match of the device name.
GPU_PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("H20", 148e12),
    ("B200", 2250e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("T4", 65e12),  # fp16
]


def peak_flops(device: torch.device, configured: float) -> float:
    """Peak FLOP/s of one device: the configured value, a known GPU's, or 0 (unknown)."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_BF16:
            if key in name:
                return flops
    return 0.0


def mfu(tokens_per_second: float, flops_per_token: float, peak: float) -> float | None:
    """Fraction of the peak the model's FLOPs reach; None when the peak is unknown."""
    if not peak or not flops_per_token:
        return None
    return tokens_per_second * flops_per_token / peak


def memory_gb(device: torch.device) -> float:
    """Peak memory so far, in GB: GPU memory allocated by tensors, or the process's RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / (1e9 if sys.platform == "darwin" else 1e6)
