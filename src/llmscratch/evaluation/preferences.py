"""Scores of preference pairs: does a model rank the chosen response above the rejected one?

Two kinds of model are scored the same way, by a number a response:

- a reward model (recipes/reward.py): its head's score of prompt + response;
- a language model (DPO, recipes/dpo.py): log p(response | prompt), the sum
  of its tokens' log-probabilities (`response_log_probs`); against a
  reference model's, beta * (log p - log p_ref) is DPO's implicit reward.

`pair_scores` turns the two responses' numbers into the pair accuracy (the
share of pairs whose chosen response scores higher; chance is 50%) and the
mean margin (chosen minus rejected).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmscratch.data.examples import Example
from llmscratch.evaluation.classification import in_batches
from llmscratch.training.objectives import sequence_log_probs


def response_log_probs(model: torch.nn.Module, examples: Sequence[Example], batch_size: int = 16,
                       autocast_dtype: torch.dtype | None = None, mean: bool = False
                       ) -> torch.Tensor:
    """log p(targets) of each example, summed over its target tokens (or their mean). (N,)"""
    return in_batches(model, examples, lambda batch: sequence_log_probs(model, batch, mean),
                      batch_size, autocast_dtype)


def pair_scores(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """{"pair_accuracy", "margin", "pairs"} from the chosen and rejected responses' scores."""
    margin = chosen - rejected  # (P,)
    pairs = len(margin)
    return {"pair_accuracy": float((margin > 0).float().mean()) if pairs else 0.0,
            "margin": float(margin.mean()) if pairs else 0.0, "pairs": pairs}
