"""Metrics: one JSON object per line in metrics.jsonl, and the plots drawn from it.

`loss.png` shows train and validation loss against tokens seen;
`training.png` shows what explains a loss curve: learning rate, gradient
norm, throughput and MFU against steps. `llmscratch plot RUN` redraws both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmscratch.training.checkpoint import atomic_write_text


class MetricsLog:
    """Append-only metrics.jsonl; each record is written with a single `write` call."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: ignore it
                continue
        return records

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps the checkpoint had not reached."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_losses(records: list[dict], path: Path, title: str = "") -> None:
    """Train and validation loss against tokens seen, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", linewidth=1.5, markersize=4)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def plot_training(records: list[dict], path: Path, title: str = "") -> None:
    """Learning rate, gradient norm, tokens/s and MFU against steps, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)"),
              ("tok_per_s", "tokens / s"), ("mfu", "model FLOPs utilisation")]
    panels = [(key, label) for key, label in panels if any(key in r for r in records)]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(7, 2.2 * max(len(panels), 1)),
                             dpi=110, sharex=True, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels, strict=False):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points, strict=True), linewidth=1.2)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title or "training")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
