"""report.md and samples.md: what a run did, readable in any Markdown viewer."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmscratch.config import to_dict
from llmscratch.io import atomic_write_text
from llmscratch.runs.run import Run


def write_samples(path: Path, step: int, samples: list[tuple[str, str]]) -> None:
    """Append this step's samples to samples.md (rewritten atomically)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Samples\n"
    parts = [old.rstrip("\n"), "", f"## Step {step}", ""]
    for prompt, completion in samples:
        parts += ["```text", (prompt + completion).rstrip("\n"), "```", ""]
    atomic_write_text(path, "\n".join(parts))


def write_report(run: Run, config, result, n_params: int) -> None:
    """A short report: results table, loss plot, last samples, files, config."""
    final = result.final

    def rel(path: Path) -> str:
        return path.relative_to(run.path).as_posix()

    lines = [
        f"# Run report: {run.path.name}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| parameters | {n_params / 1e6:.2f} M |",
        f"| validation loss (nats/token) | {final.loss:.4f} |",
        f"| validation perplexity | {final.perplexity:.2f} |",
        f"| **validation bits per byte** | **{final.bpb:.4f}** |",
        f"| validation tokens / bytes | {final.tokens:,} / {final.bytes:,} |",
        f"| training time | {result.train_seconds:.0f} s |",
        f"| training throughput | {result.tokens_per_second:,.0f} tokens/s |",
        f"| steps, optimizer, precision | {result.steps:,}, {config.train.optimizer}, "
        f"{config.train.dtype} |",
        "",
        "## Loss",
        "",
        f"![loss curve]({rel(run.loss_plot_path)})",
        "",
        "## Samples",
        "",
    ]
    for prompt, completion in result.samples:
        lines += ["```text", (prompt + completion).rstrip("\n"), "```", ""]
    lines += [
        "## Files",
        "",
        f"- `{rel(run.config_path)}`: the resolved configuration "
        "(rerun it with `llmscratch pretrain --config`)",
        f"- `{rel(run.tokenizer_dir)}/`: the BPE tokenizer",
        f"- `{rel(run.latest_path)}` names the newest checkpoint in "
        f"`{rel(run.checkpoints_dir)}/`: weights, optimizer state, step, tokens and RNG "
        "states, with a manifest of their hashes (`llmscratch checkpoint verify`)",
        f"- `{rel(run.metrics.path)}`: one JSON object per logged step and per validation",
        f"- `{rel(run.loss_plot_path)}`, `{rel(run.training_plot_path)}`, "
        f"`{rel(run.samples_path)}`",
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(to_dict(config), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    atomic_write_text(run.report_path, "\n".join(lines))
