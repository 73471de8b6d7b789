"""Inference: decoding speed at batch 1 against `transformers`, and the KV cache's memory.

    .venv/bin/python bench/inference_speed.py                  # decode (fp32, bf16) and memory
    .venv/bin/python bench/inference_speed.py --parts decode --precision fp32 --json

decode: GPT-2 124M's architecture with random weights (the same weights in
ours and in `transformers`' GPT2LMHeadModel), a 16-token prompt, greedy, a
fixed number of new tokens (no stop token), batch 1. Ours twice: the
single-request loop (`generation/sampling.py: generate`, a dense KV cache)
and the engine (`generation/engine.py`, a paged one); theirs: `generate`.
Weights in the dtype measured (fp32, or bf16 weights and activations).
Rounds are interleaved, so a busy machine slows all alike; the table shows
median tokens/s, the ratio to `transformers`, and the fraction of the
memory-bandwidth limit: a decode step must read every weight once, so
tokens/s can be at most (copy bandwidth) / (weight bytes), with the copy
bandwidth measured here at the start (a 256 MB tensor copied, read + write).

memory: the KV cache a workload needs, paged (the engine's peak blocks in
use, times the bytes of a block) against dense (each request's own cache for
its prompt plus its longest answer, as a per-request preallocated cache holds
it), for 32 requests with prompts of 16 to 256 tokens, with and without a
shared 200-token system prompt.

Throughput (many requests against `transformers`' continuous batching) and
latency percentiles through the HTTP server are not measured here yet.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from llmscratch.generation import Engine, SamplingConfig, generate
from llmscratch.model import GPT, get_preset
from llmscratch.model.config import torch_dtype


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second a large tensor copy moves (each byte read and written: counted twice)."""
    source = torch.empty(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    started = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    return 2 * source.numel() * 4 * repeats / (time.perf_counter() - started)


def models(dtype: torch.dtype):
    """Ours and transformers' GPT-2 124M with the same random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmscratch.model.hf_weights import hf_tensors

    torch.manual_seed(0)
    ours = GPT(get_preset("gpt2")).eval()
    theirs = GPT2LMHeadModel(GPT2Config(bos_token_id=None, eos_token_id=None,
                                        pad_token_id=None)).eval()
    theirs.load_state_dict(hf_tensors(ours), strict=False)
    return ours.to(dtype), theirs.to(dtype)


def decode(precision: str, new_tokens: int, rounds: int, bandwidth: float) -> list[dict]:
    dtype = torch_dtype(precision)
    ours, theirs = models(dtype)
    prompt = torch.randint(0, 50257, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    greedy = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    engine = Engine(ours, max_batch=1)

    def hf() -> None:
        with torch.no_grad():
            theirs.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 16, dtype=int),
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False)

    runs = {"llmscratch generate": lambda: generate(ours, prompt, greedy),
            "llmscratch engine": lambda: engine.generate([prompt], greedy),
            "transformers generate": hf}
    assert generate(ours, prompt, greedy) == engine.generate([prompt], greedy)[0]
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    limit = bandwidth / weight_bytes  # tokens/s if each step only read the weights once
    theirs_rate = new_tokens / statistics.median(seconds["transformers generate"])
    rows = []
    for name, times in seconds.items():
        rate = new_tokens / statistics.median(times)
        rows.append({"part": "decode", "precision": precision, "model": name,
                     "tokens_per_s": rate, "vs_transformers": rate / theirs_rate,
                     "of_bandwidth_limit": rate / limit})
    return rows


def memory() -> list[dict]:
    """Peak KV-cache bytes of a workload, paged against dense per-request caches."""
    torch.manual_seed(0)
    model = GPT(get_preset("gpt2-tiny", context_length=1024)).eval()
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(16, 257, (32,), generator=gen).tolist()
    answers = torch.randint(16, 129, (32,), generator=gen).tolist()
    system = torch.randint(0, 512, (200,), generator=gen).tolist()
    rows = []
    for shared in (False, True):
        prompts = [(system if shared else [])
                   + torch.randint(0, 512, (n,), generator=gen).tolist() for n in lengths]
        engine = Engine(model, block_size=16, max_batch=32)
        seqs = [engine.add(p, SamplingConfig(max_new_tokens=a, temperature=0))
                for p, a in zip(prompts, answers, strict=True)]
        peak = 0
        while not engine.scheduler.idle:
            engine.step()
            peak = max(peak, engine.blocks.used)
        paged = peak * engine.cache.bytes_per_block()
        per_token = engine.cache.bytes_per_block() // engine.cache.block_size
        dense = sum(len(s.prompt_ids) + a for s, a in zip(seqs, answers, strict=True)) * per_token
        rows.append({"part": "memory", "shared_system_prompt": shared, "paged_bytes": paged,
                     "dense_bytes": dense, "paged_vs_dense": paged / dense})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="decode,memory", help="comma list: decode, memory")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list: fp32, bf16")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    rows = []
    if "decode" in args.parts:
        for precision in args.precision.split(","):
            rows += decode(precision, args.new_tokens, args.rounds, bandwidth)
    if "memory" in args.parts:
        rows += memory()
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    if args.json:
        print(json.dumps({"machine": machine, "copy_bandwidth": bandwidth, "rows": rows}))
        return
    print(f"machine: {machine}; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    for row in rows:
        if row["part"] == "decode":
            print(f"decode  {row['precision']}  {row['model']:<22} {row['tokens_per_s']:7.1f} "
                  f"tok/s  {row['vs_transformers']:.2f}x transformers  "
                  f"{row['of_bandwidth_limit']:.0%} of the bandwidth limit")
        else:
            label = ("shared 200-token system prompt" if row["shared_system_prompt"]
                     else "no shared prefix")
            print(f"memory  {label:<31} paged {row['paged_bytes'] / 2**20:6.1f} MiB  "
                  f"dense {row['dense_bytes'] / 2**20:6.1f} MiB  ({row['paged_vs_dense']:.2f}x)")


if __name__ == "__main__":
    main()
