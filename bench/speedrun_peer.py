"""The ten-minute speedrun's peer: a plain nanoGPT-style trainer, against the demo.

    .venv/bin/python bench/speedrun_peer.py                 # the peer, then the demo: a table
    .venv/bin/python bench/speedrun_peer.py --only peer     # the peer alone
    .venv/bin/python bench/speedrun_peer.py --json          # one JSON object

The peer trains on exactly what the demo trains on: the embedded plays, the
final 10% of their bytes held out (data/corpus.py), and a 2,048-token BPE
tokenizer trained on the rest (the project's own; the same merges as the
demo's). Everything after the tokens is the peer's own, in this file, as
nanoGPT writes it: a GPT-2 (learned positions, LayerNorm, GELU MLP, biases,
the output layer tied to the embedding), AdamW with weight decay on the
matrices, a linear warm-up and a cosine decay to a tenth of the peak, gradient
clipping at 1.0, bf16 autocast where the demo uses it. Its defaults:

    6 layers, width 192, 6 heads, context 256, batch 16 x 256 tokens,
    lr 1e-3 (betas 0.9, 0.95), weight decay 0.1, warm-up 100 steps, no dropout

Like the demo, it trains for a wall-clock budget: it times its first steps,
sets the cosine's length to the steps that fit in `--budget` seconds, plans
again every 200 steps, and stops at `--max-seconds` whatever happens. Both
are scored the same way (evaluation/perplexity.py): bits per byte over the
whole held-out text, in consecutive windows of the context length.

This is a benchmark, not a test: run it on a quiet machine. It takes about
twenty minutes with the demo, ten alone. Its figures, with the machine and
date, are in docs/speedrun.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.data.corpus import load_texts, split_train_val
from llmscratch.tokenizer import train_bpe
from llmscratch.training.precision import autocast_dtype, resolve_dtype


@dataclass
class PeerConfig:
    n_layer: int = 6
    n_embd: int = 192
    n_head: int = 6
    context: int = 256
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    dropout: float = 0.0
    vocab_size: int = 2048
    budget: float = 545.0  # seconds of training to plan for (the demo's train.budget_seconds)
    max_seconds: float = 575.0  # and never more (the demo's train.max_seconds)
    seed: int = 1337


# ---- the model: nanoGPT's GPT-2, written out -------------------------------------------------

class Block(nn.Module):
    def __init__(self, c: PeerConfig) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(),
                                 nn.Linear(4 * c.n_embd, c.n_embd), nn.Dropout(c.dropout))
        self.n_head, self.dropout = c.n_head, c.dropout

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # (B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + F.dropout(self.attention(self.ln_1(x)), self.dropout, self.training)
        return x + self.mlp(self.ln_2(x))


class PeerGPT(nn.Module):
    def __init__(self, c: PeerConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.context, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.drop = nn.Dropout(c.dropout)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


# ---- training for a wall-clock budget -----------------------------------------------------------

def lr_at(step: int, total: int, c: PeerConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at `total` steps."""
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = min(1.0, (step - c.warmup_steps) / max(1, total - c.warmup_steps))
    return c.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, c: PeerConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=c.lr, betas=(0.9, 0.95))


@torch.no_grad()
def bits_per_byte(model: nn.Module, val_ids: torch.Tensor, val_bytes: int, context: int,
                  amp: torch.dtype | None) -> float:
    """Summed next-token nats over consecutive windows of `context` tokens, per byte, in bits."""
    model.eval()
    nats, starts = 0.0, range(0, len(val_ids) - 1, context)
    for s in starts:
        window = val_ids[s : s + context + 1].unsqueeze(0)  # inputs and one more target
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(window[:, :-1])
        nats += F.cross_entropy(logits.float().flatten(0, 1), window[0, 1:],
                                reduction="sum").item()
    model.train()
    return nats / math.log(2) / val_bytes


def train_peer(c: PeerConfig, dtype_name: str, say=print) -> dict:
    """Tokenize, train for the budget, score the held-out text; return the figures."""
    started = time.perf_counter()
    torch.manual_seed(c.seed)
    train_text, val_text = split_train_val("\n".join(load_texts(None)), 0.1)
    tokenizer = train_bpe([train_text], vocab_size=c.vocab_size)
    train_ids = torch.tensor(tokenizer.encode_batch([train_text])[0], dtype=torch.int64)
    val_ids = torch.tensor(tokenizer.encode_batch([val_text])[0], dtype=torch.int64)
    amp = autocast_dtype(dtype_name)
    model, rng = PeerGPT(c), np.random.default_rng(c.seed)
    optimizer = make_optimizer(model, c)
    total, step, train_started = 10**9, 0, time.perf_counter()
    while True:
        elapsed = time.perf_counter() - train_started
        if step >= total or elapsed > c.max_seconds:
            break
        if step in (25,) or (step > 25 and step % 200 == 0):  # plan the cosine's length
            total = max(step + 1, int(c.budget / (elapsed / step)))
        starts = rng.integers(0, len(train_ids) - c.context - 1, c.batch_size)
        batch = torch.stack([train_ids[s : s + c.context + 1] for s in starts])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, c)
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 500 == 0:
            say(f"peer step {step}/{total}: loss {loss.item():.3f}, {elapsed:.0f} s")
    train_seconds = time.perf_counter() - train_started
    bpb = bits_per_byte(model, val_ids, len(val_text.encode()), c.context, amp)
    return {"val_bpb": round(bpb, 4), "steps": step, "train_seconds": round(train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "train_tokens_per_second": round(step * c.batch_size * c.context / train_seconds),
            "dtype": dtype_name,
            "model": f"{c.n_layer} layers x {c.n_embd}, batch {c.batch_size} x {c.context}"}


def train_ours(overrides: list[str], quiet: bool) -> dict:
    """`llmscratch demo`'s config and run, in a temporary folder."""
    from llmscratch.recipes.demo import demo_config
    from llmscratch.recipes.pretrain import pretrain

    started = time.perf_counter()
    config = demo_config(overrides, say=lambda line: print(line, file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            result = pretrain(config, Path(tmp) / "demo")
    return {"val_bpb": round(result.final.bpb, 4), "steps": result.steps,
            "train_seconds": round(result.train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "train_tokens_per_second": round(result.tokens_per_second),
            "dtype": config.train.dtype,
            "model": f"{config.model.n_layer} layers x {config.model.n_embd}, batch "
                     f"{config.train.batch_size} x {config.model.context_length}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["peer", "ours"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    for name, default in vars(PeerConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"the peer's {name} (default {default})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides of the demo's config, as `llmscratch demo` takes them")
    args = parser.parse_args()
    peer_config = PeerConfig(**{k: getattr(args, k) for k in vars(PeerConfig())})
    dtype_name = resolve_dtype("auto", torch.device("cpu"))
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    figures = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
                          f"cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
               "peer_settings": vars(peer_config), "overrides": args.overrides}
    if args.only != "ours":
        figures["peer"] = train_peer(peer_config, dtype_name, say)
    if args.only != "peer":
        figures["ours"] = train_ours(args.overrides, quiet=args.json)
    if "peer" in figures and "ours" in figures:
        figures["ratio"] = round(figures["ours"]["val_bpb"] / figures["peer"]["val_bpb"], 4)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"\nten-minute speedrun ({figures['machine']})\n")
    sides = [s for s in ("ours", "peer") if s in figures]
    print("| figure | " + " | ".join(sides) + " |\n|---|" + "---:|" * len(sides))
    for key in ("val_bpb", "wall_seconds", "train_seconds", "steps", "train_tokens_per_second",
                "dtype", "model"):
        print(f"| {key} | " + " | ".join(str(figures[s][key]) for s in sides) + " |")
    if "ratio" in figures:
        print(f"\nours / peer bits per byte: {figures['ratio']:.3f}x (target <= 0.85x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
