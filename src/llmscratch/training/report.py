"""report.md and samples.md: what a run did, readable in any Markdown viewer."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmscratch.config import to_dict
from llmscratch.training.checkpoint import atomic_write_text


def write_samples(path: Path, step: int, samples: list[tuple[str, str]]) -> None:
    """Append this step's samples to samples.md (rewritten atomically)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Samples\n"
    parts = [old.rstrip("\n"), "", f"## Step {step}", ""]
    for prompt, completion in samples:
        parts += ["```text", (prompt + completion).rstrip("\n"), "```", ""]
    atomic_write_text(path, "\n".join(parts))


def write_report(run_dir: Path, config, result, n_params: int) -> None:
    """A short report: results table, loss plot, last samples, files, config."""
    final = result.final
    lines = [
        f"# Run report: {run_dir.name}",
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
        "![loss curve](loss.png)",
        "",
        "## Samples",
        "",
    ]
    for prompt, completion in result.samples:
        lines += ["```text", (prompt + completion).rstrip("\n"), "```", ""]
    lines += [
        "## Files",
        "",
        "- `config.yaml`: the resolved configuration "
        "(rerun it with `llmscratch pretrain --config`)",
        "- `tokenizer/tokenizer.json`: the BPE tokenizer",
        "- `checkpoints/latest` → `checkpoints/step-*/`: `model.safetensors` (weights), "
        "`optimizer.pt` (optimizer state), `state.json` (step, tokens, RNG states)",
        "- `metrics.jsonl`: one JSON object per logged step and per validation",
        "- `loss.png`, `samples.md`",
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(to_dict(config), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))
