"""Speculative decoding changes the speed, never the text's distribution: greedy output is
plain greedy output, token for token, and sampled tokens follow the target model's
probabilities (computed exactly here, by enumerating a tiny vocabulary)."""

import copy
import itertools

import pytest
import torch

from llmscratch.generation.engine import Engine
from llmscratch.generation.sampling import SamplingConfig, generate, next_token_probs
from llmscratch.generation.speculative import (
    DraftModel,
    PromptLookup,
    SpeculationStats,
    lookup,
    speculative_tokens,
    verify,
)
from llmscratch.model import GPT, get_preset
from tests.test_families import tiny


def spec(model, prompt, cfg, drafter, k, stop_ids=()):
    stats = SpeculationStats()
    tokens = list(speculative_tokens(model, prompt, cfg, drafter, k, stop_ids, None, stats))
    return tokens, stats


def test_prompt_lookup_proposes_what_followed_the_most_recent_match_of_the_longest_ngram():
    #      0  1  2  3  4  5  6  7  8  9
    ids = [5, 6, 7, 8, 9, 6, 7, 1, 2, 6, 7]
    assert lookup(ids, 3) == [1, 2, 6]  # "6 7" last seen at 5..6, then 1 2 6
    assert lookup(ids, 3, max_ngram=1) == [1, 2, 6]  # "7" last seen at 6
    assert lookup([5, 6, 7, 8, 6, 7], 2) == [8, 6]  # 3-gram "8 6 7" absent: "6 7" at 1..2
    assert lookup([1, 2, 3], 4) == []  # no earlier occurrence of anything
    assert lookup([4, 4], 4) == [4]  # the continuation is cut at the sequence's end


def test_a_draft_model_drafts_its_own_greedy_continuation_after_rejections():
    model = tiny("llama-3-tiny")
    drafter = DraftModel(model, 512)
    cfg = SamplingConfig(temperature=0)
    gen = torch.Generator()
    ids = repetitive_prompts()[0]
    for _ in range(5):  # each time, keep 1 draft token and replace the next (rejected)
        draft, _ = drafter.propose(ids, 4, cfg, len(ids), gen)
        assert draft == generate(model, ids, SamplingConfig(4, temperature=0))
        ids = ids + draft[:1] + [(draft[1] + 1) % 512]


def repetitive_prompts(seed=3) -> list[list[int]]:
    """Random prompts, some of them repeating themselves (so prompt lookup finds matches)."""
    gen = torch.Generator().manual_seed(seed)
    words = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (6, 9, 4)]
    return [words[0] + words[1] + words[0], words[1] * 3, words[2], words[2] + words[0] * 2]


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-3-tiny"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_speculation_writes_the_plain_greedy_tokens(name, k):
    model = tiny(name)
    torch.manual_seed(1)
    other = GPT(model.config).eval()  # a draft that mostly disagrees: many rejections
    cfg = SamplingConfig(max_new_tokens=24, temperature=0)
    drafted = accepted = 0
    for prompt in repetitive_prompts():
        expected = generate(model, prompt, cfg)
        for drafter in (PromptLookup(), DraftModel(other, 512), DraftModel(model, 512)):
            tokens, stats = spec(model, prompt, cfg, drafter, k)
            assert tokens == expected, type(drafter).__name__
            drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
            if isinstance(drafter, DraftModel) and drafter.model is model:
                assert stats.accepted == stats.drafted > 0  # a model agrees with itself
    assert 0 < accepted < drafted  # both outcomes were exercised


def test_greedy_speculation_stops_at_a_stop_token_and_at_the_context_length():
    model = tiny("gpt2-tiny")  # a context of 64 tokens
    cfg = SamplingConfig(max_new_tokens=100, temperature=0)
    prompt = repetitive_prompts()[0]
    plain = generate(model, prompt, cfg)
    assert len(plain) == 64 - len(prompt)  # the context is what ends it
    for k in (2, 5):
        assert spec(model, prompt, cfg, PromptLookup(), k)[0] == plain
        assert spec(model, prompt, cfg, DraftModel(model, 512), k)[0] == plain
        for stop in {plain[3], plain[10]}:  # the reply ends before the first of its stop tokens
            expected = generate(model, prompt, cfg, stop_ids={stop})
            assert len(expected) < len(plain)
            assert spec(model, prompt, cfg, PromptLookup(), k, {stop})[0] == expected
            assert spec(model, prompt, cfg, DraftModel(model, 512), k, {stop})[0] == expected


def test_greedy_speculation_with_penalties_sees_accepted_drafts_as_generated():
    model = tiny("llama-3-tiny")
    cfg = SamplingConfig(max_new_tokens=20, temperature=0, repetition_penalty=1.5,
                         frequency_penalty=0.5, presence_penalty=0.3)
    for prompt in repetitive_prompts():
        expected = generate(model, prompt, cfg)
        assert spec(model, prompt, cfg, PromptLookup(), 4)[0] == expected
        assert spec(model, prompt, cfg, DraftModel(model, 512), 4)[0] == expected


# --- sampling: the accept/reject rule keeps the target's distribution ------------------

P = torch.tensor([0.5, 0.3, 0.1, 0.1, 0.0, 0.0])  # the target's distribution
Q = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.3, 0.3])  # the draft's, far from it
DRAWS = 5_000


def rule_frequencies(q: torch.Tensor | None, draft_token: int = 0) -> torch.Tensor:
    """How often each token comes out of one step of the rule with one draft token (drawn
    from q, or always `draft_token` when q is None), over DRAWS steps (fixed seed)."""
    gen = torch.Generator().manual_seed(99)
    counts = torch.zeros(len(P))
    p = torch.stack([P, torch.full_like(P, 1 / len(P))])  # a bonus row after the draft
    for _ in range(DRAWS):
        x = draft_token if q is None else int(torch.multinomial(q, 1, generator=gen))
        n, token = verify(p, [x], None if q is None else q[None], gen)
        counts[x if n else token] += 1
    return counts / DRAWS


def test_the_accept_reject_rule_draws_tokens_with_the_targets_probabilities():
    # Four standard deviations of a frequency are at most 0.028 here. The mistakes this
    # test exists for move some frequency by 0.1 or more: drawing from p rather than from
    # max(0, p - q) after a rejection gives [0.4, 0.28, 0.16, 0.16, 0, 0] with Q, and
    # token 0 with probability 0.75 with a one-hot q on it; accepting without the
    # min(1, p/q) test gives q, or always x.
    assert torch.allclose(rule_frequencies(Q), P, atol=0.03)
    assert torch.allclose(rule_frequencies(None, 0), P, atol=0.03)  # prompt lookup's one-hot q


def exact_distribution(model, prompt, cfg, n: int) -> dict[tuple[int, ...], float]:
    """The target's probability of each sequence of n new tokens, by enumeration."""
    V = model.config.vocab_size
    table = {}
    with torch.no_grad():
        for seq in itertools.product(range(V), repeat=n):
            ids = torch.tensor([prompt + list(seq[:-1])])
            probs = next_token_probs(model.logits(model(ids))[0, len(prompt) - 1:], cfg)
            table[seq] = float(torch.prod(probs[torch.arange(n), torch.tensor(seq)]))
    return table


def chi_square(counts: dict, probs: dict, runs: int) -> tuple[float, int]:
    """Pearson's statistic and its number of cells; cells expected fewer than 5 times are
    pooled into one."""
    statistic, pooled_count, pooled_expected, cells = 0.0, 0, 0.0, 0
    for cell, p in probs.items():
        if runs * p >= 5:
            statistic += (counts[cell] - runs * p) ** 2 / (runs * p)
            cells += 1
        else:
            pooled_count, pooled_expected = pooled_count + counts[cell], pooled_expected + runs * p
    statistic += (pooled_count - pooled_expected) ** 2 / pooled_expected
    return statistic, cells + 1


def target_and_contrary_draft() -> tuple[GPT, GPT]:
    """A 4-token target whose next-token distribution is spread but far from uniform, and a
    draft that leans away from it: the statistical tests' pair."""
    torch.manual_seed(0)
    config = get_preset("gpt2-tiny", vocab_size=4, context_length=16, n_layer=1,
                        tie_embeddings=False)
    model = GPT(config).eval()
    draft = GPT(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(15)  # spread, but far from uniform
        draft.load_state_dict(model.state_dict())
        draft.lm_head.weight.mul_(-0.3)  # a draft that leans away from the target
    return model, draft


@pytest.mark.parametrize("drafter", ["prompt-lookup", "draft-model"])
def test_sampled_speculation_follows_the_targets_distribution(drafter):
    """Three tokens from a 4-token vocabulary, 600 times (seeds 0 to 599, two drafts a
    step): how often each of the 64 replies came, against its exact probability.

    About 20 cells are expected 5 times or more, so the statistic is about 20 by chance
    (13 and 24 here) and above 45 one time in 2,000. Resampling from p instead of the
    residual gives 97 with the draft model and 123 with prompt lookup; accepting every
    draft, over 2,000.
    """
    model, draft = target_and_contrary_draft()
    prompt = [0, 1, 2, 0, 1]  # prompt lookup proposes "2 0 1" after "0 1"
    exact = exact_distribution(model, prompt, SamplingConfig(temperature=1.0), 3)
    counts = dict.fromkeys(exact, 0)
    stats = SpeculationStats()
    runs = 600
    for seed in range(runs):
        make = PromptLookup() if drafter == "prompt-lookup" else DraftModel(draft, 4)
        tokens = speculative_tokens(model, prompt, SamplingConfig(3, 1.0, seed=seed), make, 2,
                                    stats=stats)
        counts[tuple(tokens)] += 1
    statistic, cells = chi_square(counts, exact, runs)
    assert 0.1 < stats.acceptance_rate < 0.9  # both branches of the rule ran
    assert cells >= 15 and statistic < 45


def test_a_model_with_gated_deltanet_layers_is_not_speculated_on():
    """Rejected drafts are dropped by moving the cache back, which a DeltaNet state cannot do:
    such a model (as target or draft) is refused in one line, and its cache refuses to move
    back rather than keep the rejected tokens in its state."""
    from llmscratch.errors import LLMScratchError
    from llmscratch.generation.speculative import check_can_rewind

    config = get_preset("qwen3-next-tiny")
    with pytest.raises(LLMScratchError, match="Gated DeltaNet") as err:
        check_can_rewind(config, "draft model")
    assert "\n" not in str(err.value) and "draft model" in str(err.value)
    check_can_rewind(get_preset("qwen3-tiny"), "model")  # attention only: fine
    cache = GPT(config).new_cache(1, 16)
    cache.pos = 5
    with pytest.raises(ValueError, match="cannot be truncated"):
        cache.truncate(3)


# --- in the engine: the same rule over the paged cache, requests batched --------------------


def run_engine(engine, prompts, samplings, drafts, stops=None):
    """Every request's finished Sequence, and how many tokens the step that ended it gave.
    stops: each request's stop ids (default: none). After every step, each running sequence
    holds the blocks of its computed tokens and no more."""
    stops = stops or [()] * len(prompts)
    seqs = [engine.add(p, s, stop, draft_tokens=k)
            for p, s, k, stop in zip(prompts, samplings, drafts, stops, strict=True)]
    last_step = {}
    while not engine.scheduler.idle:
        given = {}
        for seq, _ in engine.step():
            given[seq.id] = given.get(seq.id, 0) + 1
        last_step.update(given)
        for seq in engine.scheduler.running:  # rejected drafts' blocks were given back
            assert len(seq.block_table) == engine.blocks.blocks_needed(seq.num_computed)
    return seqs, [last_step[seq.id] for seq in seqs]


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-3-tiny", "gemma3-tiny", "deepseek-v3-tiny"])
@pytest.mark.parametrize("num_blocks", [None, 14])
def test_engine_speculation_writes_the_engines_plain_greedy_tokens(name, num_blocks):
    """Speculating and plain requests in one batch (each prompt both ways), with logprobs,
    a stop token, short and long budgets: every request gets what the plain engine gives
    it, drafts are accepted and rejected, and no block is left over. 14 blocks of 4 slots
    make a cache too small for all at once: preemption, and drafts cut to the free blocks."""
    model = tiny(name)
    prompts = repetitive_prompts() * 2
    samplings = [SamplingConfig(max_new_tokens=n, temperature=0, logprobs=2)
                 for n in (30, 1, 30, 24) * 2]
    plain_engine = Engine(model, block_size=4)
    plain = plain_engine.run(prompts, samplings)
    stops = [{plain[0].output_ids[12]}, (), (), ()] * 2  # the first prompt's, both ways
    expected, _ = run_engine(plain_engine, prompts, samplings, [0] * 8, stops)
    engine = Engine(model, num_blocks=num_blocks, block_size=4)
    for _ in range(2):  # the second time, prompts' blocks come from the prefix cache
        seqs, _ = run_engine(engine, prompts, samplings, [4, 2, 3, 6, 0, 0, 0, 0], stops)
        for seq, want in zip(seqs, expected, strict=True):
            assert seq.output_ids == want.output_ids
            assert (seq.finish_reason, seq.stop_token) == (want.finish_reason, want.stop_token)
            assert [t.token for t in seq.logprobs] == [t.token for t in want.logprobs]
            assert [t.logprob for t in seq.logprobs] == pytest.approx(
                [t.logprob for t in want.logprobs], abs=1e-4)
        assert engine.blocks.used == 0
    assert expected[0].finish_reason == "stop"
    assert 0 < engine.speculation.accepted
    if name != "gpt2-tiny":  # (whose replies repeat one token: every draft is right)
        assert engine.speculation.accepted < engine.speculation.drafted
    assert engine.blocks.cache_hits > 0
    if num_blocks:
        assert engine.scheduler.preemptions > 0


def test_engine_speculation_ends_where_plain_decoding_does_even_inside_a_step():
    """Every budget from 1 to 20 tokens and every stop token of the plain reply, all in one
    batch: each reply is the plain one cut there, including where the end comes after
    accepted drafts in the step that ends it."""
    model = tiny("llama-3-tiny")
    prompt = repetitive_prompts()[1]
    plain = Engine(model).generate([prompt], SamplingConfig(20, temperature=0))[0]
    engine = Engine(model, block_size=4, draft_tokens=4)
    budgets = [SamplingConfig(n, temperature=0) for n in range(1, 21)]
    seqs, last_step = run_engine(engine, [prompt] * 20, budgets, [4] * 20)
    assert [seq.output_ids for seq in seqs] == [plain[:n] for n in range(1, 21)]
    assert max(last_step) > 1  # some budgets were met by a step of several tokens
    for stop in set(plain):
        seqs, last_step = run_engine(engine, [prompt], [budgets[-1]], [4], [{stop}])
        assert seqs[0].output_ids == plain[:plain.index(stop)]
        assert seqs[0].finish_reason == "stop" and seqs[0].stop_token == stop
    assert engine.blocks.used == 0


@pytest.mark.parametrize("drafter, greedy", [("prompt-lookup", True), ("prompt-lookup", False),
                                             ("draft-model", False)])
def test_engine_speculation_keeps_the_targets_distribution(drafter, greedy):
    """The statistical test of `test_sampled_speculation_follows_the_targets_distribution`,
    through the engine: 600 seeded requests batched, drafting 2 tokens a step."""
    model, draft = target_and_contrary_draft()
    prompt = [0, 1, 2, 0, 1]
    cfg = SamplingConfig(3, temperature=0 if greedy else 1.0)
    exact = exact_distribution(model, prompt, cfg, 3)
    runs = 600
    engine = Engine(model, block_size=4, max_batch=64, draft_tokens=2,
                    draft_model=draft if drafter == "draft-model" else None)
    samplings = [SamplingConfig(3, cfg.temperature, seed=seed) for seed in range(runs)]
    seqs, _ = run_engine(engine, [prompt] * runs, samplings, [2] * runs)
    counts = dict.fromkeys(exact, 0)
    for seq in seqs:
        counts[tuple(seq.output_ids)] += 1
    assert engine.blocks.used == 0 and not engine.drafter.drafters  # nothing left behind
    if greedy:  # one reply, always
        assert counts == {cell: runs * (p == 1.0) for cell, p in exact.items()}
        return
    statistic, cells = chi_square(counts, exact, runs)
    assert 0.1 < engine.speculation.acceptance_rate < 0.9
    assert cells >= 15 and statistic < 45


def test_engine_speculation_with_a_draft_model_writes_the_engines_plain_greedy_tokens():
    """A draft model that sometimes agrees (the model's weights with noise), and one that
    always does (the model itself), in a batch of speculating and plain requests and in
    a cache small enough to preempt."""
    model = tiny("llama-3-tiny")
    torch.manual_seed(1)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(torch.randn_like(param) * 0.3 * param.std())
    prompts = repetitive_prompts() * 2
    greedy = SamplingConfig(max_new_tokens=20, temperature=0)
    expected = Engine(model, block_size=4).generate(prompts, greedy)
    for draft, num_blocks in ((other, None), (model, None), (other, 14)):
        engine = Engine(model, num_blocks=num_blocks, block_size=4, draft_model=draft)
        seqs, _ = run_engine(engine, prompts, [greedy] * 8, [4, 2, 3, 6, 0, 0, 0, 0])
        assert [seq.output_ids for seq in seqs] == expected
        stats = engine.speculation
        assert 0 < stats.accepted < stats.drafted if draft is other else \
            stats.accepted == stats.drafted > 0
        assert engine.blocks.used == 0
        if num_blocks:
            assert engine.scheduler.preemptions > 0


@pytest.mark.cuda
def test_engine_speculation_on_cuda_writes_the_plain_engine_tokens():
    """On a GPU: greedy, what the plain engine writes there; sampled (each sequence's
    generator on the CPU, the model's probabilities on the GPU), the same text for a seed."""
    model = tiny("llama-3-tiny").cuda()
    prompts = repetitive_prompts()
    greedy = SamplingConfig(max_new_tokens=24, temperature=0)
    plain = Engine(model, block_size=4).generate(prompts, greedy)
    sampled = [SamplingConfig(24, 1.0, seed=seed) for seed in range(len(prompts))]
    for draft in (None, model):  # prompt lookup, and a draft model (on the GPU too)
        engine = Engine(model, block_size=4, draft_tokens=4, draft_model=draft)
        assert engine.generate(prompts, greedy) == plain
        assert engine.speculation.accepted > 0
        assert engine.generate(prompts, sampled) == engine.generate(prompts, sampled)
        assert engine.blocks.used == 0


def test_the_engine_refuses_speculation_it_cannot_do_in_one_line():
    from llmscratch.errors import LLMScratchError

    with pytest.raises(LLMScratchError, match="--speculative: the model has Gated DeltaNet"):
        Engine(GPT(get_preset("qwen3-next-tiny")), draft_tokens=4)
    engine = Engine(tiny("gpt2-tiny"))
    for bad in (-1, 2.5):
        with pytest.raises(LLMScratchError, match="draft_tokens must be a whole number"):
            engine.add([1, 2], SamplingConfig(), draft_tokens=bad)
    assert engine.scheduler.idle
