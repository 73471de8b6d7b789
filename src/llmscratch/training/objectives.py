"""Training objectives: what the one training loop minimises.

The loop (training/loop.py) knows nothing about language modelling. It asks
an objective for the loss of a batch and back-propagates it. Pretraining is
one objective; supervised fine-tuning, classification, preference (DPO) and
reinforcement-learning objectives plug into the same loop.

The interface is one call:

    loss, metrics = objective(model, batch)

- `batch` is whatever the objective's data source yields (moved to the
  device by the objective);
- `loss` is a scalar tensor, the mean over the batch's units (tokens here);
- `metrics` is a dict of floats to log; "tokens" counts the tokens the batch
  trained on (used for tokens/s and the x-axis of the loss curve).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Objective(Protocol):
    def __call__(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict]: ...


class NextTokenPrediction:
    """Pretraining: mean cross-entropy of every next token in a batch of windows."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(
        self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, dict]:
        inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)  # (B, T) each
        # The model computes the loss itself, with its output layer, a chunk at a time
        # (model/fused_loss.py): the (B, T, V) logits are never all held at once.
        loss = model(inputs, targets=targets)  # scalar: mean over the B x T tokens
        return loss, {"tokens": targets.numel()}
