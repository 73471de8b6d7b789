"""Causal attention, forward + backward: our written-out path against PyTorch's fused kernel.

    .venv/bin/python bench/attention.py
    .venv/bin/python bench/attention.py --shapes 4x4x256x64 --dtypes bf16 --json

For each shape (batch x heads x tokens x head width) and dtype, times
`llmscratch.model.attention.explicit_attention` (scores, mask bias, softmax,
weighted sum: four PyTorch ops and autograd) and
`torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (on CPU, a
flash-attention kernel) on the same random q, k, v, interleaved round by
round, and prints the median milliseconds of each and their ratio. It also
prints which one `attn_impl: auto` picks for those inputs, so the rule in
`attention.use_fused_kernel` can be checked against the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from llmscratch.model.attention import explicit_attention, use_fused_kernel

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# The demo (gpt2-demo, batch 4), the small training-speed shape, GPT-2 124M
# at batch 4 x 256, and one long sequence.
DEFAULT_SHAPES = "4x4x256x64,16x8x256x32,4x12x256x64,1x12x1024x64"


def time_fwd_bwd(attention, q, k, v, grad_out, steps: int) -> float:
    """Seconds per forward + backward pass, averaged over `steps`."""
    start = time.perf_counter()
    for _ in range(steps):
        attention(q, k, v).backward(grad_out)
        q.grad = k.grad = v.grad = None
    return (time.perf_counter() - start) / steps


def measure(shape: tuple[int, int, int, int], dtype: torch.dtype, rounds: int, steps: int) -> dict:
    B, H, T, Dh = shape
    q, k, v = (torch.randn(B, H, T, Dh, dtype=dtype, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(B, H, T, Dh, dtype=dtype)
    paths = {
        "explicit": explicit_attention,
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    for attention in paths.values():  # warm-up
        time_fwd_bwd(attention, q, k, v, grad_out, 1)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, attention in paths.items():
            seconds[name].append(time_fwd_bwd(attention, q, k, v, grad_out, steps))
    explicit_ms = 1000 * statistics.median(seconds["explicit"])
    sdpa_ms = 1000 * statistics.median(seconds["sdpa"])
    return {
        "shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."),
        "explicit_ms": round(explicit_ms, 3), "sdpa_ms": round(sdpa_ms, 3),
        "sdpa_over_explicit": round(sdpa_ms / explicit_ms, 3),
        "auto_picks": "sdpa" if use_fused_kernel("auto", q, k) else "explicit",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="comma list of BxHxTxDh (batch, heads, tokens, head width)")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma list of: bf16, fp32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="passes per timing")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    rows = [measure(shape, DTYPES[name], args.rounds, args.steps)
            for name in args.dtypes.split(",") for shape in shapes]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_average": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}))
        return 0
    print(f"causal attention, forward + backward, {machine['threads']} threads, torch "
          f"{machine['torch']}, load average {machine['load_average']}; median of "
          f"{args.rounds} rounds")
    print("| shape BxHxTxDh | dtype | explicit ms | sdpa ms | sdpa / explicit | auto picks |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['dtype']} | {r['explicit_ms']:.2f} | {r['sdpa_ms']:.2f} | "
              f"{r['sdpa_over_explicit']:.2f}x | {r['auto_picks']} |")
    print("ratios above 1 mean the explicit path is faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
