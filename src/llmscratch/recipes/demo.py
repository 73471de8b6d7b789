"""`llmscratch demo`: the first half of the pipeline on the embedded corpus, in ten minutes.

configs/demo.yaml trains a tokenizer and a small GPT-2 on Shakespeare for as
many steps as fit in `train.budget_seconds` (recipes/budget.py). Which
model learns most from that time depends on the machine. Its model,
gpt2-demo (4 layers x 256), learns more per step than gpt2-demo-small
(2 x 192), whose steps take a third to two fifths of the time. With about
2,800 steps of gpt2-demo (a CPU with fast bf16) gpt2-demo is at least as
good: 1.94 to 1.97 bpb at 2,700 steps (seeds, threads) against 1.96 for
gpt2-demo-small at 6,000. With about 2,000 (a slow day of the same CPU),
1,300 (a slower CPU) or 900 (fp32), gpt2-demo-small wins: 1.97 against 2.02,
1.99 against 2.08, and 2.02 against 2.15 (docs/benchmarks.md, "Why gpt2-demo
or gpt2-demo-small"). The difference crosses zero near 2,500 steps. So the
demo times a few steps of its model first, and trains gpt2-demo-small where
fewer than DEMO_MIN_STEPS of them fit.
"""

from __future__ import annotations

from pathlib import Path

from llmscratch.distributed import resolve_device
from llmscratch.model import ModelConfig
from llmscratch.recipes.pretrain import PretrainResult, pretrain
from llmscratch.runs.config import RunConfig, load_config
from llmscratch.runs.run import Run
from llmscratch.training.throughput import seconds_per_step

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEMO_MIN_STEPS = 2500
DEMO_SMALL_OVERRIDES = ["model.preset=gpt2-demo-small"]


def demo_config(overrides: list[str], say=print) -> RunConfig:
    """configs/demo.yaml with `overrides`, its model swapped for the smaller one if needed."""
    config = load_config(DEMO_CONFIG, overrides)
    budget = config.train.budget_seconds
    if not budget:
        return config
    per_step = seconds_per_step(config.model, config.train, resolve_device(config.train.device))
    fits = int(budget / per_step)
    if fits >= DEMO_MIN_STEPS:
        return config
    big_model = config.model
    # The user's own overrides come last, so they still win.
    config = load_config(DEMO_CONFIG, DEMO_SMALL_OVERRIDES + list(overrides))
    say(f"{_shape(big_model)}: {per_step:.2f} s a step here, so about {fits:,} steps fit in "
        f"{budget:g} s (fewer than {DEMO_MIN_STEPS:,}): the demo trains a smaller model, "
        f"{_shape(config.model)} ({', '.join(DEMO_SMALL_OVERRIDES)})")
    return config


def run_demo(out: Path, config_path: Path | None, overrides: list[str]) -> PretrainResult:
    """The demo's run in `out`, replacing an earlier demo run there (never anything else)."""
    Run.check_new(out, overwrite=True)  # before anything is timed or trained
    print(f"llmscratch demo: config {config_path or DEMO_CONFIG}, run directory {out}\n"
          "1) train a BPE tokenizer  2) tokenize and split the corpus  3) pretrain a GPT\n"
          "4) evaluate on held-out text  5) generate samples  6) write the run report\n")
    if config_path is not None:  # the user's own config: trained as written
        config = load_config(config_path, overrides)
    else:
        config = demo_config(overrides)
    return pretrain(config, out, overwrite=True)


def _shape(model: ModelConfig) -> str:
    return f"{model.n_layer} layers x {model.n_embd}"
