"""The GPT-2 decoder-only transformer, top to bottom.

Legend: B batch, T tokens, D width (n_embd), V vocabulary, F MLP width.

    token ids (B, T)
      -> token embedding + learned position embedding     (B, T, D)
      -> n_layer x Block:  x = x + attn(ln_1(x))            pre-LayerNorm residual
                           x = x + mlp(ln_2(x))
      -> final LayerNorm                                    (B, T, D)
      -> output layer (tied to the token embedding)         (B, T, V) logits

`forward` is only the math, in whatever dtype it is given: mixed precision,
`torch.compile` and parallelism are applied from outside (training/).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.errors import LLMScratchError
from llmscratch.model.attention import CausalSelfAttention
from llmscratch.model.config import ModelConfig
from llmscratch.model.kv_cache import KVCache


class MLP(nn.Module):
    """Position-wise feed-forward: widen to F, GELU, project back to D."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_dim, bias=config.bias)
        self.proj = nn.Linear(config.mlp_dim, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.fc(x), approximate="tanh")  # (B, T, F); GPT-2's tanh GELU
        return F.dropout(self.proj(hidden), self.dropout, self.training)  # (B, T, D)


class Block(nn.Module):
    """One transformer block: attention then MLP, each as a pre-norm residual branch."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, D)
        x = x + self.mlp(self.ln_2(x))  # (B, T, D)
        return x


class GPT(nn.Module):
    """A GPT-2 language model: token ids in, next-token logits out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.context_length, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialisation, all in one place.

        | parameter                             | init                        |
        |---------------------------------------|-----------------------------|
        | embeddings, Linear weights            | normal(0, 0.02)             |
        | residual projections (attn.proj,      | normal(0, 0.02/sqrt(2 L))   |
        |   mlp.proj)                           |                             |
        | biases                                | 0                           |
        | LayerNorm weight / bias               | 1 / 0                       |

        Each of the 2 L residual branches adds to the stream; shrinking their
        output projections keeps the stream's variance from growing with depth
        (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners").
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(".proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits for the next token at every position.

        input_ids: (B, T) int64. With a `cache`, these are the tokens that follow
        the `cache.pos` tokens already stored, and the cache is advanced by T.
        Returns logits (B, T, V).
        """
        B, T = input_ids.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.context_length:
            raise LLMScratchError(
                f"sequence of {start + T} tokens is longer than the model's context "
                f"length {self.config.context_length}; shorten the input"
            )
        positions = torch.arange(start, start + T, device=input_ids.device)  # (T,)
        x = self.tok_emb(input_ids) + self.pos_emb(positions)  # (B, T, D)
        x = F.dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, cache)  # (B, T, D)
        if cache is not None:
            cache.advance(T)
        x = self.ln_f(x)  # (B, T, D)
        return self.lm_head(x)  # (B, T, V)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache sized for this model, on its device and in its dtype."""
        param = self.lm_head.weight
        c = self.config
        return KVCache(
            c.n_layer, batch_size, c.n_head, max_len or c.context_length, c.head_dim,
            dtype=param.dtype, device=param.device,
        )

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights counted once).

        With `non_embedding`, position and token embeddings are left out, the
        convention of scaling-law papers (Kaplan et al., 2020). With tied
        embeddings the output layer shares the token embedding, so it goes too.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.pos_emb.weight.numel() + self.tok_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6 N for the weights + 12 L T D for attention.

        Forward is 2 FLOPs per weight per token, backward twice that (Kaplan et
        al., 2020, appendix; PaLM, Chowdhery et al., 2022, appendix B).
        """
        c = self.config
        T = seq_len or c.context_length
        # Every weight is used in a matmul except the embedding lookups; a tied
        # token embedding is still used once, as the output layer.
        n_matmul = self.num_params() - self.pos_emb.weight.numel()
        if not c.tie_embeddings:
            n_matmul -= self.tok_emb.weight.numel()
        return 6 * n_matmul + 12 * c.n_layer * T * c.n_embd
