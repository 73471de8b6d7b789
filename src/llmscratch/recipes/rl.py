"""Reinforcement learning from rewards: GRPO, with a KL penalty to a reference model.

RLHF as the book sketches it: the model answers, a reward says how good
each answer was, and the model is changed to make well-rewarded answers
likelier. GRPO (DeepSeekMath; the book's sequel trains reasoning with it)
does without PPO's value model: it samples a group of answers to each prompt
and calls an answer good when it beats its siblings (recipes/rollouts.py).
The loss, a clipped policy gradient plus kl_coef times an estimate of the KL
divergence to the reference model (the model before this run), is
training/objectives.py's GroupRelativePolicy. The KL term keeps the policy
near the model whose language it started from, so it cannot drift into
text that games the reward; align.kl_coef=0 drops it (and the reference
model), the variant the book's sequel found more stable.

Rewards (align.reward): "synthetic" checks answers to the synthetic tasks
(data/synthetic_tasks.py: 1 right, partial credit for the right answer in
the wrong form, 0 wrong); "module:function" is any Python function in
TRL's form; align.reward_model=RUN scores with a reward model instead
(recipes/reward.py).

Data (finetune.data): "synthetic" (the tasks' prompts) or a prompt file
(data/alignment_files.py). A prompt that leaves no room for a response in
finetune.max_len (or the context) is an error naming its record, or, with
finetune.overlong=skip, skipped and counted. Before and after training,
finetune.eval_examples held-out prompts are answered greedily: mean reward,
and exact match where the records have an `output`. Logged each step: mean
reward, KL, response length, clip fraction, entropy, the share of time spent
sampling and rollout tokens/s.
"""

from __future__ import annotations

import copy

import torch

from llmscratch.data.alignment_files import Prompt, from_task, read_prompts
from llmscratch.data.chat_examples import ChatEncoder
from llmscratch.data.examples import Example
from llmscratch.data.synthetic_tasks import make_tasks
from llmscratch.distributed import DistInfo, unwrap
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.exact_match import greedy_replies
from llmscratch.model import GPT
from llmscratch.recipes.report import overlong_sentence, score_table
from llmscratch.recipes.rollouts import Rewarder, Rollouts
from llmscratch.recipes.sft import MAX_ANSWER_TOKENS, hold_out
from llmscratch.runs.config import RunConfig
from llmscratch.runs.load import load_model, load_reference
from llmscratch.runs.run import Run
from llmscratch.tokenizer import Tokenizer
from llmscratch.training.objectives import GroupRelativePolicy
from llmscratch.training.precision import autocast_dtype

SAMPLES_IN_REPORT = 5


class ReinforcementLearning:
    """The RL method of recipes/finetune.py (see the module docstring)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.prompts: list[Prompt] = []
        self.heldout: list[Prompt] = []
        self.prompt_ids: list[list[int]] = []
        self.heldout_ids: list[list[int]] = []
        self.rewarder: Rewarder | None = None
        self.reference: GPT | None = None
        self.tokenizer: Tokenizer | None = None
        self.stop_ids: list[int] = []
        self.label_names: list[str] = []
        self.limit = 0  # the most tokens prompt + response may have
        self.skipped = 0  # prompts too long for the limit (finetune.overlong=skip)

    @property
    def train_examples(self) -> list[Example]:
        return [Example(ids) for ids in self.prompt_ids]

    def prepare(self, model: GPT, tokenizer: Tokenizer, base: Run, run: Run | None) -> None:
        align = self.config.align
        if model.head is not None:
            raise LLMScratchError(f"{base.path} has a sequence head (a classifier or reward "
                                  "model); RL tunes a language model")
        settings = base.generation_settings()
        self.tokenizer, self.stop_ids = tokenizer, list(settings.stop_token_ids)
        if not self.stop_ids:
            raise LLMScratchError(f"the base run {base.path} has no end-of-text token to end "
                                  f"responses with ({base.INFO}: generation.stop_token_ids)")
        prompts, heldout = self._read()
        encoder = ChatEncoder(tokenizer, settings, self.config.finetune.prompt_format, False)
        self.limit = self.config.finetune.max_len or model.config.context_length
        self.prompts, self.prompt_ids = self._fit(encoder, prompts)
        self.heldout, self.heldout_ids = self._fit(encoder, heldout)
        if not self.prompts:
            raise LLMScratchError(f"no training prompt is left after skipping those of "
                                  f"{self.limit} tokens or more; raise finetune.max_len")
        self.rewarder = self._rewarder(tokenizer)
        self._try_reward()
        if align.kl_coef > 0:  # the model as it is now, before any training, frozen
            self.reference = load_reference(align.reference, model, tokenizer) \
                if align.reference else copy.deepcopy(model).requires_grad_(False)

    def _read(self) -> tuple[list[Prompt], list[Prompt]]:
        ft, seed = self.config.finetune, self.config.train.seed
        if ft.data == "synthetic":
            return ([from_task(e) for e in make_tasks(ft.synthetic_train, seed, "train")],
                    [from_task(e) for e in make_tasks(ft.synthetic_heldout, seed, "heldout")])
        if not ft.data:
            raise LLMScratchError("finetune rl needs --data: a prompt .json/.jsonl file, or "
                                  "'synthetic' (the tasks shipped with the project)")
        prompts = read_prompts(ft.data)
        if ft.val_data:
            return prompts, read_prompts(ft.val_data)
        return hold_out(prompts, ft.val_fraction, seed, ft.data)

    def _fit(self, encoder: ChatEncoder, prompts: list[Prompt]
             ) -> tuple[list[Prompt], list[list[int]]]:
        """The prompts that leave room for a response, and their token ids; a longer one is
        an error, or skipped and counted with finetune.overlong=skip."""
        kept, kept_ids = [], []
        for prompt in prompts:
            ids = encoder.prompt_ids(prompt.prompt)
            if len(ids) < self.limit:
                kept.append(prompt)
                kept_ids.append(ids)
            elif self.config.finetune.overlong == "skip":
                self.skipped += 1
            else:
                raise LLMScratchError(f"{prompt.prompt.source or 'a synthetic prompt'}: the "
                                      f"prompt is {len(ids)} tokens, and the model reads at most "
                                      f"{self.limit} (finetune.max_len or the context length); "
                                      "shorten it, or skip such prompts with "
                                      "finetune.overlong=skip")
        return kept, kept_ids

    def _rewarder(self, tokenizer: Tokenizer) -> Rewarder:
        align = self.config.align
        if not align.reward_model:
            return Rewarder.function_named(align.reward)
        run = Run.open(align.reward_model)
        model = load_model(run).float()
        if model.config.head_outputs != 1:
            raise LLMScratchError(f"align.reward_model={align.reward_model} is not a reward "
                                  "model (make one with `llmscratch finetune reward`)")
        config = run.read_config()
        encoder = ChatEncoder(run.tokenizer(), run.generation_settings(),
                              config.finetune.prompt_format, False)
        return Rewarder(f"the reward model {run.path}", model=model.requires_grad_(False),
                        encoder=encoder)

    def _try_reward(self) -> None:
        """Reward an empty answer (one the policy can give) to the first prompts now, before
        the run exists: a function that does not fit the data fails here, changing nothing
        (the default synthetic reward, say, on prompts without the tasks' columns)."""
        if self.rewarder.model is not None or not self.prompts:
            return
        first = self.prompts[:2]
        try:
            self.rewarder(first, [""] * len(first))
        except LLMScratchError as err:
            align, data = self.config.align, self.config.finetune.data
            hint = ("; align.reward=synthetic scores the synthetic tasks' answers, from their "
                    "columns task, instruction, input and output: give align.reward="
                    "module:function or align.reward_model=RUN"
                    if align.reward == "synthetic" and data != "synthetic" else "")
            raise LLMScratchError(f"{err} (tried on the first prompts of {data} before "
                                  f"training; nothing was written){hint}") from None

    def save_data(self, run: Run) -> None:
        """Nothing: the prompts are read (or generated) and held out again from the seed."""

    def batches(self, model: GPT, info: DistInfo, run: Run) -> Rollouts:
        device = model.tok_emb.weight.device
        if self.reference is not None:
            self.reference.to(device)
        if self.rewarder.model is not None:
            self.rewarder.model.to(device)
        cfg = self.config.train
        if self.config.align.updates_per_batch > 1 and cfg.grad_accum > 1:
            raise LLMScratchError("align.updates_per_batch > 1 needs train.grad_accum=1")
        return Rollouts(self.prompts, self.prompt_ids, self.rewarder, self.reference,
                        self.config.align, cfg.batch_size, cfg.seed, info, self.stop_ids,
                        self.tokenizer, autocast_dtype(cfg.dtype))

    def objective(self, device: torch.device) -> GroupRelativePolicy:
        return GroupRelativePolicy(device, self.config.align.clip, self.config.align.kl_coef)

    def _answers(self, model: torch.nn.Module, ids: list[list[int]]) -> list[str]:
        """Greedy answers to prompts (token ids)."""
        return greedy_replies(model, self.tokenizer, ids, self.stop_ids,
                              min(self.config.align.max_new_tokens, MAX_ANSWER_TOKENS))

    def validate(self, model: torch.nn.Module) -> dict:
        """The mean reward of greedy answers to (at most 64) held-out prompts."""
        if not self.heldout:
            return {}
        prompts = self.heldout[:64]
        replies = self._answers(unwrap(model), self.heldout_ids[:64])
        rewards = self.rewarder(prompts, replies)
        return {"val_reward": sum(rewards) / len(rewards)}

    def score(self, model: GPT, stage: str, run: Run | None) -> dict:
        """Mean reward (and exact match) of greedy answers to the held-out prompts
        (finetune.eval_examples of them; {} when none)."""
        ft = self.config.finetune
        prompts = ft.scored(self.heldout)
        if not prompts:
            return {}
        replies = self._answers(model, ft.scored(self.heldout_ids))
        rewards = self.rewarder(prompts, replies)
        scores = {"mean_reward": sum(rewards) / max(len(rewards), 1), "total": len(rewards)}
        references = [p.columns.get("output") for p in prompts]
        if references and all(isinstance(r, str) for r in references):
            right = [reply.strip() == ref.strip() for reply, ref in zip(replies, references,
                                                                        strict=True)]
            scores["exact_match"] = sum(right) / len(right)
            by_task: dict[str, list[int]] = {}
            for prompt, ok in zip(prompts, right, strict=True):
                counts = by_task.setdefault(str(prompt.columns.get("task", "all")), [0, 0])
                counts[0] += ok
                counts[1] += 1
            scores["by_task"] = by_task
        scores["samples"] = [{"prompt": p.prompt.prompt[-1]["content"], "reply": r, "reward": w}
                             for p, r, w in list(zip(prompts, replies, rewards,
                                                     strict=True))[:SAMPLES_IN_REPORT]]
        return scores

    def report(self, before: dict, after: dict, run: Run) -> list[str]:
        ft, align = self.config.finetune, self.config.align
        lines = ["## Data and settings", "",
                 f"- {ft.data}: {len(self.prompts):,} training and {len(self.heldout):,} "
                 "held-out prompts.",
                 "- " + overlong_sentence("prompt", self.limit, bool(ft.max_len), 0,
                                          self.skipped),
                 f"- {align.group_size} responses a prompt, {self.config.train.batch_size} "
                 f"prompts a micro-batch, temperature {align.temperature:g}, at most "
                 f"{align.max_new_tokens} tokens",
                 f"- reward: {self.rewarder.name}; KL coefficient {align.kl_coef:g}, clip "
                 f"{align.clip:g}, {'std-scaled' if align.scale_rewards else 'mean-centred'} "
                 "advantages", "", "## Held-out prompts, answered greedily", ""]
        lines += score_table(["mean reward", "exact match"], before, after, lambda s: [
            f"{s['mean_reward']:.3f}", f"{s['exact_match']:.1%}" if "exact_match" in s else "-"])
        lines += ["", f"![reward and KL]({run.training_plot_path.name})", "",
                  "Answers after training:", ""]
        for sample in after.get("samples", []):
            lines += ["```text", sample["prompt"], "-> " + sample["reply"], "```",
                      f"(reward {sample['reward']:.2f})", ""]
        return lines
