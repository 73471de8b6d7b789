"""Alignment: the reward-model, DPO and GRPO losses against hand computations, preference and
prompt files, runs through the CLI that learn, bit-exact resume, and bad input."""

import json
import math
import random
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from llmscratch.cli import main
from llmscratch.data.alignment_files import Prompt, read_preferences, read_prompts
from llmscratch.data.examples import IGNORE, Example, PairBatches, collate
from llmscratch.data.instruction_files import Conversation
from llmscratch.distributed import DistInfo
from llmscratch.errors import LLMScratchError
from llmscratch.model import GPT, get_preset
from llmscratch.recipes import finetune as finetune_module
from llmscratch.recipes.finetune import finetune_config
from llmscratch.recipes.pairs import prepare_pairs, whole_text
from llmscratch.recipes.rollouts import Rewarder, Rollouts
from llmscratch.runs.checkpoint import latest_checkpoint, verify_checkpoint
from llmscratch.runs.config import AlignConfig
from llmscratch.runs.run import Run
from llmscratch.training.loop import Trainer, TrainingInterrupted
from llmscratch.training.objectives import (
    BradleyTerry,
    DirectPreference,
    GroupRelativePolicy,
    RolloutBatch,
    dpo_losses,
    group_advantages,
)
from tests.conftest import new_run
from tests.hf_tiny import hf_model, save_folder
from tests.test_finetune import _refused

try:
    import transformers
except ImportError:  # the dev extra installs it
    transformers = None


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_model(head: int = 0) -> GPT:
    torch.manual_seed(0)
    model = GPT(get_preset("gpt2-tiny"))
    if head:
        model.add_head(head)
    return model


def direct_log_probs(model: GPT, example: Example) -> list[float]:
    """log p of each target of one unpadded example, from the full logits (no chunking)."""
    logits = model.logits(model(torch.tensor([example.ids])))[0].double()  # (T, V)
    log_probs = torch.log_softmax(logits, dim=-1)
    return [float(log_probs[t, y]) for t, y in enumerate(example.targets) if y != IGNORE]


def reply_example(prompt: list[int], reply: list[int]) -> Example:
    ids = prompt + reply
    return Example(ids[:-1], [IGNORE] * (len(prompt) - 1) + reply)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# --- the losses -------------------------------------------------------------------------------


def test_dpo_and_ipo_losses_by_hand():
    chosen, rejected = torch.tensor([1.0, -0.2]), torch.tensor([-0.5, 0.3])
    sigmoid = dpo_losses(chosen, rejected, beta=0.1)
    assert sigmoid.tolist() == pytest.approx([-log_sigmoid(0.15), -log_sigmoid(-0.05)])
    ipo = dpo_losses(chosen, rejected, beta=0.1, loss="ipo")  # (logits - 1 / (2 beta))^2
    assert ipo.tolist() == pytest.approx([(1.5 - 5) ** 2, (-0.5 - 5) ** 2])


def two_padded_pairs(references):
    """Two preference pairs whose prompts and responses differ in length (so the batch is
    padded), their reference log-probabilities set from `references`, and their batch."""
    pairs = [(reply_example([5, 6, 7], [8, 9]), reply_example([5, 6, 7], [10, 11, 12, 13])),
             (reply_example([20, 21], [22, 23, 24]), reply_example([20, 21], [25]))]
    for (chosen, rejected), (ref_c, ref_r) in zip(pairs, references, strict=True):
        chosen.reference_logp, rejected.reference_logp = ref_c, ref_r
    return pairs, PairBatches(pairs, batch_size=2, seed=0).next_batch()


@pytest.mark.parametrize("rpo_alpha", [0.0, 0.5])
def test_dpo_objective_is_the_formula_on_the_responses_log_probs(rpo_alpha):
    """Padded pairs of different lengths: the objective's loss equals the DPO formula on
    log-probabilities summed by hand over each response's tokens, from the full logits
    (with RPO: plus alpha times the chosen response's mean negative log-likelihood)."""
    model = tiny_model()
    references = [(-9.0, -11.0), (-7.5, -3.0)]
    pairs, batch = two_padded_pairs(references)
    out = DirectPreference(torch.device("cpu"), beta=0.5, rpo_alpha=rpo_alpha)(model, batch)
    expected, right = 0.0, 0
    with torch.no_grad():
        for (chosen, rejected), (ref_c, ref_r) in zip(pairs, references, strict=True):
            chosen_log_probs = direct_log_probs(model, chosen)
            logits = (sum(chosen_log_probs) - ref_c) \
                - (sum(direct_log_probs(model, rejected)) - ref_r)
            expected -= log_sigmoid(0.5 * logits)
            expected -= rpo_alpha * sum(chosen_log_probs) / len(chosen_log_probs)
            right += logits > 0
    # (PairBatches shuffles the pairs; the sum does not depend on their order.)
    assert out.units == 2 and float(out.loss_sum.detach()) == pytest.approx(expected, rel=1e-5)
    assert out.metrics["accuracy"] == (right, 2)


def test_ipo_objective_is_the_formula_on_mean_log_probs():
    """IPO compares means over each response's tokens, the policy's as the reference's (which
    are stored as means): loss = sum over pairs of ((c - ref_c) - (r - ref_r) - 1/(2 beta))^2
    with c, r the policy's mean log-probabilities of the chosen and rejected responses."""
    model = tiny_model()
    references = [(-6.5, -7.0), (-5.0, -6.5)]
    pairs, batch = two_padded_pairs(references)
    out = DirectPreference(torch.device("cpu"), beta=0.25, loss="ipo")(model, batch)
    expected = 0.0
    with torch.no_grad():
        for (chosen, rejected), (ref_c, ref_r) in zip(pairs, references, strict=True):
            c, r = (sum(lp) / len(lp) for lp in (direct_log_probs(model, chosen),
                                                  direct_log_probs(model, rejected)))
            expected += ((c - ref_c) - (r - ref_r) - 1 / (2 * 0.25)) ** 2
    assert out.units == 2 and float(out.loss_sum.detach()) == pytest.approx(expected, rel=1e-5)


def test_bradley_terry_objective_reads_each_response_end():
    """2 pairs, padded to one width: the loss is -log sigmoid(r_chosen - r_rejected) with each
    reward read from its example alone (no padding), pairs matched chosen to rejected."""
    model = tiny_model(head=1)
    pairs = [(Example([1, 2, 3, 4, 5]), Example([1, 2, 9])),
             (Example([7, 8]), Example([7, 8, 30, 31, 32, 33]))]
    batch = collate([[c] for c, _ in pairs] + [[r] for _, r in pairs])
    out = BradleyTerry(torch.device("cpu"))(model, batch)
    with torch.no_grad():
        def score(e: Example) -> float:
            return float(model.head(model(torch.tensor([e.ids])), None))

        margins = [score(c) - score(r) for c, r in pairs]
    expected = -sum(log_sigmoid(m) for m in margins)
    assert float(out.loss_sum.detach()) == pytest.approx(expected, rel=1e-5)
    assert out.metrics["margin"][0] == pytest.approx(sum(margins), rel=1e-5)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    std = math.sqrt(4 * 0.25 / 3)  # the unbiased standard deviation of (1, 0, 0, 1)
    scaled = group_advantages(rewards, scale=True)
    a = 0.5 / (std + 1e-4)
    assert scaled[0].tolist() == pytest.approx([a, -a, -a, a])
    assert scaled[1].tolist() == [0.0] * 4  # all equal: nothing to learn
    assert group_advantages(rewards, scale=False)[0].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_grpo_objective_by_hand():
    """Three responses whose ratio to the sampling policy is 1.5 (advantage +1: clipped at
    1.2), 0.5 (advantage -1: clipped at 0.8) and 1.1 (inside the range), and a reference
    0.3 nats above the policy on every token: the loss is, per token,
    -min(ratio A, clip(ratio) A) + kl_coef (e^0.3 - 0.3 - 1)."""
    model = tiny_model()
    examples = [reply_example([3, 4], [5, 6, 7]), reply_example([3, 9, 10], [11, 12]),
                reply_example([40], [41, 42, 43, 44])]
    batch = collate([[e] for e in examples])
    with torch.no_grad():
        hidden = model(batch.input_ids)
        log_probs = model.token_log_probs(hidden, batch.targets)  # (3, T)
    shifts = torch.tensor([math.log(1.5), math.log(0.5), math.log(1.1)])[:, None]
    old = log_probs - shifts  # ratio = exp(log p - old) = exp(shift)
    rollout = RolloutBatch(batch, torch.tensor([1.0, -1.0, 1.0]), old, log_probs + 0.3)
    out = GroupRelativePolicy(torch.device("cpu"), clip=0.2, kl_coef=0.1)(model, rollout)
    kl = math.exp(0.3) - 0.3 - 1
    per_response = [-1.2, 0.8, -1.1]  # -min(ratio A, clip(ratio) A)
    tokens = [3, 2, 4]
    expected = sum(n * (term + 0.1 * kl) for n, term in zip(tokens, per_response, strict=True))
    assert out.units == 9 and float(out.loss_sum.detach()) == pytest.approx(expected, rel=1e-4)
    assert out.metrics["clip_fraction"] == (5.0, 9)
    assert out.metrics["kl"][0] / 9 == pytest.approx(kl, rel=1e-4)


@pytest.mark.parametrize("updates", [1, 3])
def test_each_batch_of_responses_serves_updates_per_batch_steps(monkeypatch, updates):
    """align.updates_per_batch=N: the loop's calls 1..N get the responses sampled for the
    first prompts, calls N+1..2N fresh ones sampled for the next prompts, and so on."""
    prompts = [Prompt(Conversation([{"role": "user", "content": f"q{i}"}], "")) for i in range(8)]
    rollouts = Rollouts(prompts, [[i + 1] for i in range(8)], Rewarder("none"), None,
                        AlignConfig(updates_per_batch=updates), batch_size=2, seed=0,
                        info=DistInfo(), stop_ids=[0], tokenizer=None, amp=None)

    def sample(self, policy):  # (what it samples does not matter here: which time it is)
        self.position += 1
        return f"responses {self.position}"

    monkeypatch.setattr(Rollouts, "sample", sample)
    served = [rollouts.next_batch(None) for _ in range(3 * updates)]
    assert served == [f"responses {k}" for k in (1, 2, 3) for _ in range(updates)]


# --- files ------------------------------------------------------------------------------------


def test_preference_files_in_every_shape(tmp_path):
    records = [
        {"prompt": "Name a king.", "chosen": "Lear", "rejected": "sheep"},
        {"prompt": [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Name a queen."}],
         "chosen": [{"role": "assistant", "content": "Titania"}],
         "rejected": [{"role": "assistant", "content": "corn"}]},
        {"instruction": "Name a duke.", "input": "", "output": "Orsino", "chosen": "Orsino",
         "rejected": "a field"},  # the book's preference JSON
    ]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(records, indent=1))
    pairs = read_preferences(path)
    assert [(p.chosen, p.rejected) for p in pairs] == [("Lear", "sheep"), ("Titania", "corn"),
                                                       ("Orsino", "a field")]
    assert pairs[1].prompt.prompt[0] == {"role": "system", "content": "Be brief."}
    assert pairs[2].prompt.instruction == "Name a duke."  # the Alpaca prompt can be built
    starts = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if line == " {"]
    assert [p.source for p in pairs] == [f"{path}:{line}" for line in starts]


def test_a_pair_whose_chosen_equals_rejected_is_read_and_marked(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": " same "}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "yes", "rejected": "no"}) + "\n")
    assert [pair.is_tie for pair in read_preferences(path)] == [True, False]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p", "chosen": "", "rejected": "no"}, "'chosen' is empty"),
    ({"prompt": "p", "chosen": "yes"}, "'rejected' is missing"),
    ({"chosen": "a", "rejected": "b"}, "no prompt"),
])
def test_bad_preference_records_name_their_line(tmp_path, record, message):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps(record) + "\n")
    with pytest.raises(LLMScratchError, match=f"{path}:2: .*{message}"):
        read_preferences(path)


def test_prompt_records_pass_their_other_fields_to_the_reward(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "2 + 2", "answer": "4"}) + "\n"
                    + json.dumps({"instruction": "Add.", "input": "1 + 1", "answer": "2"}) + "\n")
    prompts = read_prompts(path)
    assert [p.columns for p in prompts] == [{"answer": "4"}, {"answer": "2"}]
    seen = {}

    def reward(prompts, completions, answer):
        seen.update(prompts=prompts, answer=answer)
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    assert Rewarder("test", reward)(prompts, ["4", "3"]) == [1.0, 0.0]
    assert seen == {"prompts": ["2 + 2", "Add.\n\n1 + 1"], "answer": ["4", "2"]}


def raising_reward(prompts, completions, **columns):
    raise ValueError("no score today")


def text_reward(prompts, completions, **columns):
    return ["high"] * len(completions)


def e_reward(prompts, completions, **columns):
    """The more letters e, the better: a reward a tiny model learns to earn in a few steps."""
    return [c.count("e") / 4 for c in completions]


ONE_PROMPT = [Prompt(Conversation([{"role": "user", "content": "hi"}], ""))]


@pytest.mark.parametrize("name, message", [
    ("tests.test_alignment:raising_reward", "raised ValueError: no score today"),
    ("tests.test_alignment:text_reward", "returned 'high', not a finite number"),
    ("tests.test_alignment:no_such_function", "cannot import it"),
])
def test_reward_function_failures_are_one_line(name, message):
    with pytest.raises(LLMScratchError, match=message):
        Rewarder.function_named(name)(ONE_PROMPT, ["a"])


# --- runs through the CLI -------------------------------------------------------------------

COURT = ["the king", "the queen", "my lord", "the duke", "a crown", "the throne"]
COUNTRY = ["a sheep", "the field", "some corn", "a shepherd", "the meadow", "a flock"]


def write_court_pairs(path, n: int = 80, seed: int = 0) -> None:
    """Pairs whose chosen response names something of the court, the rejected of the country."""
    rng = random.Random(seed)
    lines = [json.dumps({"prompt": f"Name {rng.choice(['one', 'a thing', 'something'])} of "
                                   "the court.",
                         "chosen": rng.choice(COURT), "rejected": rng.choice(COUNTRY)})
             for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")


ALIGN_SMALL = ["train.dtype=fp32", "train.batch_size=8", "finetune.val_fraction=0.25"]


def test_reward_model_learns_the_preference_and_scores(tiny_run, tmp_path, capsys):
    data, out = tmp_path / "pairs.jsonl", tmp_path / "rm"
    write_court_pairs(data)
    code, printed, _ = run_cli(["finetune", "reward", "--base", tiny_run, "--data", data,
                                "--out", out, *ALIGN_SMALL, "train.lr=2e-3",
                                "finetune.epochs=4"], capsys)
    assert code == 0, printed
    after = json.loads((Run(out).eval_dir / "after.json").read_text())
    before = json.loads((Run(out).eval_dir / "before.json").read_text())
    assert after["pair_accuracy"] >= 0.9 > before["pair_accuracy"] and after["pairs"] == 20
    assert "held-out pair accuracy" in printed
    code, printed, _ = run_cli(["reward", "--run", out, "--prompt", "Name one of the court.",
                                "--response", "the king", "--response", "a sheep", "--json"],
                               capsys)
    king, sheep = (json.loads(line)["reward"] for line in printed.splitlines())
    assert code == 0 and king > sheep


def test_dpo_raises_the_chosen_responses_likelihood(tiny_run, tmp_path, capsys):
    data, out = tmp_path / "pairs.jsonl", tmp_path / "dpo"
    write_court_pairs(data)
    code, printed, _ = run_cli(["finetune", "dpo", "--base", tiny_run, "--data", data,
                                "--out", out, *ALIGN_SMALL, "train.lr=1e-3",
                                "finetune.epochs=2"], capsys)
    assert code == 0, printed
    run = Run(out)
    before = json.loads((run.eval_dir / "before.json").read_text())
    after = json.loads((run.eval_dir / "after.json").read_text())
    assert before["reward_margin"] == pytest.approx(0, abs=1e-4)  # the policy is the reference
    # Held out: every chosen response gained on its rejected one against the reference.
    assert after["reward_accuracy"] >= 0.9 and after["reward_margin"] > 0.1
    assert after["pair_accuracy"] > before["pair_accuracy"]
    stored = json.loads(run.reference_path.read_text())
    assert len(stored["train"]) == 60 and len(stored["heldout"]) == 20
    records = run.metrics.read()
    assert {"reward_chosen", "reward_rejected", "margin", "accuracy"} <= set(records[-2])


def test_ipo_runs_end_to_end(tiny_run, tmp_path, capsys):
    """IPO through the CLI. At step 1 the policy is the reference, so if the stored reference
    values are what the loss compares (mean log-probabilities, as the policy's) every pair's
    loss is (0 - 1/(2 beta))^2 = 1 for beta 0.5; then training opens the margin."""
    data, out = tmp_path / "pairs.jsonl", tmp_path / "ipo"
    write_court_pairs(data, n=40)
    code, printed, _ = run_cli(["finetune", "dpo", "--base", tiny_run, "--data", data,
                                "--out", out, *ALIGN_SMALL, "align.loss=ipo", "align.beta=0.5",
                                "train.lr=1e-3", "finetune.epochs=2", "train.log_every=1",
                                "finetune.eval_examples=4"], capsys)
    assert code == 0, printed
    run = Run(out)
    losses = [r["loss"] for r in run.metrics.read() if "loss" in r]
    assert losses[0] == pytest.approx(1.0, rel=1e-4) and losses[-1] < losses[0]
    before = json.loads((run.eval_dir / "before.json").read_text())
    after = json.loads((run.eval_dir / "after.json").read_text())
    assert before["reward_margin"] == pytest.approx(0, abs=1e-5)
    assert after["reward_margin"] > 0.05 and "loss ipo, beta 0.5" in run.report_path.read_text()


@pytest.mark.parametrize("method", ["reward", "dpo"])
def test_nothing_held_out_means_no_validation_line(method, tiny_run, tmp_path, capsys):
    """finetune.eval_examples=0 (as the chat demo sets it): periodic validation has nothing to
    score, so it logs nothing, rather than a loss of nan and an accuracy of 0."""
    data, out = tmp_path / "pairs.jsonl", tmp_path / method
    write_court_pairs(data, n=40)
    code, printed, _ = run_cli(["finetune", method, "--base", tiny_run, "--data", data,
                                "--out", out, *ALIGN_SMALL, "finetune.epochs=0",
                                "train.max_steps=2", "train.eval_every=1",
                                "finetune.eval_examples=0"], capsys)
    assert code == 0, printed
    assert "val_loss" not in printed and "nan" not in printed
    records = Run(out).metrics.read()
    assert records and not any("val_loss" in r for r in records)


def write_book_preferences(path, n: int, ties: int) -> None:
    """Chapter 7's preference JSON: a list of its instruction entries with chosen and
    rejected added; in the first `ties`, chosen equals rejected (the book's file has 6 of
    1,100)."""
    rng = random.Random(0)
    records = []
    for i in range(n):
        chosen = rng.choice(COURT)
        records.append({"instruction": f"Name thing {i} of the court.", "input": "",
                        "output": chosen, "chosen": chosen,
                        "rejected": chosen if i < ties else rng.choice(COUNTRY)})
    path.write_text(json.dumps(records, indent=4))


@pytest.mark.parametrize("method", ["reward", "dpo"])
def test_pairs_whose_chosen_equals_rejected_are_skipped_and_counted(method, tiny_run, tmp_path,
                                                                    capsys):
    """The book's file trains (its ties skipped, and counted in report.md), and the held-out
    pairs scored are finetune.eval_examples of them; only a file of nothing but ties is
    refused."""
    data, out = tmp_path / "instruction-data-with-preference.json", tmp_path / method
    write_book_preferences(data, n=40, ties=3)
    code, printed, _ = run_cli(["finetune", method, "--base", tiny_run, "--data", data,
                                "--out", out, *ALIGN_SMALL, "finetune.eval_examples=5",
                                "finetune.epochs=0", "train.max_steps=1"], capsys)
    assert code == 0, printed
    report = Run(out).report_path.read_text().splitlines()
    # 37 pairs left: int(37 * 0.25) = 9 held out.
    assert f"- {data}: 28 training and 9 held-out preference pairs." in report
    assert "- 3 pairs were skipped for having the same chosen and rejected response." in report
    assert "- No pair was longer than 64 tokens (the model's context length)." in report
    after = json.loads((Run(out).eval_dir / "after.json").read_text())
    assert after["pairs" if method == "reward" else "total"] == 5  # pairs, or their prompts

    write_book_preferences(data, n=4, ties=4)
    _refused(["finetune", method, "--base", tiny_run, "--data", data, "--out", tmp_path / "o"],
             capsys, tmp_path / "o", f"{data}: in all 4 pairs, 'chosen' and 'rejected' are "
             "the same response")


def write_prompts(path, n: int = 16) -> None:
    path.write_text("".join(json.dumps({"prompt": f"Say something of {w}."}) + "\n"
                            for w in (COURT + COUNTRY) * (n // 12 + 1))[:])


RL_SMALL = ["train.dtype=fp32", "train.batch_size=4", "align.group_size=4",
            "align.max_new_tokens=12", "finetune.eval_examples=8", "finetune.val_fraction=0.25",
            "train.log_every=1"]


def test_rl_raises_the_reward_it_is_given(tiny_run, tmp_path, capsys):
    data, out = tmp_path / "prompts.jsonl", tmp_path / "rl"
    write_prompts(data)
    code, printed, _ = run_cli(["finetune", "rl", "--base", tiny_run, "--data", data, "--out",
                                out, *RL_SMALL, "align.reward=tests.test_alignment:e_reward",
                                "train.max_steps=20", "train.lr=1e-2",
                                # 8 samples a prompt: with 4, one seed's rewards rose by
                                # only 0.3 in 20 steps, and a run in the full suite's
                                # worker not at all; with 8, by 1.4 to 1.6 (seeds 0-2, 1337)
                                "align.group_size=8"], capsys)
    assert code == 0, printed
    run = Run(out)
    records = [r for r in run.metrics.read() if "reward" in r]
    assert {"kl", "clip_fraction", "entropy", "response_length", "generation_share"} \
        <= set(records[-1])
    early = sum(r["reward"] for r in records[:4]) / 4
    late = sum(r["reward"] for r in records[-4:]) / 4
    assert late > early + 0.2  # the sampled responses earn more
    after = json.loads((run.eval_dir / "after.json").read_text())
    before = json.loads((run.eval_dir / "before.json").read_text())
    assert after["mean_reward"] > before["mean_reward"]


def _stop_at(monkeypatch, step: int) -> None:
    """Ctrl-C right after validation at `step`: the loop checkpoints there and stops."""
    validate = Trainer._validate

    def stop(self, state):
        validate(self, state)
        if state.step == step:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "_validate", stop)


@pytest.mark.parametrize("method", ["reward", "dpo", "rl"])
def test_alignment_resume_is_bit_exact(method, tiny_run, tmp_path, monkeypatch):
    """Ctrl-C at step 3 of 6, then resume: the weights of the uninterrupted run, exactly
    (the reward model: its head and the pairs' order; DPO: the stored reference
    log-probabilities; RL: two updates a batch of responses, so the checkpoint holds
    responses that are half used)."""
    data = tmp_path / "data.jsonl"
    if method == "reward":
        write_court_pairs(data, n=40)
        overrides = ALIGN_SMALL + ["train.lr=1e-3"]
    elif method == "dpo":
        write_court_pairs(data, n=40)
        overrides = ALIGN_SMALL + ["finetune.trainable=lora", "train.lr=1e-3"]
    else:
        write_prompts(data)
        overrides = RL_SMALL + ["align.reward=tests.test_alignment:e_reward",
                                "align.updates_per_batch=2", "train.lr=1e-3"]
    overrides += ["finetune.epochs=0", "train.max_steps=6", "train.eval_every=3"]

    def config():
        return finetune_module.finetune_config(method, None, str(data), overrides)

    finetune_module.finetune(config(), tiny_run, tmp_path / "straight")
    _stop_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        finetune_module.finetune(config(), tiny_run, tmp_path / "stopped")
    monkeypatch.undo()
    again = []
    if method == "rl":  # code to import: named on the command line, not by config.yaml alone
        with pytest.raises(LLMScratchError, match="does not choose code to run: name it on "
                           "the command line .* align.reward=tests.test_alignment:e_reward`"):
            finetune_module.resume(tmp_path / "stopped")
        again = ["align.reward=tests.test_alignment:e_reward"]
    finetune_module.resume(tmp_path / "stopped", again)
    straight = load_file(latest_checkpoint(Run(tmp_path / "straight")) / "model.safetensors")
    resumed = load_file(latest_checkpoint(Run(tmp_path / "stopped")) / "model.safetensors")
    assert latest_checkpoint(Run(tmp_path / "stopped")).name == "step-00000006"
    assert sorted(straight) == sorted(resumed)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


CALLS = {"n": 0}


def reward_that_fails_later(prompts, completions, **columns):
    CALLS["n"] += 1
    if CALLS["n"] > CALLS.get("limit", 3):
        raise RuntimeError("the grader crashed")
    return [0.0] * len(completions)


def test_a_failing_reward_stops_the_run_with_its_checkpoint_intact(tiny_run, tmp_path,
                                                                   capsys):
    data, out = tmp_path / "prompts.jsonl", tmp_path / "rl"
    write_prompts(data)
    CALLS["n"] = 0
    code, _, err = run_cli(["finetune", "rl", "--base", tiny_run, "--data", data, "--out", out,
                            *RL_SMALL, "align.reward=tests.test_alignment:reward_that_fails_later",
                            "finetune.eval_examples=0", "train.eval_every=0", "train.max_steps=6",
                            "train.checkpoint_every=2"], capsys)
    # One line after the progress bar, no traceback.
    assert code != 0 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "reward_that_fails_later raised RuntimeError: the grader crashed" in last
    assert "(the previous checkpoint, step-00000002, is intact)" in last
    checkpoint = latest_checkpoint(Run(out))
    assert checkpoint.name == "step-00000002"
    verify_checkpoint(checkpoint, Run(out))  # raises if anything in it were damaged


def test_a_reward_that_fails_before_the_first_checkpoint_leaves_nothing(tiny_run, tmp_path,
                                                                        capsys):
    """The default reward on the user's own prompts is refused before the run exists; a
    reward that fails on the first batch leaves no half-made run behind."""
    data, out = tmp_path / "prompts.jsonl", tmp_path / "rl"
    write_prompts(data)
    _refused(["finetune", "rl", "--base", tiny_run, "--data", data, "--out", out, *RL_SMALL],
             capsys, out, "task_rewards() missing")
    CALLS.update(n=0, limit=1)  # the reward is tried once before training, then fails
    try:
        code, _, err = run_cli(["finetune", "rl", "--base", tiny_run, "--data", data, "--out",
                                out, *RL_SMALL, "finetune.eval_examples=0", "train.eval_every=0",
                                "align.reward=tests.test_alignment:reward_that_fails_later",
                                "train.max_steps=4", "train.checkpoint_every=2"], capsys)
    finally:
        CALLS.pop("limit")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "the grader crashed (no checkpoint had been written)" in last
    assert f"{out} was removed" in last and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.jsonl"]  # no temporary folder


def test_a_reward_module_beside_the_user_is_imported(tmp_path, monkeypatch):
    """`align.reward=my_rewards:exact`, as docs/rl.md shows, with my_rewards.py in the current
    folder and no PYTHONPATH: the `llmscratch` script's sys.path does not hold that folder."""
    (tmp_path / "beside_the_user.py").write_text(
        "def exact(prompts, completions, **columns):\n"
        "    return [float(c == 'yes') for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "beside_the_user", raising=False)
    rewarder = Rewarder.function_named("beside_the_user:exact")
    assert rewarder(ONE_PROMPT * 2, ["yes", "no"]) == [1.0, 0.0]
    assert str(tmp_path) not in sys.path  # the path is as it was
    sys.modules.pop("beside_the_user", None)


def test_a_prompt_longer_than_the_context_is_refused(tiny_run, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    write_court_pairs(data, n=10)
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "word " * 200, "chosen": "a", "rejected": "b"}) + "\n")
    _refused(["finetune", "dpo", "--base", tiny_run, "--data", data, "--out", tmp_path / "o",
              "finetune.val_fraction=0.5"], capsys, tmp_path / "o",
             f"{data}:11: the prompt is")
    _refused(["finetune", "dpo", "--base", tiny_run, "--data", data, "--out", tmp_path / "o",
              "finetune.val_fraction=0.5"], capsys, tmp_path / "o", "finetune.overlong=skip")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "word " * 200}) + "\n"
                       + json.dumps({"prompt": "short"}) + "\n")
    _refused(["finetune", "rl", "--base", tiny_run, "--data", prompts, "--out", tmp_path / "o",
              "finetune.val_fraction=0.5"], capsys, tmp_path / "o", "the prompt is")


def test_overlong_skip_skips_long_pairs_and_prompts(tiny_run, tmp_path, capsys):
    """finetune.overlong=skip: a pair or an RL prompt too long for the model is skipped and
    counted in report.md, as a text or an instruction example is."""
    data = tmp_path / "pairs.jsonl"
    write_court_pairs(data, n=12)
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "word " * 200, "chosen": "a", "rejected": "b"}) + "\n")
    code, printed, _ = run_cli(["finetune", "dpo", "--base", tiny_run, "--data", data, "--out",
                                tmp_path / "dpo", *ALIGN_SMALL, "finetune.overlong=skip",
                                "finetune.epochs=0", "train.max_steps=1"], capsys)
    assert code == 0, printed
    assert ("- 1 pair was longer than 64 tokens (the model's context length): 1 was skipped."
            in Run(tmp_path / "dpo").report_path.read_text().splitlines())
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts)
    with prompts.open("a") as f:
        f.write(json.dumps({"prompt": "word " * 200}) + "\n")
    code, printed, _ = run_cli(["finetune", "rl", "--base", tiny_run, "--data", prompts,
                                "--out", tmp_path / "rl", *RL_SMALL, "finetune.overlong=skip",
                                "finetune.eval_examples=0",
                                "align.reward=tests.test_alignment:e_reward",
                                "train.max_steps=1"], capsys)
    assert code == 0, printed
    assert ("- 1 prompt was longer than 64 tokens (the model's context length): 1 was "
            "skipped." in Run(tmp_path / "rl").report_path.read_text().splitlines())


def test_a_reward_model_s_pairs_fit_its_context_with_their_last_token(tiny_run, tmp_path,
                                                                       capsys):
    """A reward model's head reads the last token of prompt + response, which DPO's model
    only predicts: a pair of 65 tokens fits DPO's 64 inputs, and is skipped (counted) for a
    reward model rather than run into the model."""
    data = tmp_path / "pairs.jsonl"
    text = "the king is dead, long live the king; " * 8  # responses a character longer each
    data.write_text("".join(json.dumps({"prompt": "Say it.", "chosen": text[:n],
                                        "rejected": "no"}) + "\n" for n in range(1, 300)))
    config = finetune_config("dpo", None, str(data), ALIGN_SMALL)
    base = Run.open(tiny_run)
    dpo = prepare_pairs(config, base.tokenizer(), base, 64)
    assert 65 in {len(whole_text(p.chosen)) for p in dpo.train + dpo.heldout}  # the edge case
    code, printed, err = run_cli(["finetune", "reward", "--base", tiny_run, "--data", data,
                                  "--out", tmp_path / "rm", *ALIGN_SMALL, "finetune.epochs=0",
                                  "train.max_steps=1"], capsys)
    assert code == 0, err


def test_a_reference_with_another_vocabulary_is_refused(tiny_run, tmp_path, capsys):
    other = tmp_path / "other"
    new_run(other)  # a 260-token tokenizer; the tiny run's has 512
    data = tmp_path / "pairs.jsonl"
    write_court_pairs(data, n=10)
    _refused(["finetune", "dpo", "--base", tiny_run, "--data", data, "--out", tmp_path / "o",
              f"align.reference={other}"], capsys, tmp_path / "o", "its tokenizer differs")


@pytest.mark.skipif(transformers is None, reason="needs transformers (the dev extra)")
def test_the_same_commands_run_on_an_imported_chat_model(tmp_path, capsys):
    """A tiny Qwen3 with a ChatML template, imported: DPO with LoRA and RL run unchanged, and
    their prompts are laid out by the model's own template."""
    folder = save_folder(hf_model("qwen3"), "qwen3", tmp_path / "hf")
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": template, "bos_token": None,
        "eos_token": {"content": "<|im_end|>", "special": True}}))
    base = tmp_path / "qwen3"
    assert main(["convert", "from-hf", str(folder), str(base)]) == 0
    pairs, prompts = tmp_path / "pairs.jsonl", tmp_path / "prompts.jsonl"
    write_court_pairs(pairs, n=16)
    write_prompts(prompts)
    code, printed, _ = run_cli(["finetune", "dpo", "--base", base, "--data", pairs, "--out",
                                tmp_path / "dpo", *ALIGN_SMALL, "finetune.trainable=lora",
                                "finetune.epochs=0", "train.max_steps=2"], capsys)
    assert code == 0, printed
    after = json.loads((Run(tmp_path / "dpo").eval_dir / "after.json").read_text())
    assert after["samples"][0]["prompt"].startswith("<|im_start|>user\nName ")
    code, printed, _ = run_cli(["finetune", "rl", "--base", tmp_path / "dpo", "--data", prompts,
                                "--out", tmp_path / "rl", *RL_SMALL, "train.max_steps=2",
                                "align.reward=tests.test_alignment:e_reward"], capsys)
    assert code == 0, printed
    assert len([r for r in Run(tmp_path / "rl").metrics.read() if "reward" in r]) == 2


def test_a_run_resumes_from_another_folder_as_it_was_made(tiny_run, tmp_path, monkeypatch,
                                                          capsys):
    """The data file named relative to where the run was made is found from anywhere; a
    resume may not make the run another method; its report counts this process's steps."""
    made_in, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    made_in.mkdir()
    elsewhere.mkdir()
    write_court_pairs(made_in / "pairs.jsonl", n=40)
    monkeypatch.chdir(made_in)
    _stop_at(monkeypatch, 2)
    code, _, _ = run_cli(["finetune", "dpo", "--base", tiny_run, "--data", "pairs.jsonl",
                          "--out", "dpo", *ALIGN_SMALL, "finetune.trainable=lora",
                          "finetune.epochs=0", "train.max_steps=4", "train.eval_every=2",
                          "finetune.eval_examples=0"], capsys)
    assert code == 130
    monkeypatch.undo()
    monkeypatch.chdir(elsewhere)
    run = made_in / "dpo"
    code, _, err = run_cli(["finetune", "resume", run, "finetune.method=sft"], capsys)
    assert code == 2 and "finetune.method='sft' does not fit" in err
    assert "trained with finetune.method='dpo'" in err
    code, printed, err = run_cli(["finetune", "resume", run], capsys)
    assert code == 0, err
    assert "training: 2 steps in" in printed and "(steps 3 to 4 of the run)" in printed
    assert latest_checkpoint(Run(run)).name == "step-00000004"
