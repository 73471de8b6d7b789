"""Training speed of the model code now against the model code at a git commit.

    .venv/bin/python bench/model_speed.py                    # working tree vs HEAD
    .venv/bin/python bench/model_speed.py --baseline 8751c6f --preset gpt2-demo

Measures forward + backward tokens/s of one preset under bf16 autocast (as the
demo trains), for two versions of `llmscratch/model/`: the working tree's and
the one at `--baseline`. The baseline's files are copied from git into a
temporary package, so both versions live in one process; their timings are
interleaved round by round, so a busy machine slows both alike. Prints the
median tokens/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = "src/llmscratch/model"


def baseline_package(ref: str, into: Path) -> str:
    """Copy `llmscratch/model/` at git `ref` into `into/baseline_model/`; return its name."""
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", ref, MODEL_DIR + "/"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split()
    package = into / "baseline_model"
    package.mkdir()
    for name in names:
        if not name.endswith(".py"):
            continue
        source = subprocess.run(["git", "show", f"{ref}:{name}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
        # Point its imports of its own modules at the copy, not at today's package.
        source = source.replace("llmscratch.model", "baseline_model")
        (package / Path(name).name).write_text(source)
    sys.path.insert(0, str(into))
    return "baseline_model"


def time_steps(model, ids: torch.Tensor, steps: int) -> float:
    """Seconds for `steps` forward + backward passes under bf16 autocast."""
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids[:, :-1])  # (B, T, V), or (B, T, D) from a model with heads
            logits = model.logits(out) if hasattr(model, "logits") else out
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="HEAD", help="git commit of the baseline model")
    parser.add_argument("--preset", default="gpt2-demo")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timings of each")
    args = parser.parse_args(argv)

    from llmscratch.model import GPT, get_preset

    with tempfile.TemporaryDirectory() as tmp:
        name = baseline_package(args.baseline, Path(tmp))
        old = importlib.import_module(name)
        torch.manual_seed(0)
        models = {
            f"baseline ({args.baseline})": old.GPT(old.get_preset(args.preset)),
            "working tree": GPT(get_preset(args.preset)),
        }
        vocab = get_preset(args.preset).vocab_size
        ids = torch.randint(0, vocab, (args.batch, args.seq + 1))
        for model in models.values():  # warm-up: allocator, kernels, autocast caches
            time_steps(model, ids, 2)
        seconds: dict[str, list[float]] = {label: [] for label in models}
        for _ in range(args.rounds):
            for label, model in models.items():
                seconds[label].append(time_steps(model, ids, args.steps))

    tokens = args.batch * args.seq * args.steps
    rates = {label: tokens / statistics.median(s) for label, s in seconds.items()}
    print(f"{args.preset}, batch {args.batch} x {args.seq} tokens, fwd+bwd, bf16 autocast, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds")
    for label, rate in rates.items():
        print(f"  {label:<24} {rate:>10,.0f} tokens/s")
    baseline, current = rates.values()
    print(f"  working tree / baseline: {current / baseline:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
