"""Muon: momentum, then orthogonalize the update of each hidden weight matrix.

AdamW scales every weight's step by its own gradient history. Muon (Jordan
et al., 2024, "Muon: An optimizer for hidden layers in neural networks";
Bernstein & Newhouse, 2024, "Old optimizer, new norm") treats a weight
matrix as a whole: it takes the momentum of the gradient, G (out x in), and
replaces it by the nearest semi-orthogonal matrix, U V^T from G's singular
value decomposition U S V^T. Every direction the gradient points in then
moves by the same amount, instead of the few largest ones taking over the
step. On small GPTs this reaches a given loss in markedly fewer tokens
than AdamW (docs/benchmarks.md, "Demo quality", measures it here).

An SVD per step is slow; a Newton-Schulz iteration gets close enough in five
matrix polynomials: with X normalised so that its singular values are at
most 1, each step X <- a X + b (X X^T) X + c (X X^T)^2 X pushes every
singular value towards 1 (the quintic's coefficients are tuned to do that
fast, not exactly: values that are not tiny end between about 0.7 and 1.2,
tests/test_muon.py checks it; Jordan et al. report that this trains as well
as exact orthogonalization).

Muon is for the matrices inside the transformer blocks. The token embedding
(a lookup, not a matmul on a dense input), the output layer, and vectors
(biases, norm gains) are trained by AdamW, as in the papers above: this
optimizer holds both kinds of parameter groups, `"muon": True` or not.
"""

from __future__ import annotations

import math

import torch

# Quintic Newton-Schulz coefficients from Jordan et al. (2024).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalize(update: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of `update`.

    update: (rows, cols), or a batch (n, rows, cols) of matrices of one shape,
    each orthogonalized on its own. Returns the same shape, in `dtype` (bf16 is
    accurate enough and twice as fast where the hardware has it).
    """
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)  # (1, rows, cols): one code path for one matrix and for many
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT  # iterate on the (small x large) side: X X^T is then the smaller square
    # Frobenius norm >= largest singular value, so every singular value starts <= 1.
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)  # (n, small, large)
    for _ in range(NS_STEPS):
        # x <- a x + (b G + c G^2) x, with G = x x^T. Written with baddbmm
        # (beta * input + alpha * m1 @ m2, per matrix of the batch): the scaling
        # and the sum happen inside the matmul, not as separate passes.
        gram = x @ x.mT  # (n, small, small)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a x + poly x
    if not wide:
        x = x.mT
    return x[0] if single else x


class Muon(torch.optim.Optimizer):
    """Muon for groups marked `"muon": True`, AdamW for the others.

    Muon groups: lr, momentum (Nesterov), weight_decay (decoupled). AdamW groups:
    lr, betas, eps, weight_decay (decoupled, as torch.optim.AdamW).
    `ns_dtype` is the dtype of the Newton-Schulz iteration.
    """

    def __init__(self, param_groups: list[dict], lr: float = 0.02, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, ns_dtype: torch.dtype = torch.float32) -> None:
        defaults = dict(lr=lr, momentum=momentum, betas=betas, eps=eps,
                        weight_decay=weight_decay, muon=False)
        super().__init__(param_groups, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups may only hold 2-D weight matrices")

    @torch.no_grad()
    def step(self, closure=None):
        pending = []  # (matrix, its Nesterov momentum, lr) of every Muon matrix
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["muon"]:
                    pending += self._muon_momentum(p, group)
                else:
                    self._adamw_update(p, group)
        self._orthogonalized_steps(pending)

    def _muon_momentum(self, p: torch.Tensor, group: dict) -> list[tuple]:
        """Update p's momentum and decay p; return its pieces with their step directions."""
        state = self.state[p]
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(p)
        momentum, beta = state["momentum"], group["momentum"]
        momentum.lerp_(p.grad, 1 - beta)  # m = beta m + (1 - beta) g
        nesterov = p.grad.lerp(momentum, beta)  # look ahead: (1 - beta) g + beta m
        p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled decay, as AdamW's
        # A matrix that is several matrices stacked by rows (attention's fused
        # query/key/value projection) is orthogonalized piece by piece, as if the
        # pieces were separate layers. group["row_splits"]: the pieces' heights.
        splits = group.get("row_splits") or [p.size(0)]
        return [(piece, direction, group["lr"])  # pieces are views: updating them updates p
                for piece, direction in zip(p.split(splits), nesterov.split(splits), strict=True)]

    def _orthogonalized_steps(self, pending: list[tuple]) -> None:
        """Step every matrix along its orthogonalized direction, same shapes as one batch.

        A small model has dozens of small matrices; Newton-Schulz on each alone
        spends much of its time starting matmuls. Matrices of one shape (a tall
        one counted as its transpose) go through it together, as a batch: 17
        instead of 39 ms a step for the demo model in bf16 (docs/benchmarks.md, "Demo quality").
        """
        by_shape: dict[tuple[int, int], list[tuple]] = {}
        for piece, direction, lr in pending:
            wide_direction = direction.T if _is_tall(piece) else direction  # (small, large)
            by_shape.setdefault(tuple(wide_direction.shape), []).append(
                (piece, wide_direction, lr))
        for batch in by_shape.values():
            updates = orthogonalize(torch.stack([d for _, d, _ in batch]), self.ns_dtype)
            for (piece, _, lr), update in zip(batch, updates, strict=True):
                update = (update.T if _is_tall(piece) else update).to(piece.dtype)  # (out, in)
                # A semi-orthogonal (out x in) matrix has entries of RMS 1/sqrt(max(out, in));
                # scaling tall matrices by sqrt(out / in) gives every layer a comparable step.
                scale = math.sqrt(max(1.0, piece.size(0) / piece.size(1)))
                piece.add_(update, alpha=-lr * scale)

    def _adamw_update(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = float(state["step"])
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(p.grad, 1 - beta1)  # first moment
        exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)  # second moment
        p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled weight decay
        denom = (exp_avg_sq / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(exp_avg, denom, value=-group["lr"] / (1 - beta1**t))


def _is_tall(matrix: torch.Tensor) -> bool:
    """More rows than columns: Newton-Schulz then runs on the transpose."""
    return matrix.size(0) > matrix.size(1)
