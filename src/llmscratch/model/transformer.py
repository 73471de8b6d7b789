"""The decoder-only transformer, top to bottom: GPT-2, Llama 3, Qwen3(-MoE), Gemma 3, Olmo 3,
DeepSeek V3.

Legend: B batch, T tokens, S keys (cached + T), D width (n_embd), V vocabulary,
F MLP width.

    token ids (B, T)
      -> token embedding (+ learned position embedding, GPT-2;  (B, T, D)
         x sqrt(D), Gemma)
      -> n_layer x Block:  x = x + attn(norm_1(x))              pre-norm residual
                           x = x + mlp(norm_2(x))               (Gemma: a norm also
                                                                after attn and mlp;
                                                                Olmo: only after)
      -> final norm                                             (B, T, D) hidden states
      -> a head: the output layer (optionally tied to the
         token embedding) gives next-token logits               (B, T, V)

`model(ids)` runs the trunk and returns the final hidden states. Heads turn
them into what a task needs (model/heads.py):

    model.logits(hidden)                    (B, T, V) next-token logits
    model.next_token_loss(hidden, targets)  (sum of cross-entropies, tokens predicted)
    model.token_log_probs(hidden, targets)  (B, T) log p(target), for DPO, RL, evaluation
    SequenceHead(D, C)(hidden, mask)        (B, C) class logits or a reward

The last three never build the (B, T, V) logits. Training calls the model
itself for the trunk, because data parallelism (DDP, FSDP2) hooks the
model's forward; the heads then read the output layer's weight.

The config's switches choose the parts (docs/families.md shows each switch):
`positions` learned table or RoPE inside attention; `norm` LayerNorm or
RMSNorm, and `norm_placement` where it sits; `mlp` GELU, SwiGLU, GeGLU or
Mixture of Experts (DeepSeek's first layers dense); `n_kv_head`, `qk_norm`,
`attn_scalar` shape the attention, and `kv_lora_rank` makes it latent
attention (DeepSeek's); `sliding_window` and `sliding_window_pattern` say which layers
are local (they see only the latest tokens) and which global;
`full_attention_interval` puts Gated DeltaNet layers, linear attention with a
fixed-size memory, in the place of attention in all but every P-th block
(Qwen3-Next; model/linear_attention.py).

`forward` is only the math, in whatever dtype it is given: mixed precision,
`torch.compile` and parallelism are applied from outside (training/).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.errors import LLMScratchError
from llmscratch.model.attention import CausalSelfAttention, visible_keys
from llmscratch.model.config import ModelConfig
from llmscratch.model.heads import (
    ROWS_PER_CHUNK,
    SequenceHead,
    layer_cross_entropy,
    linear_cross_entropy,
    linear_log_probs,
)
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.kv_sharing import SharedKV, SharedKVAttention, caches_keys, kv_source
from llmscratch.model.latent_attention import LatentAttention
from llmscratch.model.linear_attention import GatedDeltaNet, state_shapes
from llmscratch.model.moe import MoE
from llmscratch.model.norms import RMSNorm, make_norm
from llmscratch.model.per_layer_inputs import PerLayerBranch, PerLayerInputs
from llmscratch.model.rope import rope_angles, rope_frequencies, rope_gain


class MLP(nn.Module):
    """GPT-2's feed-forward: widen to F, GELU, project back to D."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_dim, bias=config.bias)
        self.proj = nn.Linear(config.mlp_dim, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")  # GPT-2's tanh GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.fc(x))  # (B, T, F)
        return F.dropout(self.proj(hidden), self.dropout, self.training)  # (B, T, D)


class ReLUSquared(MLP):
    """The same shape with relu(x)^2 for GELU (So et al., 2021, "Primer"; the modded-nanogpt
    speedrun's MLP): as cheap as ReLU, and it learned faster than GELU in their runs."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """Llama's and Qwen's feed-forward: a SiLU-gated linear unit (Shazeer, 2020).

    Two projections to F: one passes through SiLU and gates the other
    elementwise; a third projects back to D.
    """

    def __init__(self, config: ModelConfig, hidden: int = 0) -> None:
        super().__init__()
        width = hidden or config.mlp_dim  # another width: DeepSeek's dense and shared MLPs
        self.gate = nn.Linear(config.n_embd, width, bias=config.bias)
        self.up = nn.Linear(config.n_embd, width, bias=config.bias)
        self.proj = nn.Linear(width, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.gate(x)) * self.up(x)  # (B, T, F)
        return F.dropout(self.proj(hidden), self.dropout, self.training)  # (B, T, D)


class GeGLU(SwiGLU):
    """Gemma's feed-forward: SwiGLU with the tanh GELU as the gate's activation."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


MLPS = {"gelu": MLP, "relu2": ReLUSquared, "swiglu": SwiGLU, "geglu": GeGLU, "moe": MoE}


def make_mlp(config: ModelConfig, layer_idx: int) -> nn.Module:
    """Layer `layer_idx`'s MLP: the config's kind, except DeepSeek V3's first dense layers
    (a SwiGLU of width dense_mlp_hidden); its experts get their shared SwiGLU expert."""
    c = config
    if c.layer_is_dense(layer_idx):
        return SwiGLU(c, c.dense_mlp_hidden)
    if c.mlp == "moe" and c.n_shared_expert:
        return MoE(c, shared=SwiGLU(c, c.n_shared_expert * c.mlp_dim))
    if c.kv_shared_mlp_double and kv_source(c, layer_idx) is not None:  # Gemma 4
        return MLPS[c.mlp](c, 2 * c.mlp_dim)
    return MLPS[c.mlp](c)


class Block(nn.Module):
    """One transformer block: attention then MLP, each a residual branch with its norms.

    Where the norms sit (`norm_placement`), for each sub-layer f:

        pre       x + f(ln(x))              GPT-2, Llama, Qwen
        sandwich  x + post_ln(f(ln(x)))     Gemma 2 and 3
        post      x + post_ln(f(x))         Olmo 2 and 3

    A norm a placement does not use is the identity (and holds no weights).
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        D = config.n_embd
        pre = config.norm_placement in ("pre", "sandwich")
        post = config.norm_placement in ("sandwich", "post")
        self.ln_1 = make_norm(config, D) if pre else nn.Identity()
        self.linear = config.layer_is_linear(layer_idx)
        if self.linear:  # Qwen3-Next: a Gated DeltaNet layer in attention's place
            self.attn = GatedDeltaNet(config, layer_idx)
        elif kv_source(config, layer_idx) is not None:  # Gemma 4: an earlier layer's keys
            self.attn = SharedKVAttention(config, layer_idx)
        else:
            self.attn = (LatentAttention if config.kv_lora_rank else CausalSelfAttention)(
                config, layer_idx)
        self.post_ln_1 = make_norm(config, D) if post else nn.Identity()
        self.ln_2 = make_norm(config, D) if pre else nn.Identity()
        self.mlp = make_mlp(config, layer_idx)
        self.post_ln_2 = make_norm(config, D) if post else nn.Identity()
        # Gemma 4: the block's output is multiplied by a fixed number (a buffer, stored with
        # the weights but not trained).
        self.scalar = nn.Buffer(torch.ones(1)) if config.layer_scalar else None
        # Gemma 4 E2B and E4B: one more branch, reading this layer's own input.
        self.per_layer = PerLayerBranch(config) if config.per_layer_input else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        visible: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        shared: SharedKV | None = None,
        layer_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.linear:  # it reads the mask itself: padding, and where packed sequences start
            x = x + self.post_ln_1(self.attn(self.ln_1(x), cache, attention_mask))  # (B, T, D)
        elif shared is not None:  # Gemma 4: layers publish or reuse keys (kv_sharing.py)
            x = x + self.post_ln_1(self.attn(self.ln_1(x), rope, cache, visible, shared))
        else:
            x = x + self.post_ln_1(self.attn(self.ln_1(x), rope, cache, visible))  # (B, T, D)
        x = x + self.post_ln_2(self.mlp(self.ln_2(x)))  # (B, T, D)
        if self.per_layer is not None:
            x = self.per_layer(x, layer_input)  # (B, T, D)
        if self.scalar is not None:
            x = x * self.scalar.to(x.dtype)  # (B, T, D)
        return x


def capped_cross_entropy(hidden: torch.Tensor, logits_of, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `logits_of(hidden)` (soft-capped logits: Gemma 4), a chunk of
    ROWS_PER_CHUNK rows at a time, through autograd: hidden (N, D), targets (N,) -> fp32."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), ROWS_PER_CHUNK):
        logits = logits_of(hidden[start:start + ROWS_PER_CHUNK]).float()  # (n, V)
        total = total + F.cross_entropy(logits, targets[start:start + ROWS_PER_CHUNK],
                                        ignore_index=-100, reduction="sum")
    return total


def segment_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position within its sequence (B, S), from a mask of sequence numbers.

    A sequence is a run of equal non-zero values in a row (padding is 0):
    mask [0, 0, 1, 1, 1] gives positions [., ., 0, 1, 2], mask [1, 1, 2, 2, 2]
    gives [0, 1, 0, 1, 2]. Positions at padding are meaningless (the tokens
    there are ignored) and kept non-negative.
    """
    mask = attention_mask.long()  # (B, S)
    index = torch.arange(mask.size(1), device=mask.device).expand_as(mask)  # (B, S)
    starts = torch.ones_like(mask, dtype=torch.bool)  # where a run of equal values begins
    starts[:, 1:] = mask[:, 1:] != mask[:, :-1]
    run_start = torch.where(starts, index, 0).cummax(dim=1).values  # (B, S)
    return index - run_start  # (B, S)


class GPT(nn.Module):
    """A decoder-only language model: token ids in, hidden states out; heads on top."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = (
            nn.Embedding(config.context_length, config.n_embd)
            if config.positions == "learned" else None
        )
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd)
        self.per_layer = PerLayerInputs(config) if config.per_layer_input else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # A classifier's or a reward model's head (fine-tuning, alignment): one vector per
        # sequence -> head_outputs numbers. The output layer stays, for generation.
        self.head = (SequenceHead(config.n_embd, config.head_outputs, config.head_pooling)
                     if config.head_outputs else None)
        self.init_weights()

    @classmethod
    def from_state_dict(cls, config: ModelConfig, tensors: dict[str, torch.Tensor]) -> GPT:
        """A model whose parameters are `tensors` themselves: no copy, no initialisation.

        The model is built on the meta device (shapes only, no memory), then
        each parameter is replaced by its tensor, in that tensor's dtype and
        device. A tied output layer may be absent from `tensors`.
        """
        with torch.device("meta"):
            model = cls(config)
        expected = dict(model.state_dict())
        if config.tie_embeddings:
            expected.pop("lm_head.weight")
            tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise LLMScratchError(
                f"weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape:
                raise LLMScratchError(
                    f"tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                    f"{tuple(expected[name].shape)}; the config does not match the weights"
                )
        model.load_state_dict(tensors, strict=False, assign=True)
        if config.tie_embeddings:  # assign replaced the embedding: share it again
            model.lm_head.weight = model.tok_emb.weight
        return model

    def add_head(self, n_outputs: int, pooling: str = "last") -> SequenceHead:
        """Put a new sequence head (n_outputs numbers per sequence) on this model, in its
        dtype and on its device, and record it in the config (fine-tuning a classifier or
        a reward model from a language model)."""
        self.config = replace(self.config, head_outputs=n_outputs, head_pooling=pooling)
        weight = self.tok_emb.weight
        self.head = SequenceHead(self.config.n_embd, n_outputs, pooling).to(weight.device,
                                                                            weight.dtype)
        return self.head

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialisation, for every family, all in one place.

        | parameter                               | init                      |
        |-----------------------------------------|---------------------------|
        | embeddings, Linear weights, experts     | normal(0, 0.02)           |
        | residual projections (attn.proj,        | normal(0, 0.02/sqrt(2 L)) |
        |   mlp.proj, experts' proj)              |                           |
        | biases                                  | 0                         |
        | LayerNorm / RMSNorm weight, bias        | 1 / 0                     |
        | zero-centred RMSNorm weight (1 + w)     | 0                         |
        | attention sinks (gpt-oss)               | 0                         |

        Each of the 2 L residual branches adds to the stream; shrinking their
        output projections keeps the stream's variance from growing with depth
        (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners").
        On the meta device every step is free: nothing is allocated.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(".proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, MoE):
                nn.init.normal_(module.gate, mean=0.0, std=0.02)
                nn.init.normal_(module.up, mean=0.0, std=0.02)
                nn.init.normal_(module.proj, mean=0.0, std=residual_std)
                for bias in module.expert_tensors()[3:]:  # gpt-oss's expert biases
                    nn.init.zeros_(bias)
                if module.expert_bias is not None:
                    nn.init.zeros_(module.expert_bias)
            elif isinstance(module, CausalSelfAttention) and module.sinks is not None:
                nn.init.zeros_(module.sinks)  # gpt-oss: every sink logit starts at 0
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, GatedDeltaNet):
                module.init_decay()
            elif isinstance(module, Block) and module.scalar is not None:
                nn.init.ones_(module.scalar)  # Gemma 4's layer scalar: 1 until loaded
            elif isinstance(module, RMSNorm) and module.zero_centred:
                nn.init.zeros_(module.weight)  # a gain of 1 + 0
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final hidden states (B, T, D) of the trunk: every layer, then the final norm.

        input_ids: (B, T) int64. With a `cache`, these are the tokens that follow
        the `cache.pos` tokens already stored, and the cache is advanced by T. A
        cache that attends itself (one with `attend`: the engine's paged batches,
        generation/paged_cache.py) gives each token's position instead
        (`cache.positions`, (B, T)) and its attention sees what the cache says.
        attention_mask: optional (B, S), S = cache.pos + T: 1 for real tokens, 0
        for padding. Padding keys are hidden and positions count real tokens
        only, so each row of a padded batch (left or right) gets the hidden
        states it would get alone; those at padding positions are meaningless.
        Several sequences may share a row ("packing"): number their tokens 1,
        2, 3, ... in the mask, and each sees only its own tokens, its positions
        starting again from 0, as if it were alone.
        """
        c = self.config
        B, T = input_ids.shape
        device = input_ids.device
        paged = cache is not None and hasattr(cache, "attend")
        if paged:  # the cache knows each token's position and which keys it sees
            positions = cache.positions  # (B, T)
        else:
            start = cache.pos if cache is not None else 0
            S = start + T
            if S > c.context_length:
                raise LLMScratchError(
                    f"sequence of {S} tokens is longer than the model's context "
                    f"length {c.context_length}; shorten the input"
                )
            if attention_mask is None:
                positions = torch.arange(start, S, device=device)  # (T,)
            else:
                if attention_mask.shape != (B, S):
                    raise ValueError(f"attention_mask must have shape {(B, S)}, "
                                     f"got {tuple(attention_mask.shape)}")
                positions = segment_positions(attention_mask)[:, start:]  # (B, T)

        x = self.tok_emb(input_ids)  # (B, T, D)
        if c.scale_embeddings:  # Gemma: sqrt(D) in fp32, then rounded to x's dtype as theirs is
            x = x * torch.tensor(math.sqrt(c.n_embd)).to(x.dtype)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)  # (B, T, D)
        # Gemma 4 E2B, E4B: every layer's own input, (B, T, L, P)
        layer_inputs = self.per_layer(input_ids, x) if self.per_layer is not None else None
        # What attention needs, once per kind of layer (local: through the sliding window).
        rope, visible = {}, {}
        for local in {c.layer_is_local(i) for i in range(c.n_layer)}:
            rope[local] = None
            if c.positions == "rope":
                freqs = rope_frequencies(c, device, local)
                rope[local] = rope_angles(positions, freqs, rope_gain(c, local))  # 2 x (T, Dh)
            # Plain causal attention needs no mask tensor (the fused kernel makes its own).
            window = c.sliding_window if local else 0
            visible[local] = None
            if not paged and (attention_mask is not None or window):
                visible[local] = visible_keys(T, S, device, window, attention_mask)
        x = F.dropout(x, c.dropout, self.training)
        shared = SharedKV() if c.kv_shared_layers else None  # Gemma 4: keys and values, by kind
        for i, block in enumerate(self.blocks):
            local = c.layer_is_local(i)
            layer_input = layer_inputs[:, :, i] if layer_inputs is not None else None
            x = block(x, rope[local], cache, visible[local], attention_mask, shared, layer_input)
        if cache is not None:
            cache.advance(T)
        return self.ln_f(x)  # (B, T, D)

    # --- heads on the hidden states --------------------------------------------------

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from hidden states: (..., D) -> (..., V). With `logit_softcap` c
        (Gemma 4), c tanh(logits / c): about the same for small logits, never beyond +-c."""
        logits = self.lm_head(hidden)  # (..., V)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def next_token_loss(self, hidden: torch.Tensor, targets: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy (nats) and the number of tokens it covers.

        hidden: (B, T, D); targets: (B, T) int64, -100 where nothing is
        predicted (padding, a prompt that is not trained on). Returns a scalar
        fp32 sum and a scalar int64 count: the training loop divides once,
        after gradient accumulation and across processes, so every token
        weighs the same however the batch was split. Computed with the output
        layer a chunk of rows at a time (model/heads.py).
        """
        flat_targets = targets.flatten()  # (B T,)
        if self.config.logit_softcap:  # heads.py's closed-form gradient is for raw logits
            return (capped_cross_entropy(hidden.flatten(0, 1), self.logits, flat_targets),
                    (flat_targets != -100).sum())
        if type(self.lm_head) is not nn.Linear:  # packed or quantized for inference: no weight
            return (layer_cross_entropy(hidden.flatten(0, 1), self.lm_head, flat_targets),
                    (flat_targets != -100).sum())
        loss_sum = linear_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight, flat_targets)
        return loss_sum, (flat_targets != -100).sum()

    def token_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(targets[b, t]) under the model's next-token distribution at (b, t): (B, T) fp32.

        0 where the target is -100. Differentiable, and computed a chunk of rows
        at a time, so preference and RL objectives never hold (B, T, V) logits.
        """
        B, T = targets.shape
        if self.config.logit_softcap:  # Gemma 4: through autograd, all (B, T, V) log-probs
            log_probs = torch.log_softmax(self.logits(hidden).float(), dim=-1)  # (B, T, V)
            picked = log_probs.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
            return picked.masked_fill(targets == -100, 0.0)  # (B, T)
        flat = linear_log_probs(hidden.flatten(0, 1), self.lm_head.weight, targets.flatten())
        return flat.view(B, T)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache sized for this model, on its device and in its dtype."""
        param = self.tok_emb.weight  # (the linear layers' weights may be packed for inference)
        c = self.config
        heads, key_width, value_width = c.cache_widths  # MLA: a latent and a RoPE key
        recurrent = {i: state_shapes(c, batch_size) for i in range(c.n_layer)
                     if c.layer_is_linear(i)}  # Gated DeltaNet layers keep a state instead
        return KVCache(
            c.n_layer, batch_size, heads, max_len or c.context_length, key_width,
            dtype=param.dtype, device=param.device, value_dim=value_width, recurrent=recurrent,
            uncached=[i for i in range(c.n_layer) if not c.layer_is_linear(i)
                      and not caches_keys(c, i)],  # Gemma 4's sharing layers: nothing
            shapes={i: c.layer_cache_widths(i)[:2] for i in range(c.n_layer)
                    if c.layer_cache_widths(i) != c.cache_widths},  # Gemma 4's global layers
        )

    def num_params(self, non_embedding: bool = False, active: bool = False) -> int:
        """Parameter count (tied weights counted once).

        With `non_embedding`, position and token embeddings are left out, the
        convention of scaling-law papers (Kaplan et al., 2020). With tied
        embeddings the output layer shares the token embedding, so it goes too.
        With `active`, a Mixture of Experts counts only the K experts a token
        uses in each layer, not all E.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if self.per_layer is not None:  # Gemma 4's per-layer input table
                n -= self.per_layer.embed.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        if active and self.config.mlp == "moe":
            idle = self.config.n_expert - self.config.n_expert_active
            n -= sum(idle * block.mlp.expert_params() for block in self.blocks
                     if isinstance(block.mlp, MoE))
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> int:
        """FLOPs per token: 2 N_active for the weights + 4 L T' H Dh for attention,
        forward; training is 3 x forward (the backward pass costs two forwards).

        Every weight is one multiply-add (2 FLOPs) per token; attention scores
        and the weighted sum cost 2 T' H Dh each, where T' is the number of
        keys a token reads: T, or the sliding window in a local layer (the
        formula's L T' is summed over the attention layers; in latent attention q . k spans
        qk_nope_head_dim + qk_rope_head_dim features, the values v_head_dim; a Gated DeltaNet
        layer reads and rewrites its memory instead, 4 Hv Dk Dv). With H Dh = D this is
        6 N + 12 L T D for training (Kaplan et al., 2020, appendix; PaLM,
        Chowdhery et al., 2022, appendix B).
        """
        c = self.config
        T = seq_len or c.context_length
        # Keys read per layer, summed over layers: T, or the window in local layers.
        keys = sum(min(T, c.sliding_window) if c.layer_is_local(i) else T
                   for i in range(c.n_layer) if not c.layer_is_linear(i))
        # A Gated DeltaNet layer reads and rewrites its memory instead: about two
        # multiply-adds per entry of its Hv matrices (Dk, Dv), whatever T.
        n_linear = sum(c.layer_is_linear(i) for i in range(c.n_layer))
        memory = 4 * n_linear * c.linear_n_value_head * c.linear_key_size * c.linear_value_size
        # Every weight is used in a matmul except the embedding lookups; a tied
        # token embedding is still used once, as the output layer.
        n_matmul = self.num_params(active=True)
        if self.pos_emb is not None:
            n_matmul -= self.pos_emb.weight.numel()
        if self.per_layer is not None:  # a lookup too
            n_matmul -= self.per_layer.embed.weight.numel()
        if not c.tie_embeddings:
            n_matmul -= self.tok_emb.weight.numel()
        value_dim = c.v_head_dim if c.kv_lora_rank else c.head_dim
        # Gemma 4's global layers have wider heads: q . k and the weighted sum grow with them.
        wider = sum(4 * T * c.n_head * (c.layer_head_dim(i) - c.head_dim)
                    for i in range(c.n_layer) if not c.layer_is_local(i))
        forward = 2 * n_matmul + 2 * keys * c.n_head * (c.head_dim + value_dim) + memory + wider
        return 3 * forward if training else forward
