"""Plots drawn from a run's metrics records (runs/metrics.py).

The loss plot shows train and validation loss against tokens seen; the
training plot shows what explains a loss curve: learning rate, gradient
norm, throughput and MFU against steps. `llmscratch plot RUN` redraws both.
Each is written to a temporary file and renamed into place.

Figures are made with `matplotlib.figure.Figure`, not pyplot: saving a PNG
needs no backend, and importing this module leaves the backend the user
chose alone (a notebook's inline figures keep working).
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from llmscratch.errors import LLMScratchError


def plot_losses(records: list[dict], path: Path, title: str = "") -> None:
    """Train and validation loss against tokens seen, saved as a PNG."""
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", linewidth=1.5, markersize=4)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path)


# What plot_training draws, where a run logged it: alignment's own metrics first.
TRAINING_PANELS = [("reward", "mean reward of sampled responses"),
                   ("val_reward", "held-out mean reward (greedy)"),
                   ("kl", "KL to the reference"), ("margin", "reward margin"),
                   ("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)"),
                   ("tok_per_s", "tokens / s"), ("mfu", "model FLOPs utilisation")]


def plot_training(records: list[dict], path: Path, title: str = "") -> None:
    """The TRAINING_PANELS a run logged (learning rate, gradient norm, tokens/s, MFU; an
    RL run's reward and KL, ...) against steps, one panel each."""
    plot_metrics(records, path, TRAINING_PANELS, title or "training")


def plot_metrics(records: list[dict], path: Path, panels: list[tuple[str, str]],
                 title: str) -> None:
    """Each (metric, label) of `panels` that `records` hold, against steps, one panel each."""
    panels = [(key, label) for key, label in panels if any(key in r for r in records)]
    fig = Figure(figsize=(7, 2.2 * max(len(panels), 1)), dpi=110)
    axes = fig.subplots(len(panels) or 1, 1, sharex=True, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels, strict=False):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points, strict=True), linewidth=1.2, marker="." if len(points) < 30
                else None)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title)
    save_png(fig, path)


def save_png(fig: Figure, path: Path) -> None:
    """Write a matplotlib figure to `path` through a temporary file, so a reader never
    sees half of it."""
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise LLMScratchError(f"cannot write {path}: {err.strerror}") from None
