"""One model, eight families: sizes equal transformers', attention paths agree, padding,
KV cache, RoPE, Mixture of Experts against a dense run of every expert, config errors, and
Qwen3-Next's Gated DeltaNet (chunked form against the recurrence), output gate, shared expert."""

import itertools
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmscratch.errors import LLMScratchError
from llmscratch.generation.sampling import SamplingConfig, generate
from llmscratch.model import GPT, get_preset
from llmscratch.model.config import torch_dtype
from llmscratch.model.footprint import footprint
from llmscratch.model.linear_attention import chunk_gated_delta_rule, recurrent_gated_delta_rule
from llmscratch.model.rope import apply_rope, rope_angles, rope_frequencies, rope_gain

TINY = ["gpt2-tiny", "llama-3-tiny", "qwen3-tiny", "qwen3-moe-tiny", "gemma3-tiny",
        "olmo3-tiny", "gpt-oss-tiny", "deepseek-v3-tiny", "qwen3-next-tiny", "qwen3.5-tiny",
        "gemma4-tiny"]
# Parameter counts of the released checkpoints (the Hugging Face model cards
# round them: 124M, 1.24B, 3.21B, 8.03B, 0.6B, 1.7B, 4.0B, 8.2B, 30.5B).
RELEASED = {
    "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200, "llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248, "qwen3-0.6b": 596_049_920, "qwen3-1.7b": 1_720_574_976,
    "qwen3-4b": 4_022_468_096, "qwen3-8b": 8_190_735_360, "qwen3-30b-a3b": 30_532_122_624,
    "qwen3-next-80b-a3b": 79_674_391_296,
}


def tiny(name: str, **overrides) -> GPT:
    torch.manual_seed(0)
    model = GPT(get_preset(name, **overrides)).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: perturb them so they matter
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
        for name, buffer in model.named_buffers():  # DeepSeek's router bias: let it steer
            if name.endswith("expert_bias") or name.endswith(".scalar"):  # (Gemma 4's scalars)
                buffer.add_(0.1 * torch.randn_like(buffer))
    return model


def tolerance(name: str) -> float:
    """How far two ways of computing a tiny model's hidden states may differ (fp32): Gemma 4's
    scores are unscaled (q . k of unit-RMS heads), a sharper softmax, where the kernels'
    rounding differs by up to 2e-5."""
    return 5e-5 if name == "gemma4-tiny" else 1e-5


def meta_hf_count(preset: str) -> int:
    """Parameters of the transformers model for `preset`, built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmscratch.model.hf_config import config_to_hf

    hf = config_to_hf(get_preset(preset))
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are one parameter


@pytest.mark.parametrize("preset", list(RELEASED))
def test_preset_parameter_counts_equal_transformers(preset):
    with torch.device("meta"):
        ours = GPT(get_preset(preset)).num_params()
    assert ours == meta_hf_count(preset) == RELEASED[preset]


# The model cards' rounded sizes (Gemma 3 4B to 27B: the text model only, without the
# vision encoder), to the percent.
ROUNDED = {"gemma-3-270m": 268e6, "gemma-3-1b": 1.0e9, "gemma-3-4b": 3.88e9,
           "gemma-3-12b": 11.77e9, "gemma-3-27b": 27.0e9, "olmo-3-7b": 7.3e9,
           "olmo-3-32b": 32.2e9, "gpt-oss-20b": 20.9e9, "gpt-oss-120b": 116.8e9,
           "deepseek-v3": 671e9}


@pytest.mark.parametrize("preset", list(ROUNDED))
def test_gemma3_and_olmo3_presets_count_as_transformers(preset):
    with torch.device("meta"):
        ours = GPT(get_preset(preset)).num_params()
    assert ours == meta_hf_count(preset)
    assert abs(ours / ROUNDED[preset] - 1) < 0.01


def test_moe_active_parameters():
    with torch.device("meta"):
        model = GPT(get_preset("qwen3-30b-a3b"))
    # 8 of 128 experts per layer: 48 layers x 120 idle experts x 3 matrices of 2048 x 768.
    idle = 48 * 120 * 3 * 2048 * 768
    assert model.num_params(active=True) == model.num_params() - idle == 3_353_032_704
    with torch.device("meta"):  # Qwen3-Next: 10 of 512 experts, and the shared one always
        model = GPT(get_preset("qwen3-next-80b-a3b"))
    idle = 48 * 502 * 3 * 2048 * 512
    assert model.num_params(active=True) == model.num_params() - idle == 3_874_929_408


def test_deepseek_v3_active_parameters():
    with torch.device("meta"):
        model = GPT(get_preset("deepseek-v3"))
    # 8 of 256 routed experts in the 58 layers after the 3 dense ones: 3 matrices of 7168 x 2048.
    idle = 58 * 248 * 3 * 7168 * 2048
    assert model.num_params(active=True) == model.num_params() - idle
    # 37.6B with the embedding and the output layer: "37B activated"
    assert model.num_params(active=True) == 37_552_282_624


@pytest.mark.parametrize("name", TINY)
def test_explicit_attention_equals_sdpa(name):
    ids = torch.randint(0, 512, (2, 40))
    fused = tiny(name)(ids)
    explicit = tiny(name, attn_impl="explicit")(ids)
    tol = tolerance(name)
    torch.testing.assert_close(explicit, fused, atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_sliding_window_hides_distant_tokens(impl):
    model = tiny("qwen3-tiny", sliding_window=8, attn_impl=impl)
    ids = torch.randint(0, 512, (1, 30))
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 512
    # Two layers of a window of 8 reach back 14 tokens: token 0 reaches position 14 at most.
    torch.testing.assert_close(model(ids)[:, 15:], model(changed)[:, 15:])
    assert not torch.allclose(model(ids)[:, 1:8], model(changed)[:, 1:8])
    torch.testing.assert_close(model(ids), tiny("qwen3-tiny", sliding_window=8)(ids),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_row_alone(name, side):
    model = tiny(name)
    rows = [torch.randint(0, 512, (n,)) for n in (12, 7, 3)]
    width, pad_id = max(len(r) for r in rows), 0
    batch = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        batch[i, where], mask[i, where] = row, 1
    hidden = model(batch, attention_mask=mask)  # (3, width, D)
    for i, row in enumerate(rows):
        alone = model(row.unsqueeze(0))[0]  # (n, D)
        tol = tolerance(name)
        torch.testing.assert_close(hidden[i][mask[i].bool()], alone, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", TINY)
def test_sequences_packed_in_one_row_each_equal_their_forward_alone(name):
    """Packing (fine-tuning): sequences numbered 1, 2, 3 in the mask, then padding. Each
    sees only itself and its positions restart, whatever the family's positions and window."""
    model = tiny(name, sliding_window=4) if name == "qwen3-tiny" else tiny(name)
    rows = [torch.randint(0, 512, (n,)) for n in (5, 9, 3)]
    packed = torch.cat(rows + [torch.zeros(2, dtype=torch.int64)])[None]  # (1, 19)
    segments = torch.cat([torch.full((len(r),), i + 1) for i, r in enumerate(rows)]
                         + [torch.zeros(2, dtype=torch.int64)])[None]  # 1..1 2..2 3..3 0 0
    hidden = model(packed, attention_mask=segments)[0]  # (19, D)
    start = 0
    for row in rows:
        alone = model(row.unsqueeze(0))[0]  # (n, D)
        tol = tolerance(name)
        torch.testing.assert_close(hidden[start:start + len(row)], alone, atol=tol, rtol=tol)
        start += len(row)


@pytest.mark.parametrize("name", TINY)
def test_cached_forward_equals_full_forward(name):
    model = tiny(name, sliding_window=6) if name == "qwen3-tiny" else tiny(name)
    ids = torch.randint(0, 512, (2, 24))
    full = model(ids)
    cache = model.new_cache(batch_size=2)
    pieces = [model(ids[:, :10], cache), model(ids[:, 10:17], cache)]  # prefill, then a chunk
    pieces += [model(ids[:, t : t + 1], cache) for t in range(17, 24)]  # decode
    tol = tolerance(name)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", TINY)
def test_greedy_generation_with_cache_equals_without(name):
    model = tiny(name)
    prompt = [1, 2, 3, 4]
    cached = generate(model, prompt, SamplingConfig(max_new_tokens=20, temperature=0))
    ids = list(prompt)
    for _ in range(20):
        ids.append(int(model.logits(model(torch.tensor([ids])))[0, -1].argmax()))
    assert cached == ids[len(prompt):]


def test_moe_equals_a_dense_run_of_every_expert():
    torch.manual_seed(0)
    config = get_preset("qwen3-moe-tiny")
    for renormalize in (True, False):
        moe = GPT(replace(config, moe_renormalize=renormalize)).blocks[0].mlp
        x = torch.randn(3, 11, config.n_embd)
        # Every expert on every token, then the router's top-k weights (others zero).
        probs = torch.softmax(x @ moe.router.weight.T, dim=-1)  # (B, T, E)
        top = probs.topk(config.n_expert_active, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
        if renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        every = torch.stack([
            (F.silu(x @ moe.gate[e].T) * (x @ moe.up[e].T)) @ moe.proj[e].T
            for e in range(config.n_expert)
        ], dim=-2)  # (B, T, E, D)
        dense = (weights.unsqueeze(-1) * every).sum(dim=-2)  # (B, T, D)
        torch.testing.assert_close(moe(x), dense, atol=1e-5, rtol=1e-5)


def test_gpt_oss_moe_equals_a_dense_run_of_every_expert_with_its_clamped_swiglu():
    """gpt-oss's router (with a bias) softmaxes only the top-k logits; its experts (with
    biases) apply (clamp(up, +-L) + 1) * g sigmoid(alpha g), g = min(gate, L), by hand."""
    torch.manual_seed(0)
    config = get_preset("gpt-oss-tiny", swiglu_limit=0.5)
    moe = GPT(config).blocks[0].mlp
    with torch.no_grad():
        for bias in (moe.router.bias, moe.gate_bias, moe.up_bias, moe.proj_bias):
            bias.normal_(0.0, 0.3)
    x = torch.randn(3, 11, config.n_embd) * 10  # large enough that the clamps bite
    logits = x @ moe.router.weight.T + moe.router.bias  # (B, T, E)
    top = logits.topk(config.n_expert_active, dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, top.indices, top.values.softmax(-1))
    L, alpha = config.swiglu_limit, config.swiglu_alpha
    every = []
    for e in range(config.n_expert):
        gate = (x @ moe.gate[e].T + moe.gate_bias[e]).clamp(max=L)
        up = (x @ moe.up[e].T + moe.up_bias[e]).clamp(-L, L)
        assert (gate == L).any() and (up == -L).any()
        hidden = (up + 1) * gate * torch.sigmoid(alpha * gate)
        every.append(hidden @ moe.proj[e].T + moe.proj_bias[e])
    dense = (weights.unsqueeze(-1) * torch.stack(every, dim=-2)).sum(dim=-2)  # (B, T, D)
    torch.testing.assert_close(moe(x), dense, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_attention_sinks_join_the_softmax_denominator(impl):
    """weight_ij = exp(score_ij) / (exp(sink_h) + sum_k exp(score_ik)), by hand, whichever
    path is asked for; and a sink that takes nearly everything silences its head."""
    torch.manual_seed(0)
    config = get_preset("gpt-oss-tiny", attn_impl=impl, n_layer=1)
    attn = GPT(config).blocks[0].attn
    with torch.no_grad():
        attn.sinks.copy_(torch.tensor([-1.0, 0.5, 2.0, 30.0]))
    B, T, H, Dh = 2, 6, config.n_head, config.head_dim
    x = torch.randn(B, T, config.n_embd)
    q, k, v = attn.qkv(x).split(attn.split_sizes, dim=-1)
    q = q.view(B, T, H, Dh).transpose(1, 2)
    k = k.view(B, T, 2, Dh).transpose(1, 2).repeat_interleave(2, dim=1)
    v = v.view(B, T, 2, Dh).transpose(1, 2).repeat_interleave(2, dim=1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(Dh)).exp()  # (B, H, T, T)
    scores = scores * torch.ones(T, T).tril()  # causal
    weights = scores / (attn.sinks.exp().view(1, H, 1, 1) + scores.sum(-1, keepdim=True))
    context = (weights @ v).transpose(1, 2).reshape(B, T, H * Dh)
    expected = attn.proj(context)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    assert context[:, :, 3 * Dh:].abs().max() < 1e-6  # the last head gave all to its sink
def test_deepseek_moe_equals_a_hand_computed_routing_of_every_expert():
    """Sigmoid scores; the bias steers the choice only; experts only from each token's 2 best
    of 4 groups (a group is worth its 2 best choices); the weights renormalised and scaled;
    and the shared expert on every token."""
    torch.manual_seed(0)
    config = get_preset("deepseek-v3-tiny")
    moe = GPT(config).blocks[1].mlp
    moe.expert_bias.normal_(0.0, 0.3)
    x = torch.randn(3, 11, config.n_embd)
    scores = torch.sigmoid(x @ moe.router.weight.T)  # (B, T, E)
    weights = torch.zeros_like(scores)
    steered = 0
    for b, t in itertools.product(range(3), range(11)):
        choice = (scores[b, t] + moe.expert_bias).tolist()  # 8 experts: 4 groups of 2
        worth = [choice[2 * g] + choice[2 * g + 1] for g in range(4)]
        groups = sorted(range(4), key=lambda g: -worth[g])[:2]
        allowed = [e for e in range(8) if e // 2 in groups]
        chosen = sorted(allowed, key=lambda e: -choice[e])[:2]
        steered += set(chosen) != set(scores[b, t].topk(2).indices.tolist())
        weights[b, t, chosen] = scores[b, t, chosen] / scores[b, t, chosen].sum() * 2.5
    assert steered > 0  # the bias and the groups changed some token's experts
    every = torch.stack([
        (F.silu(x @ moe.gate[e].T) * (x @ moe.up[e].T)) @ moe.proj[e].T
        for e in range(config.n_expert)
    ], dim=-2)  # (B, T, E, D)
    shared = moe.shared.proj(F.silu(moe.shared.gate(x)) * moe.shared.up(x))  # (B, T, D)
    dense = (weights.unsqueeze(-1) * every).sum(dim=-2) + shared
    torch.testing.assert_close(moe(x), dense, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_distance():
    config = get_preset("llama-3-tiny")
    freqs = rope_frequencies(config)
    q, k = torch.randn(1, 1, 1, config.head_dim), torch.randn(1, 1, 1, config.head_dim)

    def score(q_pos: int, k_pos: int) -> torch.Tensor:
        cos_q, sin_q = rope_angles(torch.tensor([q_pos]), freqs)
        cos_k, sin_k = rope_angles(torch.tensor([k_pos]), freqs)
        return (apply_rope(q, cos_q, sin_q) * apply_rope(k, cos_k, sin_k)).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 5))


def test_llama3_scaling_keeps_fast_and_slows_slow_frequencies():
    config = get_preset("llama-3.2-1b")
    plain = rope_frequencies(get_preset("llama-3.2-1b", rope_scaling="none"))
    scaled = rope_frequencies(config)
    wavelengths = 2 * math.pi / plain
    fast = wavelengths < config.rope_original_context / config.rope_high_freq_factor
    slow = wavelengths > config.rope_original_context / config.rope_low_freq_factor
    assert fast.any() and slow.any()
    torch.testing.assert_close(scaled[fast], plain[fast])
    torch.testing.assert_close(scaled[slow], plain[slow] / config.rope_factor)


def test_yarn_keeps_fast_and_slows_slow_pairs_of_global_layers_only():
    config = get_preset("olmo-3-7b")
    plain = rope_frequencies(replace(config, rope_scaling="none"))
    scaled = rope_frequencies(config)
    turns = config.rope_original_context * plain / (2 * math.pi)  # turns within 8k tokens
    fast = turns > config.rope_high_freq_factor  # 32 turns: kept
    slow = turns < config.rope_low_freq_factor  # under one turn: slowed 8 times
    assert fast.any() and slow.any() and not (fast | slow).all()
    torch.testing.assert_close(scaled[fast], plain[fast])
    torch.testing.assert_close(scaled[slow], plain[slow] / config.rope_factor)
    between = ~(fast | slow)
    assert ((scaled[between] < plain[between]) & (scaled[between] > plain[between] / 8)).any()
    # Local layers: their own base (the same here), unscaled, and no attention gain.
    torch.testing.assert_close(rope_frequencies(config, local=True), plain)
    cos, _ = rope_angles(torch.tensor([0]), scaled, rope_gain(config))
    assert cos[0, 0].item() == pytest.approx(0.1 * math.log(8) + 1)
    assert rope_gain(config, local=True) == 1.0


def test_kv_cache_stores_only_the_kv_heads():
    model = tiny("llama-3-tiny")
    cache = model.new_cache(batch_size=1, max_len=16)
    assert cache.keys[0].shape == (1, 2, 16, 16)  # (B, Hkv, Tmax, Dh): 2 kv heads, not 4


def test_latent_attention_caches_one_latent_and_one_rope_key_per_token():
    model = tiny("deepseek-v3-tiny")
    cache = model.new_cache(batch_size=1, max_len=16)
    assert cache.keys[0].shape == (1, 1, 16, 32)  # (B, 1, Tmax, kv_lora_rank)
    assert cache.values[0].shape == (1, 1, 16, 16)  # (B, 1, Tmax, qk_rope_head_dim)
    # DeepSeek V3: 61 layers x (512 + 64) numbers x 2 bytes a token, against 61 x 2 x 128
    # heads x 128 x 2 for multi-head attention with its head count and value width.
    report = footprint(get_preset("deepseek-v3"), seq=1000)
    assert report["memory_bytes"]["kv_cache"] == 1000 * 61 * (512 + 64) * 2
    assert report["kv_cache_bytes_per_token"] == 61 * (512 + 64) * 2  # 70,272


@pytest.mark.parametrize("overrides, field", [
    ({"n_kv_head": 3}, "n_kv_head"),
    ({"positions": "alibi"}, "positions"),
    ({"norm": "batchnorm"}, "norm"),
    ({"mlp": "moe"}, "n_expert"),
    ({"n_expert": 4}, "n_expert"),
    ({"positions": "rope", "head_size": 15}, "head_size"),
    ({"dtype": "fp16"}, "dtype"),
    ({"norm_placement": "middle"}, "norm_placement"),
    ({"norm_zero_centred": True}, "norm_zero_centred"),  # GPT-2's LayerNorm
    ({"qk_norm_scope": "layer"}, "qk_norm_scope"),
    ({"sliding_window_pattern": 6}, "sliding_window_pattern"),  # and no window
    ({"rope_scaling": "ntk"}, "rope_scaling"),
    ({"rope_attention_factor": 0.0}, "rope_attention_factor"),
    ({"swiglu_limit": 7.0}, "swiglu_limit"),  # a dense MLP: the clamp is for experts
    ({"rope_yarn_truncate": False}, "rope_yarn_truncate"),  # and no YaRN
    ({"qk_rope_head_dim": 8}, "qk_rope_head_dim"),  # and no kv_lora_rank
    ({"kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8},
     "positions"),  # learned positions
    ({"moe_router": "sigmoid"}, "moe_router"),  # and no experts
    ({"mlp": "moe", "n_expert": 4, "n_expert_active": 2, "moe_router": "relu"}, "moe_router"),
    ({"mlp": "moe", "n_expert": 4, "n_expert_active": 2, "moe_groups": 3}, "moe_groups"),
    ({"mlp": "moe", "n_expert": 4, "n_expert_active": 3, "moe_groups": 2}, "moe_groups_active"),
    ({"mlp": "moe", "n_expert": 4, "n_expert_active": 2, "moe_dense_layers": 1},
     "dense_mlp_hidden"),
    ({"full_attention_interval": 4}, "linear_n_key_head"),  # DeltaNet layers without sizes
    ({"rope_fraction": 1.5}, "rope_fraction"),
    ({"positions": "rope", "rope_fraction": 0.1}, "rope_fraction"),  # 1 of 16 features
    ({"moe_shared_hidden": 32}, "moe_shared_hidden"),  # and no MoE
])
def test_bad_configs_name_the_field_and_value(overrides, field):
    with pytest.raises(LLMScratchError, match=rf"model\.{field}=") as err:
        get_preset("gpt2-tiny", **overrides)
    assert "\n" not in str(err.value)


def test_docs_snippets_are_the_running_code():
    """Every code line shown in docs/families.md still appears in the file it names."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "families.md").read_text()
    snippets = re.findall(r"From `model/(\w+\.py)`:\n\n```python\n(.*?)```", doc, re.DOTALL)
    assert len(snippets) >= 10
    for file_name, snippet in snippets:
        source = (root / "src" / "llmscratch" / "model" / file_name).read_text()
        for line in snippet.strip("\n").splitlines():
            assert line in source, f"{file_name} no longer has: {line.strip()}"


# --- Qwen3-Next: Gated DeltaNet layers, the gated attention output, the shared expert ----


def test_chunked_delta_rule_equals_the_token_by_token_recurrence():
    """The chunked form (matmuls within chunks) computes the recurrence of the module
    docstring, from a given state, across chunk boundaries and a padded last chunk."""
    torch.manual_seed(0)
    B, H, T, Dk, Dv = 2, 3, 37, 8, 6
    q = F.normalize(torch.randn(B, H, T, Dk), dim=-1) * Dk ** -0.5
    k = F.normalize(torch.randn(B, H, T, Dk), dim=-1)
    v, state = torch.randn(B, H, T, Dv), torch.randn(B, H, Dk, Dv)
    g, beta = -torch.rand(B, H, T), torch.rand(B, H, T)
    out, final = chunk_gated_delta_rule(q, k, v, g, beta, state, chunk=8)  # 5 chunks
    S, expected = state.clone(), []
    for t in range(T):  # the recurrence, written with matrices
        S = S * g[:, :, t].exp()[..., None, None]
        u = beta[:, :, t, None] * (v[:, :, t] - (S.transpose(-1, -2) @ k[:, :, t, :, None])[..., 0])
        S = S + k[:, :, t, :, None] @ u[:, :, None, :]
        expected.append((S.transpose(-1, -2) @ q[:, :, t, :, None])[..., 0])
    torch.testing.assert_close(out, torch.stack(expected, dim=2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, S, atol=1e-5, rtol=1e-5)
    step_out, step_state = recurrent_gated_delta_rule(q, k, v, g, beta, state)
    torch.testing.assert_close(step_out, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step_state, final, atol=1e-5, rtol=1e-5)


def test_chunked_delta_rule_has_the_gradients_of_the_recurrence():
    """Training differentiates the chunked form (through its triangular solve): the same
    gradients as the token-by-token recurrence, for every input."""
    torch.manual_seed(0)
    B, H, T, Dk, Dv = 1, 2, 21, 4, 3
    inputs = [F.normalize(torch.randn(B, H, T, Dk), dim=-1) * Dk ** -0.5,
              F.normalize(torch.randn(B, H, T, Dk), dim=-1), torch.randn(B, H, T, Dv),
              -torch.rand(B, H, T), torch.rand(B, H, T), torch.randn(B, H, Dk, Dv)]
    weights = torch.randn(B, H, T, Dv), torch.randn(B, H, Dk, Dv)
    grads = []
    for rule in (lambda *x: chunk_gated_delta_rule(*x, chunk=8), recurrent_gated_delta_rule):
        leaves = [x.clone().requires_grad_() for x in inputs]
        out, final = rule(*leaves)
        ((out * weights[0]).sum() + (final * weights[1]).sum()).backward()
        grads.append([x.grad for x in leaves])
    for chunked, recurrent in zip(*grads, strict=True):
        torch.testing.assert_close(chunked, recurrent, atol=1e-5, rtol=1e-5)


def test_deltanet_layers_cache_a_fixed_size_state_and_attention_layers_keys():
    model = tiny("qwen3-next-tiny")
    cache = model.new_cache(batch_size=2, max_len=80)
    assert [k is None for k in cache.keys] == [True, True, True, False]  # 3 DeltaNet, 1 full
    assert cache.recurrent_states[0].shape == (2, 4, 16, 16)  # (B, Hv, Dk, Dv)
    assert cache.conv_states[0].shape == (2, 2 * 2 * 16 + 4 * 16, 3)  # (B, C, K - 1)
    ids = torch.randint(0, 512, (2, 100))  # two chunks and more, then decoding
    full = model(ids)
    pieces = [model(ids[:, :70], cache)] + [model(ids[:, t:t + 1], cache) for t in range(70, 75)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full[:, :75], atol=1e-5, rtol=1e-5)


def test_attention_output_gate_and_partial_rope():
    """The gated output is the plain one times sigmoid(gate); partial RoPE leaves the
    features past the rotated ones as they are."""
    config = get_preset("qwen3-next-tiny")
    attn = GPT(config).blocks[3].attn  # the full-attention layer
    x = torch.randn(1, 5, config.n_embd)
    gate = x @ attn.qkv.weight[-attn.split_sizes[-1]:].T  # (1, 5, H Dh)
    seen = {}
    attn.proj.register_forward_hook(lambda module, inputs, out: seen.update(gated=inputs[0]))
    attn(x)
    ungated = seen["gated"] / torch.sigmoid(gate)
    plain = replace(config, attn_output_gate=False)
    plain_attn = GPT(plain).blocks[3].attn
    with torch.no_grad():
        plain_attn.load_state_dict({**attn.state_dict(), "qkv.weight":
                                    attn.qkv.weight[:-attn.split_sizes[-1]]})
    plain_attn.proj.register_forward_hook(lambda module, inputs, out: seen.update(plain=inputs[0]))
    plain_attn(x)
    torch.testing.assert_close(ungated, seen["plain"], atol=1e-5, rtol=1e-5)
    cos, sin = rope_angles(torch.arange(6), rope_frequencies(config))  # (6, 4): 4 of 16 turn
    q = torch.randn(1, 2, 6, 16)
    rotated = apply_rope(q, cos, sin)
    assert torch.equal(rotated[..., 4:], q[..., 4:])
    torch.testing.assert_close(rotated[..., :4], apply_rope(q[..., :4], cos, sin))


def test_shared_expert_adds_its_gated_swiglu_to_the_routed_experts():
    torch.manual_seed(0)
    moe = GPT(get_preset("qwen3-next-tiny")).blocks[0].mlp
    x = torch.randn(2, 7, moe.router.in_features)
    shared = moe.shared
    expected_shared = torch.sigmoid(x @ shared.shared_gate.weight.T) * (
        (F.silu(x @ shared.gate.weight.T) * (x @ shared.up.weight.T)) @ shared.proj.weight.T)
    with_shared = moe(x)
    moe.shared = None  # the routed experts alone
    torch.testing.assert_close(with_shared - moe(x), expected_shared, atol=1e-5, rtol=1e-5)


def test_inspect_counts_the_bytes_the_cache_holds():
    """Keys and values of the attention layer, the DeltaNet layers' fixed-size states."""
    for dtype in ("fp32", "bf16"):
        model = GPT(get_preset("qwen3-next-tiny", dtype=dtype)).to(torch_dtype(dtype))
        cache = model.new_cache(batch_size=2, max_len=100)
        held = sum(t.nbytes for t in [*cache.keys, *cache.values, *cache.conv_states.values(),
                                      *cache.recurrent_states.values()] if t is not None)
        assert footprint(model.config, batch=2, seq=100)["memory_bytes"]["kv_cache"] == held


# --- Gemma 4: KV sharing across layers ----------------------------------------------------


def test_kv_sharing_layers_cache_nothing_and_read_their_sources_keys():
    """gemma4-tiny's layers are l, l, G, l, l, G; the last two reuse layers 3 and 2. The
    dense cache holds four layers, the engine's paged cache gives each sharing layer its
    source's slots, and inspect counts the bytes they hold."""
    from llmscratch.generation.engine import Engine
    from llmscratch.model.kv_sharing import kv_source

    model = tiny("gemma4-tiny")
    c = model.config
    assert [kv_source(c, i) for i in range(c.n_layer)] == [None, None, None, None, 3, 2]
    assert [b.mlp.gate.out_features for b in model.blocks] == [128] * 4 + [256] * 2
    # Within the window (8 tokens), where the local layers keep every token they are given.
    cache = model.new_cache(batch_size=2, max_len=c.sliding_window)
    assert [k is None for k in cache.keys] == [False] * 4 + [True] * 2
    held = sum(t.nbytes for t in [*cache.keys, *cache.values] if t is not None)
    assert footprint(c, batch=2, seq=c.sliding_window)["memory_bytes"]["kv_cache"] == held
    # Layers 0, 1, 3: k and v of 2 heads of 16; layer 2 (global): of 32; in fp32.
    assert footprint(c)["kv_cache_bytes_per_token"] == (3 * 2 * 2 * 16 + 2 * 2 * 32) * 4
    paged = Engine(model, block_size=4, max_batch=2).cache
    assert paged.keys[4] is paged.keys[3] and paged.values[5] is paged.values[2]
    assert paged.keys[2].shape[-1] == 32 and cache.keys[2].shape[-1] == 32
    assert paged.bytes_per_block() == 4 * (3 * 2 * 2 * 16 + 2 * 2 * 32) * 4  # 4 slots


def test_a_kv_sharing_layer_attends_over_its_sources_keys():
    """Layer 4's output, recomputed by hand: its own queries (QK-norm, RoPE of the local
    layers) over the keys and values layer 3 made, through layer 3's window."""
    from llmscratch.model.attention import explicit_attention, visible_keys
    from llmscratch.model.rope import rope_angles

    model = tiny("gemma4-tiny")
    c, ids = model.config, torch.randint(0, 512, (1, 20))
    captured = {}
    model.blocks[3].attn.register_forward_hook(lambda m, args, out: captured.update(
        kv=args[4][m.window]))  # what layer 3 published: its keys and values
    model.blocks[4].attn.register_forward_hook(lambda m, args, out: captured.update(
        x=args[0], out=out))
    model(ids)
    attn, (k, v) = model.blocks[4].attn, captured["kv"]
    q = attn.q_norm(attn.qkv(captured["x"]).view(1, 20, 4, 16).transpose(1, 2))
    q = apply_rope(q, *rope_angles(torch.arange(20), rope_frequencies(c, None, True)))
    context = explicit_attention(q, k, v, visible_keys(20, 20, q.device, c.sliding_window),
                                 scale=1.0)
    expected = attn.proj(context.transpose(1, 2).reshape(1, 20, 64))
    torch.testing.assert_close(captured["out"], expected, atol=1e-5, rtol=1e-5)
    assert k.shape == (1, 2, 20, 16) and attn.window == c.sliding_window


@pytest.mark.parametrize("preset", ["gemma-4-e2b", "gemma-4-e4b"])
def test_gemma4_presets_count_as_transformers(preset):
    """The released text models' sizes: transformers builds the same parameters from our
    config.json, and without the per-layer input table they are Google's "effective" sizes."""
    with torch.device("meta"):
        model = GPT(get_preset(preset))
    assert model.num_params() == meta_hf_count(preset)
    effective = model.num_params() - model.per_layer.embed.weight.numel()
    assert effective == pytest.approx({"gemma-4-e2b": 2.3e9, "gemma-4-e4b": 4.5e9}[preset],
                                      rel=0.035)


def test_soft_capped_logits_and_the_losses_and_gradients_read_through_them():
    """logit_softcap c: logits c tanh(z / c), within +-c; the summed loss and the token
    log-probabilities (and their gradients) are those of the capped logits."""
    model = tiny("gemma4-tiny", logit_softcap=0.5)
    ids = torch.randint(0, 512, (2, 12))
    targets = ids.roll(-1, dims=1)
    targets[0, -3:] = -100
    raw = model.lm_head(model(ids))
    torch.testing.assert_close(model.logits(model(ids)), 0.5 * torch.tanh(raw / 0.5))
    assert model.logits(model(ids)).abs().max() < 0.5 < raw.abs().max()

    def reference(hidden):
        log_probs = torch.log_softmax(0.5 * torch.tanh(model.lm_head(hidden) / 0.5), dim=-1)
        picked = log_probs.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
        return picked * (targets != -100)

    for head in ("loss", "log_probs"):
        hidden = model(ids).detach().requires_grad_()
        expected = hidden.detach().clone().requires_grad_()
        if head == "loss":
            value, count = model.next_token_loss(hidden, targets)
            assert count == 21
            wanted = -reference(expected).sum()
        else:
            value, wanted = model.token_log_probs(hidden, targets), reference(expected)
        torch.testing.assert_close(value, wanted)
        value.sum().backward()
        wanted.sum().backward()
        torch.testing.assert_close(hidden.grad, expected.grad)


def test_per_layer_inputs_are_a_token_part_and_a_context_part_by_hand():
    """Gemma 4 E2B/E4B's per-layer inputs for one token, computed from the module docstring's
    formulas: (e_tok sqrt(P) + RMSNorm(W x / sqrt(D))) / sqrt(2), one P-vector per layer;
    the table counts as an embedding, not as a weight a token multiplies."""
    model = tiny("gemma4-tiny")
    c, ple = model.config, model.per_layer
    ids = torch.tensor([[7, 300]])
    x = model.tok_emb(ids) * math.sqrt(c.n_embd)  # (1, 2, D): what the first layer reads
    u = ple(ids, x)  # (1, 2, L, P)
    assert u.shape == (1, 2, 6, 8)
    token = ple.embed.weight[300].view(6, 8) * math.sqrt(8)
    context = ple.context.weight @ x[0, 1] / math.sqrt(c.n_embd)  # (L P,)
    context = context.view(6, 8) / context.view(6, 8).pow(2).mean(-1, keepdim=True).add(
        c.norm_eps).sqrt() * ple.norm.weight
    torch.testing.assert_close(u[0, 1], (token + context) / math.sqrt(2))
    table = 512 * 6 * 8
    assert model.num_params() - model.num_params(non_embedding=True) == 512 * 64 + table


def test_global_layers_have_wider_heads_and_proportional_rope():
    """gemma4-tiny's global layers: heads of 32 (local: 16), and RoPE on the first quarter of
    their 16 pairs, at the frequencies of the whole width; the rest do not turn."""
    model = tiny("gemma4-tiny", rope_proportional=0.25)
    c = model.config
    assert [c.layer_head_dim(i) for i in range(6)] == [16, 16, 32, 16, 16, 32]
    assert model.blocks[2].attn.qkv.out_features == (4 + 2 + 2) * 32
    assert model.blocks[5].attn.qkv.out_features == 4 * 32  # queries only (KV sharing)
    freqs = rope_frequencies(c, None, local=False)  # (16,)
    expected = 1e6 ** (-torch.arange(0, 32, 2) / 32)
    torch.testing.assert_close(freqs[:4], expected[:4])
    assert freqs.shape == (16,) and not freqs[4:].any()
    torch.testing.assert_close(rope_frequencies(c, None, local=True),
                               1e4 ** (-torch.arange(0, 16, 2) / 16))


@pytest.mark.parametrize("overrides, field", [
    ({"global_head_size": 31}, "global_head_size"),
    ({"global_head_size": 0, "rope_proportional": 0.25, "sliding_window_pattern": 0},
     "rope_proportional"),  # every layer local: no global layers
    ({"logit_softcap": -1.0}, "logit_softcap"),
    ({"per_layer_input": 0, "per_layer_vocab": 100}, "per_layer_vocab"),
    ({"kv_shared_layers": 6}, "kv_shared_layers"),  # every layer: no source
    ({"kv_shared_layers": 4}, "kv_shared_layers"),  # global layers 2 and 5, none before
    ({"kv_shared_layers": -1}, "kv_shared_layers"),
    ({"kv_shared_layers": 0}, "kv_shared_mlp_double"),  # widening no layer
])
def test_bad_kv_sharing_names_the_field(overrides, field):
    with pytest.raises(LLMScratchError, match=rf"model\.{field}=") as err:
        get_preset("gemma4-tiny", **overrides)
    assert "\n" not in str(err.value)
