"""The engine: continuous batching over a paged KV cache gives each request the tokens it
would get alone, for every family, batched, preempted, sharing a prefix or joining late."""

import copy

import pytest
import torch

from llmscratch.errors import LLMScratchError
from llmscratch.generation.cpu_weights import can_pack, pack_linear_weights
from llmscratch.generation.engine import Engine
from llmscratch.generation.paged_attention import kernel_missing
from llmscratch.generation.sampling import SamplingConfig
from llmscratch.model import GPT
from llmscratch.model.moe import MoE
from tests.test_families import tiny  # a tiny model of a family, its norms perturbed

FAMILIES = ["gpt2-tiny", "llama-3-tiny", "qwen3-tiny", "qwen3-moe-tiny", "gemma3-tiny",
            "olmo3-tiny", "gpt-oss-tiny", "deepseek-v3-tiny", "gemma4-tiny"]
HYBRID = ["qwen3-next-tiny", "qwen3.5-tiny"]  # Gated DeltaNet layers: a state per sequence
GREEDY = SamplingConfig(max_new_tokens=16, temperature=0)


def uncached_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The reference: the whole sequence through the model at every step, no cache at all."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model.logits(model(torch.tensor([ids])))[0, -1].argmax()))
    return ids[len(prompt):]


def prompts(lengths, seed=1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("paged_attention", ["auto", "gather"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_batch_of_mixed_lengths_gives_each_request_its_uncached_greedy_output(
        name, paged_attention):
    """Both decode paths: "auto" is the C++ kernel where it builds (not for DeepSeek's
    latents or gpt-oss's sinks), "gather" the copy through the block tables."""
    model = tiny(name, sliding_window=6) if name == "qwen3-tiny" else tiny(name)
    batch = prompts([3, 17, 9, 30, 1])
    expected = [uncached_greedy(model, p, 16) for p in batch]
    engine = Engine(model, block_size=4, max_batch=8, paged_attention=paged_attention)
    kernel_serves = kernel_missing() is None and name not in ("deepseek-v3-tiny", "gpt-oss-tiny")
    assert engine.paged_attention == ("kernel" if paged_attention == "auto" and kernel_serves
                                      else "gather")
    assert engine.generate(batch, GREEDY) == expected
    assert [engine.generate([p], GREEDY)[0] for p in batch] == expected  # and alone
    assert engine.blocks.used == 0  # every block given back


@pytest.mark.parametrize("name", FAMILIES)
def test_preempted_requests_are_computed_again_to_the_same_tokens(name):
    model = tiny(name)
    batch = prompts([12, 20, 7, 15])
    expected = [uncached_greedy(model, p, 16) for p in batch]
    # 16 blocks of 4 slots: two of these requests at full length fill the cache.
    engine = Engine(model, num_blocks=16, block_size=4, max_batch=8)
    assert engine.generate(batch, GREEDY) == expected
    assert engine.scheduler.preemptions > 0
    assert engine.blocks.used == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_requests_sharing_a_prefix_share_its_blocks_and_their_answers_do_not_change(name):
    model = tiny(name)
    system = prompts([24], seed=2)[0]  # a "system prompt": 6 full blocks of 4
    batch = [system + tail for tail in prompts([5, 9, 2], seed=3)]
    expected = [uncached_greedy(model, p, 16) for p in batch]
    engine = Engine(model, block_size=4, max_batch=1)  # one at a time: each finds the last's
    assert engine.generate(batch, GREEDY) == expected
    assert engine.blocks.cache_hits == 2 * 6  # the second and third reuse all 6 blocks


def test_a_cached_block_is_reused_only_after_the_same_earlier_blocks():
    """Block hashes are chained: block D computed after block C holds D's keys and values
    in C's context, so a prompt A D must not take it (its A may come from the cache)."""
    model = tiny("llama-3-tiny")
    a, c, d = prompts([4, 4, 4], seed=4)
    engine = Engine(model, block_size=4, max_batch=1)
    engine.generate([a + [1], c + d + [1]], GREEDY)  # caches A, then C and D-after-C
    assert engine.blocks.cache_hits == 0
    asked = a + d + [1]
    assert engine.generate([asked], GREEDY)[0] == uncached_greedy(model, asked, 16)
    assert engine.blocks.cache_hits == 1  # A only


def test_the_same_block_aligned_prompt_twice_shares_all_but_its_last_block():
    """The block holding a prompt's last token is computed afresh: that token's logits are
    needed, and the blocks after it are written, so it is never shared."""
    model = tiny("gpt2-tiny")
    prompt = prompts([12])[0]  # three full blocks of 4
    engine = Engine(model, block_size=4, max_batch=1)
    expected = uncached_greedy(model, prompt, 16)
    assert engine.generate([prompt, prompt], GREEDY) == [expected, expected]
    assert engine.blocks.cache_hits == 2  # the second took blocks 0 and 1, not 2
    assert engine.blocks.used == 0


def test_preempted_requests_with_seeded_sampling_write_what_they_write_alone():
    """A preempted sequence keeps its tokens and its random generator: computed again, it
    goes on drawing where it stopped (greedy decoding could not tell a restart from this)."""
    model = tiny("llama-3-tiny")
    batch = prompts([12, 20, 7, 15])
    samplings = [SamplingConfig(max_new_tokens=16, temperature=1.0, seed=10 + i)
                 for i in range(len(batch))]
    alone = [Engine(model, block_size=4).generate([p], s)[0]
             for p, s in zip(batch, samplings, strict=True)]
    engine = Engine(model, num_blocks=16, block_size=4, max_batch=8)
    assert engine.generate(batch, samplings) == alone
    assert engine.scheduler.preemptions > 0
    assert engine.blocks.used == 0


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-3-tiny"])
def test_a_request_ends_at_the_context_length(name):
    model = tiny(name)
    context = model.config.context_length
    prompt = prompts([context - 4])[0]
    engine = Engine(model, block_size=16)
    seq = engine.run([prompt], SamplingConfig(max_new_tokens=50, temperature=0))[0]
    assert seq.output_ids == uncached_greedy(model, prompt, 4)  # 4 tokens fill the context
    assert seq.finish_reason == "length" and seq.num_tokens == context
    last = engine.run([prompts([context - 1])[0]], SamplingConfig(max_new_tokens=50))[0]
    assert len(last.output_ids) == 1  # a prompt one short of the context gets one token


def test_a_failing_step_ends_its_sequences_and_the_engine_goes_on(monkeypatch):
    from llmscratch.generation import engine as engine_module

    model = tiny("gpt2-tiny")
    engine = Engine(model, block_size=4)
    running = engine.add(prompts([5])[0], SamplingConfig(max_new_tokens=20, temperature=0))
    engine.step()  # its prefill
    sample_rows = engine_module.sample_rows

    def fails(logits, configs, *args):
        if any(cfg.seed == 13 for cfg in configs):
            raise RuntimeError("a bug in sampling")
        return sample_rows(logits, configs, *args)

    monkeypatch.setattr(engine_module, "sample_rows", fails)
    poisoned = engine.add(prompts([6])[0], SamplingConfig(max_new_tokens=5, seed=13))
    with pytest.raises(engine_module.StepFailed) as failed:
        engine.step()  # the new request's prefill step: it alone is ended
    assert failed.value.seqs == [poisoned] and poisoned.finish_reason == "error"
    while not engine.scheduler.idle:
        engine.step()
    assert running.output_ids == uncached_greedy(model, prompts([5])[0], 20)
    assert engine.blocks.used == 0


def test_requests_join_a_running_batch_and_leave_it_when_done():
    model = tiny("llama-3-tiny")
    first, late = prompts([10, 6])
    engine = Engine(model, block_size=4)
    long = engine.add(first, SamplingConfig(max_new_tokens=30, temperature=0))
    for _ in range(5):
        engine.step()  # the first request is decoding
    short = engine.add(late, SamplingConfig(max_new_tokens=4, temperature=0))
    steps = 0
    while not short.finished:
        engine.step()
        steps += 1
        assert not long.finished
    assert steps == 4  # one step to prefill (and draw the first token), then one a token
    assert len(engine.scheduler.running) == 1  # it left; the long one goes on
    while not engine.scheduler.idle:
        engine.step()
    assert long.output_ids == uncached_greedy(model, first, 30)
    assert short.output_ids == uncached_greedy(model, late, 4)
    assert (long.finish_reason, short.finish_reason) == ("length", "length")


def test_the_same_seed_gives_the_same_text_whatever_shares_the_batch():
    model = tiny("qwen3-tiny")
    target = prompts([8])[0]
    sampling = SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=50, seed=7)
    alone = Engine(model, block_size=4).generate([target], sampling)[0]
    others = [SamplingConfig(max_new_tokens=n, temperature=1.0, seed=n) for n in (5, 30)]
    crowded = Engine(model, block_size=4).generate(
        prompts([3, 19]) + [target], others + [sampling])[2]
    assert crowded == alone
    reseeded = SamplingConfig(max_new_tokens=20, temperature=1.0, top_k=50, seed=8)
    assert Engine(model, block_size=4).generate([target], reseeded)[0] != alone


def test_a_stop_id_ends_a_request_without_being_output():
    model = tiny("gpt2-tiny")
    prompt = prompts([5])[0]
    expected = uncached_greedy(model, prompt, 16)
    stop = expected[3]
    out = Engine(model).generate([prompt], GREEDY, stop_ids={stop})[0]
    assert out == expected[:expected.index(stop)]


def test_a_request_that_can_never_fit_is_refused_when_added():
    engine = Engine(tiny("gpt2-tiny"), num_blocks=2, block_size=4)
    with pytest.raises(LLMScratchError, match="needs more KV-cache blocks"):
        engine.add(prompts([5])[0], SamplingConfig(max_new_tokens=10))
    with pytest.raises(LLMScratchError, match="context length is 64"):
        engine.add(prompts([64])[0], SamplingConfig())
    with pytest.raises(LLMScratchError, match="512, which is not a token id"):
        engine.add([5, 512], SamplingConfig(max_new_tokens=1))  # the model has 512 rows
    with pytest.raises(LLMScratchError, match="logit_bias names token 600"):
        engine.add([5], SamplingConfig(max_new_tokens=1, logit_bias={3: 1.0, 600: 1.0}))


def test_penalties_in_the_engine_equal_those_of_the_single_request_loop():
    """The engine gives each sequence its own prompt and output to penalise, as `generate` does."""
    from llmscratch.generation.sampling import generate

    model = tiny("llama-3-tiny")
    batch = prompts([6, 11, 3])
    sampling = SamplingConfig(max_new_tokens=24, temperature=0, repetition_penalty=1.5,
                              frequency_penalty=0.4, presence_penalty=0.3)
    expected = [generate(model, p, sampling) for p in batch]
    assert expected != [generate(model, p, GREEDY) for p in batch]  # the penalties matter here
    assert Engine(model, block_size=4).generate(batch, sampling) == expected


def test_logprobs_are_the_models_own_for_the_chosen_and_the_likeliest_tokens():
    model = tiny("qwen3-tiny")
    prompt = prompts([7])[0]
    engine = Engine(model, block_size=4)
    seq = engine.add(prompt, SamplingConfig(max_new_tokens=5, temperature=1.0, top_k=3, seed=3,
                                            logprobs=4))
    while not engine.scheduler.idle:
        engine.step()
    ids = list(prompt)
    for step in seq.logprobs:  # against the uncached forward pass, by hand
        with torch.no_grad():
            reference = torch.log_softmax(model.logits(model(torch.tensor([ids])))[0, -1], -1)
        assert step.logprob == pytest.approx(float(reference[step.token]), abs=1e-5)
        best = reference.topk(4)
        assert [t for t, _ in step.top] == best.indices.tolist()
        assert [lp for _, lp in step.top] == pytest.approx(best.values.tolist(), abs=1e-5)
        ids.append(step.token)
    assert [s.token for s in seq.logprobs] == seq.output_ids


def test_streaming_yields_the_tokens_and_stopping_early_frees_the_blocks():
    model = tiny("gpt2-tiny")
    prompt = prompts([9])[0]
    engine = Engine(model, block_size=4)
    assert list(engine.stream(prompt, GREEDY)) == uncached_greedy(model, prompt, 16)
    other = engine.add(prompts([5])[0], SamplingConfig(max_new_tokens=40, temperature=0))
    stream = engine.stream(prompt, GREEDY)
    first = [next(stream) for _ in range(3)]
    assert first == uncached_greedy(model, prompt, 3)
    stream.close()  # the client went away: its request is aborted at once
    assert len(engine.scheduler.running) == 1 and not other.finished
    engine.abort(other)
    assert other.finish_reason == "abort" and engine.blocks.used == 0


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_weights_compute_the_same_model(name, dtype):
    """CPU packing (cpu_weights.py) swaps every nn.Linear, biases and a tied output layer
    included, for oneDNN's kernel: the logits stay those of the model as it was."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN: packing does not apply")
    model = tiny(name).to(dtype)
    packed = copy.deepcopy(model)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    if not can_pack(model):  # bf16 on an AVX2-only CPU: oneDNN has no kernel, nothing changes
        assert pack_linear_weights(packed, measure=False) == 0
        assert sum(type(m) is torch.nn.Linear for m in packed.modules()) == linears
        pytest.skip(f"oneDNN cannot pack {dtype} weights on this CPU")
    moes = [m for m in packed.modules() if isinstance(m, MoE)]
    experts = sum(3 * m.n_expert for m in moes)  # each expert's gate, up and proj
    assert pack_linear_weights(packed, measure=False) == linears + experts > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    assert all(m.packed_experts is not None and m.gate is None for m in moes)
    ids = torch.tensor(prompts([11, 11]))
    with torch.no_grad():
        expected = model.logits(model(ids)).float()
        got = packed.logits(packed(ids)).float()
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2 * expected.abs().max().item()
    assert (got - expected).abs().max().item() < tolerance
    if dtype == torch.float32:  # and the engine over the packed model decodes the same tokens
        batch = prompts([3, 17, 9])
        expected_tokens = [uncached_greedy(model, p, 16) for p in batch]
        assert Engine(packed, block_size=4).generate(batch, GREEDY) == expected_tokens


def test_the_default_cache_is_sized_to_the_batch_or_capped_by_bytes():
    model = tiny("gpt2")
    c = model.config
    engine = Engine(model, max_batch=3)
    assert engine.cache.num_blocks == 3 * -(-c.context_length // 16)  # 3 full contexts
    block_bytes = 2 * c.n_layer * 16 * c.kv_heads * c.head_dim * 4  # keys and values, fp32
    capped = Engine(model, max_batch=3, cache_bytes=5 * block_bytes)
    assert capped.cache.num_blocks == 5  # a long-context model does not take all memory


# --- Gated DeltaNet layers (Qwen3-Next, Qwen3.5): a state slot per sequence ---------------


def check_slots(engine: Engine) -> None:
    """Every running sequence holds a slot of its own, and no one else holds one."""
    slots = [seq.state_slot for seq in engine.scheduler.running]
    assert None not in slots and len(set(slots)) == len(slots)
    assert engine.blocks.states.used == len(slots)
    assert all(seq.state_slot is None for seq in engine.scheduler.waiting)


def run_checking_slots(engine: Engine, batch, sampling) -> list[list[int]]:
    seqs = [engine.add(p, sampling) for p in batch]
    while not engine.scheduler.idle:
        engine.step()
        check_slots(engine)
    return [seq.output_ids for seq in seqs]


@pytest.mark.parametrize("name", HYBRID)
def test_hybrid_models_give_each_packed_prompt_the_uncached_greedy_output(name):
    """Gated DeltaNet layers keep their states in the state pool, one slot per sequence:
    prompts packed into one prefill step (one of them over two chunks of 64) each start
    from an empty state, and decode steps run every sequence's recurrence at once; the
    tokens are those of the uncached forward and of `generate` (the dense cache)."""
    from llmscratch.generation.sampling import generate

    model = tiny(name)
    batch = prompts([3, 17, 9, 70, 1])
    expected = [uncached_greedy(model, p, 16) for p in batch]
    assert [generate(model, p, GREEDY) for p in batch] == expected
    engine = Engine(model, block_size=4, max_batch=8)
    assert engine.cache.keys[0] is None and engine.cache.keys[3] is not None  # 3 linear : 1
    assert run_checking_slots(engine, batch, GREEDY) == expected
    assert [engine.generate([p], GREEDY)[0] for p in batch] == expected  # and alone (a
    # 1-token prompt alone is a decode step from an empty slot)
    assert engine.blocks.used == engine.blocks.states.used == 0  # blocks and slots given back


def test_a_hybrid_request_arriving_mid_generation_gets_its_own_state():
    """A prompt prefilled while another sequence decodes takes a fresh slot; neither
    disturbs the other's state."""
    model = tiny("qwen3.5-tiny")
    first, late = prompts([10, 6])
    engine = Engine(model, block_size=4)
    long = engine.add(first, SamplingConfig(max_new_tokens=30, temperature=0))
    for _ in range(5):
        engine.step()
    short = engine.add(late, SamplingConfig(max_new_tokens=8, temperature=0))
    engine.step()  # the late one's prefill
    assert engine.blocks.states.used == 2 and short.state_slot != long.state_slot
    while not engine.scheduler.idle:
        engine.step()
        check_slots(engine)
    assert long.output_ids == uncached_greedy(model, first, 30)
    assert short.output_ids == uncached_greedy(model, late, 8)


@pytest.mark.parametrize("name", HYBRID)
def test_preempted_hybrid_requests_free_their_slots_and_compute_again_to_the_same_tokens(name):
    """A preempted sequence is computed again from its first token: its slot goes back to
    the pool at once, and it takes an empty one when it runs again."""
    model = tiny(name)
    batch = prompts([12, 20, 7, 15])
    expected = [uncached_greedy(model, p, 16) for p in batch]
    engine = Engine(model, num_blocks=16, block_size=4, max_batch=8)
    assert run_checking_slots(engine, batch, GREEDY) == expected
    assert engine.scheduler.preemptions > 0
    assert engine.blocks.used == engine.blocks.states.used == 0


def test_state_slots_return_to_the_pool_on_finish_and_abort_and_bound_the_running_batch():
    """The pool has a slot per `max_batch` sequence: a third request waits for one, and
    takes it when a sequence finishes or is aborted."""
    model = tiny("qwen3-next-tiny")
    engine = Engine(model, block_size=4, max_batch=2)
    short, long, third = (engine.add(p, SamplingConfig(max_new_tokens=n, temperature=0))
                          for p, n in zip(prompts([5, 6, 7]), (2, 40, 3), strict=True))
    engine.step()  # two prefills: the pool is full, the third waits
    assert engine.blocks.states.used == 2 and third.state_slot is None
    assert list(engine.scheduler.waiting) == [third]
    engine.step()  # the short one's second token: it finishes and gives back its slot
    assert short.finished and short.state_slot is None and engine.blocks.states.used == 1
    engine.step()  # the third's prefill, in the slot the short one gave back
    assert third.state_slot is not None and engine.blocks.states.used == 2
    engine.abort(long)
    assert long.state_slot is None and engine.blocks.states.used == 1
    while not engine.scheduler.idle:
        engine.step()
    assert third.output_ids == uncached_greedy(model, prompts([5, 6, 7])[2], 3)
    assert engine.blocks.used == engine.blocks.states.used == 0


def test_hybrid_models_share_no_prefix_and_say_why():
    """The linear layers' state after a shared prefix is kept nowhere (state_pool.py), so
    prefix caching is off: a second request with the same system prompt is computed in
    full, and gets the uncached forward's tokens and log-probabilities (argmax alone would
    not tell: in a tiny model the state rarely changes which token is best)."""
    model = tiny("qwen3-next-tiny")
    system = prompts([24], seed=2)[0]  # 6 full blocks of 4
    batch = [system + tail for tail in prompts([1, 2], seed=3)]
    engine = Engine(model, block_size=4, max_batch=1)
    seqs = engine.run(batch, SamplingConfig(max_new_tokens=4, temperature=0, logprobs=1))
    for prompt, seq in zip(batch, seqs, strict=True):
        assert seq.output_ids == uncached_greedy(model, prompt, 4)
        ids = prompt + seq.output_ids
        with torch.no_grad():
            reference = torch.log_softmax(model.logits(model(torch.tensor([ids])))[0], -1)
        expected = [float(reference[len(prompt) - 1 + i, t]) for i, t in enumerate(seq.output_ids)]
        assert [step.logprob for step in seq.logprobs] == pytest.approx(expected, abs=1e-5)
    assert engine.blocks.cache_hits == 0
    assert "Gated DeltaNet" in engine.prefix_caching_off
    assert Engine(tiny("llama-3-tiny")).prefix_caching_off is None


def test_the_default_cache_of_a_hybrid_model_counts_its_attention_layers_only():
    """Its blocks hold keys of the attention layers alone (1 of 4 layers); the states of the
    other 3 are in the pool, a fixed size per sequence."""
    model = tiny("qwen3.5-tiny")
    c = model.config
    block_bytes = 1 * 16 * 2 * c.kv_heads * c.head_dim * 4  # one layer's keys and values, fp32
    engine = Engine(model, max_batch=3, cache_bytes=5 * block_bytes)
    assert engine.cache.num_blocks == 5 and engine.cache.bytes_per_block() == block_bytes
    conv = 2 * 2 * 16 + 4 * 16  # C channels: q and k (2 heads of 16), v (4 heads of 16)
    per_layer = conv * (c.linear_conv_kernel - 1) * 4 + 4 * 16 * 16 * 4  # (C, K - 1), memory
    assert engine.blocks.states.slots == 3
    assert engine.blocks.states.bytes_per_slot() == 3 * per_layer
def test_a_prefill_of_many_prompts_and_each_decode_step_are_one_forward_pass():
    """Prompts of different lengths are packed into one row: one pass through the weights
    for all of them, and the tokens stay those each request gets alone."""
    model = tiny("qwen3-tiny")
    batch = prompts([3, 17, 9, 30, 1])
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    engine = Engine(model, block_size=4, max_batch=8)
    seqs = [engine.add(p, GREEDY) for p in batch]
    engine.step()
    assert calls == [(1, 3 + 17 + 9 + 30 + 1)]  # the prefill: every prompt in one row
    engine.step()
    assert calls[1:] == [(1, 5)]  # a decode step: every sequence's newest token
    while not engine.scheduler.idle:
        engine.step()
    calls.clear()
    assert [s.output_ids for s in seqs] == [uncached_greedy(model, p, 16) for p in batch]


def test_blocks_are_hashed_once_when_they_fill(monkeypatch):
    """Prefix sharing hashes each block once, when it fills; no step walks every block."""
    from llmscratch.generation import block_manager

    hashed = []
    real_hash = block_manager.block_hash
    monkeypatch.setattr(block_manager, "block_hash",
                        lambda tokens, previous: hashed.append(tuple(tokens))
                        or real_hash(tokens, previous))
    model = tiny("gpt2-tiny")
    prompt = prompts([12])[0]  # three full blocks of 4
    engine = Engine(model, block_size=4, max_batch=1)
    engine.generate([prompt], GREEDY)
    # One look-up of block 0, not in the cache, ends the search; then 12 + 16 tokens, the
    # last never computed: 27 computed, 6 full blocks, each hashed once, as it fills.
    assert len(hashed) == 1 + 6
    hashed.clear()
    assert engine.generate([prompt], GREEDY)[0] == uncached_greedy(model, prompt, 16)
    # Again: blocks 0 and 1 found in the cache (2 hashes), then the 4 that fill afresh.
    assert engine.blocks.cache_hits == 2 and len(hashed) == 2 + 4


@pytest.mark.parametrize("name", ["gemma3-tiny", "olmo3-tiny", "gemma4-tiny"])
def test_sliding_window_layers_hold_only_their_window_on_a_long_generation(name):
    """Local layers (a window of 8) keep their keys in a pool of their own, and give back
    each block no later query sees: over 64 new tokens (8 windows), a sequence holds at most
    8 / 4 + 2 of them while its global layers' blocks grow with the text; the tokens stay
    those of the uncached forward pass."""
    model = tiny(name)
    prompt = prompts([10])[0]
    engine = Engine(model, block_size=4, max_batch=2)
    seq = engine.add(prompt, SamplingConfig(max_new_tokens=64, temperature=0))
    held = []
    while not engine.scheduler.idle:
        engine.step()
        held.append(engine.blocks.window_pool.used)
    assert seq.output_ids == uncached_greedy(model, prompt, 64)
    assert max(held[1:]) <= 8 // 4 + 2  # after the prefill
    assert max(held) >= -(-10 // 4)  # the prefill wrote all 10 positions
    # The pool: room for 2 windows and one full context (256 / 4), not 2 full contexts.
    assert engine.cache.window_blocks == 2 * (8 // 4 + 2) + 64 < engine.cache.num_blocks == 128
    assert engine.blocks.used == 0



@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-3-tiny", "deepseek-v3-tiny", "gemma3-tiny",
                                  "gpt-oss-tiny"])
def test_the_block_pools_hold_what_footprint_predicts(name):
    """MHA, GQA, MLA, and sliding-window layers (a window of 8): a position of each pool
    costs, in the tensors the engine allocated, footprint's bytes per token; a sequence of
    30 tokens holds footprint's bytes for 30 tokens, plus at most the unfilled part of its
    last block (and, in the window pool, of the two blocks at its window's ends)."""
    from llmscratch.model.footprint import footprint

    model = tiny(name)
    c, bs = model.config, 4
    engine = Engine(model, block_size=bs, max_batch=1)
    seq = engine.add(prompts([10])[0], SamplingConfig(max_new_tokens=100, temperature=0))
    while seq.num_tokens < 30:
        engine.step()
    cache = engine.cache
    slot = {False: 0, True: 0}  # bytes of one position: global layers' pool, local layers'
    for i in range(c.n_layer):
        slot[c.layer_is_local(i)] += cache.keys[i][:, 0].nbytes + cache.values[i][:, 0].nbytes
    report = footprint(c, seq=seq.num_tokens)
    kv = report["kv_cache"]
    assert (slot[False] + slot[True], slot[False]) == (kv["per_token"], kv["per_token_global"])
    window_blocks = sum(b is not None for b in seq.window_table)
    held = bs * (len(seq.block_table) * slot[False] + window_blocks * slot[True])
    predicted = report["memory_bytes"]["kv_cache"]
    assert predicted <= held <= predicted + (bs - 1) * slot[False] + (2 * bs - 2) * slot[True]
    if slot[True]:  # the window pool holds about the window, not the 30 tokens
        assert window_blocks * bs < 30 and held < 30 * kv["per_token"]

def test_packing_is_chosen_by_what_this_machine_measures(monkeypatch):
    """Packed weights are used only where they are faster here: `packing_pays` times both
    kernels once per layer shape; the model keeps nn.Linear where plain is faster."""
    from llmscratch.generation import cpu_weights

    model = tiny("llama-3-tiny")
    if not can_pack(model):
        pytest.skip("packing does not apply here")
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    asked = []

    def verdict(pays):
        return lambda dtype, k, n: asked.append((dtype, k, n)) or pays

    monkeypatch.setattr(cpu_weights, "packing_pays", verdict(False))
    slow = copy.deepcopy(model)
    assert pack_linear_weights(slow) == 0 and asked[0][0] == torch.float32
    assert sum(type(m) is torch.nn.Linear for m in slow.modules()) == linears
    monkeypatch.setattr(cpu_weights, "packing_pays", verdict(True))
    assert pack_linear_weights(copy.deepcopy(model)) == linears


def test_flex_attention_decode_reads_the_blocks_in_place_to_the_same_tokens():
    """The opt-in decode path (compiled flex_attention, the block tables as its block mask)
    gives the uncached forward's tokens, with grouped-query heads and a window pool."""
    import shutil

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile needs a C++ compiler on the CPU")
    model = tiny("gemma3-tiny")
    batch = prompts([3, 17, 9, 30, 1])
    expected = [uncached_greedy(model, p, 16) for p in batch]
    engine = Engine(model, block_size=4, max_batch=8, paged_attention="flex")
    assert engine.generate(batch, GREEDY) == expected
    assert engine.blocks.used == 0


def kernel_or_skip() -> None:
    if kernel_missing():
        pytest.skip(kernel_missing())


def paged_reference(q, keys, values, tables, totals, block_size, window, scale):
    """Decode attention worked out plainly, in float64: each sequence's visible positions
    looked up through its block table one by one, each query head over its group's keys."""
    B, H, _ = q.shape
    G = H // keys.size(0)
    out = torch.empty(B, H, values.size(-1), dtype=torch.float64)
    for b in range(B):
        total = int(totals[b])
        first = max(0, total - window) if window else 0
        slots = [int(tables[b, p // block_size]) * block_size + p % block_size
                 for p in range(first, total)]
        for h in range(H):
            k = keys[h // G, slots].double()  # (n, Dh)
            v = values[h // G, slots].double()  # (n, Dv)
            weights = torch.softmax(k @ q[b, h].double() * scale, dim=0)  # (n,)
            out[b, h] = weights @ v
    return out


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("window", [0, 5])
def test_the_paged_decode_kernel_equals_attention_through_the_block_tables(
        dtype, tolerance, window):
    """The C++ kernel against the definition: scattered blocks, sequences of 1 to 40
    positions (not whole blocks), grouped-query heads (6 query heads on 2), a window."""
    kernel_or_skip()
    gen = torch.Generator().manual_seed(0)
    block_size, Hkv, H, Dh, Dv = 4, 2, 6, 16, 16
    totals = torch.tensor([1, 4, 5, 17, 40])
    blocks = [-(-int(t) // block_size) for t in totals]
    order = torch.randperm(sum(blocks) + 3, generator=gen)  # blocks anywhere in the pool
    tables = torch.full((len(blocks), max(blocks)), -1, dtype=torch.int64)
    for b, start in enumerate(torch.tensor([0, *blocks]).cumsum(0)[:-1].tolist()):
        tables[b, :blocks[b]] = order[start:start + blocks[b]]
    keys = torch.randn(Hkv, len(order) * block_size, Dh, generator=gen).to(dtype)
    values = torch.randn(Hkv, len(order) * block_size, Dv, generator=gen).to(dtype)
    q = torch.randn(len(blocks), H, Dh, generator=gen).to(dtype)
    out = torch.ops.llmscratch.paged_decode(q, keys, values, tables, totals, block_size,
                                            window, 0.3)
    expected = paged_reference(q, keys, values, tables, totals, block_size, window, 0.3)
    assert out.dtype == dtype and out.shape == (len(blocks), H, Dv)
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=tolerance)


def test_without_the_kernel_auto_reads_through_the_copy_and_kernel_says_why(monkeypatch):
    """No C++ compiler: "auto" falls back to the copy, and asking for the kernel by name is
    one clear error; latent attention never takes the kernel."""
    model = tiny("gpt2-tiny")
    monkeypatch.setattr("llmscratch.generation.engine.kernel_missing", lambda: "no compiler here")
    assert Engine(model, block_size=4).paged_attention == "gather"
    with pytest.raises(LLMScratchError, match="no compiler here"):
        Engine(model, block_size=4, paged_attention="kernel")
    with pytest.raises(LLMScratchError, match="latent attention"):
        Engine(tiny("deepseek-v3-tiny"), block_size=4, paged_attention="kernel")
    with pytest.raises(LLMScratchError, match="must be auto"):
        Engine(model, block_size=4, paged_attention="fast")


def uncached_greedy_on(model: GPT, prompt: list[int], n: int) -> list[int]:
    """`uncached_greedy` with the ids on the model's device."""
    device = next(model.parameters()).device
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids], device=device)
            ids.append(int(model.logits(model(x))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.cuda
@pytest.mark.parametrize("name, paged_attention",
                         [(name, "gather") for name in FAMILIES + HYBRID]
                         + [("qwen3-tiny", "flex")])
def test_the_engine_on_cuda_gives_the_uncached_greedy_tokens(name, paged_attention):
    """On a GPU, batched and alone, the engine writes what the plain forward picks there."""
    model = tiny(name).cuda()
    batch = prompts([3, 17, 9, 30, 1])
    expected = [uncached_greedy_on(model, p, 16) for p in batch]
    engine = Engine(model, block_size=4, max_batch=8, paged_attention=paged_attention)
    assert engine.device.type == "cuda"
    assert engine.generate(batch, GREEDY) == expected
    assert [engine.generate([p], GREEDY)[0] for p in batch] == expected
    assert engine.blocks.used == 0
