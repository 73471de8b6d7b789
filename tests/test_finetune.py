"""Fine-tuning: reply-only loss, packing, data order and resume, classification and SFT
runs through the CLI, LoRA runs (merge, PEFT export and import), and bad input."""

import json
import random
import shutil
import signal

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from llmscratch.cli import main
from llmscratch.data.chat_examples import ChatEncoder
from llmscratch.data.examples import IGNORE, Example, ExampleBatches, collate
from llmscratch.data.instruction_files import Conversation
from llmscratch.errors import LLMScratchError
from llmscratch.model import GPT, get_preset
from llmscratch.recipes import finetune as finetune_module
from llmscratch.recipes.report import counted, overlong_sentence
from llmscratch.runs.checkpoint import latest_checkpoint
from llmscratch.runs.config import load_config
from llmscratch.runs.load import load_for_inference, load_model
from llmscratch.runs.run import Run
from llmscratch.training.loop import Trainer, TrainingInterrupted
from llmscratch.training.objectives import NextTokenPrediction, SequenceClassification
from tests.test_finetune_data import write_sms

try:
    import peft
    import transformers
except ImportError:  # the dev extra installs them
    peft = None
needs_peft = pytest.mark.skipif(peft is None, reason="needs peft and transformers")

# A task a tiny model learns in a few dozen steps: is the text about the court or the country?
COURT = ["king", "queen", "lord", "duke", "crown", "throne"]
COUNTRY = ["sheep", "field", "corn", "shepherd", "meadow", "flock"]
FILLER = ["the", "a", "fair", "good", "old", "sweet", "and", "my", "is", "was"]


def write_court_country(path, n: int = 160, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        f.write("text,label\n")
        for _ in range(n):
            label = rng.choice(["court", "country"])
            words = rng.sample(FILLER, 4) + [rng.choice(COURT if label == "court" else COUNTRY)]
            rng.shuffle(words)
            f.write(f"{' '.join(words)},{label}\n")


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model.logits(model(ids))


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- the loss and the rows ---------------------------------------------------------------


def test_loss_is_on_the_reply_alone(tiny_run):
    """Targets are the next tokens on the reply and -100 on the prompt, and the objective's
    loss is the hand-computed cross-entropy of the reply's tokens alone."""
    run = Run.open(tiny_run)
    tokenizer, settings = run.tokenizer(), run.generation_settings()
    conversation = Conversation([{"role": "user", "content": "Say hello to the king."}],
                                "Hello, my king.")
    encode = ChatEncoder(tokenizer, settings, "chat", train_on_all=False)
    prompt, reply = encode.prompt_ids(conversation), encode.reply_ids(conversation)
    # The reply is learned up to the end-of-text token (and the template's newline after it).
    assert tokenizer.decode(reply) == "Hello, my king.<|endoftext|>\n"
    assert set(reply) & set(settings.stop_token_ids)
    (example,) = encode.examples([conversation])
    whole = prompt + reply
    assert example.ids == whole[:-1]
    assert example.targets == [IGNORE] * (len(prompt) - 1) + reply  # predicted from the prompt

    (everything,) = ChatEncoder(tokenizer, settings, "chat", train_on_all=True).examples(
        [conversation])
    assert everything.targets == whole[1:]

    model = load_model(run).float()
    batch = collate([[example]])
    out = NextTokenPrediction(torch.device("cpu"))(model, batch)
    with torch.no_grad():
        row_logits = model.logits(model(torch.tensor([example.ids])))[0]  # (T, V)
    first = len(prompt) - 1  # the position whose next token is the reply's first
    by_hand = F.cross_entropy(row_logits[first:], torch.tensor(reply), reduction="sum")
    assert out.units == len(reply)
    assert torch.allclose(out.loss_sum, by_hand, rtol=1e-5)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-3-tiny"])
def test_packed_rows_give_the_loss_of_each_example_alone(preset):
    """Packed examples neither see each other nor shift positions: the summed loss of a
    packed batch equals the sum of each example's loss in a row of its own."""
    torch.manual_seed(0)
    model = GPT(get_preset(preset)).eval()
    rng = random.Random(0)
    examples = []
    for _ in range(6):
        ids = [rng.randrange(model.config.vocab_size) for _ in range(rng.randrange(5, 14))]
        targets = ids[1:] + [rng.randrange(model.config.vocab_size)]
        targets[:2] = [IGNORE, IGNORE]  # a two-token "prompt"
        examples.append(Example(ids, targets))
    objective = NextTokenPrediction(torch.device("cpu"))
    packed = ExampleBatches(examples, batch_size=2, seed=1, pack_len=32)
    assert len(packed.rows) < len(examples)  # some rows do hold several examples
    with torch.no_grad():
        packed_sum = sum(float(objective(model, collate(row_pair, width=32)).loss_sum)
                         for row_pair in (packed.rows[i:i + 2]
                                          for i in range(0, len(packed.rows), 2)))
        alone = sum(float(objective(model, collate([[e]])).loss_sum) for e in examples)
    assert packed_sum == pytest.approx(alone, rel=1e-5)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-3-tiny"])
def test_right_padded_rows_need_no_mask(preset):
    """One example per right-padded row: the model without a mask (the fused causal kernel)
    gives every real token the hidden state it gets with the mask; left padding or packing
    does need the mask."""
    torch.manual_seed(0)
    model = GPT(get_preset(preset)).eval()
    rows = [[Example([5, 6, 7, 8, 9])], [Example([3, 4])]]
    right = collate(rows)
    assert right.causal_is_enough and right.model_mask is None
    assert not collate(rows, pad_side="left").causal_is_enough
    assert not collate([[Example([1, 2]), Example([3])]]).causal_is_enough
    real = right.attention_mask.bool()
    with torch.no_grad():
        masked = model(right.input_ids, attention_mask=right.attention_mask)
        unmasked = model(right.input_ids)
    assert torch.allclose(masked[real], unmasked[real], atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classification_objective_pools_each_row_without_its_padding(pooling):
    """Right-padded rows of different lengths (the model then runs without a mask): the
    loss and accuracy are those of each example classified alone, so the head pooled the
    real tokens only (the batch's mask), never the padding after them."""
    torch.manual_seed(0)
    model = GPT(get_preset("gpt2-tiny")).eval()
    model.add_head(3, pooling)
    examples = [Example([5, 6, 7, 8, 9, 10], label=2), Example([3, 4], label=0),
                Example([11, 12, 13], label=1)]
    batch = collate([[e] for e in examples])
    assert batch.model_mask is None and batch.input_ids.shape == (3, 6)  # right padding
    out = SequenceClassification(torch.device("cpu"))(model, batch)
    with torch.no_grad():
        alone = torch.cat([model.head(model(torch.tensor([e.ids]))) for e in examples])  # (3, 3)
    labels = torch.tensor([e.label for e in examples])
    by_hand = F.cross_entropy(alone, labels, reduction="sum")
    assert out.units == 3
    assert float(out.loss_sum.detach()) == pytest.approx(float(by_hand), rel=1e-5)
    assert out.metrics["accuracy"] == (float((alone.argmax(-1) == labels).sum()), 3)


def test_example_batches_split_ranks_and_resume():
    examples = [Example([i], label=i % 2) for i in range(20)]
    ranks = [ExampleBatches(examples, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    first_epoch = [int(b.input_ids[i, 0]) for _ in range(5) for r in ranks
                   for b in [r.next_batch()] for i in range(2)]
    assert sorted(first_epoch) == list(range(20))  # every example once per epoch

    straight = ExampleBatches(examples, 4, seed=3)
    batches = [straight.next_batch().input_ids for _ in range(8)]
    resumed = ExampleBatches(examples, 4, seed=3)
    resumed.load_state_dict({**straight.state_dict(), "position": 3})
    assert all(torch.equal(resumed.next_batch().input_ids, b) for b in batches[3:])
    with pytest.raises(LLMScratchError, match="seed was 3, now 4"):
        ExampleBatches(examples, 4, seed=4).load_state_dict(straight.state_dict())


# --- classification ------------------------------------------------------------------------


def test_classify_run_learns_and_predicts(tiny_run, tmp_path, capsys):
    data = tmp_path / "court.csv"
    write_court_country(data)
    out = tmp_path / "clf"
    code, printed, _ = run_cli(["finetune", "classify", "--base", tiny_run, "--data", data,
                                "--out", out, "finetune.epochs=6", "finetune.trainable=all",
                                "train.lr=2e-3", "train.dtype=fp32"], capsys)
    assert code == 0, printed
    before = json.loads((out / "eval" / "before.json").read_text())
    after = json.loads((out / "eval" / "after.json").read_text())
    assert after["accuracy"] >= 0.9 and after["accuracy"] > before["accuracy"] + 0.2
    assert sum(map(sum, after["confusion"])) == 32  # the test split: 20% of 160 texts
    for name in ("report.md", "eval/confusion-before.png", "eval/confusion-after.png",
                 "loss.png"):
        assert (out / name).is_file(), name
    assert Run.open(out).read_info().labels == ["country", "court"]

    code, printed, _ = run_cli(["classify", "--run", out, "--json", "--text",
                                "the fair queen and my duke", "--text", "sheep in a field"],
                               capsys)
    assert code == 0
    answers = [json.loads(line) for line in printed.splitlines()]
    assert [a["label"] for a in answers] == ["court", "country"]
    assert all(sum(a["probabilities"].values()) == pytest.approx(1, abs=1e-3) for a in answers)


def test_classify_last_block_saves_only_what_trains(tiny_run, tmp_path, capsys):
    data = tmp_path / "court.csv"
    write_court_country(data, n=40)
    out = tmp_path / "clf"
    code, printed, _ = run_cli(["finetune", "classify", "--base", tiny_run, "--data", data,
                                "--out", out, "train.max_steps=2", "finetune.epochs=0"], capsys)
    assert code == 0, printed
    saved = load_file(latest_checkpoint(Run(out)) / "model.safetensors")
    last = len(load_model(Run.open(tiny_run)).blocks) - 1
    assert saved and all(k.startswith((f"blocks.{last}.", "ln_f.", "head.")) for k in saved)
    assert any(k.startswith("head.") for k in saved)

    # The split is kept in the run; a resume reads it, not the source (gone now).
    test_split = [json.loads(line) for line in Run(out).split_path("test").read_text()
                  .splitlines()]
    assert len(test_split) == 8 and {r["label"] for r in test_split} <= {"court", "country"}
    data.unlink()
    code, printed, _ = run_cli(["finetune", "resume", out, "train.max_steps=4"], capsys)
    assert code == 0, printed
    assert latest_checkpoint(Run(out)).name == "step-00000004"


# --- the run's length, the held-out size, the book's SMS file, report.md's sentences ---------


def test_the_steps_given_win_over_the_epochs(tiny_run, tmp_path, capsys):
    """train.max_steps given (on the command line or in the config file) is what trains: the
    epochs of the method's defaults, or of the run being resumed, give way; both is refused."""
    config = finetune_module.finetune_config("classify", None, "a.csv", ["train.max_steps=30"])
    assert (config.train.max_steps, config.finetune.epochs) == (30, 0)
    steps = tmp_path / "steps.yaml"
    steps.write_text("train:\n  max_steps: 30\n")
    config = finetune_module.finetune_config("sft", str(steps), "a.json")
    assert (config.train.max_steps, config.finetune.epochs) == (30, 0)
    with pytest.raises(LLMScratchError, match="both set the run's length; give one"):
        finetune_module.finetune_config("classify", None, "a.csv",
                                        ["train.max_steps=30", "finetune.epochs=2"])
    data = tmp_path / "court.csv"
    write_court_country(data, n=40)  # 28 training texts: an epoch is 4 steps of 8
    code, printed, _ = run_cli(["finetune", "classify", "--base", tiny_run, "--data", data,
                                "--out", tmp_path / "steps", "train.max_steps=2"], capsys)
    assert code == 0, printed
    assert latest_checkpoint(Run(tmp_path / "steps")).name == "step-00000002"
    out = tmp_path / "epochs"
    code, printed, _ = run_cli(["finetune", "classify", "--base", tiny_run, "--data", data,
                                "--out", out], capsys)
    assert code == 0, printed
    assert latest_checkpoint(Run(out)).name == "step-00000004"
    code, printed, _ = run_cli(["finetune", "resume", out, "train.max_steps=6"], capsys)
    assert code == 0, printed
    assert latest_checkpoint(Run(out)).name == "step-00000006"
    assert Run(out).read_config().finetune.epochs == 0


def test_one_key_sets_the_held_out_size(tiny_run, tmp_path, capsys):
    """finetune.eval_examples: how many test texts a classifier is scored on (all of them by
    default); align.eval_examples is refused naming it, and an old run's config.yaml that
    has it is read with the size that run used."""
    data, out = tmp_path / "court.csv", tmp_path / "clf"
    write_court_country(data, n=40)
    code, printed, _ = run_cli(["finetune", "classify", "--base", tiny_run, "--data", data,
                                "--out", out, "train.max_steps=1", "finetune.eval_examples=3"],
                               capsys)
    assert code == 0, printed
    after = json.loads((out / "eval" / "after.json").read_text())
    assert sum(map(sum, after["confusion"])) == 3  # of the 8 test texts
    with pytest.raises(LLMScratchError,
                       match="'align.eval_examples' is now 'finetune.eval_examples'"):
        finetune_module.finetune_config("dpo", None, "synthetic", ["align.eval_examples=5"])
    old = tmp_path / "config.yaml"
    for method, used in (("dpo", 7), ("reward", 7), ("rl", 7), ("sft", 200), ("classify", -1)):
        old.write_text(yaml.safe_dump({"finetune": {"method": method, "eval_examples": 200},
                                       "align": {"eval_examples": 7}}))
        assert load_config(old).finetune.eval_examples == used, method


@pytest.mark.parametrize("name", ["SMSSpamCollection.tsv", "SMSSpamCollection"])
def test_the_books_sms_file_trains_under_any_name(name, tiny_run, tmp_path, capsys):
    """The SMS Spam Collection as the book downloads it (label<TAB>text, no header) is known
    by its first line: balanced and split as the book does, without finetune.data_format."""
    data, out = tmp_path / name, tmp_path / "spam"
    write_sms(data, n_ham=60, n_spam=20)
    code, printed, _ = run_cli(["finetune", "classify", "--base", tiny_run, "--data", data,
                                "--out", out, "train.max_steps=1"], capsys)
    assert code == 0, printed
    assert Run(out).read_info().labels == ["ham", "spam"]
    sizes = [len(Run(out).split_path(split).read_text().splitlines())
             for split in ("train", "validation", "test")]
    assert sizes == [28, 4, 8]  # 20 ham and 20 spam, split 70/10/20
    report = Run(out).report_path.read_text().splitlines()
    assert f"- {data}: 28 training, 4 validation and 8 test texts; labels ham and spam." \
        in report
    assert "- No text was longer than 64 tokens (the model's context length)." in report


def test_report_counts_are_sentences():
    assert counted(0, "pair", "skipped") == "No pair was skipped."
    assert counted(1, "pair", "skipped") == "1 pair was skipped."
    assert counted(1100, "pair", "skipped") == "1,100 pairs were skipped."
    assert overlong_sentence("text", 1024, False, 9977, 0) == (
        "9,977 texts were longer than 1,024 tokens (the model's context length): 9,977 were "
        "truncated to fit.")
    assert overlong_sentence("example", 256, True, 1, 2) == (
        "3 examples were longer than 256 tokens (finetune.max_len): 1 was truncated to fit "
        "and 2 were skipped.")


# --- instruction tuning and LoRA ------------------------------------------------------------

SFT_SMALL = ["finetune.synthetic_train=64", "finetune.synthetic_heldout=8",
             "finetune.eval_examples=0", "train.batch_size=4", "train.dtype=fp32"]


def test_sft_resume_is_bit_exact(tiny_run, tmp_path, monkeypatch):
    """Ctrl-C at step 4 of 8, then resume: the adapters of the uninterrupted run, exactly
    (LoRA: trainable-only checkpoints, with their optimizer state; packed rows)."""
    overrides = SFT_SMALL + ["finetune.trainable=lora", "finetune.packing=true",
                             "finetune.max_len=64", "finetune.epochs=0", "train.max_steps=8",
                             "train.eval_every=4", "train.lr=1e-3"]
    config = finetune_module.finetune_config("sft", None, "synthetic", overrides)
    finetune_module.finetune(config, tiny_run, tmp_path / "straight")

    validate = Trainer._validate

    def ctrl_c_at_step_4(self, state):
        validate(self, state)
        if state.step == 4:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "_validate", ctrl_c_at_step_4)
    config = finetune_module.finetune_config("sft", None, "synthetic", overrides)
    with pytest.raises(TrainingInterrupted):
        finetune_module.finetune(config, tiny_run, tmp_path / "stopped")
    monkeypatch.setattr(Trainer, "_validate", validate)
    finetune_module.resume(tmp_path / "stopped")

    straight = load_file(latest_checkpoint(Run(tmp_path / "straight")) / "model.safetensors")
    resumed = load_file(latest_checkpoint(Run(tmp_path / "stopped")) / "model.safetensors")
    assert latest_checkpoint(Run(tmp_path / "stopped")).name == "step-00000008"
    assert sorted(straight) == sorted(resumed) and all(".lora_" in k for k in straight)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@needs_peft
def test_lora_run_merges_exports_to_peft_and_imports(tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "sft"
    code, printed, _ = run_cli(["finetune", "sft", "--base", tiny_run, "--data", "synthetic",
                                "--out", run_dir, *SFT_SMALL, "finetune.trainable=lora",
                                "finetune.epochs=0", "train.max_steps=6", "train.lr=1e-2"],
                               capsys)
    assert code == 0, printed
    ckpt = latest_checkpoint(Run(run_dir))
    assert all(".lora_" in k for k in load_file(ckpt / "model.safetensors"))

    ids = torch.randint(0, 500, (2, 20))
    with torch.no_grad():
        base_logits = logits(load_model(Run.open(tiny_run)), ids)
        lora_logits = logits(load_model(Run.open(run_dir)), ids)  # adapters unmerged
        assert (lora_logits - base_logits).abs().max() > 1e-3  # training changed something
        inference, _, _ = load_for_inference(run_dir)  # merged on load
        assert (logits(inference, ids) - lora_logits).abs().max() < 1e-5

    assert run_cli(["lora", "merge", "--run", run_dir, "--out", tmp_path / "merged"],
                   capsys)[0] == 0
    merged = load_model(Run.open(tmp_path / "merged"))
    with torch.no_grad():
        assert (logits(merged, ids) - lora_logits).abs().max() < 1e-5

    # PEFT: our adapter on transformers' model of the base run's export, and back.
    hf_dir, adapter = tmp_path / "hf", tmp_path / "adapter"
    assert run_cli(["convert", "to-hf", tiny_run, hf_dir], capsys)[0] == 0
    assert run_cli(["lora", "export", "--run", run_dir, "--out", adapter], capsys)[0] == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(hf, adapter).eval()(ids).logits
    assert (theirs - lora_logits).abs().max() < 1e-4
    assert run_cli(["lora", "import", "--base", tiny_run, "--adapter", adapter,
                    "--out", tmp_path / "imported"], capsys)[0] == 0
    with torch.no_grad():
        imported = logits(load_model(Run.open(tmp_path / "imported")), ids)
    assert (imported - lora_logits).abs().max() < 1e-5


# --- bad input: one line, exit 2, nothing written ---------------------------------------------


def _refused(args, capsys, out, match: str) -> None:
    code, _, err = run_cli(args, capsys)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and match in err, err
    assert not out.exists()


def test_malformed_jsonl_names_file_and_line(tiny_run, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}]}
    data.write_text(json.dumps(good) + "\n{\"messages\": [\n")
    _refused(["finetune", "sft", "--base", tiny_run, "--data", data, "--out", tmp_path / "o"],
             capsys, tmp_path / "o", f"{data}:2")


def test_unseen_validation_label_is_refused(tiny_run, tmp_path, capsys):
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    write_court_country(train, n=20)
    val.write_text("text,label\nthe sea,ocean\n")
    _refused(["finetune", "classify", "--base", tiny_run, "--data", train, "--out",
              tmp_path / "o", f"finetune.val_data={val}"], capsys, tmp_path / "o", "ocean")


def test_nothing_left_after_skipping_long_examples(tiny_run, tmp_path, capsys):
    data = tmp_path / "court.csv"
    write_court_country(data, n=20)
    _refused(["finetune", "classify", "--base", tiny_run, "--data", data, "--out",
              tmp_path / "o", "finetune.max_len=2", "finetune.overlong=skip"],
             capsys, tmp_path / "o", "no train example is left")


def test_lora_targets_that_match_nothing(tiny_run, tmp_path, capsys):
    _refused(["finetune", "sft", "--base", tiny_run, "--data", "synthetic", "--out",
              tmp_path / "o", *SFT_SMALL, "finetune.trainable=lora",
              "finetune.lora_targets=[nothing.here]"], capsys, tmp_path / "o", "nothing.here")


def test_adapters_are_never_laid_over_another_base(tiny_run, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    run_dir = tmp_path / "sft"
    assert run_cli(["finetune", "sft", "--base", base, "--data", "synthetic", "--out", run_dir,
                    *SFT_SMALL, "finetune.trainable=lora", "finetune.epochs=0",
                    "train.max_steps=1"], capsys)[0] == 0
    # The base run is replaced by another whose newest checkpoint has the same name.
    checkpoints = base / "checkpoints"
    shutil.rmtree(checkpoints / "step-00000020")
    (checkpoints / "step-00000010").rename(checkpoints / "step-00000020")
    code, _, err = run_cli(["generate", "--run", run_dir, "--prompt", "a", "--max-new-tokens",
                            "2"], capsys)
    assert code != 0 and "was trained on another" in err and len(err.strip().splitlines()) == 1


def test_a_run_never_replaces_what_it_is_made_from(tiny_run, tmp_path, capsys):
    """--out may not name the run a command reads, nor any run that one builds on, even
    with --overwrite; a folder of the user's files is never written into; every refusal
    is one line that changes nothing."""
    from tests.test_bad_input import snapshot

    base, sft = tmp_path / "base", tmp_path / "sft"
    shutil.copytree(tiny_run, base)
    assert run_cli(["finetune", "sft", "--base", base, "--data", "synthetic", "--out", sft,
                    *SFT_SMALL, "finetune.trainable=lora", "finetune.epochs=0",
                    "train.max_steps=1"], capsys)[0] == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    cases = [
        (["finetune", "dpo", "--base", sft, "--data", "synthetic", "--out", sft],
         f"--out {sft} would replace {sft}, the run it reads"),
        (["finetune", "dpo", "--base", sft, "--data", "synthetic", "--out", base],
         f"--out {base} would replace {base}, a run that {sft} builds on"),
        (["finetune", "sft", "--base", base, "--data", "synthetic", "--out", tmp_path],
         f"--out {tmp_path} would replace {base}"),
        (["finetune", "rl", "--base", base, "--data", "synthetic", "--out", sft,
          f"align.reward_model={sft}"], f"--out {sft} would replace {sft}, the run it reads"),
        (["lora", "merge", "--run", sft, "--out", sft], "the run it reads"),
        (["lora", "merge", "--run", sft, "--out", base], f"a run that {sft} builds on"),
        (["lora", "import", "--base", base, "--adapter", mine, "--out", base],
         "the run it reads"),
        (["lora", "export", "--run", sft, "--out", mine],
         f"{mine} exists and is not a PEFT adapter folder"),
        (["lora", "export", "--run", sft, "--out", base], "is not a PEFT adapter folder"),
    ]
    for argv, message in cases:
        for overwrite in ([], ["--overwrite"]):
            before = snapshot(tmp_path)
            code, _, err = run_cli([*argv, *overwrite], capsys)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert message in err, err
            assert snapshot(tmp_path) == before
    # A run that exists: the hint names the command that continues it.
    code, _, err = run_cli(["finetune", "sft", "--base", base, "--data", "synthetic",
                            "--out", sft], capsys)
    assert code == 2 and f"(or continue it: `llmscratch finetune resume {sft}`)" in err
    # An adapter folder is replaced with --overwrite, as a whole and at once.
    adapter = tmp_path / "adapter"
    assert run_cli(["lora", "export", "--run", sft, "--out", adapter], capsys)[0] == 0
    (adapter / "stale.txt").write_text("from the earlier export")
    code, _, err = run_cli(["lora", "export", "--run", sft, "--out", adapter], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err
    assert run_cli(["lora", "export", "--run", sft, "--out", adapter, "--overwrite"],
                   capsys)[0] == 0
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json",
                                                         "adapter_model.safetensors"]
