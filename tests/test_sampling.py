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
from llmscratch.generation.sampling import SamplingConfig, sample_next

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
])
def test_sampling_settings_that_mean_nothing_are_refused(field, value, message):
    with pytest.raises(LLMScratchError) as err:
        SamplingConfig(**{field: value})
    assert message in str(err.value)
