"""Training speed: llmscratch's training step against two peer implementations of GPT-2.

    .venv/bin/python bench/train_speed.py                      # both shapes, fp32 and bf16
    .venv/bin/python bench/train_speed.py --shapes small --json
    python bench/train_speed.py --device cuda --shapes 124m-1k --precision bf16 --compile

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
its ratio to the fastest peer at the same precision. On a CPU, MFU is
against the matmul peak measured here at the start (a large square matmul,
per dtype); on a known GPU, against its datasheet bf16 peak
(`training/throughput.py`), the usual convention, with the measured peak
printed beside it. `--compile` compiles every model's forward, ours and the
peers' alike.
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

from llmscratch.model import GPT, ModelConfig
from llmscratch.model.config import torch_dtype
from llmscratch.runs.checkpoint import TrainState
from llmscratch.runs.config import TrainConfig
from llmscratch.runs.run import Run
from llmscratch.training.loop import Trainer
from llmscratch.training.objectives import NextTokenPrediction
from llmscratch.training.optim import Schedule, build_optimizer
from llmscratch.training.throughput import peak_flops


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
    # GPT-2 124M as trained on GPUs (nanoGPT's sequence length): for MFU on one GPU.
    "124m-1k": Shape("124m-1k", 50257, 1024, 1024, 768, 12, 12, 16),
}


def matmul_peak(dtype: torch.dtype, device: torch.device, reps: int = 8) -> float:
    """FLOP/s of an n x n matmul in `dtype` on `device`: the practical peak.

    n is 2,048 on a CPU and 8,192 on a GPU (a smaller one leaves a GPU idle).
    """
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work (a CPU has none) so that a timer reads the real end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FixedBatch:
    """A BatchSource that hands out the same batch: the bench measures compute only."""

    def __init__(self, batch):
        self.batch = batch

    def next_batch(self, policy=None):
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def ours(shape: Shape, dtype: str, batch, run_dir: Path, device: torch.device):
    cfg = TrainConfig(batch_size=shape.batch, lr=3e-4, warmup_steps=0, dtype=dtype,
                      device=device.type, max_steps=10**9)
    model = GPT(ModelConfig(vocab_size=shape.vocab, context_length=shape.context,
                            n_layer=shape.layers, n_head=shape.heads, n_embd=shape.width))
    model.to(device)
    trainer = Trainer(model, NextTokenPrediction(device), FixedBatch(batch),
                      build_optimizer(model, cfg), Schedule.from_train(cfg), cfg,
                      Run(run_dir), device)
    state = TrainState()
    return model, lambda: trainer.train_step(state)


def peer_step(model, dtype: str, batch, device: torch.device):
    """The training step of the peers' own examples: AdamW from torch.optim, as they use it.

    On a GPU the optimizer is fused, as a GPU user would run it (ours is fused everywhere).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1,
                                  fused=device.type == "cuda")
    inputs, targets = batch

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
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


def run_shape(shape: Shape, dtypes: list[str], rounds: int, steps: int, peers: list[str],
              device: torch.device, compile_: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, shape.vocab, (shape.batch, shape.seq + 1), generator=gen)
    batch = (windows[:, :-1].contiguous().to(device),
             windows[:, 1:].contiguous().to(device))  # (B, T) each
    tokens = shape.batch * shape.seq
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            torch.manual_seed(0)
            model, step = ours(shape, dtype, batch, Path(tmp), device)
            candidates = {"llmscratch": (model, step)}
            builders = {"GPTModel": lambda: book_model(shape, fast=False),
                        "GPTModelFast": lambda: book_model(shape, fast=True),
                        "GPT2LMHeadModel": lambda: hf_model(shape)}
            for name in peers:
                torch.manual_seed(0)
                peer = builders[name]().to(device)
                candidates[name] = (peer, peer_step(peer, dtype, batch, device))
            for candidate, step in candidates.values():
                if compile_:
                    candidate.compile()  # the forward, in place, as train.compile does
                # Warm-up: allocator, kernels, optimizer state; compiling may take two steps.
                for _ in range(3 if compile_ else 1):
                    step()
            times: dict[str, list[float]] = {name: [] for name in candidates}
            for _ in range(rounds):
                for name, (_, step) in candidates.items():
                    # The clock starts on an idle device; every step ends with loss.item(),
                    # which waits for the device, so the clock also stops at the real end.
                    synchronize(device)
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
    """Each row's ratio to the fastest peer of its shape and precision, and its MFU."""
    for row in rows:
        same = [r for r in rows if (r["shape"], r["precision"]) == (row["shape"], row["precision"])]
        fastest_peer = max((r["tokens_per_s"] for r in same if r["model"] != "llmscratch"),
                           default=0.0)
        row["vs_fastest_peer"] = row["tokens_per_s"] / fastest_peer if fastest_peer else None
        row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / peaks[row["precision"]]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
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
    parser.add_argument("--shapes", default="small,124m",
                        help="comma list of: small, 124m, 124m-1k (the GPU shape)")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of: fp32, bf16")
    parser.add_argument("--peers", default="GPTModel,GPTModelFast,GPT2LMHeadModel")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model")
    parser.add_argument("--steps", type=int, default=2, help="steps per model per round")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every model's forward")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtypes = args.precision.split(",")
    peers = [p for p in args.peers.split(",") if p]
    # Only the precisions asked for: without bf16 instructions, a bf16 peak takes minutes.
    measured = {d: matmul_peak(torch_dtype(d), device) for d in dtypes}
    datasheet = peak_flops(device, 0.0)  # a known GPU's dense bf16 peak; 0 on a CPU
    peaks = {d: datasheet if datasheet and d == "bf16" else measured[d] for d in dtypes}
    rows = []
    for name in args.shapes.split(","):
        rows += run_shape(SHAPES[name], dtypes, args.rounds, args.steps, peers, device,
                          args.compile)
    add_ratios(rows, peaks)
    if args.json:
        print(json.dumps({"machine": machine(device), "compile": args.compile,
                          "matmul_peak_flops": measured, "mfu_peak_flops": peaks,
                          "rows": rows}))
        return
    print(f"machine: {machine(device)}" + (", compiled" if args.compile else ""))
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in measured.items()))
    if datasheet and "bf16" in dtypes:
        print(f"bf16 MFU against the datasheet peak, {datasheet / 1e9:,.0f} GFLOP/s")
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
