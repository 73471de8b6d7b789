"""report.md and samples.md: what a run did, readable in any Markdown viewer.

A report's counted lines are English sentences, whatever the count
(`counted`, `overlong_sentence`): "1 pair was skipped", "6 pairs were
skipped", "No text was longer than 1,024 tokens".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from llmscratch.config import to_dict
from llmscratch.io import atomic_write_text
from llmscratch.runs.run import Run


def plural(count: int, noun: str) -> str:
    """"1 step", "804 steps", "1,100 pairs" (`noun` takes an -s in the plural)."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def counted(count: int, noun: str, predicate: str) -> str:
    """A count as a sentence: counted(6, "pair", "skipped") is "6 pairs were skipped.";
    with a count of 1, "1 pair was skipped."; of 0, "No pair was skipped."."""
    if count == 0:
        return f"No {noun} was {predicate}."
    return f"{plural(count, noun)} {_was(count)} {predicate}."


def overlong_sentence(noun: str, limit: int, from_max_len: bool, truncated: int,
                      skipped: int) -> str:
    """report.md's line on the examples longer than the limit (finetune.max_len or the
    context length), e.g. "9,977 texts were longer than 1,024 tokens (the model's context
    length): 9,977 were truncated to fit." """
    where = "finetune.max_len" if from_max_len else "the model's context length"
    longer = f"longer than {limit:,} tokens ({where})"
    over = truncated + skipped
    if not over:
        return counted(0, noun, longer)
    fates = " and ".join(f"{n:,} {_was(n)} {fate}" for n, fate in
                         ((truncated, "truncated to fit"), (skipped, "skipped")) if n)
    return f"{counted(over, noun, longer)[:-1]}: {fates}."


def _was(count: int) -> str:
    return "was" if count == 1 else "were"


def score_table(columns: list[str], before: dict, after: dict,
                cells: Callable[[dict], list[str]]) -> list[str]:
    """report.md's table of held-out scores: a row for each stage scored (`cells` formats
    its scores), or a sentence when none was (finetune.eval_examples=0)."""
    stages = [(name, s) for name, s in (("before training", before),
                                        ("after training", after)) if s]
    if not stages:
        return ["Nothing held out was scored (finetune.eval_examples=0)."]
    return ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns),
            *("| " + " | ".join([name, *cells(s)]) + " |" for name, s in stages)]


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
