"""Inference: decoding at batch 1, throughput of many requests, and the KV cache's memory.

    .venv/bin/python bench/inference_speed.py                  # every part, fp32 and bf16
    .venv/bin/python bench/inference_speed.py --parts decode --precision fp32 --json
    python bench/inference_speed.py --device cuda --preset qwen3-0.6b --no-peers \
        --parts decode,throughput --precision bf16 --requests 256

Every part uses GPT-2 124M's architecture with random weights, the same
weights in ours and in `transformers`' GPT2LMHeadModel, greedy decoding and
no stop token, in the dtype measured (fp32, or bf16 weights and
activations). Ours runs with its linear layers packed for oneDNN
(`generation/cpu_weights.py`), as `generate`, `chat` and `serve` run it.

decode: a 16-token prompt, `--new-tokens` new ones, batch 1. Ours twice (the
single-request loop `generation/sampling.py: generate` over a dense KV cache,
and the engine over its paged one), ours once more with plain `nn.Linear`
(what packing is worth), and `transformers`' `generate`. Rounds are
interleaved, so a busy machine slows all alike; the table shows median
tokens/s, the ratio to `transformers`, and the fraction of the memory-
bandwidth limit: a decode step must read every weight once, so tokens/s is
at most (copy bandwidth) / (weight bytes), with the copy bandwidth measured
here at the start. The row "weights' products alone" times only the
matrix products a step needs (oneDNN, packed): the most any decoder can get
from PyTorch's kernels on this machine.

throughput: 64 requests (`--requests`), prompts of 16 to 512 tokens and
outputs of 16 to 256 (fixed seed), all submitted at once. Ours: the engine
(every request in one batch) as it chooses by default (on the CPU, decode
attention through the C++ kernel that reads the blocks in place:
generation/paged_attention.py), again reading the cache by copying each
step's keys out through the block tables (`paged_attention="gather"`), and
with `--flex` also with flex_attention reading the blocks in place (compiled
once, before timing: a minute or more on a 2-core CPU, hence off by
default).
Theirs: `transformers`' continuous batching (its paged cache,
`init_continuous_batching`, warmed up and reused) and padded static
batches of `generate` (`--static-batch` requests at a time, each batch run
to its longest output; only the tokens each request asked for count).
Output tokens/s, the ratio to the best peer, and to our own batch-1 rate
(the engine with one sequence at a time, over the first 8 requests). And
the machine's compute limit for the workload: the arithmetic no decoder can
skip (every prompt token through every block, every output token through
the blocks and the output layer, attention over the positions so far),
divided by the fastest rate this machine's matrix products reach, measured
here on the model's own layer shapes with inputs of 512 and 2,048 rows:
the most output tokens/s any engine could get from these kernels, and its
ratio to our batch-1 rate. A second limit adds the time to read, once, the
cached keys and values each decode step attends to, at the copy bandwidth:
within a step, a layer's attention needs its q, k and v products first and
its output projection needs the attention, so on the CPU the cache reads
come between the products rather than under them.

memory: the KV cache a workload needs, paged (the engine's peak blocks in
use, times the bytes of a block) against dense (each request's own cache for
its prompt plus its longest answer, as a per-request preallocated cache holds
it), for 32 requests with prompts of 16 to 256 tokens, with and without a
shared 200-token system prompt.

On a GPU (`--device cuda`) nothing is packed (packing is for oneDNN on
the CPU), so the rows "engine, nn.Linear" and "weights' products alone"
are left out; the bandwidth is a copy in the GPU's memory and the matrix
products are timed there. `--preset` takes another model's shapes (random
weights; `transformers`' peers only exist for GPT-2, so they need
`--no-peers`), and `--requests` sets the throughput workload's size (the
engine then takes every request into one batch).

Latency through the HTTP server is measured by bench/serving_latency.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from llmscratch.generation import Engine, SamplingConfig, generate
from llmscratch.generation.cpu_weights import (
    PackedLinear,
    can_pack,
    pack_linear_weights,
    packing_pays,
)
from llmscratch.generation.paged_attention import kernel_missing
from llmscratch.model import GPT, get_preset
from llmscratch.model.config import torch_dtype


@dataclass
class Setup:
    """Where and what the bench runs: the device, the model's shapes, and whether peers run."""

    device: torch.device
    preset: str = "gpt2"
    peers: bool = True

    @property
    def cpu(self) -> bool:
        return self.device.type == "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work (a CPU has none) so that a timer reads the real end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second a large tensor copy moves (each byte read and written: counted twice).

    The source is filled first: pages never written all map to one zero page,
    and reading them would measure the cache instead of memory.
    """
    source = torch.randn(megabytes * 2**20 // 4, device=device)
    target = torch.randn_like(source)
    target.copy_(source)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    synchronize(device)
    return 2 * source.numel() * 4 * repeats / (time.perf_counter() - started)


def models(dtype: torch.dtype, setup: Setup, packed: bool = True):
    """Ours (on a CPU its linear layers packed unless told) and transformers' GPT-2 124M with
    the same weights (None without peers)."""
    torch.manual_seed(0)
    ours = GPT(get_preset(setup.preset)).eval()
    theirs = None
    if setup.peers:
        from transformers import GPT2Config, GPT2LMHeadModel

        from llmscratch.model.hf_weights import hf_tensors

        theirs = GPT2LMHeadModel(GPT2Config(bos_token_id=None, eos_token_id=None,
                                            pad_token_id=None)).eval()
        theirs.load_state_dict(hf_tensors(ours), strict=False)
        theirs = theirs.to(setup.device, dtype)
    ours = ours.to(setup.device, dtype)
    if packed and setup.cpu:
        pack_linear_weights(ours, measure=False)  # packed whatever the machine would choose
    return ours, theirs


def weight_products(model: GPT, dtype: torch.dtype) -> callable:
    """Only the matrix products of one decode step at batch 1 (oneDNN, packed weights)."""
    shapes = [(m.out_features, m.in_features) for m in model.modules()
              if isinstance(m, (torch.nn.Linear, PackedLinear))]
    layers = [PackedLinear(torch.randn(n, k, dtype=dtype)) for n, k in shapes]
    inputs = {k: torch.randn(1, k, dtype=dtype) for _, k in shapes}
    return lambda: [layer(inputs[layer.in_features]) for layer in layers]


def decode(precision: str, new_tokens: int, rounds: int, bandwidth: float,
           setup: Setup) -> list[dict]:
    dtype = torch_dtype(precision)
    ours, theirs = models(dtype, setup)
    plain = models(dtype, Setup(setup.device, setup.preset, peers=False), packed=False)[0] \
        if setup.cpu else ours  # nothing is packed on a GPU
    weight_bytes = sum(p.numel() * p.element_size() for p in plain.parameters())
    prompt = torch.randint(0, 50257, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    greedy = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    engine = Engine(ours, max_batch=1)

    def hf() -> None:
        with torch.no_grad():
            theirs.generate(torch.tensor([prompt], device=setup.device),
                            attention_mask=torch.ones(1, 16, dtype=int, device=setup.device),
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False)

    runs = {"llmscratch generate": lambda: generate(ours, prompt, greedy),
            "llmscratch engine": lambda: engine.generate([prompt], greedy)}
    if setup.cpu:  # packing is the CPU's: what it is worth, and the products alone
        plain_engine, products = Engine(plain, max_batch=1), weight_products(plain, dtype)
        runs["engine, nn.Linear"] = lambda: plain_engine.generate([prompt], greedy)
    if setup.peers:
        runs["transformers generate"] = hf
    if setup.cpu:
        runs["weights' products alone"] = lambda: [products() for _ in range(new_tokens)]
    alone, batched = generate(ours, prompt, greedy), engine.generate([prompt], greedy)[0]
    # The same kernels on a CPU give the same tokens; a GPU's dense and paged attention may
    # round apart and flip a near-tie of random weights' logits: there, report, don't stop.
    pairs = enumerate(zip(alone, batched, strict=True))
    agree = next((i for i, (a, b) in pairs if a != b), len(alone))
    assert agree == len(alone) or not setup.cpu, "the engine and `generate` disagree"
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            synchronize(setup.device)
            started = time.perf_counter()
            run()
            synchronize(setup.device)
            seconds[name].append(time.perf_counter() - started)
    limit = bandwidth / weight_bytes  # tokens/s if each step only read the weights once
    theirs_rate = new_tokens / statistics.median(seconds["transformers generate"]) \
        if setup.peers else None
    rows = []
    for name, times in seconds.items():
        rate = new_tokens / statistics.median(times)
        rows.append({"part": "decode", "precision": precision, "model": name,
                     "tokens_per_s": rate,
                     "vs_transformers": rate / theirs_rate if theirs_rate else None,
                     "of_bandwidth_limit": rate / limit,
                     "engine_agrees_with_generate": f"{agree}/{len(alone)} tokens"})
    return rows


def workload(n: int = 64, seed: int = 3, vocab: int = 50257
             ) -> tuple[list[list[int]], list[int]]:
    """n prompts of 16 to 512 random tokens, and how many tokens each asks for (16 to 256)."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.randint(16, 513, (n,), generator=gen).tolist()
    output_lengths = torch.randint(16, 257, (n,), generator=gen).tolist()
    prompts = [torch.randint(0, vocab, (p,), generator=gen).tolist() for p in prompt_lengths]
    return prompts, output_lengths


def hf_continuous(model, prompts: list[list[int]], lengths: list[int]):
    """A `transformers` continuous-batching manager, and a function that runs requests on it."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0,
                              max_new_tokens=max(lengths))
    # By default it takes 90% of free memory for its cache; a fifth holds this workload.
    manager = model.init_continuous_batching(
        generation_config=config,
        continuous_batching_config=ContinuousBatchingConfig(max_memory_percent=0.2))
    manager.start()

    def run(prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
        ids = [manager.add_request(p, max_new_tokens=n) for p, n in zip(prompts, lengths,
                                                                          strict=True)]
        done = {}
        while len(done) < len(ids):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                done[result.request_id] = result.generated_tokens
        return [done[i] for i in ids]

    return manager, run


def hf_static(model, prompts: list[list[int]], lengths: list[int], batch: int) -> None:
    """`generate` on left-padded batches in arrival order, each run to its longest output."""
    for i in range(0, len(prompts), batch):
        chunk, n = prompts[i:i + batch], max(lengths[i:i + batch])
        width = max(map(len, chunk))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk],
                            device=model.device)
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)


def workload_cost(model: GPT, prompts: list[list[int]], lengths: list[int]
                  ) -> tuple[float, float]:
    """The least work the workload needs: floating-point operations (2 per multiply-add),
    and bytes of cached keys and values its decode steps read.

    A prompt token goes through every block's linear layers and attends to the
    tokens before it; only a prompt's last position needs the output layer. An
    output token also goes through the output layer, and reads the keys and
    values of every position before it, in every layer. The first output
    token comes from the prompt's last position, so a request asking for n
    tokens makes n - 1 decode steps.
    """
    c = model.config
    linear = sum(m.in_features * m.out_features for m in model.modules()
                 if isinstance(m, (torch.nn.Linear, PackedLinear)))
    head = c.vocab_size * c.n_embd
    attention = 4 * c.n_layer * c.n_head * c.head_dim  # q.k and p.v, per position attended
    cached = 2 * c.n_layer * c.kv_heads * c.head_dim * next(model.parameters()).element_size()
    flops = cache_bytes = 0.0
    for prompt, n in zip(prompts, lengths, strict=True):
        p = len(prompt)
        attended = sum(range(p + 1, p + n))  # positions the n - 1 decode steps read
        flops += 2 * (linear - head) * p + 2 * head + attention * p * (p + 1) / 2
        flops += (n - 1) * 2 * linear + attention * attended
        cache_bytes += cached * attended
    return flops, cache_bytes


def matmul_rate(model: GPT, rows: tuple[int, ...] = (512, 2048), seconds: float = 1.0) -> float:
    """The fastest FLOP/s of the model's linear layers on inputs of `rows` rows, as the engine
    runs them."""
    weight = next(model.parameters())
    dtype, device = weight.dtype, weight.device
    best = 0.0
    shapes = {(m.out_features, m.in_features) for m in model.modules()
              if isinstance(m, (torch.nn.Linear, PackedLinear))}
    for (n, k), m in itertools.product(shapes, rows):
        layer = torch.nn.Linear(k, n, bias=False, dtype=dtype, device=device)
        if device.type == "cpu" and can_pack(layer):
            layer = PackedLinear.from_linear(layer)
        x = torch.randn(m, k, dtype=dtype, device=device)
        with torch.no_grad():
            layer(x)
            synchronize(device)
            started, count = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                for _ in range(10):  # on a GPU, queued ten at a time, then waited for
                    layer(x)
                synchronize(device)
                count += 10
        best = max(best, 2 * m * n * k * count / (time.perf_counter() - started))
    return best


def throughput(precision: str, rounds: int, static_batch: int, bandwidth: float,
               setup: Setup, requests: int = 64, flex: bool = False) -> list[dict]:
    dtype = torch_dtype(precision)
    ours, theirs = models(dtype, setup)
    prompts, lengths = workload(requests, vocab=min(50257, ours.config.vocab_size))
    settings = [SamplingConfig(max_new_tokens=n, temperature=0) for n in lengths]
    # Cache blocks for every request at its full length: no request waits for memory.
    blocks = sum(-(-(len(p) + n) // 16) for p, n in zip(prompts, lengths, strict=True))
    engines = {"llmscratch engine": Engine(ours, num_blocks=blocks, block_size=16,
                                           max_batch=requests)}
    if engines["llmscratch engine"].paged_attention == "gather" and setup.device.type == "cpu":
        print(f"note: the engine reads through the copy here: {kernel_missing()}",
              file=sys.stderr)
    else:  # the copy, for comparison
        engines["llmscratch engine, copy through the block tables"] = Engine(
            ours, num_blocks=blocks, block_size=16, max_batch=requests, paged_attention="gather")
    if flex:
        engines["llmscratch engine, flex_attention decode"] = Engine(
            ours, num_blocks=blocks, block_size=16, max_batch=requests, paged_attention="flex")
    alone = Engine(ours, max_batch=1)
    alone_name = f"llmscratch engine, batch 1 ({len(prompts[:8])} requests)"
    runs = {name: (lambda e=engine: e.generate(prompts, settings))
            for name, engine in engines.items()}
    runs[alone_name] = lambda: [alone.generate([p], s)
                                for p, s in zip(prompts[:8], settings[:8], strict=True)]
    manager = None
    if setup.peers:
        manager, hf_run = hf_continuous(theirs, prompts, lengths)
        hf_run(prompts[:4], [4] * 4)  # warm-up: its cache is allocated and touched
        runs["transformers continuous batching"] = lambda: hf_run(prompts, lengths)
        runs[f"transformers generate, batches of {static_batch}"] = \
            lambda: hf_static(theirs, prompts, lengths, static_batch)
    try:
        for engine in engines.values():  # warm-up (flex_attention is compiled here)
            engine.generate(prompts[:4], settings[:4])
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        outputs = {}
        for _ in range(rounds):
            for name, run in runs.items():
                synchronize(setup.device)
                started = time.perf_counter()
                outputs[name] = run()
                synchronize(setup.device)
                seconds[name].append(time.perf_counter() - started)
    finally:
        if manager is not None:
            manager.stop()
    same = sum(a == b for a, b in zip(outputs["llmscratch engine"],
                                      outputs["transformers continuous batching"], strict=True)
               ) if setup.peers else None
    tokens = {name: sum(lengths[:8] if "batch 1" in name else lengths) for name in runs}
    rates = {name: tokens[name] / statistics.median(times) for name, times in seconds.items()}
    best_peer = max((rate for name, rate in rates.items() if name.startswith("transformers")),
                    default=None)
    alone_rate = rates[alone_name]
    flops, cache_bytes = workload_cost(ours, prompts, lengths)
    flop_rate = matmul_rate(ours)
    rates["compute limit"] = sum(lengths) / (flops / flop_rate)
    rates["compute, then cache reads"] = sum(lengths) / (flops / flop_rate
                                                         + cache_bytes / bandwidth)
    return [{"part": "throughput", "precision": precision, "model": name,
             "output_tokens_per_s": rate, "requests": len(prompts),
             "vs_best_peer": rate / best_peer if best_peer else None,
             "vs_our_batch_1": rate / alone_rate,
             "same_tokens_as_transformers": f"{same}/{len(prompts)}" if setup.peers else None,
             "workload_tflop": flops / 1e12, "matmul_gflop_per_s": flop_rate / 1e9,
             "cache_gb_read": cache_bytes / 1e9}
            for name, rate in rates.items()]


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
    parser.add_argument("--parts", default="decode,throughput,memory",
                        help="comma list: decode, throughput, memory")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list: fp32, bf16")
    parser.add_argument("--new-tokens", type=int, default=200, help="decode: tokens per round")
    parser.add_argument("--rounds", type=int, default=3, help="decode rounds")
    parser.add_argument("--throughput-rounds", type=int, default=1)
    parser.add_argument("--static-batch", type=int, default=16,
                        help="throughput: requests per padded batch of transformers' generate")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default="gpt2",
                        help="the model's shapes (random weights), e.g. qwen3-0.6b; "
                             "other than gpt2 needs --no-peers")
    parser.add_argument("--no-peers", action="store_true",
                        help="time ours only (no transformers rows)")
    parser.add_argument("--requests", type=int, default=64,
                        help="throughput: requests in the workload (one batch)")
    parser.add_argument("--flex", action="store_true",
                        help="throughput: also time the engine with flex_attention decode")
    args = parser.parse_args()
    parts, precisions = args.parts.split(","), args.precision.split(",")
    if args.preset != "gpt2" and not args.no_peers:
        parser.error("the transformers peers are GPT-2's: with --preset, add --no-peers")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU")
    setup = Setup(torch.device(args.device), args.preset, peers=not args.no_peers)
    bandwidth = copy_bandwidth(setup.device)
    rows = []
    for precision in precisions:
        if "decode" in parts:
            rows += decode(precision, args.new_tokens, args.rounds, bandwidth, setup)
        if "throughput" in parts:
            rows += throughput(precision, args.throughput_rounds, args.static_batch, bandwidth,
                               setup, args.requests, args.flex)
    if "memory" in parts:
        rows += memory()
    machine = describe_machine(setup, precisions)
    if args.json:
        print(json.dumps({"machine": machine, "copy_bandwidth": bandwidth, "rows": rows}))
        return
    print(f"machine: {machine}; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    for row in rows:
        print(describe(row))


def describe_machine(setup: Setup, precisions: list[str]) -> str:
    """The machine, the preset, and (on a CPU) whether `generate` packs weights here."""
    if not setup.cpu:
        return f"{torch.cuda.get_device_name(setup.device)}, torch {torch.__version__}, " \
               f"{setup.preset} shapes"
    chosen = {p: packing_pays(torch_dtype(p), 768, 3072) for p in precisions
              if can_pack(torch.nn.Linear(1, 1, dtype=torch_dtype(p)))}
    return f"{platform.processor() or platform.machine()}, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads, {setup.preset} shapes; `generate` packs " \
           "weights here: " + ", ".join(f"{p} {'yes' if yes else 'no'}"
                                         for p, yes in chosen.items())


def describe(row: dict) -> str:
    """One line of the table for a result row."""
    if row["part"] == "decode":
        versus = f"{row['vs_transformers']:.2f}x transformers  " \
            if row["vs_transformers"] is not None else ""
        return (f"decode      {row['precision']}  {row['model']:<40} "
                f"{row['tokens_per_s']:7.1f} tok/s  {versus}"
                f"{row['of_bandwidth_limit']:.0%} of the bandwidth limit")
    if row["part"] == "throughput" and row["model"].startswith("compute"):
        return (f"throughput  {row['precision']}  {row['model']:<40} "
                f"{row['output_tokens_per_s']:7.1f} tok/s  = {row['vs_our_batch_1']:.2f}x our "
                f"batch 1  ({row['workload_tflop']:.2f} TFLOP at "
                f"{row['matmul_gflop_per_s']:.0f} GFLOP/s, {row['cache_gb_read']:.0f} GB of "
                f"cache read at the copy bandwidth)")
    if row["part"] == "throughput":
        versus = f"{row['vs_best_peer']:.2f}x the best peer  " \
            if row["vs_best_peer"] is not None else ""
        same = f"  (same tokens as transformers: {row['same_tokens_as_transformers']})" \
            if row["same_tokens_as_transformers"] is not None else ""
        return (f"throughput  {row['precision']}  {row['model']:<40} "
                f"{row['output_tokens_per_s']:7.1f} tok/s  {versus}"
                f"{row['vs_our_batch_1']:.2f}x our batch 1{same}")
    label = "shared 200-token system prompt" if row["shared_system_prompt"] else "no shared prefix"
    return (f"memory      {label:<46} paged {row['paged_bytes'] / 2**20:6.1f} MiB  "
            f"dense {row['dense_bytes'] / 2**20:6.1f} MiB  ({row['paged_vs_dense']:.2f}x)")


if __name__ == "__main__":
    main()
