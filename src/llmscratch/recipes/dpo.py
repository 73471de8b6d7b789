"""Direct preference optimisation (DPO; the book's chapter 7 bonus material).

RLHF trains a reward model, then a policy against it with RL. DPO skips
both: the optimal policy of RLHF's objective (reward minus beta times the KL
to a reference) can be written in closed form, and putting it into the
Bradley-Terry model of the preferences gives a loss on the policy alone
(training/objectives.py: DirectPreference):

    loss = -log sigmoid(beta * ([log pi(c) - log ref(c)] - [log pi(r) - log ref(r)]))

so the policy raises the chosen response's probability relative to the
reference more than the rejected one's. The reference (the model before this
run trained, or align.reference) keeps it from drifting far: only the ratio
to the reference is rewarded, so without it the loss could be lowered just by
making both responses unlikely. Its log-probabilities never change, so they
are computed once, before the first step, and stored in the run
(splits/reference-logps.json): a resume reads them, and no second model is
kept in memory.

Data: recipes/pairs.py. Scored before and after training, on held-out pairs
and prompts: pair accuracy (the policy's log p(chosen) above log p(rejected)),
the implicit reward margin beta * (log-ratio of chosen - of rejected), and
the exact match of greedy answers to the prompts against the chosen response.
"""

from __future__ import annotations

import json

import torch

from llmscratch.data.examples import Example, PairBatches
from llmscratch.distributed import DistInfo
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.preferences import pair_scores, response_log_probs
from llmscratch.io import atomic_write_text, read_json
from llmscratch.model import GPT
from llmscratch.recipes.pairs import EncodedPair, PairData, prepare_pairs
from llmscratch.recipes.report import score_table
from llmscratch.recipes.sft import score_answers
from llmscratch.runs.config import RunConfig
from llmscratch.runs.load import load_reference
from llmscratch.runs.run import Run
from llmscratch.tokenizer import Tokenizer
from llmscratch.training.objectives import DirectPreference, dpo_losses
from llmscratch.training.precision import autocast_dtype


class PreferenceOptimization:
    """The DPO method of recipes/finetune.py (see the module docstring)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.data: PairData | None = None
        self.reference: GPT | None = None  # None: the policy as it is before training
        self.tokenizer: Tokenizer | None = None
        self.stop_ids: list[int] = []
        self.label_names: list[str] = []

    @property
    def train_examples(self) -> list[Example]:
        return [pair.chosen for pair in self.data.train]

    def prepare(self, model: GPT, tokenizer: Tokenizer, base: Run, run: Run | None) -> None:
        if model.head is not None:
            raise LLMScratchError(f"{base.path} has a sequence head (a classifier or reward "
                                  "model); DPO tunes a language model")
        self.data = prepare_pairs(self.config, tokenizer, base, model.config.context_length)
        self.tokenizer = tokenizer
        self.stop_ids = list(base.generation_settings().stop_token_ids)
        if self.config.align.reference:
            self.reference = load_reference(self.config.align.reference, model, tokenizer)

    def save_data(self, run: Run) -> None:
        """Nothing yet: the reference log-probabilities are stored by `batches`."""

    def batches(self, model: GPT, info: DistInfo, run: Run) -> PairBatches:
        """The training pairs with the reference's log-probabilities: read from the run,
        or computed now (on the training device, before any step) and stored."""
        pairs = {"train": self.data.train, "heldout": self.data.heldout}
        if run.reference_path.is_file():
            stored = read_json(run.reference_path, "the reference log-probabilities")
            if {k: len(v) for k, v in stored.items()} != {k: len(v) for k, v in pairs.items()}:
                raise LLMScratchError(f"{run.reference_path} does not match the run's pairs; "
                                      "resume with the same data and seed")
        else:
            reference = self.reference.to(model.tok_emb.weight.device) \
                if self.reference is not None else model
            stored = {name: self._log_probs(reference, split) for name, split in pairs.items()}
            self.reference = None  # (not needed again: free its memory)
            if info.is_main:
                run.reference_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(run.reference_path, json.dumps(stored) + "\n")
        for name, split in pairs.items():
            for pair, (chosen, rejected) in zip(split, stored[name], strict=True):
                pair.chosen.reference_logp, pair.rejected.reference_logp = chosen, rejected
        cfg = self.config.train
        return PairBatches([(p.chosen, p.rejected) for p in self.data.train], cfg.batch_size,
                           cfg.seed, info.rank, info.world_size)

    def _log_probs(self, model: torch.nn.Module, pairs: list[EncodedPair]) -> list[list[float]]:
        """[log p(chosen), log p(rejected)] of each pair (means of tokens for IPO)."""
        chosen = self._response_log_probs(model, [p.chosen for p in pairs])
        rejected = self._response_log_probs(model, [p.rejected for p in pairs])
        return [[c, r] for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)]

    def _response_log_probs(self, model: torch.nn.Module, examples: list[Example]
                            ) -> torch.Tensor:
        return response_log_probs(model, examples, self.config.train.batch_size * 2,
                                  autocast_dtype(self.config.train.dtype),
                                  mean=self.config.align.loss == "ipo")

    def objective(self, device: torch.device) -> DirectPreference:
        align = self.config.align
        return DirectPreference(device, align.beta, align.loss, align.rpo_alpha)

    def _heldout(self, model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        """log pi of each held-out pair's chosen and rejected responses, and log pi - log ref
        of each: (chosen, rejected, chosen ratio, rejected ratio), each (P,)."""
        pairs = self.config.finetune.scored(self.data.heldout)
        chosen = self._response_log_probs(model, [p.chosen for p in pairs])
        rejected = self._response_log_probs(model, [p.rejected for p in pairs])
        return (chosen, rejected, chosen - torch.tensor([p.chosen.reference_logp for p in pairs]),
                rejected - torch.tensor([p.rejected.reference_logp for p in pairs]))

    def validate(self, model: torch.nn.Module) -> dict:
        _, _, chosen, rejected = self._heldout(model)
        if not len(chosen):  # finetune.eval_examples=0
            return {}
        align = self.config.align
        losses = dpo_losses(chosen, rejected, align.beta, align.loss)
        return {"val_loss": float(losses.mean()),
                "val_accuracy": pair_scores(chosen, rejected)["pair_accuracy"]}

    def score(self, model: GPT, stage: str, run: Run | None) -> dict:
        """Pair accuracy, the implicit reward's accuracy and margin, and the exact match of
        greedy answers, on the held-out pairs ({} when none are scored)."""
        chosen, rejected, chosen_ratio, rejected_ratio = self._heldout(model)
        if not len(chosen):
            return {}
        beta = self.config.align.beta
        implicit = pair_scores(beta * chosen_ratio, beta * rejected_ratio)
        return {**score_heldout_prompts(model, self.tokenizer, self.data, self.stop_ids,
                                        self.config.finetune.eval_examples),
                "pair_accuracy": pair_scores(chosen, rejected)["pair_accuracy"],
                "reward_accuracy": implicit["pair_accuracy"], "reward_margin": implicit["margin"]}

    def report(self, before: dict, after: dict, run: Run) -> list[str]:
        align = self.config.align
        lines = ["## Data", "", *self.data.report(self.config),
                 f"- loss {align.loss}, beta {align.beta:g}; reference: "
                 f"{align.reference or 'the base model'}", "",
                 "## Held-out scores", ""]
        return lines + score_table(
            ["exact match", "pair accuracy", "implicit reward margin"], before, after,
            lambda s: [f"{s['exact_match']:.1%}", f"{s['pair_accuracy']:.1%}",
                       f"{s['reward_margin']:.3f}"])


def score_heldout_prompts(model: GPT, tokenizer: Tokenizer, data: PairData,
                          stop_ids: list[int], limit: int) -> dict:
    """Exact match of greedy answers to the held-out pairs' prompts, against `chosen`: the
    first `limit` prompts (all with -1)."""
    prompts, references, seen = [], [], set()
    for pair in data.heldout:
        if len(prompts) == limit:
            break
        conversation = pair.preference.conversations()[0]
        key = json.dumps(conversation.prompt)
        if key in seen:  # (synthetic data pairs each prompt twice)
            continue
        seen.add(key)
        prompts.append(data.encoder.prompt_ids(conversation))
        references.append(pair.preference.chosen)
    return score_answers(model, tokenizer, prompts, references, ["all"] * len(prompts),
                         stop_ids)
