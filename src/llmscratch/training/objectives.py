"""Training objectives: what the one training loop minimises.

The loop (training/loop.py) knows nothing about language modelling. It asks
an objective for the loss of a batch and back-propagates it. Pretraining is
one objective; supervised fine-tuning, classification, preference (DPO) and
reinforcement-learning objectives plug into the same loop.

The interface is one call:

    out = objective(model, batch)      -> ObjectiveOutput

- `model` is the model as training runs it (possibly wrapped by DDP or
  FSDP2: call it for the hidden states, `unwrap(model)` for its heads);
- `batch` is whatever the objective's data source yields (moved to the
  device by the objective);
- `out.loss_sum` is the *sum* of the per-unit losses and `out.units` how many
  units there were: tokens for language modelling, sequences for a
  classifier, pairs for DPO. The loop adds both over gradient-accumulation
  micro-batches and over processes and divides once, so every unit weighs
  the same however the batch was split. (Averaging per-micro-batch means
  instead would give a short, heavily masked sequence the weight of a long
  one.)
- `out.metrics` are other numbers worth logging, each as (sum, count): the
  loop adds both the same way and writes their ratio to metrics.jsonl;
- `out.tokens` counts the tokens the model read (tokens/s, and the x-axis of
  the loss curve).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from llmscratch.data.examples import Batch
from llmscratch.distributed import unwrap


@dataclass
class ObjectiveOutput:
    """What an objective returns for one micro-batch (see the module docstring)."""

    loss_sum: torch.Tensor  # scalar: the sum of the per-unit losses, with gradients
    units: int  # how many units the sum covers
    tokens: int = 0  # tokens the model read
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, count)


class Objective(Protocol):
    def __call__(self, model: torch.nn.Module, batch: Any) -> ObjectiveOutput: ...


class NextTokenPrediction:
    """Language modelling: the cross-entropy of every next token that has a target.

    Pretraining gives (inputs, targets) windows of text. Instruction tuning
    gives a `Batch` (data/examples.py): padded or packed rows whose attention
    mask keeps the examples apart, and whose targets are -100 wherever
    nothing is learned (the prompt, the padding). Units are the predicted
    tokens, so every answer token weighs the same however long its example.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, model: torch.nn.Module,
                 batch: tuple[torch.Tensor, torch.Tensor] | Batch) -> ObjectiveOutput:
        if isinstance(batch, Batch):
            batch = batch.to(self.device)
            inputs, targets, mask = batch.input_ids, batch.targets, batch.model_mask
        else:
            inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)  # (B, T)
            mask = None
        hidden = model(inputs, attention_mask=mask)  # (B, T, D): through DDP/FSDP's hooks
        # The output layer and the loss a chunk of rows at a time (model/heads.py):
        # the (B, T, V) logits are never all held at once.
        loss_sum, predicted = unwrap(model).next_token_loss(hidden, targets)
        return ObjectiveOutput(loss_sum, int(predicted), tokens=inputs.numel())


class SequenceClassification:
    """A classifier: the cross-entropy of each sequence's label under the model's head.

    The head (model.head, heads.SequenceHead) reads the last real token of
    each row (or the mean of its tokens) and gives one logit per class.
    Units are sequences; accuracy is logged beside the loss.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, model: torch.nn.Module, batch: Batch) -> ObjectiveOutput:
        batch = batch.to(self.device)
        mask = batch.attention_mask
        hidden = model(batch.input_ids, attention_mask=batch.model_mask)  # (B, T, D)
        logits = unwrap(model).head(hidden, mask).float()  # (B, C)
        loss_sum = F.cross_entropy(logits, batch.labels, reduction="sum")
        correct = float((logits.argmax(-1) == batch.labels).sum())
        n = len(batch.labels)
        return ObjectiveOutput(loss_sum, n, tokens=int(mask.count_nonzero()),
                               metrics={"accuracy": (correct, n)})


# ---- alignment: preferences and rewards ---------------------------------------------------------
#
# A preference batch (data/examples.py: PairBatches) holds 2P rows: the P chosen
# responses, then the P rejected ones in the same order. Units are pairs.

def _halves(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected): the first and second half of a preference batch's rows."""
    pairs = values.shape[0] // 2
    return values[:pairs], values[pairs:]


class BradleyTerry:
    """A reward model: a scalar head, trained so a chosen response outscores the rejected.

    The Bradley-Terry model says people prefer response c to r with
    probability sigmoid(r_c - r_r), where r = the head's score of the last
    real token of prompt + response. The loss is that probability's negative
    log, summed over pairs:

        loss = -log sigmoid(r_chosen - r_rejected)

    Logged: accuracy (r_chosen > r_rejected) and the margin r_chosen - r_rejected.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, model: torch.nn.Module, batch: Batch) -> ObjectiveOutput:
        batch = batch.to(self.device)
        hidden = model(batch.input_ids, attention_mask=batch.model_mask)  # (2P, T, D)
        rewards = unwrap(model).head(hidden, batch.attention_mask).float().squeeze(-1)  # (2P,)
        chosen, rejected = _halves(rewards)  # (P,), (P,)
        margin = chosen - rejected
        pairs = len(margin)
        return ObjectiveOutput(-F.logsigmoid(margin).sum(), pairs,
                               tokens=int(batch.attention_mask.count_nonzero()),
                               metrics={"accuracy": (float((margin > 0).sum()), pairs),
                                        "margin": (float(margin.detach().sum()), pairs)})


def response_log_prob_sums(model: torch.nn.Module, batch: Batch
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(response | prompt) of each row, summed over its target tokens, and how many
    target tokens it has: (B,) and (B,)."""
    hidden = model(batch.input_ids, attention_mask=batch.model_mask)  # (B, T, D)
    per_token = unwrap(model).token_log_probs(hidden, batch.targets)  # (B, T), 0 off target
    return per_token.sum(-1), (batch.targets != -100).sum(-1).clamp_min(1)


def sequence_log_probs(model: torch.nn.Module, batch: Batch, mean: bool = False
                       ) -> torch.Tensor:
    """log p(response | prompt) of each row: the sum (or mean) over its target tokens. (B,)"""
    total, count = response_log_prob_sums(model, batch)
    return total / count if mean else total


class DirectPreference:
    """DPO: the policy learns the preferences directly, no reward model, no sampling.

    With pi the policy and ref the frozen reference (the model before this
    training), each response's implicit reward is beta * log(pi / ref), and

        logits = [log pi(c) - log ref(c)] - [log pi(r) - log ref(r)]
        sigmoid loss (DPO):  -log sigmoid(beta * logits)
        ipo loss (IPO):      (logits - 1 / (2 beta))^2, log-probabilities as means
                             over the response's tokens

    log pi(y) sums the log-probabilities of the response's tokens only (the
    prompt's targets are -100). The reference's values are computed once,
    before training, and stored with the examples (`Batch.reference_logps`):
    the reference never changes, so there is no second model in memory.
    With rpo_alpha > 0 each pair's loss adds rpo_alpha times the chosen
    response's mean negative log-likelihood (RPO, TRL's rpo_alpha): DPO alone
    may lower the chosen response's probability as long as the rejected one's
    falls faster, and this term keeps the chosen answers likely.
    Logged: the chosen and rejected rewards, their margin, and accuracy
    (the chosen reward above the rejected).
    """

    def __init__(self, device: torch.device, beta: float, loss: str = "sigmoid",
                 rpo_alpha: float = 0.0) -> None:
        self.device, self.beta, self.loss, self.rpo_alpha = device, beta, loss, rpo_alpha

    def __call__(self, model: torch.nn.Module, batch: Batch) -> ObjectiveOutput:
        batch = batch.to(self.device)
        total, count = response_log_prob_sums(model, batch)  # (2P,), (2P,)
        policy = total / count if self.loss == "ipo" else total
        chosen, rejected = _halves(policy - batch.reference_logps)  # (P,), (P,) log ratios
        losses = dpo_losses(chosen, rejected, self.beta, self.loss)
        pairs = len(losses)
        if self.rpo_alpha > 0:
            losses = losses - self.rpo_alpha * total[:pairs] / count[:pairs]
        reward_chosen, reward_rejected = self.beta * chosen.detach(), self.beta * rejected.detach()
        margin = reward_chosen - reward_rejected
        return ObjectiveOutput(
            losses.sum(), pairs, tokens=int(batch.attention_mask.count_nonzero()),
            metrics={"reward_chosen": (float(reward_chosen.sum()), pairs),
                     "reward_rejected": (float(reward_rejected.sum()), pairs),
                     "margin": (float(margin.sum()), pairs),
                     "accuracy": (float((margin > 0).sum()), pairs)})


def dpo_losses(chosen_log_ratio: torch.Tensor, rejected_log_ratio: torch.Tensor, beta: float,
               loss: str = "sigmoid") -> torch.Tensor:
    """Each pair's DPO (or IPO) loss from log pi - log ref of its two responses. (P,)"""
    logits = chosen_log_ratio - rejected_log_ratio
    if loss == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    return -F.logsigmoid(beta * logits)


@dataclass
class RolloutBatch:
    """Sampled responses and what the RL objective needs of them (recipes/rl.py makes it).

    batch: prompt + response rows, right-padded; targets on the response tokens only.
    advantages: (N,) each response's reward, normalised within its prompt's group.
    old_log_probs: (N, T) the sampling policy's log-probabilities of the targets; None
        when the batch serves one update only (the sampling policy is then the policy).
    ref_log_probs: (N, T) the reference's, or None when there is no KL penalty.
    metrics: what sampling measured (mean reward, response length, ...), as (sum, count).
    """

    batch: Batch
    advantages: torch.Tensor
    old_log_probs: torch.Tensor | None
    ref_log_probs: torch.Tensor | None
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


GROUP_STD_EPS = 1e-4  # added to a group's standard deviation before dividing (as TRL does)


def group_advantages(rewards: torch.Tensor, scale: bool) -> torch.Tensor:
    """(groups, G) rewards -> advantages: minus the group's mean, over its std if `scale`."""
    advantages = rewards - rewards.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + GROUP_STD_EPS)
    return advantages


class GroupRelativePolicy:
    """GRPO: the clipped policy-gradient objective on groups of sampled responses.

    For each prompt, G responses were sampled and rewarded; a response's
    advantage A is its reward minus its group's mean (divided by the group's
    standard deviation, unless that is turned off): better than its siblings,
    it is made likelier. With ratio = pi(token) / pi_old(token), per response token:

        loss = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + kl_coef * KL
        KL   = exp(ref - logp) - (ref - logp) - 1     (an unbiased, never negative
                                                        estimate of KL(pi || ref))

    The ratio is 1 on the first update of a batch (the gradient is then A times
    the gradient of log pi); clipping matters on the next ones
    (align.updates_per_batch). Units are response tokens: every token of every
    response weighs the same (as DAPO and TRL do), so a long response is not
    worth as much as a short one per token. Logged: KL, the fraction of tokens
    whose ratio was clipped, the entropy (estimated as the mean of -log pi of
    the sampled tokens), and sampling's own metrics (reward, length, ...).
    """

    def __init__(self, device: torch.device, clip: float, kl_coef: float) -> None:
        self.device, self.clip, self.kl_coef = device, clip, kl_coef

    def __call__(self, model: torch.nn.Module, rollout: RolloutBatch) -> ObjectiveOutput:
        batch = rollout.batch.to(self.device)
        on_target = batch.targets != -100  # (N, T)
        hidden = model(batch.input_ids, attention_mask=batch.model_mask)  # (N, T, D)
        log_probs = unwrap(model).token_log_probs(hidden, batch.targets)  # (N, T)
        # On a batch's first update the sampling policy is the policy: its log-probabilities
        # are these, and no second forward pass is needed (the ratio is 1, its gradient not).
        old = log_probs.detach() if rollout.old_log_probs is None \
            else rollout.old_log_probs.to(self.device)
        advantages = rollout.advantages.to(self.device)[:, None]  # (N, 1)
        ratio = torch.exp(log_probs - old)
        clipped = ratio.clamp(1 - self.clip, 1 + self.clip)
        per_token = -torch.min(ratio * advantages, clipped * advantages)  # (N, T)
        metrics = dict(rollout.metrics)
        tokens = int(on_target.sum())
        if self.kl_coef > 0:
            ref_minus = rollout.ref_log_probs.to(self.device) - log_probs
            kl = torch.exp(ref_minus) - ref_minus - 1
            per_token = per_token + self.kl_coef * kl
            metrics["kl"] = (float(kl.detach()[on_target].sum()), tokens)
        # Where the clipped term is the one taken: the ratio left the range in the
        # direction its advantage pushes (TRL's "clip ratio").
        ratio = ratio.detach()
        was_clipped = (((ratio < 1 - self.clip) & (advantages < 0))
                       | ((ratio > 1 + self.clip) & (advantages > 0))) & on_target
        metrics["clip_fraction"] = (float(was_clipped.sum()), tokens)
        metrics["entropy"] = (float(-old[on_target].sum()), tokens)
        return ObjectiveOutput(per_token[on_target].sum(), tokens,
                               tokens=int(batch.attention_mask.count_nonzero()), metrics=metrics)
