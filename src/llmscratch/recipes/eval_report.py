"""Evaluation results as tables: one run's (in `llmscratch report` and report.md), or
several runs' side by side (`llmscratch eval compare`).

A task's headline is its accuracy (acc_norm for multiple choice, exact
match for generation) with its centred score, or bits per byte for a
perplexity task. A run that has no result for a task shows "-".
"""

from __future__ import annotations

from llmscratch.evaluation.aggregate import centred_mean, headline_accuracy
from llmscratch.io import atomic_write_text
from llmscratch.recipes.eval_tasks import read_results
from llmscratch.runs.run import Run

BEGIN, END = "<!-- llmscratch eval: begin -->", "<!-- llmscratch eval: end -->"


def headline(result: dict) -> str:
    """A task's result in a few characters: "0.3120 (+0.0827)" or "1.9377 bpb"."""
    metrics = result["metrics"]
    accuracy = headline_accuracy(metrics)
    if accuracy is not None:
        partial = "" if result.get("complete", True) else " (partial)"
        return f"{accuracy:.4f} ({result['centred']:+.4f}){partial}"
    if result["kind"] == "judge":
        mean = metrics["mean_score"]
        return f"{'-' if mean is None else f'{mean:.1f}'}/100 ({metrics['unscored']} unscored)"
    return f"{metrics['bpb']:.4f} bpb"


def eval_section(run: Run) -> str:
    """The run's task results as a Markdown section ("" when it has none)."""
    results = read_results(run)
    if not results:
        return ""
    lines = ["## Evaluation", "",
             "| task | kind | metric | value | centred | examples | shots |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["metrics"]
        if r["kind"] == "multiple_choice":
            shown = [("acc", m["acc"]), ("acc_norm", m["acc_norm"])]
        elif r["kind"] == "generation":
            shown = [("exact_match", m["exact_match"])]
        elif r["kind"] == "judge":
            shown = [("mean judge score (0-100)", m["mean_score"] or float("nan")),
                     ("unscored replies", m["unscored"])]
        else:
            shown = [("bpb", m["bpb"]), ("perplexity", m["perplexity"])]
        for k, (name, value) in enumerate(shown):
            centred = f"{r['centred']:+.4f}" if name in ("acc_norm", "exact_match") else ""
            lines.append(f"| {r['task'] if k == 0 else ''} | {r['kind'] if k == 0 else ''} | "
                         f"{name} | {value:.4f} | {centred} | {r['examples']:,} | "
                         f"{r['shots']} |")
        if r["kind"] == "generation" and m.get("unmatched"):
            lines.append(f"| | | extractor matched nothing | {m['unmatched']} | | | |")
    mean = centred_mean(results)
    if mean is not None:
        lines += ["", f"Centred mean over the tasks with an accuracy: **{mean:+.4f}** "
                  "(0 = guessing, 1 = perfect)."]
    return "\n".join(lines) + "\n"


def update_report(run: Run) -> None:
    """Put the evaluation section into the run's report.md (replacing an older one)."""
    section = f"{BEGIN}\n{eval_section(run)}{END}\n"
    path = run.report_path
    old = path.read_text(encoding="utf-8") if path.is_file() else f"# Run report: {run.path.name}\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + section + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, new)


def report_text(run: Run) -> str:
    """What `llmscratch report RUN` prints: report.md (with the evaluation section)."""
    if run.report_path.is_file():
        return run.report_path.read_text(encoding="utf-8")
    section = eval_section(run)
    return f"# Run report: {run.path.name}\n\n" + (section or "No report and no evaluation "
                                                   "results yet: `llmscratch eval tasks`.\n")


def compare_runs(paths: list[str]) -> dict:
    """{"runs": [...], "tasks": {task: [headline or None per run]}, "centred_mean": [...]}"""
    runs = [Run.open(p) for p in paths]  # every path checked before anything is read
    per_run = [{r["task"]: r for r in read_results(run)} for run in runs]
    tasks = sorted({task for results in per_run for task in results})
    return {
        "runs": [str(run.path) for run in runs],
        "tasks": {task: [headline(results[task]) if task in results else None
                         for results in per_run] for task in tasks},
        "centred_mean": [centred_mean(results.values()) for results in per_run],
    }


def compare_table(table: dict) -> str:
    """The comparison as a Markdown table."""
    if not table["tasks"]:
        return "no evaluation results in these runs yet: run `llmscratch eval tasks` first\n"
    lines = ["| task | " + " | ".join(table["runs"]) + " |",
             "|---|" + "---|" * len(table["runs"])]
    for task, cells in table["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(c or "-" for c in cells) + " |")
    means = [f"{m:+.4f}" if m is not None else "-" for m in table["centred_mean"]]
    lines.append("| **centred mean** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"
