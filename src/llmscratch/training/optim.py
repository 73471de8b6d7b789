"""AdamW with decay/no-decay parameter groups, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from llmscratch.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW where only matrices (Linear and token-embedding weights) are decayed.

    Weight decay pulls weights towards zero. That regularises the big
    matrices, but on biases and LayerNorm gains (vectors, ndim < 2) it only
    fights the scale they are there to learn, so they get none (as in GPT-2
    and nanoGPT). A tied embedding/output matrix is one parameter, decayed once.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel does the whole update in one pass over memory (CPU and CUDA).
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=True
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine decay.

    Warm-up rises linearly from lr/warmup to lr over `warmup_steps`; the
    cosine then falls from lr to lr * min_lr_ratio at the last step
    (Loshchilov & Hutter, 2017, "SGDR"), the schedule of GPT-3 and nanoGPT.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(cfg.max_steps - cfg.warmup_steps - 1, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)  # 0 -> 1
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + (cfg.lr - min_lr) * cosine
