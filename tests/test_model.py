"""The GPT-2 model: attention paths agree, causality, initial loss, learning, KV cache."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from llmscratch.errors import LLMScratchError
from llmscratch.generation.sampling import SamplingConfig, generate
from llmscratch.model import GPT, SequenceHead, get_preset, heads
from llmscratch.runs.config import TrainConfig
from llmscratch.training.optim import build_optimizer


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(get_preset("gpt2-tiny", **overrides))


def logits(model: GPT, ids: torch.Tensor, *args) -> torch.Tensor:
    """The next-token logits: the trunk's hidden states through the output layer."""
    return model.logits(model(ids, *args))


def set_attn_impl(model: GPT, impl: str) -> None:
    for block in model.blocks:
        block.attn.attn_impl = impl


def test_explicit_attention_equals_sdpa():
    model = tiny()
    ids = torch.randint(0, 512, (3, 40))
    set_attn_impl(model, "sdpa")
    fused = logits(model, ids)
    set_attn_impl(model, "explicit")
    explicit = logits(model, ids)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)


def test_bf16_explicit_attention_agrees_with_sdpa_forward_and_backward():
    """Under CPU bf16 autocast "auto" takes the explicit path; it must match the kernel."""
    ids = torch.randint(0, 512, (3, 40))
    results = {}
    for impl in ("sdpa", "explicit"):
        model = tiny(attn_impl=impl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = logits(model, ids)
        F.cross_entropy(out.float().flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
        results[impl] = (out.float(), model.blocks[0].attn.qkv.weight.grad)
    (fused_logits, fused_grad), (explicit_logits, explicit_grad) = results.values()
    torch.testing.assert_close(explicit_logits, fused_logits, atol=0.05, rtol=0.02)
    cosine = F.cosine_similarity(explicit_grad.flatten(), fused_grad.flatten(), dim=0)
    assert cosine > 0.999


@pytest.mark.parametrize("kernel", ["explicit", "fused"])
@pytest.mark.parametrize("masked", [False, True])
def test_grouped_query_attention_never_copies_heads_and_equals_the_heads_repeated(kernel,
                                                                                   masked):
    """Query head h reads key/value head h // G, as if each were repeated G times (by hand
    below), but the kernels get the Hkv heads as they are: no `repeat_interleave`."""
    from llmscratch.model import attention

    q = torch.randn(2, 6, 5, 8)  # (B, H = 6, T, Dh)
    k, v = torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)  # (B, Hkv = 2, S, Dh): G = 3
    segments = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 2, 2, 2, 2, 2]])
    visible = attention.visible_keys(5, 9, q.device, 4, segments) if masked else None
    k_all, v_all = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    mask = visible if masked else attention.visible_keys(5, 9, q.device)
    scores = (q @ k_all.transpose(-2, -1) / 8 ** 0.5).masked_fill(~mask, float("-inf"))
    expected = torch.softmax(scores, dim=-1) @ v_all  # (B, H, T, Dh)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "repeat_interleave", None)  # any use of it fails
        got = getattr(attention, f"{kernel}_attention")(q, k, v, visible)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_auto_attention_picks_the_kernel_by_device_dtype_and_length():
    from llmscratch.model.attention import use_fused_kernel

    def qk(dtype, keys):
        return torch.zeros(1, 1, 4, 8, dtype=dtype), torch.zeros(1, 1, keys, 8, dtype=dtype)

    assert not use_fused_kernel("auto", *qk(torch.bfloat16, 256))  # CPU bf16, short
    assert use_fused_kernel("auto", *qk(torch.bfloat16, 1024))  # long: no T x S scores
    assert use_fused_kernel("auto", *qk(torch.float32, 256))  # fp32: the kernel is faster
    assert use_fused_kernel("sdpa", *qk(torch.bfloat16, 256))
    assert not use_fused_kernel("explicit", *qk(torch.float32, 1024))


def test_future_tokens_do_not_change_earlier_logits():
    model = tiny()
    ids = torch.randint(0, 512, (1, 30))
    changed = ids.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % 512
    torch.testing.assert_close(logits(model, ids)[:, :20], logits(model, changed)[:, :20])
    assert not torch.allclose(logits(model, ids)[:, 20:], logits(model, changed)[:, 20:])


def test_loss_at_initialisation_is_near_uniform():
    model = tiny()
    ids = torch.randint(0, 512, (8, 64))
    loss = F.cross_entropy(logits(model, ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    assert abs(loss.item() - math.log(512)) < 0.1


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_output_loss_equals_the_plain_one(monkeypatch, dtype, reduction):
    # Small chunks, so the 300 rows span several of them and the last is shorter.
    monkeypatch.setattr(heads, "ROWS_PER_CHUNK", 64)
    torch.manual_seed(0)
    hidden, weight = torch.randn(300, 48), torch.randn(700, 48) * 0.1
    targets = torch.randint(0, 700, (300,))
    targets[::7] = heads.IGNORE_INDEX  # some rows predict nothing
    results = []
    for loss_fn in (heads.plain_cross_entropy, heads.linear_cross_entropy):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = loss_fn(h, w, targets, reduction)
        (3.0 * loss).backward()  # a scale other than 1 reaches backward
        results.append((loss.detach(), h.grad, w.grad))
    (plain, plain_dh, plain_dw), (fused, fused_dh, fused_dw) = results
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: per-chunk rounding of the matmuls
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    assert torch.allclose(fused_dh, plain_dh, atol=tol * plain_dh.abs().max())
    assert torch.allclose(fused_dw, plain_dw, atol=tol * plain_dw.abs().max())


def test_chunked_output_loss_with_a_frozen_output_layer():
    """LoRA freezes the output layer: the hidden states' gradient is still right, and the
    layer gets none (nor is one computed)."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(30, 16), torch.randn(50, 16)
    targets = torch.randint(0, 50, (30,))
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    (2.0 * heads.plain_cross_entropy(h1, weight, targets, "sum")).backward()
    (2.0 * heads.linear_cross_entropy(h2, weight, targets, "sum")).backward()
    assert torch.allclose(h2.grad, h1.grad, atol=1e-5)
    assert weight.grad is None


def test_chunked_output_loss_refuses_a_second_backward_rather_than_double_scaling():
    # Backward scales the gradients saved by forward in place; going through the
    # same graph again must be an error, not gradients scaled twice.
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    loss = heads.linear_cross_entropy(hidden, weight, torch.randint(0, 20, (10,)))
    (2.0 * loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_next_token_loss_is_the_summed_cross_entropy_of_the_logits_and_its_count(tie):
    model = tiny(tie_embeddings=tie)
    ids = torch.randint(0, 512, (4, 33))
    inputs, targets = ids[:, :-1], ids[:, 1:].clone()
    targets[0, :10] = -100  # a prompt that is not trained on: neither summed nor counted
    loss_sum, count = model.next_token_loss(model(inputs), targets)
    loss_sum.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference = F.cross_entropy(logits(model, inputs).flatten(0, 1), targets.flatten(),
                                reduction="sum")
    reference.backward()
    assert int(count) == 4 * 32 - 10
    assert loss_sum.item() == pytest.approx(reference.item(), rel=1e-6)
    for fused_grad, p in zip(fused_grads, model.parameters(), strict=True):
        assert torch.allclose(fused_grad, p.grad, atol=1e-5)
    with torch.no_grad():  # evaluation takes the same chunks without computing gradients
        assert model.next_token_loss(model(inputs), targets)[0].item() == pytest.approx(
            reference.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_token_log_probs_equal_log_softmax_with_gradients(monkeypatch, dtype):
    """Chunked log p(target), gradients recomputed in backward, against the whole log-softmax."""
    monkeypatch.setattr(heads, "ROWS_PER_CHUNK", 64)  # 300 rows: several chunks, a short last
    torch.manual_seed(0)
    hidden, weight = torch.randn(300, 48), torch.randn(700, 48) * 0.1
    targets = torch.randint(0, 700, (300,))
    targets[::7] = heads.IGNORE_INDEX
    upstream = torch.randn(300)  # what a DPO or RL loss would send back, row by row
    results = []
    for chunked in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            if chunked:
                log_probs = heads.linear_log_probs(h, w, targets)
            else:
                all_log_probs = torch.log_softmax((h @ w.T).float(), dim=-1)
                log_probs = all_log_probs.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
                log_probs = log_probs.masked_fill(targets == heads.IGNORE_INDEX, 0.0)
        (log_probs * upstream).sum().backward()
        results.append((log_probs.detach(), h.grad, w.grad))
    (plain, plain_dh, plain_dw), (ours, dh, dw) = results
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(ours, plain, atol=tol * plain.abs().max())
    assert (ours[targets == heads.IGNORE_INDEX] == 0).all()
    assert torch.allclose(dh, plain_dh, atol=tol * plain_dh.abs().max())
    assert torch.allclose(dw, plain_dw, atol=tol * plain_dw.abs().max())


def test_model_token_log_probs_sum_to_minus_the_loss():
    model = tiny()
    ids = torch.randint(0, 512, (2, 21))
    hidden = model(ids[:, :-1])
    log_probs = model.token_log_probs(hidden, ids[:, 1:])  # (B, T)
    loss_sum, _ = model.next_token_loss(hidden, ids[:, 1:])
    assert log_probs.shape == (2, 20)
    assert (-log_probs.sum()).item() == pytest.approx(loss_sum.item(), rel=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_head_reads_the_same_from_a_padded_batch_as_alone(pooling, side):
    """A classifier or reward head on a padded batch: each row as if it were alone."""
    model = tiny().eval()
    head = SequenceHead(32, 3, pooling)
    rows = [torch.randint(0, 512, (n,)) for n in (9, 5)]
    alone = torch.cat([head(model(r[None])) for r in rows])  # (2, 3)
    ids = torch.zeros(2, 9, dtype=torch.int64)
    mask = torch.zeros(2, 9, dtype=torch.int64)
    for i, r in enumerate(rows):
        span = slice(9 - len(r), 9) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span] = r, 1
    batched = head(model(ids, attention_mask=mask), mask)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    if side == "right" or pooling == "mean":  # ignoring the mask reads padding there
        assert not torch.allclose(head(model(ids, attention_mask=mask)), alone, atol=1e-3)


@pytest.mark.parametrize("make_optimizer", [
    lambda model: torch.optim.AdamW(model.parameters(), lr=3e-3),
    lambda model: build_optimizer(model, TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.02)),
], ids=["adamw", "muon"])
def test_overfits_one_batch(make_optimizer):
    model = tiny()
    ids = torch.randint(0, 512, (4, 33))
    opt = make_optimizer(model)
    for _ in range(150):
        loss = F.cross_entropy(logits(model, ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_tied_embeddings_share_one_tensor_and_count_once():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 512 * 32


def test_gpt2_preset_has_124m_parameters():
    with torch.device("meta"):
        model = GPT(get_preset("gpt2"))
    assert model.num_params() == 124_439_808  # GPT2LMHeadModel's count


@pytest.mark.parametrize("impl", ["sdpa", "explicit", "auto"])
def test_cached_forward_equals_full_forward(impl):
    model = tiny(attn_impl=impl).eval()
    ids = torch.randint(0, 512, (2, 24))
    full = logits(model, ids)
    cache = model.new_cache(batch_size=2)
    prefix = logits(model, ids[:, :10], cache)  # prefill
    middle = logits(model, ids[:, 10:17], cache)  # several tokens after a cached prefix
    steps = [logits(model, ids[:, t : t + 1], cache) for t in range(17, 24)]  # decode
    torch.testing.assert_close(torch.cat([prefix, middle, *steps], dim=1), full,
                               atol=1e-5, rtol=1e-5)


def test_greedy_generation_with_cache_equals_without():
    model = tiny().eval()
    prompt = [1, 2, 3, 4]
    cached = generate(model, prompt, SamplingConfig(max_new_tokens=20, temperature=0))
    ids = list(prompt)
    for _ in range(20):  # no cache: rerun the whole sequence each step
        ids.append(int(logits(model, torch.tensor([ids]))[0, -1].argmax()))
    assert cached == ids[len(prompt):]


def test_context_length_is_enforced():
    model = tiny()
    with pytest.raises(LLMScratchError, match="context length 64"):
        model(torch.zeros(1, 65, dtype=torch.int64))


def test_sampling_is_deterministic_per_seed():
    model = tiny().eval()
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    first = generate(model, [5, 6], cfg)
    assert generate(model, [5, 6], cfg) == first
    cfg.seed = 8
    assert generate(model, [5, 6], cfg) != first


def test_sampling_never_picks_ids_past_the_tokenizers_vocabulary():
    """A 512-row output layer with a 300-token tokenizer: ids 300..511 mean nothing."""
    model = tiny().eval()
    with torch.no_grad():  # make the meaningless ids the most likely ones
        model.lm_head.weight[300:] *= 50
    cfg = SamplingConfig(max_new_tokens=60, temperature=2.0, seed=3)
    assert max(generate(model, [5, 6], cfg)) >= 300  # without the limit they do come up
    assert max(generate(model, [5, 6], cfg, vocab_size=300)) < 300


def test_relu_squared_mlp_is_relu_of_the_first_projection_squared_then_the_second():
    """mlp="relu2" (the speedrun's MLP): proj(relu(fc(x))^2), written out by hand. It would catch
    the activation left as GELU, squared before the ReLU (negative inputs then count), or applied
    after the output projection."""
    config = replace(get_preset("gpt2-tiny"), mlp="relu2")
    mlp = GPT(config).blocks[0].mlp
    x = torch.randn(2, 3, config.n_embd)
    fc = x @ mlp.fc.weight.T + mlp.fc.bias
    hidden = torch.where(fc > 0, fc * fc, torch.zeros_like(fc))
    expected = hidden @ mlp.proj.weight.T + mlp.proj.bias
    torch.testing.assert_close(mlp(x), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-3-tiny", "qwen3-tiny", "qwen3-moe-tiny"])
def test_forward_and_backward_on_cuda_equal_the_cpu(name):
    """The same weights and batch on the GPU give the CPU's loss and gradients (fp32)."""
    from tests.test_families import tiny as family

    cpu = family(name).train()
    gpu = family(name).train().cuda()
    ids = torch.randint(0, 512, (3, 25), generator=torch.Generator().manual_seed(0))
    losses = []
    for model in (cpu, gpu):
        x = ids.to(next(model.parameters()).device)
        loss = F.cross_entropy(logits(model, x[:, :-1]).flatten(0, 1).float(),
                               x[:, 1:].flatten())
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for (key, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        if p.grad is None:
            assert q.grad is None, key
            continue
        scale = p.grad.abs().max().item() + 1e-8
        assert (q.grad.cpu() - p.grad).abs().max().item() <= 1e-3 * scale, key
