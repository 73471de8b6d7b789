"""Speculative decoding at batch 1: plain greedy decoding against prompt lookup and a draft model.

    .venv/bin/python bench/speculative_speed.py                 # train the models, then time
    .venv/bin/python bench/speculative_speed.py --json --rounds 5

The workload is an edit whose output repeats its input: a text (random
tokens, 48 to 96 of them), a separator, and the text again with eight
words replaced by others wherever they occur (a find-and-replace). A small
model learns it here in a few minutes (`--steps`), with a smaller one as
its draft model; both are kept in `--cache` for the next run. The target
writes the edited text greedily, as plain decoding and with speculation;
the bench checks that speculation writes the same tokens, and prints
tokens/s (median over interleaved rounds), the speed-up and the acceptance
rate. Prompt lookup proposes the tokens that followed the last n-gram in the
text, so it is rejected where a word was replaced, and accepted elsewhere
as far as the model has learnt to copy.

A model this small is not held back by reading its weights, as GPT-2 124M
is on a CPU, but by the work around each forward pass; either way one pass
over k + 1 tokens costs little more than a pass over one. The second table
shows it for GPT-2 124M's shapes (random weights): the time of a cached
forward pass over 1 and over k + 1 tokens after a 200-token context, and
the speed-up that cost and the acceptance rate measured above would give
(a projection, not a measurement: E = (1 - a^(k+1)) / (1 - a) tokens per
pass, a the acceptance rate, over the pass's relative cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from llmscratch.generation import SamplingConfig, generate
from llmscratch.generation.cpu_weights import pack_linear_weights
from llmscratch.generation.speculative import (
    DraftModel,
    PromptLookup,
    SpeculationStats,
    speculative_tokens,
)
from llmscratch.model import GPT, get_preset

VOCAB = 256
SEP, EOT = 254, 255  # the separator and the end of the answer; words are 0..253
REPLACED = {word: word + 100 for word in range(8)}  # the edit: words 0..7 become 100..107
SHAPES = {"target": (2, 192), "draft": (2, 64)}  # (layers, width)


def example(gen: torch.Generator, length: int) -> tuple[list[int], list[int]]:
    """A prompt (text, separator) and its answer (the edited text, then EOT)."""
    text = torch.randint(0, SEP, (length,), generator=gen).tolist()
    return text + [SEP], [REPLACED.get(word, word) for word in text] + [EOT]


def batch(gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, T); only the answer's tokens are predicted."""
    length = int(torch.randint(48, 97, (1,), generator=gen))
    rows, targets = [], []
    for _ in range(size):
        prompt, answer = example(gen, length)
        ids = prompt + answer
        rows.append(ids[:-1])
        targets.append([-100] * (len(prompt) - 1) + answer)
    return torch.tensor(rows), torch.tensor(targets)


def train(name: str, steps: int, cache: Path) -> GPT:
    """The editor model `name` (its shape in SHAPES), trained here or read from `cache`."""
    n_layer, width = SHAPES[name]
    config = get_preset("llama-3-tiny", vocab_size=VOCAB, context_length=256, n_layer=n_layer,
                        n_embd=width, n_head=width // 32, n_kv_head=width // 32,
                        mlp_hidden=3 * width, rope_scaling="none")
    torch.manual_seed(0)
    model = GPT(config)
    path = cache / f"{name}-{n_layer}x{width}-{steps}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps,
                                                   pct_start=0.05)
    gen = torch.Generator().manual_seed(1)
    started = time.perf_counter()
    for step in range(steps):
        inputs, targets = batch(gen, 32)
        loss_sum, count = model.next_token_loss(model(inputs), targets)
        loss = loss_sum / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  {name}: step {step}, loss {loss.item():.3f}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def workload(n: int, seed: int = 5) -> list[tuple[list[int], list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    return [example(gen, 96) for _ in range(n)]


def speed(target: GPT, draft: GPT, prompts: list[list[int]], k: int, rounds: int) -> list[dict]:
    """Tokens/s of each way of decoding the prompts (median over interleaved rounds)."""
    greedy = SamplingConfig(max_new_tokens=100, temperature=0)
    plain = [generate(target, p, greedy, {EOT}) for p in prompts]

    def speculate(make_drafter, stats: SpeculationStats) -> list[list[int]]:
        return [list(speculative_tokens(target, p, greedy, make_drafter(), k, {EOT}, None, stats))
                for p in prompts]

    ways = {"plain": None, "prompt lookup": PromptLookup,
            "draft model": lambda: DraftModel(draft, VOCAB)}
    stats = {name: SpeculationStats() for name in ways}
    for name, make in ways.items():  # a warm-up, and the check that nothing changes
        if make is not None:
            assert speculate(make, stats[name]) == plain, f"{name} changed the output"
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, make in ways.items():
            started = time.perf_counter()
            if make is None:
                [generate(target, p, greedy, {EOT}) for p in prompts]
            else:
                speculate(make, SpeculationStats())
            seconds[name].append(time.perf_counter() - started)
    tokens = sum(len(t) for t in plain)
    base = tokens / statistics.median(seconds["plain"])
    rows = []
    for name in ways:
        rate = tokens / statistics.median(seconds[name])
        rows.append({"decoding": name, "tokens_per_s": round(rate, 1),
                     "speedup": round(rate / base, 2), "draft_tokens": k if ways[name] else 0,
                     "acceptance_rate": round(stats[name].acceptance_rate, 3),
                     "tokens_per_pass": round(stats[name].tokens / max(stats[name].steps, 1), 2)})
    return rows


def correct(target: GPT, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """The fraction of answers the target writes exactly (greedy)."""
    greedy = SamplingConfig(max_new_tokens=100, temperature=0)
    right = [generate(target, p, greedy, {EOT}) == a[:-1]
             for p, a in zip(prompts, answers, strict=True)]
    return sum(right) / len(right)


def pass_cost(k: int, rounds: int) -> dict:
    """GPT-2 124M shapes, random weights, fp32, packed: a cached pass over 1 and k + 1 tokens."""
    torch.manual_seed(0)
    model = GPT(get_preset("gpt2")).eval()
    pack_linear_weights(model)
    context = torch.randint(0, 50257, (1, 200))
    times = {1: [], k + 1: []}
    with torch.no_grad():
        cache = model.new_cache(1, 256)
        model(context, cache)
        for _ in range(rounds):
            for n in times:
                started = time.perf_counter()
                model.logits(model(context[:, :n], cache)[0])
                times[n].append(time.perf_counter() - started)
                cache.truncate(200)
    one, many = (statistics.median(times[n]) for n in times)
    return {"pass_1_ms": round(one * 1000, 1), f"pass_{k + 1}_ms": round(many * 1000, 1),
            "relative_cost": round(many / one, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each model")
    parser.add_argument("--cache", default="/tmp/llmscratch-bench/speculative",
                        help="where the trained models are kept")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--draft-tokens", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    target, draft = (train(name, args.steps, cache) for name in ("target", "draft"))
    examples = workload(args.prompts)
    prompts = [p for p, _ in examples]
    accuracy = {"target": correct(target, prompts, [a for _, a in examples]),
                "draft": correct(draft, prompts, [a for _, a in examples])}
    pack_linear_weights(target)
    pack_linear_weights(draft)
    rows = speed(target, draft, prompts, args.draft_tokens, args.rounds)
    cost = pass_cost(args.draft_tokens, 10)
    a, k = rows[1]["acceptance_rate"], args.draft_tokens
    per_pass = (1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1
    cost["projected_speedup_prompt_lookup"] = round(per_pass / cost["relative_cost"], 2)
    if args.json:
        print(json.dumps({"exact_answers": accuracy, "decoding": rows, "gpt2_shapes": cost}))
        return
    print(f"answers written exactly (greedy): target {accuracy['target']:.0%}, "
          f"draft {accuracy['draft']:.0%}")
    print(f"{'decoding':<15}{'tokens/s':>10}{'speed-up':>10}{'accepted':>10}{'tokens/pass':>13}")
    for row in rows:
        print(f"{row['decoding']:<15}{row['tokens_per_s']:>10.1f}{row['speedup']:>9.2f}x"
              f"{row['acceptance_rate']:>10.0%}{row['tokens_per_pass']:>13.2f}")
    print(f"GPT-2 124M shapes, cached pass after 200 tokens: 1 token {cost['pass_1_ms']} ms, "
          f"{k + 1} tokens {cost[f'pass_{k + 1}_ms']} ms ({cost['relative_cost']}x); "
          f"projected prompt-lookup speed-up at {a:.0%} acceptance: "
          f"{cost['projected_speedup_prompt_lookup']}x")


if __name__ == "__main__":
    main()
