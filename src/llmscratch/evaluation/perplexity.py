"""Loss, perplexity and bits per byte of a model on a text.

Definition (so numbers compare with other tools):
- the text is encoded as-is, with no special tokens added;
- the ids are cut into consecutive, non-overlapping input windows of the
  model's context length (the last one may be shorter); each window's
  targets are its inputs shifted by one, so every token but the very first
  is predicted exactly once, from at most a context length of history;
- `loss` is the mean next-token cross-entropy, in nats, over every predicted
  token; `perplexity` = exp(loss);
- `bpb` (bits per byte) = total nats / ln 2 / UTF-8 bytes of the text.

Why bits per byte: loss per token depends on the tokenizer (a bigger
vocabulary makes fewer, harder tokens), so two models with different
tokenizers cannot be compared by loss. Bits per byte divides the same total
information by a number that no tokenizer changes: the bytes of the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmscratch.errors import LLMScratchError


@dataclass
class EvalResult:
    loss: float  # mean nats per predicted token
    perplexity: float
    bpb: float  # bits per UTF-8 byte of the text
    tokens: int  # tokens predicted
    bytes: int  # UTF-8 bytes of the text


@torch.no_grad()
def score_windows(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    window: int,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    max_windows: int | None = None,
) -> tuple[float, int]:
    """Total cross-entropy (nats) and number of predicted tokens over windows of `token_ids`.

    token_ids: (N,) int64. Input windows are consecutive and non-overlapping;
    the last, shorter one is scored on its own. `max_windows` scores only the
    first full windows (a quick estimate during training).
    """
    if batch_size < 1:
        raise LLMScratchError(f"the batch size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    n_full = (len(token_ids) - 1) // window if len(token_ids) > 1 else 0
    if max_windows is not None:
        n_full = min(n_full, max_windows)
    total_nats, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()

    def score(windows: torch.Tensor) -> None:  # windows: (B, W)
        nonlocal total_nats, total_tokens
        windows = windows.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            # Summed over the tokens, a chunk of rows at a time (no (B, W-1, V) logits).
            nats, count = model.next_token_loss(model(windows[:, :-1]), windows[:, 1:])
        total_nats += nats.item()
        total_tokens += int(count)

    # Each slice holds a window's inputs plus one more token, the last target; that
    # token is also the first input of the next window.
    starts = [i * window for i in range(n_full)]
    for b in range(0, len(starts), batch_size):
        score(torch.stack([token_ids[s : s + window + 1] for s in starts[b : b + batch_size]]))
    if max_windows is None:
        tail = token_ids[n_full * window :]
        if len(tail) > 1:
            score(tail.unsqueeze(0))
    model.train(was_training)
    return total_nats, total_tokens


def evaluate_text(
    model: torch.nn.Module,
    tokenizer,
    text: str,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Score `text` with the definition in the module docstring."""
    ids = torch.tensor(tokenizer.encode_batch([text])[0], dtype=torch.int64)
    if len(ids) < 2:
        raise LLMScratchError(f"the text is {len(ids)} token(s) long: at least 2 are needed to "
                              "predict one from another; give a longer text")
    nats, n_tokens = score_windows(model, ids, model.config.context_length, batch_size,
                                   autocast_dtype)
    n_bytes = len(text.encode("utf-8"))
    loss = nats / max(n_tokens, 1)
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bpb=nats / math.log(2) / n_bytes,
        tokens=n_tokens,
        bytes=n_bytes,
    )
