"""Gated DeltaNet: linear attention with a fixed-size memory, rewritten by the delta rule
(the linear-attention layers of Qwen3-Next and Qwen3.5).

Legend: B batch, T tokens, D width, Hk query/key heads, Hv value heads (G = Hv / Hk of
them share a key head), Dk key width, Dv value width, C = 2 Hk Dk + Hv Dv convolved
channels, K the convolution's length, L chunk length, N = T / L chunks.

Softmax attention keeps every earlier key and value: its cache and its cost per
token grow with the context. A linear-attention layer keeps, per head, one matrix
S (Dk, Dv) instead, a memory that maps keys to values: reading it is S^T q, writing
adds an outer product k u^T. The delta rule writes not the value v itself but the
correction the memory needs to return v for k (Widrow & Hoff, 1960; Schlag et al.,
2021, "Linear Transformers Are Secretly Fast Weight Programmers"), and a gate
forgets a little of the memory at every token (Yang et al., 2024, "Gated Delta
Networks"). For each head, at token t:

    S' = a_t S_{t-1}              decay, a_t = exp(g_t) in (0, 1]        (Dk, Dv)
    u_t = b_t (v_t - S'^T k_t)    what the memory gets wrong for k_t,
                                  times a learning rate b_t in (0, 1)    (Dv,)
    S_t = S' + k_t u_t^T          write the correction                   (Dk, Dv)
    o_t = S_t^T q_t               read                                   (Dv,)

q and k are L2-normalised (unit length), and q is scaled by 1/sqrt(Dk).

Decoding runs this recurrence one token at a time (`recurrent_gated_delta_rule`):
the state is S and the convolution's last K - 1 inputs, the same size at any
context length. Training and prefill use the chunked form (`chunk_gated_delta_rule`):
within a chunk of L tokens, everything is matmuls; only the N chunk boundaries
are a recurrence (a Python loop over chunks, never over tokens).

The layer, as Qwen3-Next builds it:

    x (B, T, D) -> qkv projection -> q, k, v (C channels) and z, b, a
    q, k, v -> causal depthwise convolution (length K) -> SiLU
    beta = sigmoid(b)                               (B, T, Hv) learning rate
    g = -exp(A_log) softplus(a + dt_bias)           (B, T, Hv) log decay, <= 0
    o = gated delta rule(l2norm(q), l2norm(k), v, g, beta)       (B, T, Hv, Dv)
    o = RMSNorm(o) * silu(z), per head; out = proj(o)            (B, T, D)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.config import ModelConfig
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.norms import RMSNorm

CHUNK = 64  # tokens per chunk of the chunked form (as Hugging Face's and FLA's)


def l2_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / |x| over the last dimension (as the FLA library: x / sqrt(|x|^2 + eps))."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def chunk_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor | None = None, chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule over T tokens, a chunk of L at a time.

    q, k: (B, H, T, Dk), v: (B, H, T, Dv), g (log decay), beta: (B, H, T), all fp32;
    state: (B, H, Dk, Dv) at the start, or None for zeros. Returns the outputs
    (B, H, T, Dv) and the state after the last token (B, H, Dk, Dv).

    Within a chunk that starts from state S_0, let Gamma_i = exp(g_1 + ... + g_i),
    the decay from the chunk's start to its token i. Unrolling the recurrence,
    the corrections u_i (rows of U) satisfy

        u_i = b_i (v_i - Gamma_i S_0^T k_i - sum_{j<i} (Gamma_i / Gamma_j) (k_i . k_j) u_j)

    a triangular system (I + A) U = V_b - (Gamma K_b) S_0 with A strictly lower,
    A_ij = b_i (k_i . k_j) Gamma_i / Gamma_j. Solved once for both right-hand sides,
    U = W - Y S_0 (Yang et al., 2024, the "UT transform"). Then

        outputs  O = (Gamma Q) S_0 + [(Q K^T) * decay] U    decay_ij = Gamma_i / Gamma_j, j <= i
        new state    Gamma_L S_0 + (K Gamma_L / Gamma)^T U

    Only S_0 carries information between chunks: the loop over chunks computes
    U and the next state; the outputs of all chunks are then two batched matmuls.
    """
    B, H, T, Dk = k.shape
    Dv = v.size(-1)
    pad = -T % chunk  # the last chunk is padded with tokens that neither write nor decay
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    N, L = (T + pad) // chunk, chunk
    q, k, v = (x.reshape(B, H, N, L, -1) for x in (q, k, v))  # (B, H, N, L, Dk or Dv)
    g, beta = g.reshape(B, H, N, L), beta.reshape(B, H, N, L)  # (B, H, N, L)

    log_gamma = g.cumsum(dim=-1)  # (B, H, N, L): log Gamma_i, decay since the chunk's start
    later = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)  # j > i: hidden
    log_decay = log_gamma.unsqueeze(-1) - log_gamma.unsqueeze(-2)  # (B, H, N, L, L)
    decay = log_decay.masked_fill(later, float("-inf")).exp()  # Gamma_i / Gamma_j, 0 if j > i
    gamma = log_gamma.exp().unsqueeze(-1)  # (B, H, N, L, 1)

    k_beta = k * beta.unsqueeze(-1)  # (B, H, N, L, Dk)
    A = (k_beta @ k.transpose(-1, -2)) * decay  # (B, H, N, L, L); its diagonal is taken as 1
    rhs = torch.cat([v * beta.unsqueeze(-1), k_beta * gamma], dim=-1)  # (B, H, N, L, Dv + Dk)
    W, Y = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True).split(
        [Dv, Dk], dim=-1)  # (B, H, N, L, Dv), (B, H, N, L, Dk): U = W - Y S_0

    k_to_end = k * (log_gamma[..., -1:] - log_gamma).exp().unsqueeze(-1)  # (B, H, N, L, Dk)
    chunk_decay = log_gamma[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1): Gamma_L
    S = state if state is not None else q.new_zeros(B, H, Dk, Dv)  # (B, H, Dk, Dv)
    starts, corrections = [], []
    # (unbind: chunk n's slices, without a gradient the full size of each tensor per chunk)
    for W_n, Y_n, decay_n, k_n in zip(W.unbind(2), Y.unbind(2), chunk_decay.unbind(2),
                                      k_to_end.unbind(2), strict=True):  # across chunks
        U = W_n - Y_n @ S  # (B, H, L, Dv)
        starts.append(S)
        corrections.append(U)
        S = S * decay_n + k_n.transpose(-1, -2) @ U  # (B, H, Dk, Dv)
    S_0 = torch.stack(starts, dim=2)  # (B, H, N, Dk, Dv)
    U = torch.stack(corrections, dim=2)  # (B, H, N, L, Dv)

    within = (q @ k.transpose(-1, -2)) * decay  # (B, H, N, L, L)
    out = (q * gamma) @ S_0 + within @ U  # (B, H, N, L, Dv)
    return out.reshape(B, H, N * L, Dv)[:, :, :T], S


def recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule one token at a time (decoding): same arguments and results as
    `chunk_gated_delta_rule`, the recurrence of the module docstring written out."""
    outputs = []
    for t in range(q.size(2)):
        q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, H, Dk), (B, H, Dk), (B, H, Dv)
        state = state * g[:, :, t].exp()[..., None, None]  # S' = a_t S   (B, H, Dk, Dv)
        recalled = (k_t.unsqueeze(-1) * state).sum(dim=-2)  # S'^T k_t   (B, H, Dv)
        u = beta[:, :, t].unsqueeze(-1) * (v_t - recalled)  # (B, H, Dv)
        state = state + k_t.unsqueeze(-1) * u.unsqueeze(-2)  # S' + k_t u^T
        outputs.append((q_t.unsqueeze(-1) * state).sum(dim=-2))  # S^T q_t   (B, H, Dv)
    return torch.stack(outputs, dim=2), state  # (B, H, T, Dv), (B, H, Dk, Dv)


def state_shapes(config: ModelConfig, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What a Gated DeltaNet layer keeps between decode steps, for `batch` sequences:
    the convolution's last K - 1 inputs (B, C, K - 1) and the memory (B, Hv, Dk, Dv)."""
    c = config
    channels = 2 * c.linear_n_key_head * c.linear_key_size \
        + c.linear_n_value_head * c.linear_value_size
    return ((batch, channels, c.linear_conv_kernel - 1),
            (batch, c.linear_n_value_head, c.linear_key_size, c.linear_value_size))


class GatedDeltaNet(nn.Module):
    """A Gated DeltaNet layer, in the place of a block's attention (module docstring)."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.n_key_head, self.n_value_head = c.linear_n_key_head, c.linear_n_value_head
        self.key_size, self.value_size = c.linear_key_size, c.linear_value_size
        key_width = c.linear_n_key_head * c.linear_key_size  # Hk Dk
        value_width = c.linear_n_value_head * c.linear_value_size  # Hv Dv
        Hv = c.linear_n_value_head
        channels = 2 * key_width + value_width  # C
        # One matmul makes q, k, v side by side (the C channels the convolution mixes over
        # time) and the gates: z (the output's, Hv Dv), b (the learning rate's, Hv) and a
        # (the decay's, Hv).
        self.split_sizes = [channels, value_width, Hv, Hv]
        self.qkv_sizes = [key_width, key_width, value_width]
        self.qkv = nn.Linear(c.n_embd, sum(self.split_sizes), bias=False)
        # Depthwise: each channel is mixed with its own K latest values, and no other channel.
        self.conv = nn.Conv1d(channels, channels, c.linear_conv_kernel, groups=channels,
                              bias=False)  # weight (C, 1, K)
        # Decay per head: g = -exp(A_log) softplus(a + dt_bias), as in Mamba 2.
        self.A_log = nn.Parameter(torch.zeros(Hv))
        self.dt_bias = nn.Parameter(torch.ones(Hv))
        self.norm = RMSNorm(c.linear_value_size, c.norm_eps)  # a plain gain, starting at 1
        self.proj = nn.Linear(value_width, c.n_embd, bias=False)

    @torch.no_grad()
    def init_decay(self) -> None:
        """Hugging Face's initialisation: A uniform in [0.01, 16] (A_log = log A), dt_bias 1."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0.01, 16).log())
        self.dt_bias.fill_(1.0)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D), the T tokens after the cache's; attention_mask: (B, S) as the
        model's (0 padding, 1, 2, ... sequences), or None. Returns (B, T, D).

        A cache that keeps states per sequence itself (one with `recur`: the engine's
        paged step, generation/paged_cache.py) is handed the layer, to run it on each
        sequence's states."""
        if cache is not None and hasattr(cache, "recur"):
            return cache.recur(self.layer_idx, x, self.forward)
        T = x.size(1)
        real = None
        if attention_mask is not None:
            segments = attention_mask[:, -T:]  # (B, T): this call's tokens
            if segments.max() > 1:  # several sequences packed in a row
                if cache is not None:
                    raise ValueError("a KV cache holds one sequence per row; packed rows "
                                     "need no cache")
                return self.forward_packed(x, segments)
            real = (segments != 0).unsqueeze(-1)  # (B, T, 1)
            x = x * real.to(x.dtype)  # padding writes nothing (and is not decayed, below)
        qkv, z, b, a = self.qkv(x).split(self.split_sizes, dim=-1)  # (B, T, C) and the gates
        mixed = self.convolve(qkv, cache)  # (B, T, C)
        q, k, v = mixed.split(self.qkv_sizes, dim=-1)  # (B, T, Hk Dk) x 2, (B, T, Hv Dv)
        beta = torch.sigmoid(b.float())  # (B, T, Hv)
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())  # (B, T, Hv)
        if real is not None:
            g = g * real.float()  # no decay across padding: a decay of exp(0) = 1

        context = self.delta_rule(q, k, v, g, beta, cache)  # (B, T, Hv, Dv) fp32
        B, T, Hv, Dv = context.shape
        gated = self.norm(context.to(x.dtype)) * F.silu(z.float().view(B, T, Hv, Dv))
        return self.proj(gated.to(x.dtype).reshape(B, T, Hv * Dv))  # (B, T, D)

    def convolve(self, qkv: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Causal depthwise convolution, then SiLU: (B, T, C) -> (B, T, C). Each output
        mixes its channel's K latest inputs: the K - 1 before this call come from the
        cache (zeros at a sequence's start), and the cache keeps the K - 1 latest."""
        B, T, C = qkv.shape
        K = self.conv.kernel_size[0]
        inputs = qkv.transpose(1, 2)  # (B, C, T)
        if cache is None:  # K - 1 zeros before the first input (the last K - 1 outputs dropped)
            mixed = F.conv1d(inputs, self.conv.weight, padding=K - 1, groups=C)[:, :, :T]
            return F.silu(mixed).transpose(1, 2)  # (B, T, C)
        history = cache.conv_states[self.layer_idx].to(inputs.dtype)  # (B, C, K - 1)
        extended = torch.cat([history, inputs], dim=-1)  # (B, C, K - 1 + T)
        cache.conv_states[self.layer_idx].copy_(extended[:, :, extended.size(-1) - (K - 1):])
        mixed = F.conv1d(extended, self.conv.weight, groups=C)  # (B, C, T)
        return F.silu(mixed).transpose(1, 2)  # (B, T, C)

    def delta_rule(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                   beta: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Heads apart, in fp32; the recurrent form for one cached token, else the chunked
        form, from (and back into) the cache's state. Returns (B, T, Hv, Dv) fp32."""
        B, T, _ = q.shape
        Hk, Hv, Dk, Dv = self.n_key_head, self.n_value_head, self.key_size, self.value_size
        G = Hv // Hk

        def heads(x: torch.Tensor, n: int, width: int) -> torch.Tensor:  # -> (B, n, T, width)
            return x.float().view(B, T, n, width).transpose(1, 2)

        q = l2_normalise(heads(q, Hk, Dk)) * Dk ** -0.5  # (B, Hk, T, Dk)
        k = l2_normalise(heads(k, Hk, Dk))  # (B, Hk, T, Dk)
        if G > 1:  # each key head serves G value heads in a row
            q, k = q.repeat_interleave(G, dim=1), k.repeat_interleave(G, dim=1)  # (B, Hv, T, Dk)
        v = heads(v, Hv, Dv)  # (B, Hv, T, Dv)
        g, beta = g.transpose(1, 2), beta.transpose(1, 2)  # (B, Hv, T)
        state = cache.recurrent_states[self.layer_idx] if cache is not None else None
        with torch.autocast(q.device.type, enabled=False):  # fp32 even in mixed precision
            if state is not None and T == 1:
                out, state = recurrent_gated_delta_rule(q, k, v, g, beta, state)
            else:
                out, state = chunk_gated_delta_rule(q, k, v, g, beta, state)
        if cache is not None:
            cache.recurrent_states[self.layer_idx].copy_(state)
        return out.transpose(1, 2)  # (B, T, Hv, Dv)

    def forward_packed(self, x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Several sequences in a row (`segments` numbers them 1, 2, ..., 0 for padding):
        each runs alone, from an empty memory. A loop over the sequences, not the tokens."""
        rows = []
        for row, numbers in zip(x, segments, strict=True):  # (T, D), (T,)
            values, lengths = torch.unique_consecutive(numbers, return_counts=True)
            pieces = list(row.split(lengths.tolist()))  # runs of one sequence, or padding
            for i, value in enumerate(values.tolist()):
                if value:
                    pieces[i] = self(pieces[i].unsqueeze(0))[0]
                else:
                    pieces[i] = torch.zeros_like(pieces[i])
            rows.append(torch.cat(pieces))
        return torch.stack(rows)  # (B, T, D)
