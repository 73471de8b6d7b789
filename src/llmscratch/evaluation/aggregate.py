"""One number for many tasks: accuracies centred on guessing, then averaged.

Accuracies of different tasks do not average well: 0.25 is chance on a
4-choice task and a fine score on a generation task. nanochat's CORE metric
(after the DCLM paper, Li et al., 2024) first rescales each task's accuracy
so that random guessing is 0 and a perfect score is 1,

    centred = (accuracy - baseline) / (1 - baseline)

where `baseline` is the accuracy of guessing: the mean of 1 / (number of
choices) over a multiple-choice task's examples, 0 for exact match. A model
below chance gets a negative score. The aggregate is the plain mean of the
centred scores of the tasks that have an accuracy (perplexity tasks have
none and are left out). Multiple-choice tasks use acc_norm, as CORE does
for most of its tasks.
"""

from __future__ import annotations

from collections.abc import Iterable


def centred(accuracy: float, baseline: float) -> float:
    """Accuracy rescaled so that guessing is 0 and perfect is 1."""
    if baseline >= 1:
        return 0.0
    return (accuracy - baseline) / (1 - baseline)


def headline_accuracy(metrics: dict) -> float | None:
    """The accuracy a task is centred by: acc_norm, else exact_match, else None."""
    for name in ("acc_norm", "exact_match"):
        if metrics.get(name) is not None:
            return float(metrics[name])
    return None


def centred_mean(results: Iterable[dict]) -> float | None:
    """The mean centred score of task results (dicts with metrics and random_baseline)."""
    scores = []
    for result in results:
        accuracy = headline_accuracy(result.get("metrics", {}))
        if accuracy is not None:
            scores.append(centred(accuracy, float(result.get("random_baseline") or 0.0)))
    return sum(scores) / len(scores) if scores else None
