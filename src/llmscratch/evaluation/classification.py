"""Scoring a classifier: accuracy, macro precision / recall / F1, the confusion matrix.

For C classes and N held-out examples with true labels y and predictions p:

    accuracy     = (number of i with p_i = y_i) / N
    precision_c  = true positives of c / examples predicted c      (0 if none)
    recall_c     = true positives of c / examples whose label is c  (0 if none)
    F1_c         = 2 precision_c recall_c / (precision_c + recall_c)
    macro P/R/F1 = the plain mean over classes, so each class counts the same
                   however rare it is (scikit-learn's average="macro")
    confusion[y][p] = how many examples of class y were predicted p

`predict` runs the model's sequence head over examples in padded batches,
the same way training reads them (data/examples.py), and returns each
example's class probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from llmscratch.data.examples import Batch, Example, collate
from llmscratch.distributed import unwrap
from llmscratch.model import GPT
from llmscratch.training.plots import save_png


@dataclass
class ClassificationReport:
    """Held-out scores of a classifier (see the module docstring)."""

    accuracy: float
    precision: float  # macro
    recall: float  # macro
    f1: float  # macro
    confusion: list[list[int]]  # [true class][predicted class]
    label_names: list[str]
    examples: int


@torch.no_grad()
def predict(model: GPT | torch.nn.Module, examples: Sequence[Example], batch_size: int = 16,
            autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Class probabilities (N, C) of each example under the model's head."""
    return torch.softmax(head_outputs(model, examples, batch_size, autocast_dtype), dim=-1)


@torch.no_grad()
def head_outputs(model: GPT | torch.nn.Module, examples: Sequence[Example], batch_size: int = 16,
                 autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The head's outputs (N, C) for each example: class logits, or a reward model's scores.

    `model` may be wrapped for training (DDP, FSDP2): its forward is called
    through the wrapper, its head on the model inside.
    """
    def head(batch: Batch) -> torch.Tensor:
        hidden = model(batch.input_ids, attention_mask=batch.model_mask)  # (B, T, D)
        return unwrap(model).head(hidden, batch.attention_mask)  # (B, C)

    return in_batches(model, examples, head, batch_size, autocast_dtype)  # (N, C)


@torch.no_grad()
def in_batches(model: torch.nn.Module, examples: Sequence[Example],
               compute: Callable[[Batch], torch.Tensor], batch_size: int = 16,
               autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`compute` on padded batches of the examples, in eval mode and no grad; rows joined."""
    device = unwrap(model).tok_emb.weight.device
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(examples), batch_size):
        batch = collate([[e] for e in examples[start:start + batch_size]]).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            outputs.append(compute(batch).float().cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def score(labels: Sequence[int], predictions: Sequence[int],
          label_names: Sequence[str]) -> ClassificationReport:
    """Accuracy, macro precision / recall / F1 and the confusion matrix (module docstring)."""
    C = len(label_names)
    confusion = [[0] * C for _ in range(C)]
    for y, p in zip(labels, predictions, strict=True):
        confusion[y][p] += 1
    precisions, recalls, f1s = [], [], []
    for c in range(C):
        hits = confusion[c][c]
        predicted = sum(confusion[y][c] for y in range(C))
        actual = sum(confusion[c])
        precision = hits / predicted if predicted else 0.0
        recall = hits / actual if actual else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    n = len(labels)
    return ClassificationReport(
        accuracy=sum(confusion[c][c] for c in range(C)) / n if n else 0.0,
        precision=sum(precisions) / C, recall=sum(recalls) / C, f1=sum(f1s) / C,
        confusion=confusion, label_names=list(label_names), examples=n)


def plot_confusion(report: ClassificationReport, path, title: str = "") -> None:
    """The confusion matrix as a PNG: rows are true classes, columns predictions."""
    C = len(report.label_names)
    fig = Figure(figsize=(1.2 * C + 2.5, 1.0 * C + 2), dpi=110)
    ax = fig.subplots()
    ax.imshow(report.confusion, cmap="Blues")
    most = max(max(row) for row in report.confusion) or 1
    for y in range(C):
        for p in range(C):
            value = report.confusion[y][p]
            ax.text(p, y, str(value), ha="center", va="center",
                    color="white" if value > most / 2 else "black")
    ax.set_xticks(range(C), report.label_names, rotation=30, ha="right")
    ax.set_yticks(range(C), report.label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {report.accuracy:.1%} ({report.examples} examples)")
    save_png(fig, path)
