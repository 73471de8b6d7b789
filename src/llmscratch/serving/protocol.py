"""OpenAI's request bodies, checked and turned into our settings; its error shape.

Every field is checked before anything is queued, and a wrong one is a 400
naming it (`APIError`), in the JSON shape OpenAI clients read:

    {"error": {"message": "...", "type": "invalid_request_error",
               "param": "temperature", "code": null}}

Beyond OpenAI's fields, `top_k`, `min_p` and `repetition_penalty` are
accepted, as vLLM accepts them. OpenAI fields this server does not
implement (tools, `echo`, ...) are refused with a 400 naming them, unless
they ask for nothing (`"tools": []`): ignoring them would answer another
question than the one asked. Fields unknown to OpenAI are ignored.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from llmscratch.errors import LLMScratchError
from llmscratch.generation.sampling import SamplingConfig
from llmscratch.tokenizer.chat import ROLES

MAX_N = 16
MAX_STOP_STRINGS = 4
MAX_LOGIT_BIAS = 300  # entries, as OpenAI allows
SEED_RANGE = (-(2**63), 2**63 - 1)  # a 64-bit signed integer, as OpenAI and vLLM take it
NOT_SUPPORTED = {  # OpenAI fields not implemented here: the values that ask for nothing
    "echo": [False], "best_of": [1], "suffix": [""], "response_format": [{"type": "text"}],
    "tools": [[]], "tool_choice": ["none", "auto"], "functions": [[]],
    "function_call": ["none", "auto"], "audio": [], "prediction": [],
}


class APIError(Exception):
    """An error answered in OpenAI's shape, with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = (
            status, message, param, kind, code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclass
class Params:
    """What a completion or chat request asks for, besides its prompt."""

    max_tokens: int | None  # None: up to the end of the context
    sampling: dict  # SamplingConfig's fields, but max_new_tokens and seed
    seed: int | None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # chosen token + this many alternatives; None: none

    def sampling_for(self, choice: int, max_new_tokens: int) -> SamplingConfig:
        """The settings of choice `choice` of `n`: each its own seed, so n choices differ."""
        seed = self.seed if self.seed is not None else secrets.randbits(31)
        # Any 64-bit seed a client sends, and each choice's, is mapped into the seeds every
        # random generator takes (0 to 2^63 - 1: config.check_seed).
        seed = (seed + choice) % 2**63
        try:
            return SamplingConfig(max_new_tokens=max_new_tokens, seed=seed,
                                  logprobs=self.logprobs, **self.sampling)
        except LLMScratchError as err:  # a combination the checks below let through
            raise APIError(400, str(err)) from None


def _get(body: dict, name: str, kind: type | tuple, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise APIError(400, f"{name} must be a {names}, got {value!r}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise APIError(400, f"{name} must be a finite number, got {value!r}", name)
    return value


def _in_range(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = _get(body, name, (int, float), default)
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low} and {high}, got {value}", name)
    return float(value)


def _seed(body: dict) -> int | None:
    seed = _get(body, "seed", int)
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise APIError(400, f"seed must be a 64-bit integer (from -2**63 to 2**63 - 1), got "
                       f"{seed}", "seed")
    return seed


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float] | None:
    """{"token id": bias from -100 to 100}, its ids those of the served tokenizer."""
    biases = _get(body, "logit_bias", dict, {})
    if len(biases) > MAX_LOGIT_BIAS:
        raise APIError(400, f"logit_bias has {len(biases)} entries; at most {MAX_LOGIT_BIAS}",
                       "logit_bias")
    checked = {}
    for key, bias in biases.items():
        token = int(key) if key.isascii() and key.isdigit() and len(key) < 10 else -1
        if not 0 <= token < vocab_size:
            raise APIError(400, f"logit_bias: {key!r} is not a token id of this model (0 to "
                           f"{vocab_size - 1})", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                or not -100 <= bias <= 100:  # also false for nan
            raise APIError(400, f"logit_bias[{key!r}] must be a number from -100 to 100, got "
                           f"{bias!r}", "logit_bias")
        checked[token] = float(bias)
    return checked or None


def _refuse_unsupported(body: dict) -> None:
    for name, nothing in NOT_SUPPORTED.items():
        if body.get(name) is not None and body[name] not in nothing:
            raise APIError(400, f"{name} is not supported by this server", name)


def parse_params(body: dict, vocab_size: int, max_tokens_field: str = "max_tokens",
                 default_max_tokens: int | None = None) -> Params:
    """The generation fields common to completions and chat completions."""
    _refuse_unsupported(body)
    max_tokens = _get(body, max_tokens_field, int, default_max_tokens)
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, f"{max_tokens_field} must be at least 1, got {max_tokens}",
                       max_tokens_field)
    top_p = _in_range(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0:
        raise APIError(400, "top_p must be greater than 0", "top_p")
    top_k = _get(body, "top_k", int, 0)
    if top_k < 0 and top_k != -1:  # vLLM's -1 means off, as 0 does here
        raise APIError(400, f"top_k must be >= 0, got {top_k}", "top_k")
    sampling = {
        "temperature": _in_range(body, "temperature", 0.0, 2.0, 1.0),
        "top_p": top_p, "top_k": max(top_k, 0),
        "min_p": _in_range(body, "min_p", 0.0, 1.0, 0.0),
        "repetition_penalty": _in_range(body, "repetition_penalty", 0.01, 10.0, 1.0),
        "frequency_penalty": _in_range(body, "frequency_penalty", -2.0, 2.0, 0.0),
        "presence_penalty": _in_range(body, "presence_penalty", -2.0, 2.0, 0.0),
        "logit_bias": _logit_bias(body, vocab_size),
    }
    n = _get(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise APIError(400, f"n must be between 1 and {MAX_N}, got {n}", "n")
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) for s in stop):
        raise APIError(400, f"stop must be a string or a list of at most {MAX_STOP_STRINGS} "
                       "strings", "stop")
    options = _get(body, "stream_options", dict, {})
    return Params(max_tokens=max_tokens, sampling=sampling, seed=_seed(body),
                  n=n, stop=stop, stream=_get(body, "stream", bool, False),
                  include_usage=_get(options, "include_usage", bool, False))


def parse_completion(body: dict, vocab_size: int) -> tuple[str, Params]:
    """POST /v1/completions: the prompt (one string) and its parameters."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "prompt must be a non-empty string", "prompt")
    params = parse_params(body, vocab_size, default_max_tokens=16)  # OpenAI's default
    logprobs = _get(body, "logprobs", int)
    if logprobs is not None and not 0 <= logprobs <= 5:
        raise APIError(400, f"logprobs must be between 0 and 5, got {logprobs}", "logprobs")
    params.logprobs = logprobs
    return prompt, params


def parse_chat(body: dict, vocab_size: int) -> tuple[list[dict], Params]:
    """POST /v1/chat/completions: the messages and their parameters."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", "messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            raise APIError(400, f"messages[{i}]: unknown role {role!r}; roles are "
                           f"{', '.join(ROLES)}", "messages")
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts = [part.get("text") if isinstance(part, dict) and part.get("type") == "text"
                     else None for part in content]
            if not all(isinstance(text, str) for text in texts):  # an image is not dropped
                raise APIError(400, f"messages[{i}].content: only text parts "
                               '({"type": "text", "text": "..."}) are supported', "messages")
            content = "".join(texts)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be text", "messages")
        checked.append({"role": message["role"], "content": content})
    field_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    params = parse_params(body, vocab_size, field_name)
    if _get(body, "logprobs", bool, False):
        top = _get(body, "top_logprobs", int, 0)
        if not 0 <= top <= 20:
            raise APIError(400, f"top_logprobs must be between 0 and 20, got {top}",
                           "top_logprobs")
        params.logprobs = top
    return checked, params
