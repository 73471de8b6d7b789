"""The optimizer (AdamW with decay/no-decay groups, or Muon) and the learning-rate schedules.

Two schedules, chosen by `train.schedule`: warm-up + cosine decay (GPT-3,
nanoGPT), and warm-up + stable + decay (WSD). Both start with the same
linear warm-up; `Schedule.lr_at` gives the rate of any step from the config
alone, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmscratch.model.attention import CausalSelfAttention
from llmscratch.runs.config import TrainConfig
from llmscratch.training.muon import Muon


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names: "adamw" or "muon" (training/muon.py).

    Each parameter group records its peak learning rate as "initial_lr";
    the loop multiplies it by the schedule's fraction (`Schedule.factor`), so
    Muon's matrices and AdamW's other weights follow one schedule, each
    from its own peak.
    """
    if cfg.optimizer == "muon":
        return build_muon(model, cfg)
    return build_adamw(model, cfg)


def is_matrix(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is a weight matrix (or a stack of them, one per expert) rather
    than a vector: biases stacked per expert (gpt-oss's, 2-D) are vectors too."""
    return param.dim() >= 2 and not name.endswith("bias")


def build_adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW where only matrices (Linear and token-embedding weights) are decayed.

    Weight decay pulls weights towards zero. That regularises the big
    matrices, but on biases and LayerNorm gains (vectors) it only fights the
    scale they are there to learn, so they get none (as in GPT-2 and nanoGPT).
    A tied embedding/output matrix is one parameter, decayed once.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # frozen: no
    decay = [p for n, p in named if is_matrix(n, p)]
    no_decay = [p for n, p in named if not is_matrix(n, p)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "initial_lr": cfg.lr},
        {"params": no_decay, "weight_decay": 0.0, "initial_lr": cfg.lr},
    ]
    # The fused kernel does the whole update in one pass over memory (CPU and CUDA).
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=True
    )


def build_muon(model: torch.nn.Module, cfg: TrainConfig) -> Muon:
    """Muon (lr `train.muon_lr`) for the blocks' weight matrices, AdamW for the rest.

    "The rest" is the token and position embeddings, the output layer (decayed
    like any matrix under AdamW), and the vectors (not decayed). Attention's
    fused q/k/v weight is orthogonalized as its three pieces. Newton-Schulz
    runs in bf16 when the run computes in bf16, else in fp32.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if p.dim() == 2 and is_matrix(n, p) and ".blocks." in f".{n}"]
    hidden_ids = {id(p) for p in hidden}
    others = [(n, p) for n, p in named if id(p) not in hidden_ids]
    # Attention's fused query/key/value weight is three matrices stacked by rows:
    # Muon orthogonalizes each piece on its own (its own group, with the heights).
    qkv_splits = {id(m.qkv.weight): m.split_sizes for m in model.modules()
                  if isinstance(m, CausalSelfAttention)}
    by_split: dict[tuple, list] = {}
    for p in hidden:
        by_split.setdefault(tuple(qkv_splits.get(id(p), ())), []).append(p)
    groups = [
        {"params": params, "muon": True, "lr": cfg.muon_lr, "initial_lr": cfg.muon_lr,
         "weight_decay": cfg.muon_weight_decay, "row_splits": list(split)}
        for split, params in by_split.items()
    ]
    groups += [
        {"params": [p for n, p in others if is_matrix(n, p)], "weight_decay": cfg.weight_decay,
         "initial_lr": cfg.lr},
        {"params": [p for n, p in others if not is_matrix(n, p)], "weight_decay": 0.0,
         "initial_lr": cfg.lr},
    ]
    ns_dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    return Muon(groups, lr=cfg.lr, momentum=cfg.muon_momentum, betas=(cfg.beta1, cfg.beta2),
                ns_dtype=ns_dtype)


@dataclass
class Schedule:
    """The learning rate of every step, as a fraction of each parameter group's peak.

    kind: "cosine" (warm-up, cosine decay) or "wsd" (warm-up, stable, decay).
    peak_lr: train.lr, the rate metrics report (each group scales its own peak).
    The run's length, max_steps, is an argument: a time budget may change it.
    """

    peak_lr: float
    warmup_steps: int = 50
    kind: str = "cosine"
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2

    @classmethod
    def from_train(cls, train: TrainConfig) -> Schedule:
        return cls(train.lr, train.warmup_steps, train.schedule, train.min_lr_ratio,
                   train.decay_fraction)

    def lr_at(self, step: int, max_steps: int) -> float:
        """The learning rate for optimizer step `step` (0-based) of a run of `max_steps`."""
        return self.peak_lr * self.factor(step, max_steps)

    def factor(self, step: int, max_steps: int) -> float:
        """The fraction of the peak learning rate at `step`."""
        if step < self.warmup_steps:
            # Linear warm-up from peak/warmup to the peak: Adam's early moment estimates
            # are noisy.
            return (step + 1) / self.warmup_steps
        if self.kind == "wsd":
            return self._warmup_stable_decay(step, max_steps)
        decay_steps = max(max_steps - self.warmup_steps - 1, 1)
        progress = min((step - self.warmup_steps) / decay_steps, 1.0)  # 0 -> 1
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def _warmup_stable_decay(self, step: int, max_steps: int) -> float:
        """Warm-up, then hold the peak, then fall linearly over the last `decay_fraction`.

        Cosine decay ties the whole schedule to `max_steps`. WSD holds the peak
        rate for most of the run and decays only at the end, so a run can be
        extended from any checkpoint of the stable phase, and the short final
        decay recovers the loss a cosine would reach (Hu et al., 2024, "MiniCPM";
        Hägele et al., 2024, "Scaling Laws and Compute-Optimal Training Beyond
        Fixed Training Durations").
        """
        decay_start = self.decay_start(max_steps)
        if step < decay_start:
            return 1.0
        progress = min((step - decay_start + 1) / max(max_steps - decay_start, 1), 1.0)  # -> 1
        return 1.0 + (self.min_lr_ratio - 1.0) * progress

    def decay_start(self, max_steps: int) -> int:
        """The first step of the WSD decay: until then, the rate does not depend on max_steps."""
        decay_steps = round(max_steps * self.decay_fraction)
        return max(max_steps - decay_steps, self.warmup_steps)
