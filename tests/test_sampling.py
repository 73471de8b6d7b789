"""Sampling draws tokens with the probabilities it promises: temperature, top-k, top-p.

Each test draws 40,000 tokens from fixed logits (one generator, fixed seed: the
same numbers every run) and compares how often each token came up with the
distribution computed by hand. Four standard deviations of a frequency are
at most 0.01 here; the mistakes these tests exist for (a temperature that
multiplies, a top-p that keeps everything) move some frequency by 0.05 or more.
"""

import math

import pytest
import torch

from llmscratch.errors import LLMScratchError
from llmscratch.generation.sampling import (
    SamplingConfig,
    TokenCounts,
    apply_penalties,
    penalize,
    sample_next,
    sample_rows,
)

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])  # 6 tokens, most likely first
DRAWS = 40_000


def frequencies(cfg: SamplingConfig) -> torch.Tensor:
    """How often each token is drawn, over DRAWS draws (rows of one batch)."""
    gen = torch.Generator().manual_seed(1234)
    tokens = sample_next(LOGITS.expand(DRAWS, -1), cfg, gen)  # (DRAWS,)
    return torch.bincount(tokens, minlength=len(LOGITS)).double() / DRAWS


def expected(temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """softmax(logits / T), keeping the k most likely, then the smallest set of most likely
    tokens whose probability reaches p; renormalised. Written out token by token."""
    probs = [math.exp(x / temperature) for x in LOGITS.tolist()]
    probs = [p / sum(probs) for p in probs]
    order = sorted(range(len(probs)), key=lambda i: -probs[i])  # most likely first
    kept = order[:top_k] if top_k else order
    mass = sum(probs[i] for i in kept)
    nucleus, before = [], 0.0
    for i in kept:
        if before >= top_p:  # the tokens ranked above already reach p
            break
        nucleus.append(i)
        before += probs[i] / mass
    total = sum(probs[i] for i in nucleus)
    return torch.tensor([probs[i] / total if i in nucleus else 0.0 for i in range(len(probs))],
                        dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_divides_the_logits(temperature):
    got = frequencies(SamplingConfig(temperature=temperature))
    torch.testing.assert_close(got, expected(temperature), atol=0.01, rtol=0)
    # The two ways to get it wrong give other distributions, far outside the tolerance:
    if temperature != 1.0:
        assert (got - expected(1 / temperature)).abs().max() > 0.05  # multiplied


def test_top_k_keeps_the_k_most_likely():
    got = frequencies(SamplingConfig(temperature=1.0, top_k=3))
    torch.testing.assert_close(got, expected(1.0, top_k=3), atol=0.01, rtol=0)
    assert (got[3:] == 0).all()


@pytest.mark.parametrize("top_p", [0.5, 0.7, 0.9])
def test_top_p_keeps_the_smallest_set_that_reaches_p(top_p):
    got = frequencies(SamplingConfig(temperature=1.0, top_p=top_p))
    want = expected(1.0, top_p=top_p)
    torch.testing.assert_close(got, want, atol=0.01, rtol=0)
    assert (got[want == 0] == 0).all()  # tokens outside the nucleus never come up
    assert (want == 0).any()  # and there are some: top-p switched off would draw them


def test_top_k_then_top_p_together():
    got = frequencies(SamplingConfig(temperature=0.8, top_k=4, top_p=0.8))
    torch.testing.assert_close(got, expected(0.8, top_k=4, top_p=0.8), atol=0.01, rtol=0)


def test_temperature_zero_is_greedy():
    logits = torch.randn(50, 10)
    tokens = sample_next(logits, SamplingConfig(temperature=0), torch.Generator())
    assert torch.equal(tokens, logits.argmax(-1))


@pytest.mark.parametrize("field, value, message", [
    ("temperature", float("nan"), "temperature must be a finite number"),
    ("temperature", float("inf"), "temperature must be a finite number"),
    ("temperature", -0.5, "temperature must be a finite number"),
    ("top_p", 0.0, "top_p must be in (0, 1]"),
    ("top_p", 1.5, "top_p must be in (0, 1]"),
    ("top_p", float("nan"), "top_p must be in (0, 1]"),
    ("top_k", -1, "top_k must be >= 0"),
    ("max_new_tokens", 0, "max_new_tokens must be at least 1"),
    ("max_new_tokens", -1, "max_new_tokens must be at least 1"),
    ("min_p", 1.5, "min_p must be in [0, 1]"),
    ("repetition_penalty", 0.0, "repetition_penalty must be a finite number > 0"),
    ("repetition_penalty", float("nan"), "repetition_penalty must be a finite number > 0"),
    ("frequency_penalty", 3.0, "frequency_penalty must be in [-2, 2]"),
    ("presence_penalty", float("nan"), "presence_penalty must be in [-2, 2]"),
    ("seed", 2**63, "seed must be a whole number from 0 to 2^63 - 1"),
    ("seed", -1, "seed must be a whole number from 0 to 2^63 - 1"),
    ("seed", 1.5, "seed must be a whole number"),
    ("logit_bias", {3: 101}, "logit_bias maps token ids (>= 0) to numbers from -100 to 100"),
    ("logit_bias", {-1: 5}, "logit_bias maps token ids"),
    ("logit_bias", {3: float("nan")}, "logit_bias maps token ids"),
])
def test_sampling_settings_that_mean_nothing_are_refused(field, value, message):
    with pytest.raises(LLMScratchError) as err:
        SamplingConfig(**{field: value})
    assert message in str(err.value)


def test_penalties_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    cfg = SamplingConfig(repetition_penalty=2.0)
    # Tokens 0 (positive logit: halved) and 1 (negative: doubled) have been seen; 2, 3 not.
    got = apply_penalties(logits, cfg, prompt_ids=[1], output_ids=[0])
    torch.testing.assert_close(got, torch.tensor([[1.0, -2.0, 0.5, 0.0]]))
    cfg = SamplingConfig(frequency_penalty=0.5, presence_penalty=1.0)
    # Generated: token 0 twice, token 2 once; the prompt's token 3 is not penalised.
    got = apply_penalties(logits, cfg, prompt_ids=[3], output_ids=[0, 2, 0])
    torch.testing.assert_close(got, torch.tensor([[2.0 - 1.0 - 1.0, -1.0, 0.5 - 0.5 - 1.0, 0.0]]))
    assert apply_penalties(logits, SamplingConfig(), [0, 1], [2]) is logits  # off: untouched


def test_logit_bias_adds_to_the_logits_of_the_tokens_it_names():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    got = apply_penalties(logits, SamplingConfig(logit_bias={1: 4.0, 3: -100}), [], [])
    torch.testing.assert_close(got, torch.tensor([[2.0, 3.0, 0.5, -100.0]]))
    greedy = SamplingConfig(temperature=0, logit_bias={0: -100})  # bans the likeliest
    assert int(sample_next(logits, greedy, torch.Generator())) == 2


def test_penalties_apply_before_greedy_decoding():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    greedy = SamplingConfig(temperature=0, presence_penalty=0.5)
    assert int(sample_next(logits, greedy, torch.Generator(), output_ids=[1])) == 0
    assert int(sample_next(logits, greedy, torch.Generator(), output_ids=[0])) == 1


def test_min_p_keeps_tokens_at_least_that_fraction_as_likely_as_the_best():
    got = frequencies(SamplingConfig(temperature=1.0, min_p=0.2))
    probs = torch.softmax(LOGITS.double(), dim=-1)
    kept = probs >= 0.2 * probs.max()
    want = torch.where(kept, probs, torch.zeros_like(probs))
    torch.testing.assert_close(got, want / want.sum(), atol=0.01, rtol=0)
    assert (~kept).any() and (got[~kept] == 0).all()


def test_one_batch_samples_every_row_with_its_own_settings():
    """Rows of one `sample_rows` call, each with its settings, draw from the distributions
    they would have alone: half the rows top-k 3 at temperature 1, half top-p 0.7 at 0.5
    with a presence penalty, one row greedy."""
    first = SamplingConfig(temperature=1.0, top_k=3)
    second = SamplingConfig(temperature=0.5, top_p=0.7, presence_penalty=2.0)
    configs = [first, second] * (DRAWS // 2) + [SamplingConfig(temperature=0)]
    counts = TokenCounts([], len(LOGITS))
    counts.add(1)  # token 1 was generated once: the second config's rows penalise it
    tokens = sample_rows(LOGITS.expand(len(configs), -1), configs,
                         torch.Generator().manual_seed(5), [counts] * len(configs))
    assert int(tokens[-1]) == 0  # the greedy row

    def freq(drawn):
        return torch.bincount(drawn, minlength=len(LOGITS)).double() / len(drawn)

    torch.testing.assert_close(freq(tokens[:-1:2]), expected(1.0, top_k=3), atol=0.015, rtol=0)
    penalised = LOGITS.clone()
    penalised[1] -= 2.0
    probs = torch.softmax(penalised.double() / 0.5, dim=-1)
    order = probs.argsort(descending=True)
    kept = order[:int((probs[order].cumsum(0) - probs[order] < 0.7).sum())]
    want = torch.zeros_like(probs)
    want[kept] = probs[kept] / probs[kept].sum()
    torch.testing.assert_close(freq(tokens[1:-1:2]), want, atol=0.015, rtol=0)


def test_each_row_draws_from_its_own_generator_as_it_would_alone():
    """A row's token depends on its logits, its settings and its generator only, and is
    the token torch.multinomial draws with that generator (so `generate`, the engine and
    a plain multinomial loop with the same seed write the same text)."""
    logits = torch.randn(5, 50)
    configs = [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0),
               SamplingConfig(temperature=0.7, top_k=5), SamplingConfig(top_p=0.5),
               SamplingConfig(temperature=1.3, min_p=0.1)]
    for _ in range(20):
        seeds = torch.randint(0, 2**31, (5,)).tolist()
        together = sample_rows(logits, configs,
                               [torch.Generator().manual_seed(s) for s in seeds])
        for i, (cfg, seed) in enumerate(zip(configs, seeds, strict=True)):
            alone = sample_next(logits[i:i + 1], cfg, torch.Generator().manual_seed(seed))
            assert int(alone) == int(together[i])
    probs = torch.softmax(logits[:1] / 1.0, dim=-1)
    for seed in range(20):
        drawn = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))
        ours = sample_next(logits[:1], configs[0], torch.Generator().manual_seed(seed))
        assert int(drawn) == int(ours)


def test_token_counts_kept_as_the_text_grows_penalise_as_computed_by_hand():
    logits = torch.randn(3, 10)
    cfg = SamplingConfig(repetition_penalty=1.7, frequency_penalty=0.5, presence_penalty=0.3,
                         logit_bias={4: 2.0})
    counts = TokenCounts([1, 2, 12], 10)  # 12 is past the vocabulary: ignored
    for token in [2, 5, 5, 11]:
        counts.add(token)
    got = penalize(logits, [cfg] * 3, [counts] * 3)
    want = logits.clone()
    for t in (1, 2, 5):  # in the prompt or the output
        want[:, t] = torch.where(want[:, t] > 0, want[:, t] / 1.7, want[:, t] * 1.7)
    want[:, 2] -= 0.5 * 1 + 0.3  # generated once
    want[:, 5] -= 0.5 * 2 + 0.3  # generated twice
    want[:, 4] += 2.0
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(apply_penalties(logits, cfg, [1, 2, 12], [2, 5, 5, 11]), want)
    plain = SamplingConfig()
    assert penalize(logits, [plain] * 3, [None] * 3) is logits  # nothing to do: untouched
