"""How well a run uses its hardware: model FLOPs utilisation (MFU) and memory.

MFU = achieved model FLOP/s / peak FLOP/s of the device (Chowdhery et al.,
2022, "PaLM", appendix B). Achieved FLOP/s is tokens/s times the training
FLOPs per token the model states (`GPT.flops_per_token`: 6 per weight plus
attention), so recomputation (activation checkpointing) does not count: MFU
measures useful work, and 40-55% is good for a GPT on modern GPUs.

The peak is a datasheet number for GPUs (dense bf16 tensor cores, no
sparsity). A CPU has no such number worth trusting: measure its matmul peak
(bench/train_speed.py prints it) and set `train.peak_flops`.

Before a run starts, `seconds_per_step` times a few steps of a model on
random tokens: the demo uses it to choose a model that fits its time budget
(recipes/demo.py).
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import sys
import time

import torch

from llmscratch.model import GPT, ModelConfig
from llmscratch.runs.config import TrainConfig
from llmscratch.training.optim import build_optimizer
from llmscratch.training.precision import autocast_dtype, resolve_dtype

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


def seconds_per_step(model_config: ModelConfig, train: TrainConfig, device: torch.device,
                     steps: int = 6, warmup: int = 3) -> float:
    """Median seconds of one training step of a new `model_config` model on this device.

    A step as the loop takes it with `train`'s optimizer, batch and precision
    (forward, backward, optimizer step; one micro-batch of `train.batch_size`,
    no clipping) on random tokens. The first `warmup` steps are not timed: they
    allocate memory and pick kernels, and a process's first seconds are often
    slow (one untimed step and a median of four measured 0.30 s where the
    same model's steps took 0.15 to 0.17 s). The model is thrown away afterwards.
    """
    dtype = resolve_dtype(train.dtype, device)
    train = dataclasses.replace(train, dtype=dtype)  # the optimizer reads the precision
    model = GPT(model_config).to(device)
    optimizer = build_optimizer(model, train)
    amp = autocast_dtype(dtype)
    seq_len = train.seq_len or model_config.context_length
    tokens = torch.randint(0, model_config.vocab_size, (train.batch_size, seq_len + 1),
                           device=device)  # (B, T + 1)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
    times = []
    for _ in range(warmup + steps):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss_sum, _ = model.next_token_loss(model(inputs), targets)
        loss_sum.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])
