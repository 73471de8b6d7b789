"""RL's batches: prompts answered by the policy itself, rewarded, compared within their group.

    rollouts = Rollouts(prompts, rewarder, reference, config, info, ...)
    rollout = rollouts.next_batch(policy)   # the training loop calls this each micro-batch

For each of train.batch_size prompts (this process's share of the
step, in a seeded order that a resume continues), the inference engine
(generation/engine.py) samples align.group_size responses from the policy as
it is now, all in one continuous batch. Each response is rewarded (a
`Rewarder`: a function, or a reward model), and its advantage is its reward
minus its group's mean, divided by the group's standard deviation
(align.scale_rewards; training/objectives.py: group_advantages). A group
whose responses all earned the same reward says nothing about which is
better: it is dropped, unless every group is (then they all stay, with
advantage 0, and only the KL term trains).

The rows are prompt + response (+ the stop token that ended it), targets on
the response; the reference's log-probabilities of them are computed here,
without gradients (the KL term's). With align.updates_per_batch > 1 the same
responses serve that many steps, with the sampling policy's log-probabilities
kept for the ratio; a checkpoint between them stores them, so a resumed run
continues exactly.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable

import torch

from llmscratch.data.alignment_files import Prompt
from llmscratch.data.chat_examples import ChatEncoder
from llmscratch.data.examples import IGNORE, Batch, Example, ExampleBatches, collate
from llmscratch.data.instruction_files import Conversation
from llmscratch.data.synthetic_tasks import task_rewards
from llmscratch.distributed import DistInfo
from llmscratch.errors import LLMScratchError
from llmscratch.generation.engine import DEFAULT_BLOCK_SIZE, Engine
from llmscratch.generation.sampling import SamplingConfig
from llmscratch.model import GPT
from llmscratch.recipes.reward import conversation_scores
from llmscratch.runs.config import AlignConfig
from llmscratch.tokenizer import Tokenizer
from llmscratch.training.objectives import RolloutBatch, group_advantages
from llmscratch.training.parallel import eager_forward


def import_from_here(module_name: str):
    """Import a module with the current folder first on the path, as `python -m` has it
    (the `llmscratch` script has its own folder there instead): `align.reward=
    my_rewards:score` finds my_rewards.py beside the user, as TRL users expect."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(here)


class Rewarder:
    """The reward of each completion: a Python function, or a reward-model run's head."""

    def __init__(self, name: str, function: Callable | None = None, model: GPT | None = None,
                 encoder: ChatEncoder | None = None) -> None:
        self.name, self.function, self.model, self.encoder = name, function, model, encoder

    @classmethod
    def function_named(cls, spec: str) -> Rewarder:
        """"synthetic" (the synthetic tasks' reward) or "module:function", imported now."""
        if spec == "synthetic":
            return cls("synthetic (data/synthetic_tasks.py: task_rewards)", task_rewards)
        module_name, _, attribute = spec.partition(":")
        try:
            function = getattr(import_from_here(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise LLMScratchError(f"align.reward={spec}: cannot import it ({err})") from None
        if not callable(function):
            raise LLMScratchError(f"align.reward={spec} is not a function")
        return cls(spec, function)

    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        """One finite number a completion; anything else stops the run in one line."""
        if not completions:
            return []
        if self.model is not None:
            return self._model_scores(prompts, completions)
        columns = {key: [p.columns.get(key) for p in prompts]
                   for key in dict.fromkeys(k for p in prompts for k in p.columns)}
        texts = [p.prompt.prompt[-1]["content"] for p in prompts]
        try:
            rewards = self.function(prompts=texts, completions=completions, **columns)
        except Exception as err:  # the user's code: its failure is named, not a traceback
            raise LLMScratchError(f"the reward function {self.name} raised "
                                  f"{type(err).__name__}: {err}") from None
        if not isinstance(rewards, (list, tuple)) or len(rewards) != len(completions):
            raise LLMScratchError(f"the reward function {self.name} must return a list of "
                                  f"{len(completions)} numbers, one a completion; it returned "
                                  f"{type(rewards).__name__}")
        for value in rewards:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise LLMScratchError(f"the reward function {self.name} returned {value!r}, "
                                      "not a finite number")
        return [float(r) for r in rewards]

    def _model_scores(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        return conversation_scores(self.model, self.encoder, [
            Conversation(prompt.prompt.prompt, completion)
            for prompt, completion in zip(prompts, completions, strict=True)])


class Rollouts(ExampleBatches):
    """The RL method's BatchSource (see the module docstring); its rows are the prompts."""

    def __init__(self, prompts: list[Prompt], prompt_ids: list[list[int]], rewarder: Rewarder,
                 reference: GPT | None, align: AlignConfig, batch_size: int, seed: int,
                 info: DistInfo, stop_ids: list[int], tokenizer: Tokenizer,
                 amp: torch.dtype | None) -> None:
        # A row is a prompt's ids, its label the prompt's index (for its record's columns).
        super().__init__([Example(ids, label=i) for i, ids in enumerate(prompt_ids)],
                         batch_size, seed, info.rank, info.world_size)
        self.prompts, self.rewarder, self.reference = prompts, rewarder, reference
        self.align, self.stop_ids, self.tokenizer, self.amp = align, stop_ids, tokenizer, amp
        self.pending: RolloutBatch | None = None  # responses still to be trained on
        self.uses = 0  # steps the pending responses have served
        self._last_call: float | None = None
        self._last_generation = 0.0

    def next_batch(self, policy: torch.nn.Module | None = None) -> RolloutBatch:
        if self.pending is None or self.uses >= self.align.updates_per_batch:
            self.pending, self.uses = self.sample(policy), 0
        self.uses += 1
        return self.pending

    @torch.no_grad()
    def sample(self, policy: GPT) -> RolloutBatch:
        """Sample, reward and compare a group of responses for each of this step's prompts."""
        # The previous sampling's share of the time from its start to now (a whole step).
        now = time.perf_counter()
        share = None if self._last_call is None else \
            (self._last_generation, now - self._last_call)
        self._last_call = now
        rows = [row[0] for row in self.batch_rows(self.position)]
        self.position += 1
        G = self.align.group_size
        started = time.perf_counter()
        seqs = self._generate(policy, rows)
        generation = time.perf_counter() - started
        prompts = [self.prompts[row.label] for row in rows for _ in range(G)]
        completions = [self.tokenizer.decode(seq.output_ids) for seq in seqs]
        rewards = torch.tensor(self.rewarder(prompts, completions)).view(len(rows), G)
        advantages = group_advantages(rewards, self.align.scale_rewards)  # (groups, G)
        informative = (rewards.max(dim=1).values > rewards.min(dim=1).values).tolist()
        keep = [g for g, useful in enumerate(informative) if useful] or list(range(len(rows)))
        examples = [self._example(rows[g].ids, seqs[g * G + j]) for g in keep for j in range(G)]
        batch = collate([[e] for e in examples])
        lengths = [len(seqs[i].output_ids) for i in range(len(seqs))]
        metrics = {"reward": (float(rewards.sum()), rewards.numel()),
                   "response_length": (float(sum(lengths)), len(lengths)),
                   "skipped_groups": (float(len(rows) - sum(informative)), len(rows)),
                   "rollout_tok_per_s": (float(sum(lengths)), generation)}
        if share is not None:
            metrics["generation_share"] = share
        self._last_generation = generation
        kept_advantages = advantages[keep].flatten()  # (N,)
        old = self._log_probs(policy, batch) if self.align.updates_per_batch > 1 else None
        ref = self._log_probs(self.reference, batch) if self.reference is not None else None
        return RolloutBatch(batch, kept_advantages, old, ref, metrics)

    def _generate(self, policy: GPT, rows: list[Example]) -> list:
        """G samples of each prompt, in one engine run; each with its own seed."""
        was_training = policy.training
        # A cache of just the blocks this step's sequences can fill: the engine's default
        # (its batch of full contexts, up to 4 GiB) would be allocated and zeroed each step.
        requests = len(rows) * self.align.group_size
        longest = min(max(len(row.ids) for row in rows) + self.align.max_new_tokens,
                      policy.config.context_length)
        engine = Engine(policy, num_blocks=requests * -(-longest // DEFAULT_BLOCK_SIZE),
                        max_batch=requests, vocab_size=self.tokenizer.vocab_size)
        settings, prompts = [], []
        first = self.rank * self.batch_size  # the rows' place in the global batch
        for i, row in enumerate(rows, start=first):
            for j in range(self.align.group_size):
                seed = (self.seed * 1_000_003 + self.position) * 100_003 + i * 1_009 + j
                settings.append(SamplingConfig(max_new_tokens=self.align.max_new_tokens,
                                               temperature=self.align.temperature,
                                               seed=seed % 2**62))
                prompts.append(row.ids)
        with eager_forward():  # the engine's batches change shape every step
            seqs = engine.run(prompts, settings, self.stop_ids)
        policy.train(was_training)
        return seqs

    def _example(self, prompt: list[int], seq) -> Example:
        """Prompt + response (+ its stop token) as an Example, targets on the response."""
        response = seq.output_ids + ([seq.stop_token] if seq.stop_token is not None else [])
        ids = prompt + response
        return Example(ids[:-1], [IGNORE] * (len(prompt) - 1) + response)

    def _log_probs(self, model: GPT, batch) -> torch.Tensor:
        """log p of each target token under `model`, as training computes them. (N, T)"""
        device = model.tok_emb.weight.device
        was_training = model.training
        model.eval()
        on_device = batch.to(device)
        with torch.autocast(device.type, dtype=self.amp or torch.float32,
                            enabled=self.amp is not None):
            hidden = model(on_device.input_ids, attention_mask=on_device.model_mask)
            log_probs = model.token_log_probs(hidden, on_device.targets).float()
        model.train(was_training)
        return log_probs.cpu()

    # --- resuming --------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The position in the prompts, and responses not yet fully trained on."""
        state = super().state_dict()
        if self.pending is not None and self.uses < self.align.updates_per_batch:
            p = self.pending
            state["pending"] = {"ids": p.batch.input_ids.tolist(),
                                "mask": p.batch.attention_mask.tolist(),
                                "targets": p.batch.targets.tolist(),
                                "advantages": p.advantages.tolist(),
                                "old": p.old_log_probs.tolist(),
                                "ref": None if p.ref_log_probs is None
                                else p.ref_log_probs.tolist(),
                                "metrics": p.metrics, "uses": self.uses}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        saved = state.get("pending")
        if saved is None:
            return
        batch = Batch(torch.tensor(saved["ids"]), torch.tensor(saved["mask"]),
                      torch.tensor(saved["targets"]), causal_is_enough=True)
        ref = None if saved["ref"] is None else torch.tensor(saved["ref"])
        self.pending = RolloutBatch(batch, torch.tensor(saved["advantages"]),
                                    torch.tensor(saved["old"]), ref,
                                    {k: tuple(v) for k, v in saved["metrics"].items()})
        self.uses = saved["uses"]
