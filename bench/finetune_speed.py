"""Fine-tuning speed and memory: our SFT step against `transformers` + `peft`, full and LoRA.

    .venv/bin/python bench/finetune_speed.py                       # both models, bf16
    .venv/bin/python bench/finetune_speed.py --models gpt2-124m --precision fp32 --json

The work (the same for both): one optimizer step of instruction tuning on a
fixed batch of rows of random tokens whose first quarter is the "prompt"
(targets -100), next-token cross-entropy on the rest, gradient-norm clipping
at 1.0, AdamW, with the weights in fp32 and the matmuls autocast to bf16
(`--precision bf16`, what `train.dtype=auto` picks on a CPU with fast bf16)
or in fp32. Models have random weights and the shapes of GPT-2 124M and of
Qwen3-0.6B (transformers' configs; ours read from them as `convert from-hf`
reads them). "full": every weight trains. "lora": rank 8, alpha 16, on every
linear layer of the blocks; ours puts one adapter on the fused q/k/v layer
(its A shared by q, k and v, as PEFT's export of it shows), PEFT one on each
of q, k and v.

- ours: `Trainer.train_step` of training/loop.py, what `llmscratch finetune
  sft` runs, with the `NextTokenPrediction` objective on a padded `Batch`;
- peer: `AutoModelForCausalLM` (SDPA attention) with `peft.get_peft_model`
  for LoRA, called with `labels=` as `transformers.Trainer` calls it, then
  `clip_grad_norm_` and `torch.optim.AdamW` on the trainable parameters.

Each (model, method, framework) runs in a fresh process, so that its memory
is its own: "peak MiB" is the growth of the process's peak resident memory
from after the imports to the end of the timed steps (weights, gradients,
optimizer state, activations), the largest over the rounds. Tokens/s is over
the median step of `--steps` after one warm-up step, the best of `--rounds`
processes that alternate between ours and the peer's (these shared machines
vary by 10% or more from minute to minute).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from train_speed import FixedBatch  # the loop's data source, handing out one batch

MODELS = {  # name: (rows per batch, tokens per row)
    "gpt2-124m": (8, 256),
    "qwen3-0.6b": (4, 256),
}
LORA_RANK, LORA_ALPHA = 8, 16.0


def hf_config(name: str):
    from transformers import GPT2Config, Qwen3Config

    if name == "gpt2-124m":  # transformers' defaults are GPT-2 124M
        return GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          architectures=["GPT2LMHeadModel"])
    return Qwen3Config(architectures=["Qwen3ForCausalLM"], vocab_size=151936,
                       hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=40960, rope_theta=1e6,
                       tie_word_embeddings=True, rms_norm_eps=1e-6)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def batch_tensors(vocab: int, rows: int, length: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows, length + 1), generator=gen)
    inputs, targets = ids[:, :-1].clone(), ids[:, 1:].clone()  # (B, T) each
    targets[:, : length // 4] = -100  # the prompt: not learned
    return inputs, targets


def ours(name: str, method: str, precision: str, steps: int) -> dict:
    import torch

    from llmscratch.data.examples import Batch
    from llmscratch.model import GPT
    from llmscratch.model.lora import LoRAConfig, apply_lora
    from llmscratch.runs.checkpoint import TrainState
    from llmscratch.runs.config import TrainConfig
    from llmscratch.runs.hf_import import read_hf_config
    from llmscratch.runs.run import Run
    from llmscratch.training.loop import Trainer
    from llmscratch.training.objectives import NextTokenPrediction
    from llmscratch.training.optim import Schedule, build_optimizer

    before = peak_mib()
    with tempfile.TemporaryDirectory() as tmp:
        hf_config(name).save_pretrained(tmp)
        config = read_hf_config(Path(tmp))
    torch.manual_seed(0)
    model = GPT(config)
    if method == "lora":
        apply_lora(model, LoRAConfig(LORA_RANK, LORA_ALPHA))
    rows, length = MODELS[name]
    inputs, targets = batch_tensors(config.vocab_size, rows, length)
    batch = Batch(inputs, torch.ones_like(inputs), targets)
    cfg = TrainConfig(batch_size=rows, lr=1e-4, warmup_steps=0, dtype=precision,
                      max_steps=10**9, grad_clip=1.0)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, NextTokenPrediction(device), FixedBatch(batch),
                          build_optimizer(model, cfg), Schedule.from_train(cfg), cfg,
                          Run(Path(tmp)), device)
        state = TrainState()
        return timed(lambda: trainer.train_step(state), steps, rows * length, before)


def peer(name: str, method: str, precision: str, steps: int) -> dict:
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    before = peak_mib()
    config = hf_config(name)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if method == "lora":
        targets = (["c_attn", "c_proj", "c_fc"] if name.startswith("gpt2") else
                   ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                    "down_proj"])
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=targets,
            fan_in_fan_out=name.startswith("gpt2")))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.1)
    rows, length = MODELS[name]
    inputs, targets = batch_tensors(config.vocab_size, rows, length)
    labels = torch.cat([inputs[:, :1], targets], dim=1)[:, :-1]  # transformers shifts them
    labels[:, : length // 4 + 1] = -100

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return timed(step, steps, rows * length, before)


def timed(step, steps: int, tokens: int, before: float) -> dict:
    step()  # warm-up: the allocator, the kernels, the optimizer's state
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"tokens_per_s": tokens / statistics.median(seconds),
            "peak_mib": peak_mib() - before}


def child(args: tuple, queue) -> None:
    framework, name, method, precision, steps = args
    queue.put((ours if framework == "llmscratch" else peer)(name, method, precision, steps))


def measure(framework: str, name: str, method: str, precision: str, steps: int) -> dict:
    """One case in a fresh process (spawned: nothing inherited), so its memory is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=((framework, name, method, precision, steps),
                                                  queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"{framework} {name} {method} failed (exit code {process.exitcode})")
    return queue.get(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of "
                        + ", ".join(MODELS))
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--rounds", type=int, default=2, help="processes per case and "
                        "framework, alternating ours and the peer's; the fastest counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    import torch

    rows = []
    for name in args.models.split(","):
        for method in args.methods.split(","):
            runs: dict[str, list[dict]] = {"llmscratch": [], "transformers+peft": []}
            for _ in range(args.rounds):  # alternating: a busier machine slows both alike
                for framework, results in runs.items():
                    results.append(measure(framework, name, method, args.precision,
                                           args.steps))
            result = {f: {"tokens_per_s": max(r["tokens_per_s"] for r in results),
                          "peak_mib": max(r["peak_mib"] for r in results)}
                      for f, results in runs.items()}
            ours_, theirs = result["llmscratch"], result["transformers+peft"]
            rows.append({"model": name, "method": method, "precision": args.precision,
                         "batch": list(MODELS[name]), "ours": ours_, "peer": theirs,
                         "speed_ratio": ours_["tokens_per_s"] / theirs["tokens_per_s"],
                         "memory_ratio": ours_["peak_mib"] / theirs["peak_mib"]})
    machine = {"cpu": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}))
        return
    print(f"fine-tuning step (SFT), {args.precision}, {machine['threads']} threads, "
          f"torch {machine['torch']}")
    print(f"{'model':<12} {'method':<6} {'B x T':<8} {'ours tok/s':>10} {'peer tok/s':>10} "
          f"{'ratio':>6} {'ours MiB':>9} {'peer MiB':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:<12} {r['method']:<6} {'{} x {}'.format(*r['batch']):<8} "
              f"{r['ours']['tokens_per_s']:>10.0f} {r['peer']['tokens_per_s']:>10.0f} "
              f"{r['speed_ratio']:>5.2f}x {r['ours']['peak_mib']:>9.0f} "
              f"{r['peer']['peak_mib']:>9.0f} {r['memory_ratio']:>5.2f}x")


if __name__ == "__main__":
    main()
