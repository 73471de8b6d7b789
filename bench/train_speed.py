"""Training speed: llmscratch's training step against two peer implementations of GPT-2.

    .venv/bin/python bench/train_speed.py                      # both shapes, fp32 and bf16
    .venv/bin/python bench/train_speed.py --shapes small --json

Peers (same shapes, same data, same optimizer algorithm):
- `llms_from_scratch` (PyPI `llms-from-scratch`, installed with --no-deps), the
  book's `GPTModel` and its fused `GPTModelFast` (untied output layer, as in
  the book), trained with `torch.optim.AdamW` as the book does;
- Hugging Face `transformers` `GPT2LMHeadModel` (SDPA attention, tied), also
  with `torch.optim.AdamW`.
Ours is `llmscratch.training.loop.Trainer.train_step`, exactly what
`llmscratch pretrain` runs: autocast, the next-token objective, backward,
gradient-norm clipping and our fused AdamW with decay groups.

One step = forward, cross-entropy over every position, backward, AdamW step.
Dropout is 0 everywhere. Models are timed in interleaved rounds (each model
runs a few steps per round), so a machine shared with other work slows all
of them alike; the table shows each model's median tokens/s over rounds and
its ratio to the fastest peer at the same precision. MFU is against the
matmul peak measured here at the start (a large square matmul, per dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmscratch.config import TrainConfig
from llmscratch.model import GPT, ModelConfig
from llmscratch.model.config import torch_dtype
from llmscratch.training.checkpoint import TrainState
from llmscratch.training.loop import Trainer
from llmscratch.training.objectives import NextTokenPrediction
from llmscratch.training.optim import build_optimizer


@dataclass
class Shape:
    name: str
    vocab: int
    context: int  # the model's context length (position table)
    seq: int  # tokens per training sequence
    width: int
    layers: int
    heads: int
    batch: int


SHAPES = {
    "small": Shape("small", 4096, 256, 256, 256, 6, 8, 16),
    "124m": Shape("124m", 50257, 1024, 256, 768, 12, 12, 4),
}


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    """FLOP/s of an n x n matmul in `dtype` on this CPU: the practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best


class FixedBatch:
    """A BatchSource that hands out the same batch: the bench measures compute only."""

    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def ours(shape: Shape, dtype: str, batch, run_dir: Path):
    cfg = TrainConfig(batch_size=shape.batch, lr=3e-4, warmup_steps=0, dtype=dtype,
                      device="cpu", max_steps=10**9)
    model = GPT(ModelConfig(vocab_size=shape.vocab, context_length=shape.context,
                            n_layer=shape.layers, n_head=shape.heads, n_embd=shape.width))
    trainer = Trainer(model, NextTokenPrediction(torch.device("cpu")), FixedBatch(batch),
                      build_optimizer(model, cfg), cfg, run_dir, torch.device("cpu"))
    state = TrainState()
    return model, lambda: trainer.train_step(state)


def peer_step(model, dtype: str, batch):
    """The training step of the peers' own examples: AdamW from torch.optim, as they use it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    inputs, targets = batch

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(inputs)
            if not isinstance(logits, torch.Tensor):  # Hugging Face returns an output object
                logits = logits.logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def book_model(shape: Shape, fast: bool):
    from llms_from_scratch.ch04 import GPTModel, GPTModelFast

    cfg = {"vocab_size": shape.vocab, "context_length": shape.context, "emb_dim": shape.width,
           "n_heads": shape.heads, "n_layers": shape.layers, "drop_rate": 0.0, "qkv_bias": True}
    return (GPTModelFast if fast else GPTModel)(cfg)


def hf_model(shape: Shape):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=shape.vocab, n_positions=shape.context, n_embd=shape.width,
                        n_layer=shape.layers, n_head=shape.heads, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


def run_shape(shape: Shape, dtypes: list[str], rounds: int, steps: int, peers: list[str]
              ) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, shape.vocab, (shape.batch, shape.seq + 1), generator=gen)
    batch = (windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
    tokens = shape.batch * shape.seq
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            torch.manual_seed(0)
            model, step = ours(shape, dtype, batch, Path(tmp))
            candidates = {"llmscratch": (model, step)}
            builders = {"GPTModel": lambda: book_model(shape, fast=False),
                        "GPTModelFast": lambda: book_model(shape, fast=True),
                        "GPT2LMHeadModel": lambda: hf_model(shape)}
            for name in peers:
                torch.manual_seed(0)
                peer = builders[name]()
                candidates[name] = (peer, peer_step(peer, dtype, batch))
            for _, step in candidates.values():
                step()  # warm-up: allocator, kernels, optimizer state
            times: dict[str, list[float]] = {name: [] for name in candidates}
            for _ in range(rounds):
                for name, (_, step) in candidates.items():
                    start = time.perf_counter()
                    for _ in range(steps):
                        step()
                    times[name].append((time.perf_counter() - start) / steps)
            ours_model = candidates["llmscratch"][0]
            flops = ours_model.flops_per_token(shape.seq)
            for name, (model, _) in candidates.items():
                rows.append({
                    "shape": shape.name, "precision": dtype, "model": name,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "tokens_per_s": tokens / statistics.median(times[name]),
                    "flops_per_token": flops,
                })
            del candidates, model
    return rows


def add_ratios(rows: list[dict], peaks: dict[str, float]) -> None:
    for row in rows:
        same = [r for r in rows if (r["shape"], r["precision"]) == (row["shape"], row["precision"])]
        fastest_peer = max((r["tokens_per_s"] for r in same if r["model"] != "llmscratch"),
                           default=0.0)
        row["vs_fastest_peer"] = row["tokens_per_s"] / fastest_peer if fastest_peer else None
        row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / peaks[row["precision"]]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="small,124m", help="comma list of: small, 124m")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of: fp32, bf16")
    parser.add_argument("--peers", default="GPTModel,GPTModelFast,GPT2LMHeadModel")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model")
    parser.add_argument("--steps", type=int, default=2, help="steps per model per round")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    dtypes = args.precision.split(",")
    peers = [p for p in args.peers.split(",") if p]
    # Only the precisions asked for: without bf16 instructions, a bf16 peak takes minutes.
    peaks = {d: matmul_peak(torch_dtype(d)) for d in dtypes}
    rows = []
    for name in args.shapes.split(","):
        rows += run_shape(SHAPES[name], dtypes, args.rounds, args.steps, peers)
    add_ratios(rows, peaks)
    if args.json:
        print(json.dumps({"machine": machine(), "matmul_peak_flops": peaks, "rows": rows}))
        return
    print(f"machine: {machine()}")
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"{'shape':<6} {'precision':<9} {'model':<16} {'params':>8} {'tokens/s':>9} "
          f"{'vs fastest peer':>15} {'MFU':>6}")
    for r in rows:
        ratio = f"{r['vs_fastest_peer']:.2f}x" if r["vs_fastest_peer"] else "-"
        print(f"{r['shape']:<6} {r['precision']:<9} {r['model']:<16} "
              f"{r['parameters'] / 1e6:>7.1f}M {r['tokens_per_s']:>9,.0f} {ratio:>15} "
              f"{r['mfu']:>6.1%}")


if __name__ == "__main__":
    np.random.seed(0)
    main()
