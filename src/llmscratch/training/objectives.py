"""Training objectives: what the one training loop minimises.

The loop (training/loop.py) knows nothing about language modelling. It asks
an objective for the loss of a batch and back-propagates it. Pretraining is
one objective; supervised fine-tuning, classification, preference (DPO) and
reinforcement-learning objectives plug into the same loop.

The interface is one call:

    out = objective(model, batch)      -> ObjectiveOutput

- `model` is the model as training runs it (possibly wrapped by DDP or
  FSDP2: call it for the hidden states, `unwrap(model)` for its heads);
- `batch` is whatever the objective's data source yields (moved to the
  device by the objective);
- `out.loss_sum` is the *sum* of the per-unit losses and `out.units` how many
  units there were: tokens for language modelling, sequences for a
  classifier, pairs for DPO. The loop adds both over gradient-accumulation
  micro-batches and over processes and divides once, so every unit weighs
  the same however the batch was split. (Averaging per-micro-batch means
  instead would give a short, heavily masked sequence the weight of a long
  one.)
- `out.metrics` are other numbers worth logging, each as (sum, count): the
  loop adds both the same way and writes their ratio to metrics.jsonl;
- `out.tokens` counts the tokens the model read (tokens/s, and the x-axis of
  the loss curve).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from llmscratch.data.examples import Batch
from llmscratch.distributed import unwrap


@dataclass
class ObjectiveOutput:
    """What an objective returns for one micro-batch (see the module docstring)."""

    loss_sum: torch.Tensor  # scalar: the sum of the per-unit losses, with gradients
    units: int  # how many units the sum covers
    tokens: int = 0  # tokens the model read
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, count)


class Objective(Protocol):
    def __call__(self, model: torch.nn.Module, batch: Any) -> ObjectiveOutput: ...


class NextTokenPrediction:
    """Language modelling: the cross-entropy of every next token that has a target.

    Pretraining gives (inputs, targets) windows of text. Instruction tuning
    gives a `Batch` (data/examples.py): padded or packed rows whose attention
    mask keeps the examples apart, and whose targets are -100 wherever
    nothing is learned (the prompt, the padding). Units are the predicted
    tokens, so every answer token weighs the same however long its example.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, model: torch.nn.Module,
                 batch: tuple[torch.Tensor, torch.Tensor] | Batch) -> ObjectiveOutput:
        if isinstance(batch, Batch):
            batch = batch.to(self.device)
            inputs, targets, mask = batch.input_ids, batch.targets, batch.model_mask
        else:
            inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)  # (B, T)
            mask = None
        hidden = model(inputs, attention_mask=mask)  # (B, T, D): through DDP/FSDP's hooks
        # The output layer and the loss a chunk of rows at a time (model/heads.py):
        # the (B, T, V) logits are never all held at once.
        loss_sum, predicted = unwrap(model).next_token_loss(hidden, targets)
        return ObjectiveOutput(loss_sum, int(predicted), tokens=inputs.numel())


class SequenceClassification:
    """A classifier: the cross-entropy of each sequence's label under the model's head.

    The head (model.head, heads.SequenceHead) reads the last real token of
    each row (or the mean of its tokens) and gives one logit per class.
    Units are sequences; accuracy is logged beside the loss.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, model: torch.nn.Module, batch: Batch) -> ObjectiveOutput:
        batch = batch.to(self.device)
        mask = batch.attention_mask
        hidden = model(batch.input_ids, attention_mask=batch.model_mask)  # (B, T, D)
        logits = unwrap(model).head(hidden, mask).float()  # (B, C)
        loss_sum = F.cross_entropy(logits, batch.labels, reduction="sum")
        correct = float((logits.argmax(-1) == batch.labels).sum())
        n = len(batch.labels)
        return ObjectiveOutput(loss_sum, n, tokens=int(mask.count_nonzero()),
                               metrics={"accuracy": (correct, n)})
