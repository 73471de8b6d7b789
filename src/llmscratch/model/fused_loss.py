"""The output layer and the cross-entropy loss, computed together a chunk of rows at a time.

The plain way to get a language model's training loss is

    logits = hidden @ weight.T                    # (N, V)
    loss = F.cross_entropy(logits.float(), targets)

It keeps the whole (N, V) logit matrix, and an fp32 copy of it, alive from
the forward pass to the backward pass, and walks over it several times:
cast, log-softmax, its saved output, the gradient of the log-softmax, the
cast back. With N = 16 x 256 tokens and V = 4,096 that is 67 MB in fp32 per
copy, far more than a CPU's caches hold, so those walks run at memory speed.

The gradient of the mean cross-entropy with respect to the logits is known in
closed form: (softmax(logits) - one_hot(target)) / N. So the forward pass can
finish the job for a chunk of rows at once: logits of the chunk, their
softmax (and from it the loss), the softmax minus the one-hot (the gradient), and the
two matmuls that carry that gradient to `hidden` and to `weight`. Only the
two gradients, of the size of `hidden` and of `weight`, are kept for the
backward pass, which just scales them by the incoming gradient (1 for a loss).
At most ROWS_PER_CHUNK rows of logits exist at any time, and each is walked
over fewer times. Measured on this project's 2-core CPU (docs/benchmarks.md,
"Output layer and loss"): forward and backward of the output layer and loss
under bf16 autocast took 82 ms instead of 181 ms for 4,096 tokens at
vocabulary 4,096, and 727 ms instead of 993 ms for 1,024 tokens at GPT-2's
50,257.
This is the idea of Liger Kernel's fused linear cross-entropy (Hsu et al.,
2024) and Apple's Cut Cross-Entropy (Wijmans et al., 2024), in plain PyTorch.

Under autocast the matmuls run in the autocast dtype (bf16), the softmax in
fp32, as in the plain path; tests/test_model.py checks that both give the same
loss and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this value are not predicted (as in F.cross_entropy)
# Rows per chunk. Each chunk adds its (V, D) share of the weight gradient, a
# matmul whose inner size is the number of rows: with too few rows that matmul
# and the addition run at memory speed. At GPT-2's vocabulary (50,257) chunks
# of 20 rows made a 124M training step 2.6x slower than the plain loss; 1,024
# rows beat it (docs/benchmarks.md, "Output layer and loss").
ROWS_PER_CHUNK = 1024


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                         targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, without all the logits.

    hidden: (N, D) final hidden states; weight: (V, D) output layer; targets:
    (N,) int64, IGNORE_INDEX where nothing is predicted. Same value and
    gradients as `F.cross_entropy((hidden @ weight.T).float(), targets)`.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets)
    with torch.no_grad():
        return _chunked(hidden, weight, targets, with_grads=False)[0]


def _compute_dtype(device: torch.device, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype the matmuls run in: autocast's where it is on, else the weight's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return param_dtype


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
             with_grads: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Loss, and (with_grads) its gradients for hidden and weight, chunk by chunk."""
    dtype = _compute_dtype(hidden.device, weight.dtype)
    h_all, w = hidden.to(dtype), weight.to(dtype)  # (N, D), (V, D)
    valid = targets != IGNORE_INDEX  # (N,)
    count = valid.sum().clamp(min=1)  # predicted tokens: the mean's denominator
    safe_targets = targets.masked_fill(~valid, 0)  # any real index; masked out below
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if with_grads else None
    rows = ROWS_PER_CHUNK
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here
        for start in range(0, hidden.size(0), rows):
            chunk = slice(start, start + rows)
            h, t, keep = h_all[chunk], safe_targets[chunk], valid[chunk]  # (n, D), (n,), (n,)
            # The softmax in fp32, in place in one (n, V) buffer: shift each row by its
            # maximum (so exp cannot overflow), exponentiate, and sum.
            logits = (h @ w.T).float()  # (n, V)
            target_logit = logits.gather(1, t[:, None]).squeeze(1)  # (n,)
            row_max = logits.amax(dim=-1)  # (n,)
            exps = logits.sub_(row_max[:, None]).exp_()  # (n, V), exp(logit - row_max)
            row_sum = exps.sum(dim=-1)  # (n,)
            # -log softmax at the target = log(sum of exps) + row_max - target logit
            total += ((row_sum.log() + row_max - target_logit) * keep).sum()
            if not with_grads:
                continue
            # d(loss)/d(logits) = (softmax - one_hot(target)) / count, zero for ignored rows.
            row_scale = keep / count  # (n,)
            grad = exps.mul_((row_scale / row_sum)[:, None])  # softmax * row_scale
            grad[torch.arange(len(t), device=t.device), t] -= row_scale
            grad = grad.to(dtype)  # (n, V)
            grad_hidden[chunk] = (grad @ w).to(hidden.dtype)  # (n, D)
            if grad.dtype == grad_weight.dtype:  # fp32: add the product without a temporary
                grad_weight.addmm_(grad.T, h)  # (V, D)
            else:  # bf16 product, added in place into the fp32 sum
                grad_weight += grad.T @ h  # (V, D)
    return total / count, grad_hidden, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd wrapper: the gradients are computed in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        loss, grad_hidden, grad_weight = _chunked(hidden, weight, targets, with_grads=True)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Scaled in place: each is used once. (A second backward through the same
        # graph is refused by autograd, which sees that they were modified.)
        return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), None


def plain_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
    """The same loss the readable way, with the whole (N, V) logit matrix (for tests)."""
    return F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=IGNORE_INDEX)
