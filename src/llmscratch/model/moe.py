"""Mixture of Experts: a router sends each token to K of E SwiGLU experts (Qwen3-MoE, gpt-oss).

Legend: B batch, T tokens, N = B T tokens in a flat list, D width, F expert
hidden width, E experts, K active experts per token.

    x (N, D) -> router -> softmax over E -> top K experts and weights   (N, K)
             -> each chosen expert's SwiGLU on the token                (N, K, D)
             -> weighted sum of the K outputs                           (N, D)

The model holds E experts' parameters but each token pays for only K of
them: many parameters, few FLOPs (Shazeer et al., 2017; Fedus et al., 2022,
"Switch Transformers"). Qwen3-MoE routes with a softmax over all E experts,
keeps the top K probabilities and, optionally, rescales them to sum to 1.
gpt-oss takes the top K logits and softmaxes only those: the same weights,
since exp(l_i) / sum_top exp(l_j) is p_i / sum_top p_j (so `moe_renormalize`
on). Its router and experts have biases (`bias`), and its experts use a
clamped SwiGLU (`swiglu_limit`, `expert_activation` below).

Compute is batched by expert, not by token: the N K (token, expert)
assignments are sorted by expert, so each expert's tokens form one slice and
one matmul; a loop visits the E experts (not the N tokens), and the outputs
are added back to their tokens with one `index_add_`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.config import ModelConfig


class MoE(nn.Module):
    """A router and E SwiGLU experts whose weights (and biases) are stacked along dim 0."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        E, D, hidden = config.n_expert, config.n_embd, config.mlp_dim
        self.n_expert = E
        self.top_k = config.n_expert_active
        self.renormalize = config.moe_renormalize
        self.swiglu_limit, self.swiglu_alpha = config.swiglu_limit, config.swiglu_alpha
        self.router = nn.Linear(D, E, bias=config.bias)
        # Expert e is SwiGLU(x) = (silu(x gate[e]^T) * (x up[e]^T)) proj[e]^T.
        self.gate = nn.Parameter(torch.empty(E, hidden, D))  # (E, F, D)
        self.up = nn.Parameter(torch.empty(E, hidden, D))  # (E, F, D)
        self.proj = nn.Parameter(torch.empty(E, D, hidden))  # (E, D, F)
        # gpt-oss: each expert's three projections have biases.
        self.gate_bias = self.up_bias = self.proj_bias = None
        if config.bias:
            self.gate_bias = nn.Parameter(torch.zeros(E, hidden))  # (E, F)
            self.up_bias = nn.Parameter(torch.zeros(E, hidden))  # (E, F)
            self.proj_bias = nn.Parameter(torch.zeros(E, D))  # (E, D)

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's K experts and their weights: (N, K) weights, (N, K) expert ids."""
        router_logits = self.router(tokens)  # (N, E)
        probs = torch.softmax(router_logits.float(), dim=-1)  # (N, E), in fp32
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)  # (N, K), (N, K)
        if self.renormalize:
            top_probs = top_probs / top_probs.sum(dim=-1, keepdim=True)  # rows sum to 1
        return top_probs.to(tokens.dtype), top_experts

    def expert_activation(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """SwiGLU: silu(gate) * up; or, with `swiglu_limit` L > 0, gpt-oss's clamped one:

            g = min(gate, L),  u = clamp(up, -L, L),  out = (u + 1) * g sigmoid(alpha g)

        The clamps keep rare huge activations from blowing up (in low precision);
        g sigmoid(1.702 g) is the sigmoid approximation of GELU; the + 1 lets
        an expert pass the gate through when up is 0. gate, up: (n, F) -> (n, F).
        """
        if not self.swiglu_limit:
            return F.silu(gate) * up
        gate = gate.clamp(max=self.swiglu_limit)  # (n, F)
        up = up.clamp(-self.swiglu_limit, self.swiglu_limit)  # (n, F)
        return (up + 1) * gate * torch.sigmoid(self.swiglu_alpha * gate)  # (n, F)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on its tokens x (n, D): (n, D)."""
        gate, up = x @ self.gate[e].T, x @ self.up[e].T  # (n, F) each
        if self.gate_bias is not None:
            gate, up = gate + self.gate_bias[e], up + self.up_bias[e]
        out = self.expert_activation(gate, up) @ self.proj[e].T  # (n, D)
        return out + self.proj_bias[e] if self.proj_bias is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape  # (B, T, D)
        tokens = x.reshape(B * T, D)  # (N, D)
        weights, experts = self.route(tokens)  # (N, K), (N, K)

        # Sort the N K assignments by expert: expert e's tokens become one contiguous slice.
        assigned_expert = experts.flatten()  # (N K,)
        order = assigned_expert.argsort(stable=True)  # (N K,)
        token_of = order // self.top_k  # (N K,): the token of each sorted assignment
        per_expert = torch.bincount(assigned_expert, minlength=self.n_expert).tolist()  # E counts
        expert_inputs = tokens[token_of]  # (N K, D), grouped by expert

        outputs = []
        for e, chunk in enumerate(expert_inputs.split(per_expert)):  # chunk: (n_e, D)
            if chunk.numel() == 0:
                continue  # no token chose this expert
            outputs.append(self.expert(e, chunk))  # (n_e, D)
        expert_outputs = torch.cat(outputs)  # (N K, D), in the sorted order
        expert_outputs = expert_outputs * weights.flatten()[order].unsqueeze(-1)  # (N K, D)

        combined = torch.zeros_like(tokens).index_add_(0, token_of, expert_outputs)  # (N, D)
        return combined.view(B, T, D)  # (B, T, D)

    def expert_tensors(self) -> list[nn.Parameter]:
        """The experts' stacked weights and biases (dim 0: the expert)."""
        tensors = [self.gate, self.up, self.proj, self.gate_bias, self.up_bias, self.proj_bias]
        return [t for t in tensors if t is not None]

    def expert_params(self) -> int:
        """Parameters of one expert (gate, up and proj, and their biases)."""
        return sum(t.numel() for t in self.expert_tensors()) // self.n_expert
