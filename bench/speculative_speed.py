"""Speculative decoding at batch 1: plain greedy decoding against prompt lookup and a draft model.

    .venv/bin/python bench/speculative_speed.py
    .venv/bin/python bench/speculative_speed.py --json --rounds 5 --draft-tokens 8

The workload is an edit whose output repeats its input: a text of 64 random
words (of 62), a separator, and the text again with four words replaced by
others wherever they occur (a find-and-replace: about 4 replacements a
text), then the end token. The target model does it exactly: a one-layer
GPT-2-style model whose weights are set here by hand rather than trained
(training a model to copy takes longer on a 2-core CPU than the bench
should): sinusoidal position embeddings, and one attention head whose query
is its position's embedding rotated back by 64 positions, so each position
attends to the word 64 positions back; the value carries that word, and the
output layer maps it to itself, or to its replacement. `copier` builds it;
the bench checks that it writes every answer exactly. The draft model is a
smaller copier (16 frequencies instead of 64, 192 wide instead of 384) that
copies without replacing.

Both are timed as plain greedy decoding (`generation/sampling.py:
generate`) and with speculation (`generation/speculative.py`): prompt lookup
proposes the words that followed the last three in the text, so it is
rejected where a word was replaced, and the draft model likewise. Then the
same through the engine (`generation/engine.py`, what `serve` and `chat`
run), one request at a time (batch 1), plainly, with prompt lookup
(`Engine(draft_tokens=k)`) and with the draft model (`draft_model=`); each
round gets a fresh engine, so no prompt comes from the last round's prefix
cache. The
bench checks that speculation writes the same tokens, and prints tokens/s
(median over interleaved rounds), the speed-up over plain decoding by the
same code (`generate`, or the engine) and the acceptance rate.

A model this small is not held back by reading its weights, as GPT-2 124M
is on a CPU, but by the work around each forward pass; either way one pass
over k + 1 tokens costs little more than a pass over one. The second line
shows it for GPT-2 124M's shapes (random weights): the time of a cached
forward pass over 1 and over k + 1 tokens after a 200-token context, and
the speed-up that cost and prompt lookup's tokens per pass measured above
would give there (a projection, not a measurement: tokens per pass over the
pass's relative cost, leaving out the drafting, which costs little).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from llmscratch.generation import SamplingConfig, generate
from llmscratch.generation.cpu_weights import pack_linear_weights
from llmscratch.generation.engine import Engine
from llmscratch.generation.speculative import (
    DraftModel,
    PromptLookup,
    SpeculationStats,
    speculative_tokens,
)
from llmscratch.model import GPT, get_preset

VOCAB = 64
SEP, EOT = 62, 63  # the separator and the end of the answer; words are 0..61
REPLACED = {word: word + 40 for word in range(4)}  # the edit: words 0..3 become 40..43
LENGTH = 64  # words in a text
CONTEXT = 160


def example(gen: torch.Generator) -> tuple[list[int], list[int]]:
    """A prompt (text, separator) and its answer (the edited text)."""
    text = torch.randint(0, SEP, (LENGTH,), generator=gen).tolist()
    return text + [SEP], [REPLACED.get(word, word) for word in text]


def copier(frequencies: int, output_of: dict[int, int]) -> GPT:
    """A one-layer model whose next token is `output_of` the token LENGTH positions back.

    Width 2 V + 4 F: a centred one-hot of the token, the position's cos and sin at F
    frequencies (and their negatives, so every embedding has mean 0 and one norm, and
    LayerNorm only scales), and V dimensions the attention writes the copied token to.
    The query rotates the position back by LENGTH, so q . k is largest, by a margin
    scaled to 25 nats, where the key sits LENGTH positions back. The MLP is zero.
    """
    V, F = VOCAB, frequencies
    D = 2 * V + 4 * F
    model = GPT(get_preset("gpt2-tiny", vocab_size=V, context_length=CONTEXT, n_layer=1,
                           n_head=1, n_embd=D, tie_embeddings=False)).eval()
    copied = V + 4 * F + torch.arange(V)  # where the attention writes the token it copies
    omega = 2 * math.pi * torch.arange(1, F + 1) / (2 * CONTEXT)  # (F,)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for norm in (model.blocks[0].ln_1, model.blocks[0].ln_2, model.ln_f):
            norm.weight.fill_(1.0)
        model.tok_emb.weight[:, :V] = torch.eye(V) - 1 / V
        angle = torch.arange(CONTEXT)[:, None] * omega  # (C, F)
        model.pos_emb.weight[:, V:V + 4 * F] = torch.cat(
            [angle.cos(), angle.sin(), -angle.cos(), -angle.sin()], 1)
        # q . k over the position dims is 2 sum_f cos(omega_f (i - LENGTH - j)): its peak's margin.
        offsets = torch.arange(-CONTEXT, CONTEXT)[:, None]
        kernel = 2 * (offsets * omega).cos().sum(1)  # (2C,)
        margin = kernel[CONTEXT] - torch.cat([kernel[:CONTEXT], kernel[CONTEXT + 1:]]).max()
        ln_gain2 = D / ((1 - 1 / V) + 2 * F)  # LayerNorm scales each input by sqrt of this
        beta = 25.0 / (float(margin) * ln_gain2 / math.sqrt(D))
        W = model.blocks[0].attn.qkv.weight  # (3D, D): queries, keys, values
        cos, sin = (omega * LENGTH).cos(), (omega * LENGTH).sin()
        for start in (V, V + 2 * F):  # the cos, sin dims and their negatives
            c, s = start + torch.arange(F), start + F + torch.arange(F)
            W[c, c], W[c, s] = beta * cos, beta * sin  # cos(w (i - L)), sin(w (i - L))
            W[s, s], W[s, c] = beta * cos, -beta * sin
            W[D + c, c], W[D + s, s] = 1.0, 1.0
        W[2 * D + copied, torch.arange(V)] = 1.0  # the value: the token
        model.blocks[0].attn.proj.weight.copy_(torch.eye(D))
        for word in range(V):
            model.lm_head.weight[output_of.get(word, word), copied[word]] = 10.0
    return model


def workload(n: int, seed: int = 5) -> list[tuple[list[int], list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    return [example(gen) for _ in range(n)]


def speed(target: GPT, draft: GPT, prompts: list[list[int]], k: int, rounds: int) -> list[dict]:
    """Tokens/s of each way of decoding the prompts (median over interleaved rounds)."""
    greedy = SamplingConfig(max_new_tokens=100, temperature=0)
    plain = [generate(target, p, greedy, {EOT}) for p in prompts]

    def speculate(make_drafter):
        return lambda stats: [list(speculative_tokens(target, p, greedy, make_drafter(), k,
                                                      {EOT}, None, stats)) for p in prompts]

    def engine(draft_tokens: int, draft_model: GPT | None = None):
        """A fresh engine's decoding, one request at a time, counting into `stats`."""
        def decode(stats: SpeculationStats) -> list[list[int]]:
            engine.speculation = stats
            return [engine.generate([p], greedy, {EOT})[0] for p in prompts]

        engine = Engine(target, max_batch=1, draft_tokens=draft_tokens, draft_model=draft_model)
        return decode

    # Each way: (made afresh each round, untimed) -> decode(stats), and what it is compared to.
    ways = {"plain": (lambda: lambda stats: [generate(target, p, greedy, {EOT})
                                             for p in prompts], "plain"),
            "prompt lookup": (lambda: speculate(PromptLookup), "plain"),
            "draft model": (lambda: speculate(lambda: DraftModel(draft, VOCAB)), "plain"),
            "engine plain": (lambda: engine(0), "plain"),
            "engine lookup": (lambda: engine(k), "engine plain"),
            "engine draft": (lambda: engine(k, draft), "engine plain")}
    stats = {name: SpeculationStats() for name in ways}
    for name, (make, _) in ways.items():  # a warm-up, and the check that nothing changes
        assert make()(stats[name]) == plain, f"{name} changed the output"
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, (make, _) in ways.items():
            decode = make()
            started = time.perf_counter()
            decode(SpeculationStats())
            seconds[name].append(time.perf_counter() - started)
    tokens = sum(len(t) for t in plain)
    rate = {name: tokens / statistics.median(seconds[name]) for name in ways}
    rows = []
    for name, (_, baseline) in ways.items():
        speculates = stats[name].drafted > 0
        per_pass = stats[name].tokens / stats[name].steps if speculates else 1.0
        rows.append({"decoding": name, "tokens_per_s": round(rate[name], 1),
                     "speedup": round(rate[name] / rate[baseline], 2), "over": baseline,
                     "draft_tokens": k if speculates else 0,
                     "acceptance_rate": round(stats[name].acceptance_rate, 3),
                     "tokens_per_pass": round(per_pass, 2)})
    return rows


def correct(target: GPT, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """The fraction of answers the target writes exactly (greedy)."""
    greedy = SamplingConfig(max_new_tokens=100, temperature=0)
    right = [generate(target, p, greedy, {EOT}) == a
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
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--draft-tokens", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target = copier(64, {**REPLACED, SEP: EOT})
    draft = copier(16, {SEP: EOT})  # copies, without the replacements
    examples = workload(args.prompts)
    prompts = [p for p, _ in examples]
    accuracy = {"target": correct(target, prompts, [a for _, a in examples]),
                "draft": correct(draft, prompts, [a for _, a in examples])}
    pack_linear_weights(target)
    pack_linear_weights(draft)
    rows = speed(target, draft, prompts, args.draft_tokens, args.rounds)
    cost = pass_cost(args.draft_tokens, 10)
    k, per_pass = args.draft_tokens, rows[1]["tokens_per_pass"]
    cost["projected_speedup_prompt_lookup"] = round(per_pass / cost["relative_cost"], 2)
    if args.json:
        print(json.dumps({"exact_answers": accuracy, "decoding": rows, "gpt2_shapes": cost}))
        return
    print(f"answers written exactly (greedy): target {accuracy['target']:.0%}, "
          f"draft {accuracy['draft']:.0%}")
    print(f"{'decoding':<15}{'tokens/s':>10}{'speed-up':>10} {'over':<13}{'accepted':>9}"
          f"{'tokens/pass':>13}")
    for row in rows:
        print(f"{row['decoding']:<15}{row['tokens_per_s']:>10.1f}{row['speedup']:>9.2f}x "
              f"{row['over']:<13}{row['acceptance_rate']:>9.0%}{row['tokens_per_pass']:>13.2f}")
    print(f"GPT-2 124M shapes, cached pass after 200 tokens: 1 token {cost['pass_1_ms']} ms, "
          f"{k + 1} tokens {cost[f'pass_{k + 1}_ms']} ms ({cost['relative_cost']}x); "
          f"projected prompt-lookup speed-up at {per_pass} tokens a pass: "
          f"{cost['projected_speedup_prompt_lookup']}x")


if __name__ == "__main__":
    main()
