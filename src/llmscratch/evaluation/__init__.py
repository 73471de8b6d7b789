"""Evaluation: loss, perplexity and bits per byte on held-out text (perplexity.py); a
classifier's accuracy, macro precision/recall/F1 and confusion matrix (classification.py);
exact match of greedy answers (exact_match.py)."""

from llmscratch.evaluation.perplexity import EvalResult, evaluate_text, score_windows

__all__ = ["EvalResult", "evaluate_text", "score_windows"]
