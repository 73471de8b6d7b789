"""An LLM as judge: a stronger model scores each response against the reference, 0 to 100.

The book's chapter 7 asks Llama 3 (through Ollama) to grade the fine-tuned
model's answers, because exact match calls "The capital is Rome." wrong when
the reference is "Rome". The prompt, as the book writes it:

    Given the input `<the instruction, in the Alpaca format>` and correct output
    `<the reference>`, score the model response `<the response>` on a scale from
    0 to 100, where 100 is the best score. Respond with the integer number only.

Here the judge is any OpenAI-compatible chat endpoint (Ollama's /v1, a hosted
API, or `llmscratch serve`), asked with temperature 0 and a fixed seed, so that
a rerun asks the same question the same way (whether the answer is the same is
up to the server).

A reply is a score when it is a number from 0 to 100, alone or after "score:";
anything else is recorded as *unscored* with the reply, never as 0: a judge
that rambles must not look like a judge that disapproves. The mean is over
scored responses, and the count of unscored ones is reported beside it.

Failures of the call. A connection error, a timeout, or an HTTP status of 429 or
5xx is tried again after a pause that doubles each time (1 s, 2 s, 4 s, ... by
default); when the tries run out, or on any other HTTP error (a wrong model
name: 404), the judge stops with one line naming the endpoint and the reason.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import httpx

from llmscratch.config import check_seed
from llmscratch.errors import LLMScratchError

PROMPT = ("Given the input `{input}` and correct output `{reference}`, score the model "
          "response `{response}` on a scale from 0 to 100, where 100 is the best score. "
          "Respond with the integer number only.")
_SCORE = re.compile(r"^\s*(?:score\s*[:=]\s*)?(\d+(?:\.\d+)?)\s*\.?\s*$", re.IGNORECASE)
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def judge_prompt(input: str, reference: str, response: str) -> str:
    return PROMPT.format(input=input, reference=reference, response=response)


def parse_score(reply: str) -> float | None:
    """The score in a judge's reply, or None when the reply is not a number in [0, 100]."""
    match = _SCORE.match(reply)
    if match is None:
        return None
    score = float(match.group(1))
    return score if 0 <= score <= 100 else None


@dataclass
class JudgeConfig:
    """Where the judge is and how to ask it.

    endpoint: the OpenAI-compatible API's base URL (http://localhost:11434/v1 for Ollama);
    /chat/completions is added. model: the judge model's name on that server.
    api_key: sent as a bearer token when given. seed: the seed sent with every request.
    retries: tries after the first one fails; backoff: the first pause, in seconds,
    doubled each time. timeout: seconds one call may take.
    """

    endpoint: str
    model: str
    api_key: str = ""
    seed: int = 123
    retries: int = 4
    backoff: float = 1.0
    timeout: float = 120.0

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise LLMScratchError(f"--endpoint must be an http:// or https:// URL, got "
                                  f"{self.endpoint!r}")
        if not self.model:
            raise LLMScratchError("--model must name the judge model on the endpoint")
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise LLMScratchError("--retries and --backoff must be 0 or more, --timeout "
                                  "more than 0")
        check_seed(self.seed, "--seed")


class Judge:
    """Asks the judge one question at a time, with retries (module docstring)."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.url = config.endpoint.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.client = httpx.Client(timeout=config.timeout, headers=headers)

    def ask(self, prompt: str) -> str:
        """The judge's reply text to one user message."""
        body = {"model": self.config.model, "temperature": 0, "seed": self.config.seed,
                "messages": [{"role": "user", "content": prompt}]}
        for attempt in range(self.config.retries + 1):
            try:
                response = self.client.post(self.url, json=body)
                if response.status_code not in RETRY_STATUS:
                    return self._reply(response)
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as err:  # refused, reset, timed out
                problem = f"{type(err).__name__}: {err}"
            if attempt < self.config.retries:
                time.sleep(self.config.backoff * 2 ** attempt)
        raise LLMScratchError(f"the judge at {self.url} failed {self.config.retries + 1} "
                              f"times ({problem}); is the server running?")

    def _reply(self, response: httpx.Response) -> str:
        if response.status_code != 200:
            text = " ".join(response.text.split())[:200]
            raise LLMScratchError(f"the judge at {self.url} answered HTTP "
                                  f"{response.status_code}: {text}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"<not a chat completion: {response.text[:200]}>"  # recorded as unscored
        return content if isinstance(content, str) else str(content)

    def close(self) -> None:
        self.client.close()
