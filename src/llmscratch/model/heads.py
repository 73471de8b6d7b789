"""Heads: what turns the final hidden states (B, T, D) into what a task needs.

Legend: B batch, T tokens, D width, V vocabulary, N = B T rows, n rows of one
chunk, C outputs of a sequence head.

    next-token loss      sum of -log p(target) over predicted tokens, and their count
    token log-probs      log p(target) of each token, (B, T): DPO, RL, evaluation
    SequenceHead         one vector per sequence -> C numbers: class logits, a reward

The first two read the language-model output layer (V x D) and never build
the (N, V) logit matrix. The plain way,

    logits = hidden @ weight.T                    # (N, V)
    loss = F.cross_entropy(logits.float(), targets)

keeps the whole logit matrix, and an fp32 copy of it, alive from the forward
pass to the backward pass, and walks over it several times. With N = 16 x 256
tokens and V = 4,096 that is 67 MB in fp32 per copy, far more than a CPU's
caches hold, so those walks run at memory speed. Here the rows go through a
chunk at a time (ROWS_PER_CHUNK): at most one chunk of logits exists.

Next-token loss. The gradient of a sum of cross-entropies with respect to the
logits is known in closed form, softmax(logits) - one_hot(target) per row, so
the forward pass finishes the job chunk by chunk: logits, their softmax (and
from it the loss), the gradient, and the two matmuls that carry it to
`hidden` and to `weight`. Only those two gradients are kept for the backward
pass, which scales them by the incoming gradient. Measured on this project's
2-core CPU (docs/benchmarks.md, "Output layer and loss"): forward and backward
of the output layer and loss under bf16 autocast took 82 ms instead of 181 ms
for 4,096 tokens at vocabulary 4,096, and 727 ms instead of 993 ms for 1,024
tokens at GPT-2's 50,257. This is the idea of Liger Kernel's fused linear
cross-entropy (Hsu et al., 2024) and Apple's Cut Cross-Entropy (Wijmans et
al., 2024), in plain PyTorch.

Token log-probs. Here whatever comes after (a DPO margin, an RL advantage)
decides each row's gradient, which is unknown during the forward pass. So
the forward pass keeps, per row, only the log-sum-exp of its logits, and the
backward pass computes each chunk's logits again: one more matmul, no (N, V).

Under autocast the matmuls run in the autocast dtype (bf16) and the softmax
in fp32, as in the plain path; tests/test_model.py checks both against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # targets with this value are not predicted (as in F.cross_entropy)
# Rows per chunk. Each chunk adds its (V, D) share of the weight gradient, a
# matmul whose inner size is the number of rows: with too few rows that matmul
# and the addition run at memory speed. At GPT-2's vocabulary (50,257) chunks
# of 20 rows made a 124M training step 2.6x slower than the plain loss; 1,024
# rows beat it (docs/benchmarks.md, "Output layer and loss").
ROWS_PER_CHUNK = 1024
# A large vocabulary gets fewer rows, so that a chunk's fp32 logits stay under this many
# bytes (Qwen3's 151,936 tokens: 441 rows), and the weight gradient is added a slice of
# the vocabulary at a time, so that no (V, D) temporary is made.
LOGIT_BYTES_PER_CHUNK = 256 * 2**20
VOCAB_ROWS_PER_SLICE = 8192


def _compute_dtype(device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype the matmuls run in: autocast's where it is on, else the weight's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype


def _chunk_logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """fp32 logits of one chunk of rows: (n, D) @ (D, V) -> (n, V)."""
    return (h @ w.T).float()


# --- next-token loss: gradients computed in the forward pass -------------------------


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `targets`, without all the logits.

    hidden: (N, D) final hidden states; weight: (V, D) output layer; targets:
    (N,) int64, IGNORE_INDEX where nothing is predicted. reduction "sum" (what
    the training loop wants: it divides once, after accumulation) or "mean"
    over predicted tokens. Same value and gradients as
    `F.cross_entropy((hidden @ weight.T).float(), targets, reduction=...)`.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, reduction == "mean")
    with torch.no_grad():
        return _cross_entropy_chunks(hidden, weight, targets, reduction == "mean")[0]


def _cross_entropy_chunks(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          mean: bool, hidden_grad: bool = False, weight_grad: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Loss, and the gradients asked for (hidden's, weight's), chunk by chunk.

    A frozen output layer (LoRA, a frozen embedding it is tied to) asks for no
    weight gradient: that skips a (V, D) product per chunk and a (V, D) fp32 buffer.
    """
    dtype = _compute_dtype(hidden.device, weight.dtype)
    h_all, w = hidden.to(dtype), weight.to(dtype)  # (N, D), (V, D)
    valid = targets != IGNORE_INDEX  # (N,)
    # Each predicted row's share of the loss: 1 for a sum, 1/count for a mean.
    row_weight = valid.float() / valid.sum().clamp(min=1) if mean else valid.float()  # (N,)
    safe_targets = targets.masked_fill(~valid, 0)  # any real index; weighted 0 below
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if hidden_grad else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight_grad else None
    most = min(ROWS_PER_CHUNK, max(128, LOGIT_BYTES_PER_CHUNK // (4 * weight.size(0))))
    chunks = max(1, -(-hidden.size(0) // most))
    rows = max(1, -(-hidden.size(0) // chunks))  # chunks of equal size, each <= most rows
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here
        for start in range(0, hidden.size(0), rows):
            chunk = slice(start, start + rows)
            h, t, scale = h_all[chunk], safe_targets[chunk], row_weight[chunk]  # (n, D), (n,) x2
            # The softmax in fp32, in place in one (n, V) buffer: shift each row by its
            # maximum (so exp cannot overflow), exponentiate, and sum.
            logits = _chunk_logits(h, w)  # (n, V)
            target_logit = logits.gather(1, t[:, None]).squeeze(1)  # (n,)
            row_max = logits.amax(dim=-1)  # (n,)
            exps = logits.sub_(row_max[:, None]).exp_()  # (n, V), exp(logit - row_max)
            row_sum = exps.sum(dim=-1)  # (n,)
            # -log softmax at the target = log(sum of exps) + row_max - target logit
            total += ((row_sum.log() + row_max - target_logit) * scale).sum()
            if not (hidden_grad or weight_grad):
                continue
            # d(loss)/d(logits) = (softmax - one_hot(target)) * the row's weight.
            grad = exps.mul_((scale / row_sum)[:, None])  # softmax * weight, (n, V)
            grad[torch.arange(len(t), device=t.device), t] -= scale
            grad = grad.to(dtype)  # (n, V)
            del logits, exps  # the fp32 buffer (unless grad is it): freed before two matmuls
            if hidden_grad:
                grad_hidden[chunk] = (grad @ w).to(hidden.dtype)  # (n, D)
            if not weight_grad:
                continue
            if grad.dtype == grad_weight.dtype:  # fp32: add the product without a temporary
                grad_weight.addmm_(grad.T, h)  # (V, D)
                continue
            for v in range(0, len(w), VOCAB_ROWS_PER_SLICE):  # bf16 products, added into fp32
                rows_v = slice(v, v + VOCAB_ROWS_PER_SLICE)
                grad_weight[rows_v] += grad[:, rows_v].T @ h  # (k, D)
    return total, grad_hidden, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd wrapper: the gradients are computed in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, mean):
        loss, grad_hidden, grad_weight = _cross_entropy_chunks(
            hidden, weight, targets, mean, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Scaled in place: each is used once. (A second backward through the same
        # graph is refused by autograd, which sees that they were modified.)
        return (None if grad_hidden is None else grad_hidden.mul_(grad_loss),
                None if grad_weight is None else grad_weight.mul_(grad_loss), None, None)


def layer_cross_entropy(hidden: torch.Tensor, layer: nn.Module,
                        targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `layer(hidden)` against `targets`, a chunk of rows at a time,
    without gradients: for an output layer whose weight is not a tensor to read (one packed
    or quantized for inference, generation/). hidden: (N, D); targets: (N,) -> scalar fp32."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    rows = max(1, LOGIT_BYTES_PER_CHUNK // (4 * layer.out_features))
    with torch.no_grad():
        for start in range(0, hidden.size(0), rows):
            logits = layer(hidden[start:start + rows]).float()  # (n, V)
            total += F.cross_entropy(logits, targets[start:start + rows],
                                     ignore_index=IGNORE_INDEX, reduction="sum")
    return total


def plain_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """The same loss the readable way, with the whole (N, V) logit matrix (for tests)."""
    return F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=IGNORE_INDEX,
                           reduction=reduction)


# --- token log-probabilities: logits computed again in the backward pass ------------


def linear_log_probs(hidden: torch.Tensor, weight: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
    """log softmax(hidden @ weight.T) at each row's target, a chunk of rows at a time.

    hidden: (N, D); weight: (V, D); targets: (N,) int64 (IGNORE_INDEX rows give
    0 and no gradient). Returns (N,) fp32. Same value and gradients as
    `torch.log_softmax((hidden @ weight.T).float(), -1).gather(1, targets[:, None])`.
    """
    return _LinearLogProbs.apply(hidden, weight, targets)


class _LinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets):
        dtype = _compute_dtype(hidden.device, weight.dtype)
        h_all, w = hidden.to(dtype), weight.to(dtype)  # (N, D), (V, D)
        valid = targets != IGNORE_INDEX  # (N,)
        safe_targets = targets.masked_fill(~valid, 0)
        log_probs = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
        log_sum_exp = torch.empty_like(log_probs)  # (N,): all the backward pass needs per row
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.size(0), ROWS_PER_CHUNK):
                chunk = slice(start, start + ROWS_PER_CHUNK)
                logits = _chunk_logits(h_all[chunk], w)  # (n, V)
                log_sum_exp[chunk] = logits.logsumexp(dim=-1)  # (n,)
                target_logit = logits.gather(1, safe_targets[chunk, None]).squeeze(1)  # (n,)
                log_probs[chunk] = target_logit - log_sum_exp[chunk]
        log_probs = log_probs.masked_fill(~valid, 0.0)
        ctx.save_for_backward(hidden, weight, safe_targets, valid, log_sum_exp)
        ctx.compute_dtype = dtype  # autocast is not on during backward: remember its dtype
        return log_probs

    @staticmethod
    def backward(ctx, grad_log_probs):
        hidden, weight, targets, valid, log_sum_exp = ctx.saved_tensors
        h_all, w = hidden.to(ctx.compute_dtype), weight.to(ctx.compute_dtype)
        row_grad = grad_log_probs.float() * valid  # (N,): d(result)/d(log p) of each row
        grad_hidden = torch.empty_like(hidden)
        # A frozen output layer (LoRA, the last blocks) needs no weight gradient: it would
        # cost as much as the rest of this backward.
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) \
            if ctx.needs_input_grad[1] else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.size(0), ROWS_PER_CHUNK):
                chunk = slice(start, start + ROWS_PER_CHUNK)
                h, t, g = h_all[chunk], targets[chunk], row_grad[chunk]  # (n, D), (n,), (n,)
                # d log p(t) / d logits = one_hot(t) - softmax(logits)
                probs = _chunk_logits(h, w).sub_(log_sum_exp[chunk, None]).exp_()  # (n, V)
                grad = probs.mul_(-g[:, None])  # -softmax * g
                grad[torch.arange(len(t), device=t.device), t] += g
                grad = grad.to(ctx.compute_dtype)  # (n, V)
                grad_hidden[chunk] = (grad @ w).to(hidden.dtype)  # (n, D)
                if grad_weight is not None:
                    grad_weight += (grad.T @ h).float()  # (V, D)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None)


# --- sequence heads: one vector per sequence, then a linear layer --------------------


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                pooling: str = "last") -> torch.Tensor:
    """One vector per sequence: the last real token's hidden state, or the real tokens' mean.

    hidden: (B, T, D); attention_mask: (B, T), 1 for real tokens and 0 for
    padding (left or right), or None when every token is real. Returns (B, D).
    With causal attention only the last token has seen the whole sequence,
    which is why "last" is the usual choice (GPT-style classifiers, reward
    models); "mean" averages what every position saw.
    """
    B, T, _ = hidden.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.int64, device=hidden.device)
    real = attention_mask.bool()  # (B, T)
    if pooling == "mean":
        weights = real.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)
    if pooling != "last":
        raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    positions = torch.arange(T, device=hidden.device).expand(B, T)  # (B, T)
    last_real = positions.masked_fill(~real, -1).amax(dim=1).clamp(min=0)  # (B,)
    return hidden[torch.arange(B, device=hidden.device), last_real]  # (B, D)


class SequenceHead(nn.Module):
    """A linear layer on one pooled vector per sequence: C class logits, or a scalar (C = 1).

    Classification (fine-tuning) and reward models (alignment) put this on
    top of the hidden states in place of the language-model output layer.
    """

    def __init__(self, width: int, n_outputs: int, pooling: str = "last") -> None:
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.score = nn.Linear(width, n_outputs, bias=False)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)

    def forward(self, hidden: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: (B, T, D); attention_mask: (B, T) or None. Returns (B, C)."""
        pooled = pool_hidden(hidden, attention_mask, self.pooling)  # (B, D)
        return self.score(pooled.to(self.score.weight.dtype))  # (B, C)
