"""A reward model: a scalar head trained on preference pairs (RLHF's first step).

The book's last stage of building a ChatGPT-like model is "a simplified
RLHF with a reward model": people compare two responses to a prompt, a
model learns to score responses as they would, and that score then steers
the language model (recipes/rl.py). The reward model is a language model
with a head of one output on the last real token of prompt + response
(model/heads.py: SequenceHead, as a classifier of chapter 6 with one
"class"), trained with the Bradley-Terry loss (training/objectives.py):

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected))

Data: recipes/pairs.py. Validation logs the held-out loss and pair
accuracy; the held-out pairs are scored before and after training: pair
accuracy (chance: 50%) and the mean margin. `llmscratch reward --run DIR
--prompt ... --response ...` scores a response (`reward_scores`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmscratch.data.chat_examples import ChatEncoder
from llmscratch.data.examples import Example, PairBatches
from llmscratch.data.instruction_files import Conversation
from llmscratch.distributed import DistInfo
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.classification import head_outputs
from llmscratch.evaluation.preferences import pair_scores
from llmscratch.model import GPT
from llmscratch.recipes.pairs import PairData, prepare_pairs, whole_text
from llmscratch.recipes.report import score_table
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import Run
from llmscratch.tokenizer import Tokenizer
from llmscratch.training.objectives import BradleyTerry
from llmscratch.training.precision import autocast_dtype


class RewardModeling:
    """The reward-model method of recipes/finetune.py (see the module docstring)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.data: PairData | None = None
        self.label_names: list[str] = []  # (a head, but not a classifier's)

    @property
    def train_examples(self) -> list[Example]:
        return [pair.chosen for pair in self.data.train]

    def prepare(self, model: GPT, tokenizer: Tokenizer, base: Run, run: Run | None) -> None:
        self.data = prepare_pairs(self.config, tokenizer, base, model.config.context_length)
        if model.head is None:
            model.add_head(1, "last")
        elif model.config.head_outputs != 1:
            raise LLMScratchError(f"the base model has a head of {model.config.head_outputs} "
                                  "outputs; a reward model needs one")

    def batches(self, model: GPT, info: DistInfo, run: Run) -> PairBatches:
        """The training pairs, each response its whole text (the head reads its end)."""
        cfg = self.config.train
        return PairBatches(_whole(self.data.train), cfg.batch_size, cfg.seed, info.rank,
                           info.world_size)

    def save_data(self, run: Run) -> None:
        """Nothing: the pairs are read (or generated) and held out again from the seed."""

    def objective(self, device: torch.device) -> BradleyTerry:
        return BradleyTerry(device)

    def _rewards(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = self.config.finetune.scored(self.data.heldout)
        amp = autocast_dtype(self.config.train.dtype)
        size = self.config.train.batch_size * 2
        chosen, rejected = zip(*_whole(pairs), strict=True) if pairs else ((), ())
        return (head_outputs(model, list(chosen), size, amp).squeeze(-1),
                head_outputs(model, list(rejected), size, amp).squeeze(-1))

    def validate(self, model: torch.nn.Module) -> dict:
        chosen, rejected = self._rewards(model)
        if not len(chosen):  # finetune.eval_examples=0
            return {}
        loss = float(-F.logsigmoid(chosen - rejected).mean())
        return {"val_loss": loss, "val_accuracy": pair_scores(chosen, rejected)["pair_accuracy"]}

    def score(self, model: GPT, stage: str, run: Run | None) -> dict:
        """Pair accuracy and mean margin on the held-out pairs ({} when none are scored)."""
        chosen, rejected = self._rewards(model)
        return pair_scores(chosen, rejected) if len(chosen) else {}

    def report(self, before: dict, after: dict, run: Run) -> list[str]:
        lines = ["## Data", "", *self.data.report(self.config), "",
                 "## Held-out pairs", ""]
        return lines + score_table(["pair accuracy", "mean margin"], before, after, lambda s: [
            f"{s['pair_accuracy']:.1%}", f"{s['margin']:.3f}"])


def _whole(pairs) -> list[tuple[Example, Example]]:
    return [(Example(whole_text(p.chosen)), Example(whole_text(p.rejected))) for p in pairs]


def reward_scores(model: GPT, encoder: ChatEncoder, prompts: list[str],
                  responses: list[str]) -> list[float]:
    """A reward model's score of each response to its prompt (a user message)."""
    return conversation_scores(model, encoder, [
        Conversation([{"role": "user", "content": prompt}], response)
        for prompt, response in zip(prompts, responses, strict=True)])


@torch.no_grad()
def conversation_scores(model: GPT, encoder: ChatEncoder,
                        conversations: list[Conversation]) -> list[float]:
    """A reward model's score of each conversation's response, laid out as in training
    (its last `context_length` tokens, where it is longer)."""
    examples = []
    for conversation in conversations:
        ids = encoder.prompt_ids(conversation) + encoder.reply_ids(conversation)
        examples.append(Example(ids[-model.config.context_length:]))
    return head_outputs(model, examples).squeeze(-1).tolist()
