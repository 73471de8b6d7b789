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

DeepSeek V3 routes differently, by switches of the config:

    scores   = sigmoid(router logits)                   (N, E)   moe_router="sigmoid"
    choice   = scores + expert_bias                     (N, E)   the bias steers the choice only
    groups:  experts form G groups; a group's worth is its best two choices,
             and only the moe_groups_active best groups may be chosen from
    top K by choice; weights = their scores, renormalised, x moe_routed_scale
    + a shared expert that every token goes through      n_shared_expert

The bias is not learned by gradient: DeepSeek nudges it during training so
that overused experts are chosen less ("auxiliary-loss-free load balancing",
DeepSeek-AI, 2024, "DeepSeek-V3", section 2.1.2); here it is loaded and kept.

Compute is batched by expert, not by token: the N K (token, expert)
assignments are sorted by expert, so each expert's tokens form one slice and
one matmul; a loop visits the E experts (not the N tokens), and the outputs
are put back in token order (the inverse of the sort) and summed, K to a
token. (An `index_add_` into the tokens would do the same, but on the CPU it
always starts its threads: at batch-1 decode, on a busy machine, waiting
for them cost more than the layer's arithmetic; bench/family_decode.py.)

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
    """A router and E SwiGLU experts whose weights (and biases) are stacked along dim 0;
    `shared`, if given, is an MLP every token goes through besides (DeepSeek's shared experts)."""

    def __init__(self, config: ModelConfig, shared: nn.Module | None = None) -> None:
        super().__init__()
        E, D, hidden = config.n_expert, config.n_embd, config.mlp_dim
        self.n_expert = E
        self.top_k = config.n_expert_active
        self.renormalize = config.moe_renormalize
        self.swiglu_limit, self.swiglu_alpha = config.swiglu_limit, config.swiglu_alpha
        self.router = nn.Linear(D, E, bias=config.bias)
        self.sigmoid = config.moe_router == "sigmoid"
        self.groups, self.groups_active = config.moe_groups, config.moe_groups_active
        self.routed_scale = config.moe_routed_scale
        # (E,) added to the scores when choosing (sigmoid routing only): a buffer, not learned.
        self.register_buffer("expert_bias", torch.zeros(E) if self.sigmoid else None)
        self.shared = shared
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
        if config.moe_shared_hidden:  # Qwen3-Next: a shared expert with a gate of its own
            self.shared = SharedExpert(D, config.moe_shared_hidden)
        # Inference on a CPU only: each expert's (gate, up, proj) as linear layers whose
        # weights oneDNN packed (generation/cpu_weights.py), used instead of the stacks above.
        self.packed_experts: list[tuple[nn.Module, nn.Module, nn.Module]] | None = None

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's K experts and their weights: (N, K) weights, (N, K) expert ids."""
        router_logits = self.router(tokens).float()  # (N, E), in fp32
        if self.sigmoid:  # each expert scored on its own, in (0, 1)
            scores = torch.sigmoid(router_logits)  # (N, E)
            choice = scores + self.expert_bias.float()  # (N, E)
        else:  # the experts compete for one unit of probability
            scores = choice = torch.softmax(router_logits, dim=-1)  # (N, E)
        if self.groups > 1:
            choice = self.best_groups_only(choice)  # (N, E)
        top_experts = choice.topk(self.top_k, dim=-1).indices  # (N, K)
        top_probs = scores.gather(1, top_experts)  # (N, K)
        if self.renormalize:  # rows sum to 1 (the 1e-20 only guards against 0 / 0)
            top_probs = top_probs / (top_probs.sum(dim=-1, keepdim=True) + 1e-20)
        return (top_probs * self.routed_scale).to(tokens.dtype), top_experts

    def best_groups_only(self, choice: torch.Tensor) -> torch.Tensor:
        """`choice` (N, E) with the experts outside each token's best groups at -inf.

        The E experts form G groups of E / G in a row; a group is worth the sum
        of its best two choice scores, and each token keeps its groups_active best.
        (DeepSeek places each group on one device, so a token's experts live on
        few devices.)
        """
        N, E = choice.shape
        grouped = choice.view(N, self.groups, E // self.groups)  # (N, G, E / G)
        group_worth = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G)
        best = group_worth.topk(self.groups_active, dim=-1).indices  # (N, Gk)
        keep = torch.zeros_like(group_worth, dtype=torch.bool).scatter_(1, best, True)  # (N, G)
        return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(N, E)  # (N, E)

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
        if self.packed_experts is not None:  # the same products, by oneDNN's kernel
            gate, up, proj = self.packed_experts[e]
            return proj(self.expert_activation(gate(x), up(x)))  # biases included
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
        # Back in token order (the inverse permutation), then each token's weighted sum.
        unsorted = expert_outputs[order.argsort()].view(B * T, self.top_k, D)  # (N, K, D)
        combined = (unsorted * weights.unsqueeze(-1)).sum(dim=1)  # (N, D)
        if self.shared is not None:  # DeepSeek's and Qwen3-Next's shared experts
            combined = combined + self.shared(tokens)  # (N, D)
        return combined.view(B, T, D)  # (B, T, D)

    def expert_tensors(self) -> list[nn.Parameter]:
        """The experts' stacked weights and biases (dim 0: the expert)."""
        tensors = [self.gate, self.up, self.proj, self.gate_bias, self.up_bias, self.proj_bias]
        return [t for t in tensors if t is not None]

    def expert_params(self) -> int:
        """Parameters of one expert (gate, up and proj, and their biases)."""
        return sum(t.numel() for t in self.expert_tensors()) // self.n_expert


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
