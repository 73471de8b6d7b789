"""Evaluation: loss, perplexity and bits per byte on held-out text."""

from llmscratch.evaluation.perplexity import EvalResult, evaluate_text, score_windows

__all__ = ["EvalResult", "evaluate_text", "score_windows"]
