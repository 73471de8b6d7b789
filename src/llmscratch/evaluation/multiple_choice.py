"""Multiple choice by log-likelihood: which continuation does the model find most likely?

For a question with context c and choices x_1 .. x_n, each choice's score is
the log-probability of its tokens after the context,

    score_i = sum over the tokens t of x_i of log p(t | c, the tokens of x_i before t)

and the prediction is the choice with the highest score (`acc`), or with the
highest score per character of the choice's text (`acc_norm`), which does not
favour short choices for being short. Both are what lm-evaluation-harness
reports (llm.c's HellaSwag normalises by tokens instead). The few lines:

    context_ids, choice_ids = encode_pair(tokenizer, context, choice)
    hidden = model(tensor([context_ids + choice_ids[:-1]]))          # (1, T, D)
    log_probs = log_softmax(model.logits(hidden[0, -len(choice_ids):]))  # (n, V)
    score = log_probs.gather(1, tensor(choice_ids)[:, None]).sum()

Encoding. As lm-evaluation-harness does, spaces that end the context move to
the start of the continuation, and the continuation's tokens are those of
context + continuation after the context's own tokens (BPE may merge across
the boundary otherwise). An empty context is the end-of-text token.

Speed (`score_requests`). The n choices share their context, so the context
runs through the model once, for all of them: its keys and values go into a
KV cache that is copied to one row per choice, and then only the choices'
tokens run. The output layer, a (V x D) product per position, is applied only
where a choice's token is predicted, never on the context. Requests are
batched by examples, the longest first; contexts are left-padded in a batch,
choices right-padded (a causal model never looks at the padding after a token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmscratch.model import GPT
from llmscratch.model.kv_cache import KVCache
from llmscratch.tokenizer import Tokenizer

# Tokens a batch. On a 2-core CPU, GPT-2 124M scored 32 HellaSwag-sized examples
# (bench/eval_speed.py's) at 2.1 examples/s in batches of 1,024 tokens, 2.9 of 2,048
# and 3.3-3.7 of 4,096 (the whole set), on a machine busy with other work.
CPU_BATCH_TOKENS = 4096
GPU_BATCH_TOKENS = 16384
LOGIT_ROWS = 512  # output-layer rows at a time: (512, V) fp32 logits, 100 MB at GPT-2's V


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int],
                                                                                 list[int]]:
    """(context ids, continuation ids), split as lm-evaluation-harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [tokenizer.eot_id], _encode(tokenizer, continuation)
    context_ids = _encode(tokenizer, context)
    whole = _encode(tokenizer, context + continuation)
    return context_ids, whole[len(context_ids):]


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, disallowed_special="none")  # special-token text is text


@dataclass
class Scored:
    """A continuation's summed log-probability, and whether greedy decoding would write it."""

    log_prob: float
    greedy: bool
    tokens: int


@torch.no_grad()
def score_requests(model: GPT, requests: Sequence[tuple[list[int], list[int]]],
                   batch_tokens: int | None = None) -> list[Scored]:
    """log p(continuation | context) of each (context ids, continuation ids) request.

    Requests with the same context share one pass over it (module docstring).
    A request longer than the model's context keeps its last tokens, the
    context cut from the left, as lm-evaluation-harness does. `batch_tokens`
    bounds the tokens of one batch (contexts plus choices); None: CPU_BATCH_TOKENS on
    a CPU, GPU_BATCH_TOKENS on a GPU, which needs larger batches to be busy.
    """
    window = model.config.context_length
    if batch_tokens is None:
        on_cpu = model.tok_emb.weight.device.type == "cpu"
        batch_tokens = CPU_BATCH_TOKENS if on_cpu else GPU_BATCH_TOKENS
    groups: dict[tuple[int, ...], list[int]] = {}  # context -> indices of its requests
    for i, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError("a request needs a context and a continuation of 1+ tokens")
        groups.setdefault(tuple(context), []).append(i)
    # Each group: its context cut so that context + longest continuation - 1 fit the window.
    jobs = []
    for context, members in groups.items():
        longest = max(len(requests[i][1]) for i in members)
        keep = max(window + 1 - longest, 1)
        jobs.append((list(context[-keep:]), [requests[i][1][-window:] for i in members],
                     members))
    jobs.sort(key=lambda job: -(len(job[0]) + max(map(len, job[1]))))  # longest first
    results: list[Scored | None] = [None] * len(requests)
    start = 0
    while start < len(jobs):
        end, cost, longest_context, longest_choice = start, 0, 0, 0
        while end < len(jobs):  # as many groups as fit batch_tokens (at least one)
            context, choices, _ = jobs[end]
            cost += len(context) + sum(map(len, choices))
            longest_context = max(longest_context, len(context))
            longest_choice = max(longest_choice, max(map(len, choices)))
            # The batch's cache holds the longest context and the longest choice after it.
            if end > start and (cost > batch_tokens
                                or longest_context + longest_choice - 1 > window):
                break
            end += 1
        for members, scored in zip((job[2] for job in jobs[start:end]),
                                   _score_batch(model, jobs[start:end]), strict=True):
            for i, s in zip(members, scored, strict=True):
                results[i] = s
        start = end
    return results


def _score_batch(model: GPT, jobs: list[tuple[list[int], list[list[int]], list[int]]]
                 ) -> list[list[Scored]]:
    """One batch of groups: G contexts, R choices in all. Legend: Lc longest context,
    Lx longest choice input (choice tokens but the last), D width, V vocabulary."""
    device = model.tok_emb.weight.device
    G, Lc = len(jobs), max(len(job[0]) for job in jobs)
    contexts = torch.zeros(G, Lc, dtype=torch.int64)  # (G, Lc), left-padded
    context_mask = torch.zeros(G, Lc, dtype=torch.int64)
    for g, (context, _, _) in enumerate(jobs):
        contexts[g, Lc - len(context):] = torch.tensor(context)
        context_mask[g, Lc - len(context):] = 1
    choices = [c for job in jobs for c in job[1]]
    owner = torch.tensor([g for g, job in enumerate(jobs) for _ in job[1]])  # (R,)
    Lx = max(len(c) for c in choices) - 1
    cache = model.new_cache(G, Lc)
    hidden = model(contexts.to(device), cache, context_mask.to(device))  # (G, Lc, D)
    # A choice's first token is predicted at its context's last position.
    first = torch.tensor([c[0] for c in choices])  # (R,)
    first_lp, first_greedy = _target_log_probs(model, hidden[:, -1][owner.to(device)], first)
    lp_sum, all_greedy = first_lp.clone(), first_greedy.clone()  # (R,)
    if Lx > 0:
        rows = _cache_per_choice(model, cache, owner.to(device), Lx)
        inputs = torch.zeros(len(choices), Lx, dtype=torch.int64)  # (R, Lx), right-padded
        targets = torch.full((len(choices), Lx), -1, dtype=torch.int64)  # -1: nothing here
        for r, c in enumerate(choices):
            inputs[r, :len(c) - 1] = torch.tensor(c[:-1])
            targets[r, :len(c) - 1] = torch.tensor(c[1:])
        mask = torch.cat([context_mask[owner], torch.ones(len(choices), Lx,
                                                         dtype=torch.int64)], dim=1)
        hidden = model(inputs.to(device), rows, mask.to(device))  # (R, Lx, D)
        real = targets >= 0  # (R, Lx)
        lp, greedy = _target_log_probs(model, hidden[real.to(device)], targets[real])  # (N,)
        row_of = real.nonzero()[:, 0]  # (N,): each predicted token's choice
        lp_sum.index_add_(0, row_of, lp)
        all_greedy &= _all_per_row(greedy, row_of, len(choices))
    out, r = [], 0
    for _, job_choices, _ in jobs:
        out.append([Scored(float(lp_sum[r + k]), bool(all_greedy[r + k]), len(c))
                    for k, c in enumerate(job_choices)])
        r += len(job_choices)
    return out


def _cache_per_choice(model: GPT, cache: KVCache, owner: torch.Tensor, room: int) -> KVCache:
    """A cache whose row r holds the context of choice r (row owner[r] of `cache`), with
    room for `room` more positions. Left uninitialised there (torch.empty): the forward
    pass writes each position before any query can see it."""
    rows = model.new_cache(0, cache.max_len + room)  # the buffers are replaced below
    for layer, (keys, values) in enumerate(zip(cache.keys, cache.values, strict=True)):
        if keys is None:  # a Gated DeltaNet layer: its fixed-size state, below
            continue
        for buffers, stored in ((rows.keys, keys), (rows.values, values)):
            B, H, T, Dh = stored.shape
            buffer = stored.new_empty(len(owner), H, T + room, Dh)  # (R, Hkv, Lc + Lx, Dh)
            # (Indexing, not index_select: in the middle of a scoring run on the CPU,
            # index_select of these rows measured 30x slower than the same copy by [].)
            buffer[:, :, :T] = stored[owner]
            buffers[layer] = buffer
    rows.conv_states = {i: state[owner] for i, state in cache.conv_states.items()}
    rows.recurrent_states = {i: state[owner] for i, state in cache.recurrent_states.items()}
    rows.pos = cache.pos
    return rows


def _all_per_row(flags: torch.Tensor, row_of: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows,) bool: whether every flag of each row is true."""
    misses = torch.zeros(rows, dtype=torch.int64).index_add_(0, row_of, (~flags).long())
    return misses == 0


def _target_log_probs(model: GPT, hidden: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) at each row of `hidden` (N, D), and whether it is the argmax: (N,) x2."""
    log_probs, greedy = [], []
    for start in range(0, len(targets), LOGIT_ROWS):
        chunk = slice(start, start + LOGIT_ROWS)
        logits = model.logits(hidden[chunk]).float()  # (n, V)
        t = targets[chunk].to(logits.device)
        log_probs.append((logits.gather(1, t[:, None]).squeeze(1)
                          - logits.logsumexp(dim=-1)).cpu())  # (n,)
        greedy.append((logits.argmax(dim=-1) == t).cpu())
    if not log_probs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(log_probs), torch.cat(greedy)


@dataclass
class ChoiceScores:
    """One question's choices scored: the log-likelihoods and both predictions."""

    log_probs: list[float]
    gold: int
    pred: int  # argmax of the log-likelihoods
    pred_norm: int  # argmax of the log-likelihoods per character of the choice


def choose(log_probs: Sequence[float], choices: Sequence[str], gold: int) -> ChoiceScores:
    """acc's and acc_norm's predictions (module docstring); ties go to the first choice."""
    per_char = [lp / max(len(c), 1) for lp, c in zip(log_probs, choices, strict=True)]
    return ChoiceScores(list(log_probs), gold,
                        max(range(len(log_probs)), key=log_probs.__getitem__),
                        max(range(len(per_char)), key=per_char.__getitem__))
