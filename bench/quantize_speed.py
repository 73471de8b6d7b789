"""What weight-only quantization buys in speed: decode at batch 1 and a 512-token prefill.

    .venv/bin/python bench/quantize_speed.py                   # fp32 activations
    .venv/bin/python bench/quantize_speed.py --precision fp32,bf16 --json

GPT-2 124M's architecture with random weights (speed does not depend on
their values), through the engine with one sequence, as `generate --quantize`
runs it: fp32 weights packed for oneDNN (generation/cpu_weights.py, the
default), plain nn.Linear, int8, and int4 (groups of 32, the output layer in
int8; and in int4 as a variant), with activations in the precision measured.

decode: a 16-token prompt and `--new-tokens` greedy tokens; median tokens/s
over interleaved rounds (a busy machine slows all alike), the weight bytes
one step reads, and the fraction of the memory-bandwidth limit: a step reads
every weight once, so tokens/s is at most (copy bandwidth) / (weight bytes).
prefill: a 512-token prompt to its first token; median milliseconds (a new
prompt each round, so the engine's prefix cache cannot serve it).
"ids as float": greedy tokens equal to the float model's before the first
difference (random weights give nearly flat logits, so a quantized model may
differ from the first token: a check of the plumbing, not of quality, which
bench/quantize_quality.py measures). Against llama.cpp's Q8_0 and Q4_K_M:
bench/llamacpp_speed.py.

Why the quantized layers compute in bf16 (generation/quantize.py,
KERNEL_DTYPE): one 3,072 x 768 layer, one thread, EPYC with AVX-512,
2026-12-07: an fp32 row through `torch._weight_int8pack_mm` took 15.7 ms and
through `_weight_int4pack_mm_for_cpu` 29.7 ms (scalar code), a bf16 row 0.92
and 0.85 ms; 64 rows took 816 and 1,607 ms in fp32, 29 and 27 ms in bf16,
against 26 ms for an fp32 `nn.Linear`. With ATEN_CPU_CAPABILITY=avx2 (as on
an AVX2-only CPU) the same held: 14.5 and 34.0 ms against 1.3 and 2.3 ms.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

from llmscratch.generation import Engine, SamplingConfig
from llmscratch.generation.cpu_weights import pack_linear_weights
from llmscratch.generation.quantize import Int4Linear, Int8Linear, quantize_linear_weights
from llmscratch.model import GPT, get_preset
from llmscratch.model.config import torch_dtype

# (name, quantization, bits of the output layer with int4, pack what stays float)
VARIANTS = [("fp32 weights, packed", None, 8, True), ("fp32 weights, nn.Linear", None, 8, False),
            ("int8", "int8", 8, True), ("int4", "int4", 8, True),
            ("int4, output layer int4", "int4", 4, True)]


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second a large tensor copy moves (read and written: counted twice)."""
    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.randn_like(source)
    target.copy_(source)
    started = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    return 2 * source.numel() * 4 * repeats / (time.perf_counter() - started)


def step_bytes(model: GPT) -> int:
    """Bytes of weights one decode step reads: every matrix and vector but the embeddings
    (a lookup reads one row of them)."""
    skip = {id(model.tok_emb.weight)} | ({id(model.pos_emb.weight)} if model.pos_emb else set())
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())
               if id(t) not in skip}
    for module in model.modules():  # a tied output layer's float copy, if packed
        if hasattr(module, "packed_weight"):
            tensors[id(module)] = torch.empty(module.out_features, module.in_features,
                                              dtype=model.tok_emb.weight.dtype)
    for module in model.modules():  # and the head that shares the embedding, if float
        if module is model.lm_head and type(module) is torch.nn.Linear:
            tensors[id(module.weight)] = module.weight
    return sum(t.numel() * t.element_size() for t in tensors.values())


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two greedy outputs share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def variants(precision: str) -> dict[str, GPT]:
    torch.manual_seed(0)
    base = GPT(get_preset("gpt2")).eval().to(torch_dtype(precision))
    models = {}
    for name, mode, head_bits, pack in VARIANTS:
        model = copy.deepcopy(base)
        quantize_linear_weights(model, mode, head_bits=head_bits)
        if pack:
            pack_linear_weights(model)
        models[name.replace("fp32 weights", f"{precision} weights")] = model
    return models


def measure(precision: str, new_tokens: int, rounds: int, bandwidth: float) -> list[dict]:
    models = variants(precision)
    gen = torch.Generator().manual_seed(1)
    short = torch.randint(0, 50257, (16,), generator=gen).tolist()
    # A new 512-token prompt each round: the engine's prefix cache would serve a repeated one.
    longs = [torch.randint(0, 50257, (512,), generator=gen).tolist() for _ in range(rounds)]
    greedy = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    first = SamplingConfig(max_new_tokens=1, temperature=0)
    engines = {name: Engine(model, max_batch=1) for name, model in models.items()}
    decode = {name: [] for name in engines}
    prefill = {name: [] for name in engines}
    tokens = {}
    for name, engine in engines.items():  # warm-up
        tokens[name] = engine.generate([short], greedy)[0]
    for long in longs:
        for name, engine in engines.items():
            started = time.perf_counter()
            engine.generate([short], greedy)
            decode[name].append(time.perf_counter() - started)
            started = time.perf_counter()
            engine.generate([long], first)
            prefill[name].append(time.perf_counter() - started)
    reference = tokens[next(iter(tokens))]
    rows = []
    for name, model in models.items():
        rate = new_tokens / statistics.median(decode[name])
        weight_bytes = step_bytes(model)
        rows.append({
            "precision": precision, "weights": name, "decode_tokens_per_s": rate,
            "step_weight_mb": weight_bytes / 1e6,
            "of_bandwidth_limit": rate / (bandwidth / weight_bytes),
            "prefill_512_ms": 1000 * statistics.median(prefill[name]),
            "same_greedy_tokens_as_float": common_prefix(tokens[name], reference),
            "int_layers": sum(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules()),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="fp32", help="comma list: fp32, bf16")
    parser.add_argument("--new-tokens", type=int, default=128, help="decode: tokens per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    rows = [row for p in args.precision.split(",")
            for row in measure(p.strip(), args.new_tokens, args.rounds, bandwidth)]
    figures = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "copy_gb_per_s": bandwidth / 1e9,
               "rows": rows}
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s; GPT-2 124M shapes, batch 1")
    print(f"{'weights':<28} {'decode tok/s':>12} {'MB/step':>8} {'of limit':>9} "
          f"{'prefill 512 ms':>15} {'ids as float':>12}")
    for r in rows:
        print(f"{r['weights']:<28} {r['decode_tokens_per_s']:12.1f} {r['step_weight_mb']:8.1f} "
              f"{r['of_bandwidth_limit']:9.0%} {r['prefill_512_ms']:15.0f} "
              f"{r['same_greedy_tokens_as_float']:>8}/{args.new_tokens}")


if __name__ == "__main__":
    main()
