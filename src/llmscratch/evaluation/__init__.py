"""Evaluation: loss, perplexity and bits per byte on held-out text (perplexity.py); a
classifier's accuracy, macro precision/recall/F1 and confusion matrix (classification.py);
exact match of greedy answers (exact_match.py); benchmark tasks: specs and the public
formats (tasks.py, task_formats.py, offline_tasks.py), multiple choice by log-likelihood
(multiple_choice.py), generation with answer extraction (generation_tasks.py), the
centred aggregate (aggregate.py); an LLM judge's client (judge.py); runs as an
lm-evaluation-harness model (lm_eval_adapter.py, needs the `eval` extra)."""

from llmscratch.evaluation.perplexity import EvalResult, evaluate_text, score_windows

__all__ = ["EvalResult", "evaluate_text", "score_windows"]
