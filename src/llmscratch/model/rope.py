"""Rotary position embeddings (RoPE), with Llama 3's, YaRN's and linear frequency scaling.

Legend: B batch, H heads, T tokens, Dh head width (the part RoPE rotates:
config.rope_dim), P = Dh / 2 rotated pairs.

RoPE (Su et al., 2021, "RoFormer") gives attention a sense of order without a
position table: before q and k meet, each pair of their features is rotated
by an angle proportional to the token's position, pair p at frequency

    freq_p = theta ** (-2 p / Dh),        p = 0 .. P-1

so fast pairs turn almost a radian per token and slow ones barely move. A
rotation by angle a of q and by b of k changes their dot product only through
b - a: attention scores depend on how far apart two tokens are, not where.

Pairing: feature p is paired with feature p + P (the "rotate half" layout of
Hugging Face checkpoints). Meta's original code pairs neighbours 2p, 2p + 1;
the two agree after permuting the rows of the q and k projections, which the
Hugging Face conversion did once, so its weights load here unchanged.
"""

from __future__ import annotations

import math

import torch

from llmscratch.model.config import ModelConfig


def rope_frequencies(config: ModelConfig, device: torch.device | str | None = None,
                     local: bool = False) -> torch.Tensor:
    """Rotation frequency of each feature pair, in radians per token: (P,) float32.

    `local`: for a local layer, which uses `rope_local_theta` unscaled when it is set.
    A global layer may have wider heads (`global_head_size`) and turn only its first
    pairs (`rope_proportional`: Gemma 4's "proportional" RoPE).
    """
    own_base = local and config.rope_local_theta > 0
    theta = config.rope_local_theta if own_base else config.rope_theta
    dim = config.rope_dim  # the rotated features: Dh, or its first part (Qwen3-Next)
    if not local and config.global_head_size:  # Gemma 4: the global layers' wider heads
        dim = config.global_head_size
    exponents = torch.arange(0, dim, 2, device=device, dtype=torch.float32)  # (P,)
    freqs = 1.0 / theta ** (exponents / dim)  # (P,)
    if not local and config.rope_proportional:  # Gemma 4: only the fastest pairs turn
        freqs[int(config.rope_proportional * dim // 2):] = 0.0  # cos 1, sin 0: left as is
    if own_base:
        return freqs
    if config.rope_scaling == "llama3":
        freqs = llama3_scaled(freqs, config)
    elif config.rope_scaling == "yarn":
        freqs = yarn_scaled(freqs, config)
    elif config.rope_scaling == "linear":  # positions divided by the factor (Chen et al., 2023)
        freqs = freqs / config.rope_factor
    return freqs


def llama3_scaled(freqs: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Llama 3.1's frequency scaling, for contexts longer than pretraining's.

    A pair's wavelength (2 pi / freq) is the number of tokens per full turn.
    With L = `rope_original_context` tokens seen in pretraining:

    - short wavelengths (< L / high_freq_factor) turn many times within L and
      encode local order: they are kept;
    - long wavelengths (> L / low_freq_factor) never completed a turn within L:
      they are slowed by `rope_factor`, so the longer context maps onto angles
      the model has seen;
    - in between, the two are blended linearly in L / wavelength.

    (Meta, 2024, "The Llama 3 Herd of Models"; reference code in llama-models.)
    """
    c = config
    wavelengths = 2 * math.pi / freqs  # (P,) tokens per turn
    # 1 = keep the frequency, 0 = divide it by the factor, fractions blend.
    keep = (c.rope_original_context / wavelengths - c.rope_low_freq_factor) / (
        c.rope_high_freq_factor - c.rope_low_freq_factor
    )
    keep = keep.clamp(0.0, 1.0)  # (P,)
    return keep * freqs + (1 - keep) * freqs / c.rope_factor


def yarn_scaled(freqs: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """YaRN's frequency scaling (Peng et al., 2023, "YaRN"; Olmo 3's global layers).

    Like llama3's, with the same two thresholds counted in turns within the
    original context L: pairs that turn more than `rope_high_freq_factor`
    times (YaRN's beta_fast) are kept, pairs that turn fewer than
    `rope_low_freq_factor` times (beta_slow) are slowed by `rope_factor`. In
    between, the blend is linear in the pair index p rather than in turns.
    Pair p turns L / (2 pi theta^(2p/Dh)) times; solved for p, rounded outwards
    (unless `rope_yarn_truncate` is off, as in gpt-oss: then the fractional p).
    """
    c = config

    def pair_turning(times: float) -> float:  # the (fractional) p that turns `times` times in L
        turns = math.log(c.rope_original_context / (times * 2 * math.pi))
        return c.rope_dim * turns / (2 * math.log(c.rope_theta))

    low, high = pair_turning(c.rope_high_freq_factor), pair_turning(c.rope_low_freq_factor)
    if c.rope_yarn_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, c.rope_dim - 1)
    pairs = torch.arange(freqs.numel(), device=freqs.device, dtype=torch.float32)  # (P,)
    slow = ((pairs - low) / max(high - low, 1e-3)).clamp(0.0, 1.0)  # (P,) 1 = slowed
    return slow * freqs / c.rope_factor + (1 - slow) * freqs


def rope_gain(config: ModelConfig, local: bool = False) -> float:
    """What cos and sin are multiplied by: YaRN's `rope_attention_factor` (which sharpens
    attention, scores growing by its square) in the layers it scales, else 1."""
    if config.rope_scaling != "yarn" or (local and config.rope_local_theta > 0):
        return 1.0
    return config.rope_attention_factor


def rope_angles(positions: torch.Tensor, freqs: torch.Tensor, gain: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every rotation angle, laid out to match the features.

    positions: (T,) or (B, T) integer positions; freqs: (P,); `gain` scales both
    (YaRN, see `rope_gain`).
    Returns cos, sin: (T, Dh), or (B, 1, T, Dh) for per-row positions (padding),
    ready to broadcast against q and k of shape (B, H, T, Dh).
    """
    angles = positions.float().unsqueeze(-1) * freqs  # (..., T, P)
    angles = torch.cat([angles, angles], dim=-1)  # (..., T, Dh): pair p and p + P share an angle
    if angles.dim() == 3:
        angles = angles.unsqueeze(1)  # (B, 1, T, Dh): one angle for every head
    if gain != 1.0:
        return angles.cos() * gain, angles.sin() * gain
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_p, x_{p+P}) of x (B, H, T, Dh) by its angle; same shape out.

    The rotation [[cos, -sin], [sin, cos]] applied to (a, b) gives
    (a cos - b sin, b cos + a sin): x * cos plus the "rotated half" (-b, a) * sin.
    """
    rotated = cos.size(-1)
    if rotated < x.size(-1):  # partial RoPE: the features past the rotated ones pass as they are
        return torch.cat([apply_rope(x[..., :rotated], cos, sin), x[..., rotated:]], dim=-1)
    half = x.size(-1) // 2
    first, second = x[..., :half], x[..., half:]  # (B, H, T, P) each
    rotated_half = torch.cat([-second, first], dim=-1)  # (B, H, T, Dh)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)
