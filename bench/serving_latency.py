"""Serving latency: time to first token and between tokens, for 1, 8 and 32 streaming clients.

    .venv/bin/python bench/serving_latency.py                 # GPT-2 124M, fp32
    .venv/bin/python bench/serving_latency.py --precision bf16 --clients 1,8 --json

`llmscratch serve` runs in this process (uvicorn in a thread, on a free
loopback port) over a run made here: GPT-2 124M's architecture with random
weights and GPT-2's tokenizer. Each of C clients (the official `openai`
client, async) streams `--requests` chat completions one after another, all
C at once, each with a prompt of 64 to 256 tokens and 128 tokens to write
(greedy; random weights never write the stop token). For every request: the
time to first token (from sending the request to the first text chunk) and
the gaps between chunks (inter-token latency); the table shows their p50
and p99 over all requests, and the output tokens/s of the whole.

A chunk carries whatever whole characters the new token completed, so a
gap can span two tokens when one ends mid-character (rare with random
weights and GPT-2's byte-level vocabulary).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import openai
import torch
import uvicorn

from llmscratch.model import GPT, get_preset
from llmscratch.runs.checkpoint import save_weights
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import Run, RunInfo
from llmscratch.serving.app import serve_run
from llmscratch.tokenizer import Tokenizer


def make_run(path: Path) -> Path:
    """A run of GPT-2 124M with random weights (fixed seed) and GPT-2's tokenizer."""
    torch.manual_seed(0)
    config = RunConfig(model=get_preset("gpt2"))
    info = RunInfo(kind="import", source="random weights (bench/serving_latency.py)")
    run = Run.create(path, config, info, Tokenizer.gpt2())
    save_weights(run, GPT(config.model))
    return path


class Server:
    """`llmscratch serve` in a thread of this process."""

    def __init__(self, run: Path, precision: str, max_batch: int) -> None:
        self.state, app = serve_run(str(run), device="cpu", dtype=precision, model_name="bench",
                                    max_concurrency=256, max_batch=max_batch)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}/v1"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.state.engine.stop()


def prompt_text(tokenizer: Tokenizer, gen: torch.Generator) -> str:
    """Words drawn at random until the text is 64 to 256 tokens long."""
    words = ["the", "king", "shall", "speak", "to", "his", "people", "of", "war", "and",
             "peace", "tomorrow", "when", "night", "falls", "upon", "our", "city"]
    target = int(torch.randint(64, 257, (1,), generator=gen))
    text = []
    while len(tokenizer.encode(" ".join(text))) < target:
        text.append(words[int(torch.randint(len(words), (1,), generator=gen))])
    return " ".join(text)


async def one_request(client: openai.AsyncOpenAI, prompt: str, new_tokens: int
                      ) -> tuple[float, list[float], int]:
    """(time to first token, gaps between chunks, completion tokens) of one streamed reply."""
    started = time.perf_counter()
    stamps, tokens = [], 0
    stream = await client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": prompt}], max_tokens=new_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return stamps[0] - started, gaps, tokens


async def clients(url: str, prompts: list[list[str]], new_tokens: int) -> tuple[list, float]:
    """Each client sends its prompts one after another; all clients at once."""
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)

    async def serial(own: list[str]) -> list:
        return [await one_request(client, p, new_tokens) for p in own]

    started = time.perf_counter()
    results = await asyncio.gather(*(serial(own) for own in prompts))
    return [r for own in results for r in own], time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def measure(url: str, tokenizer: Tokenizer, n_clients: int, requests: int,
            new_tokens: int) -> dict:
    gen = torch.Generator().manual_seed(n_clients)
    prompts = [[prompt_text(tokenizer, gen) for _ in range(requests)] for _ in range(n_clients)]
    results, seconds = asyncio.run(clients(url, prompts, new_tokens))
    first = [r[0] for r in results]
    gaps = [g for r in results for g in r[1]]
    return {"clients": n_clients, "requests": len(results),
            "ttft_p50_ms": 1e3 * percentile(first, 50), "ttft_p99_ms": 1e3 * percentile(first, 99),
            "itl_p50_ms": 1e3 * percentile(gaps, 50), "itl_p99_ms": 1e3 * percentile(gaps, 99),
            "output_tokens_per_s": sum(r[2] for r in results) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--clients", default="1,8,32", help="comma list of concurrent clients")
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "gpt2-random")
        server = Server(run, args.precision, max_batch=max(counts))
        try:
            tokenizer = server.state.tokenizer
            measure(server.url, tokenizer, 1, 1, 8)  # warm-up
            rows = [measure(server.url, tokenizer, c, args.requests, args.new_tokens)
                    for c in counts]
        finally:
            server.close()
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    if args.json:
        print(json.dumps({"machine": machine, "precision": args.precision, "rows": rows}))
        return
    print(f"machine: {machine}; GPT-2 124M (random weights), {args.precision}, "
          f"{args.new_tokens} new tokens per request")
    print("clients  requests  TTFT p50   p99 (ms)   ITL p50   p99 (ms)   output tok/s")
    for r in rows:
        print(f"{r['clients']:7d}  {r['requests']:8d}  {r['ttft_p50_ms']:8.0f} "
              f"{r['ttft_p99_ms']:7.0f}     {r['itl_p50_ms']:7.1f} {r['itl_p99_ms']:7.1f}   "
              f"{r['output_tokens_per_s']:10.1f}")


if __name__ == "__main__":
    main()
