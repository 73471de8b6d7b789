"""RL speed: rollouts sampled by the engine against `generate` one prompt at a time, and
where an RL step's time goes.

    .venv/bin/python bench/rl_speed.py --run runs/chat/sft      # a run of yours
    .venv/bin/python bench/rl_speed.py                          # GPT-2 124M shapes, random
    .venv/bin/python bench/rl_speed.py --run runs/chat/sft --json

The work: one RL step's responses, `--prompts` synthetic-task prompts
(data/synthetic_tasks.py, laid out by the run's chat template) sampled
`--group` times each at temperature 1, `--tokens` new tokens each (no stop
token ends them early, so both sides write the same number of tokens).

- ours: the inference engine (generation/engine.py), every response in one
  continuous batch over the paged KV cache, as `finetune rl` samples
  (recipes/rollouts.py);
- peer: `generate` (generation/sampling.py, a KV cache of its own), one
  prompt at a time, as a loop over the prompts would do without an engine;
  timed on `--peer-samples` of the responses (its tokens/s does not depend
  on how many).

Then one whole RL step (`Rollouts.next_batch`: sampling, rewards, the
reference's log-probabilities; then the GRPO objective's forward, backward
and the optimizer step) is timed, and its share of time in generation is
printed. Without --run the model has GPT-2 124M's shapes and random weights,
with GPT-2's tokenizer.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch

from llmscratch.data.alignment_files import from_task
from llmscratch.data.chat_examples import ChatEncoder
from llmscratch.data.synthetic_tasks import make_tasks
from llmscratch.distributed import DistInfo
from llmscratch.generation.engine import Engine
from llmscratch.generation.sampling import SamplingConfig, generate
from llmscratch.model import GPT, get_preset
from llmscratch.recipes.rollouts import Rewarder, Rollouts
from llmscratch.runs.config import AlignConfig
from llmscratch.runs.load import load_model
from llmscratch.runs.run import GenerationSettings, Run
from llmscratch.tokenizer import Tokenizer
from llmscratch.training.objectives import GroupRelativePolicy
from llmscratch.training.precision import autocast_dtype


def model_and_prompts(run_dir: str | None, n: int):
    if run_dir:
        run = Run.open(run_dir)
        model, tokenizer, settings = load_model(run).float(), run.tokenizer(), \
            run.generation_settings()
    else:
        torch.manual_seed(0)
        model, tokenizer = GPT(get_preset("gpt2")), Tokenizer.gpt2()
        settings = GenerationSettings([tokenizer.eot_id], eos_token="<|endoftext|>")
    encoder = ChatEncoder(tokenizer, settings, "chat", train_on_all=False)
    prompts = [from_task(e) for e in make_tasks(n, 0, "heldout")]
    return model, tokenizer, prompts, [encoder.prompt_ids(p.prompt) for p in prompts]


def sampling(args, seed: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=args.tokens, temperature=1.0, seed=seed)


def engine_tokens_per_s(model, tokenizer, prompt_ids, args) -> float:
    requests = [ids for ids in prompt_ids for _ in range(args.group)]
    engine = Engine(model, max_batch=len(requests), vocab_size=tokenizer.vocab_size)
    started = time.perf_counter()
    seqs = engine.run(requests, [sampling(args, i) for i in range(len(requests))])
    return sum(len(s.output_ids) for s in seqs) / (time.perf_counter() - started)


def one_at_a_time_tokens_per_s(model, tokenizer, prompt_ids, args) -> float:
    tokens, started = 0, time.perf_counter()
    for i in range(args.peer_samples):
        tokens += len(generate(model, prompt_ids[i % len(prompt_ids)], sampling(args, i),
                               vocab_size=tokenizer.vocab_size))
    return tokens / (time.perf_counter() - started)


def rl_step_split(model, tokenizer, prompts, prompt_ids, args) -> dict:
    """Seconds of one RL step in sampling (with rewards and reference) and in training."""
    align = AlignConfig(group_size=args.group, max_new_tokens=args.tokens)
    amp = autocast_dtype(args.precision)
    rollouts = Rollouts(prompts, prompt_ids, Rewarder.function_named("synthetic"),
                        copy.deepcopy(model).requires_grad_(False), align, len(prompts), 0,
                        DistInfo(), [], tokenizer, amp)
    objective = GroupRelativePolicy(torch.device("cpu"), align.clip, align.kl_coef)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    started = time.perf_counter()
    batch = rollouts.next_batch(model)
    sampled = time.perf_counter()
    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        out = objective(model.train(), batch)
    out.loss_sum.backward()
    optimizer.step()
    done = time.perf_counter()
    return {"sampling_s": sampled - started, "training_s": done - sampled,
            "generation_share": (sampled - started) / (done - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run to sample from (default: GPT-2 124M shapes)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8, help="responses a prompt")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens a response")
    parser.add_argument("--peer-samples", type=int, default=8)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                        help="the training step's autocast (sampling runs in fp32 weights)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    model, tokenizer, prompts, prompt_ids = model_and_prompts(args.run, args.prompts)
    model.eval()
    with torch.no_grad():
        ours = engine_tokens_per_s(model, tokenizer, prompt_ids, args)
        peer = one_at_a_time_tokens_per_s(model, tokenizer, prompt_ids, args)
    split = rl_step_split(model, tokenizer, prompts, prompt_ids, args)
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "model": args.run or "gpt2-124m (random)", "responses": args.prompts * args.group,
              "tokens": args.tokens, "engine_tok_per_s": ours, "one_at_a_time_tok_per_s": peer,
              "ratio": ours / peer, **split}
    if args.json:
        print(json.dumps(result))
        return
    print(f"RL rollouts: {result['model']}, {result['responses']} responses of {args.tokens} "
          f"tokens, {result['machine']['threads']} threads, torch {result['machine']['torch']}")
    print(f"{'engine tok/s':>13} {'one-at-a-time tok/s':>20} {'ratio':>6}")
    print(f"{ours:>13.0f} {peer:>20.0f} {ours / peer:>5.2f}x")
    print(f"one RL step: {split['sampling_s']:.1f} s sampling (rewards, reference included), "
          f"{split['training_s']:.1f} s training: {split['generation_share']:.0%} generation")


if __name__ == "__main__":
    main()
