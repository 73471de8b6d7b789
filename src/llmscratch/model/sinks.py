"""Attention sinks (gpt-oss): a learned logit per head that joins the softmax, with no value.

Legend: B batch, H query heads, T queries, S keys.

A softmax always hands out a total weight of 1, so a head that has nothing
useful to read must still read something; trained models learn to park
that weight on the first token, which then acts as a "sink" (Xiao et al.,
2023, "Efficient Streaming Language Models with Attention Sinks"). gpt-oss
gives each head h a learned logit s_h that sits in the denominator instead:

    weight_ij = exp(score_ij) / (exp(s_h) + sum_k exp(score_ik))

The weights now sum to less than 1; what is missing went to the sink, which
has no value, so a head can attend to nothing at all. Computed as one more
column of the scores, softmaxed with them and then dropped:

    scores (B, H, T, S) | s_h (B, H, T, 1)  -> softmax over S + 1 -> drop the last

The fused kernel: PyTorch's `scaled_dot_product_attention` has no place for
a logit that is not a query-key product, and never returns the softmax's
denominator (which would let us rescale its output by
sum / (sum + exp(s_h)) afterwards), so a layer with sinks always takes the
explicit path (attention.py). Transformers does the same: its gpt-oss model
does not offer SDPA.
"""

from __future__ import annotations

import torch


def softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Attention weights (B, H, T, S) from masked scores (B, H, T, S) and one sink logit
    per head (H,); each row sums to 1 minus the sink's share."""
    B, H, T, _ = scores.shape
    sink_column = sinks.to(scores.dtype).view(1, H, 1, 1).expand(B, H, T, 1)  # (B, H, T, 1)
    weights = torch.softmax(torch.cat([scores, sink_column], dim=-1), dim=-1)  # (B, H, T, S + 1)
    return weights[..., :-1]  # (B, H, T, S): the sink's share goes nowhere
