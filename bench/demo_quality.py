"""Run the demo's config end to end and print what it reached, and how fast.

    .venv/bin/python bench/demo_quality.py            # a table
    .venv/bin/python bench/demo_quality.py --json     # one JSON object

Wall time counts everything `llmscratch demo` does after start-up: timing
the model to choose its size, tokenizer training, encoding, pretraining,
validation, final evaluation, samples and the report. The issue's target is
validation bpb <= 1.95 within 10 minutes on a 2-core CPU. This is a
benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmscratch.recipes.demo import DEMO_CONFIG, demo_config
from llmscratch.recipes.pretrain import pretrain
from llmscratch.runs.config import load_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()

    started = time.perf_counter()
    if Path(args.config).resolve() == DEMO_CONFIG.resolve():  # as `llmscratch demo` does
        config = demo_config(args.overrides, say=lambda line: print(line, file=sys.stderr))
    else:
        config = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet) if args.json else contextlib.nullcontext():
            result = pretrain(config, Path(tmp) / "demo")
        wall = time.perf_counter() - started

    figures = {
        "config": args.config,
        "overrides": args.overrides,
        "val_bpb": round(result.final.bpb, 4),
        "val_loss": round(result.final.loss, 4),
        "wall_seconds": round(wall, 1),
        "train_seconds": round(result.train_seconds, 1),
        "train_tokens_per_second": round(result.tokens_per_second),
        # pretrain settles dtype "auto" in the config; steps are those that fit the budget
        "dtype": config.train.dtype,
        "steps": result.steps,
        "model": f"{config.model.n_layer} layers x {config.model.n_embd}",
        "target_bpb": 1.95,
        "target_seconds": 600,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    rows = [
        ("validation bits/byte", f"{figures['val_bpb']:.4f}", "<= 1.95",
         f"{1.95 / figures['val_bpb']:.3f}x"),
        ("wall time (s)", f"{wall:.0f}", "<= 600", f"{600 / wall:.2f}x"),
        ("training tokens/s", f"{result.tokens_per_second:,.0f}", "", ""),
        ("steps, precision", f"{result.steps} {config.train.dtype}", "", ""),
        ("model", figures["model"], "", ""),
    ]
    print(f"\ndemo benchmark ({figures['machine']})\n")
    print(f"| {'figure':<22} | {'ours':>10} | {'target':>8} | {'target/ours':>11} |")
    print(f"|{'-' * 24}|{'-' * 12}|{'-' * 10}|{'-' * 13}|")
    for name, ours, target, ratio in rows:
        print(f"| {name:<22} | {ours:>10} | {target:>8} | {ratio:>11} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
