"""Mixture of Experts: a router sends each token to K of E SwiGLU experts (Qwen3-MoE).

Legend: B batch, T tokens, N = B T tokens in a flat list, D width, F expert
hidden width, E experts, K active experts per token.

    x (N, D) -> router -> softmax over E -> top K experts and weights   (N, K)
             -> each chosen expert's SwiGLU on the token                (N, K, D)
             -> weighted sum of the K outputs                           (N, D)

The model holds E experts' parameters but each token pays for only K of
them: many parameters, few FLOPs (Shazeer et al., 2017; Fedus et al., 2022,
"Switch Transformers"). Qwen3-MoE routes with a softmax over all E experts,
keeps the top K probabilities and, optionally, rescales them to sum to 1.

Compute is batched by expert, not by token: the N K (token, expert)
assignments are sorted by expert, so each expert's tokens form one slice and
one matmul; a loop visits the E experts (not the N tokens), and the outputs
are added back to their tokens with one `index_add_`.

Qwen3-Next adds a shared expert (`moe_shared_hidden`): one more SwiGLU that
every token goes through, its output scaled by sigmoid(x . w), a gate of its
own, and added to the routed experts' (as Qwen2-MoE; DeepSeekMoE, Dai et al., 2024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.config import ModelConfig


class MoE(nn.Module):
    """A router and E SwiGLU experts whose weights are stacked into 3-D tensors."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        E, D, hidden = config.n_expert, config.n_embd, config.mlp_dim
        self.n_expert = E
        self.top_k = config.n_expert_active
        self.renormalize = config.moe_renormalize
        self.router = nn.Linear(D, E, bias=False)
        # Expert e is SwiGLU(x) = (silu(x gate[e]^T) * (x up[e]^T)) proj[e]^T.
        self.gate = nn.Parameter(torch.empty(E, hidden, D))  # (E, F, D)
        self.up = nn.Parameter(torch.empty(E, hidden, D))  # (E, F, D)
        self.proj = nn.Parameter(torch.empty(E, D, hidden))  # (E, D, F)
        self.shared = SharedExpert(D, config.moe_shared_hidden) if config.moe_shared_hidden \
            else None

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's K experts and their weights: (N, K) weights, (N, K) expert ids."""
        router_logits = self.router(tokens)  # (N, E)
        probs = torch.softmax(router_logits.float(), dim=-1)  # (N, E), in fp32
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)  # (N, K), (N, K)
        if self.renormalize:
            top_probs = top_probs / top_probs.sum(dim=-1, keepdim=True)  # rows sum to 1
        return top_probs.to(tokens.dtype), top_experts

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
            hidden = F.silu(chunk @ self.gate[e].T) * (chunk @ self.up[e].T)  # (n_e, F)
            outputs.append(hidden @ self.proj[e].T)  # (n_e, D)
        expert_outputs = torch.cat(outputs)  # (N K, D), in the sorted order
        expert_outputs = expert_outputs * weights.flatten()[order].unsqueeze(-1)  # (N K, D)

        combined = torch.zeros_like(tokens).index_add_(0, token_of, expert_outputs)  # (N, D)
        if self.shared is not None:
            combined = combined + self.shared(tokens)  # (N, D)
        return combined.view(B, T, D)  # (B, T, D)

    def expert_params(self) -> int:
        """Parameters of one expert (gate, up and proj)."""
        return (self.gate.numel() + self.up.numel() + self.proj.numel()) // self.n_expert


class SharedExpert(nn.Module):
    """A SwiGLU expert that sees every token, weighed by a sigmoid gate (Qwen3-Next):
    sigmoid(x shared_gate^T) * (silu(x gate^T) * (x up^T)) proj^T."""

    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden, bias=False)
        self.up = nn.Linear(n_embd, hidden, bias=False)
        self.proj = nn.Linear(hidden, n_embd, bias=False)
        self.shared_gate = nn.Linear(n_embd, 1, bias=False)  # how much of it a token takes

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.gate(tokens)) * self.up(tokens)  # (N, F)
        return torch.sigmoid(self.shared_gate(tokens)) * self.proj(hidden)  # (N, D)
