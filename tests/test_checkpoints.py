"""Checkpoints you can trust: manifests, corruption, fallback, bit-exact resume after SIGKILL,
and the NaN/inf guard that stops a diverging run with its last checkpoint intact.

Also the loop's optional features that a run records: WSD schedule, MFU and
memory, TensorBoard, activation checkpointing, `llmscratch plot`.
"""

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llmscratch.cli import main
from llmscratch.errors import LLMScratchError
from llmscratch.model import GPT, get_preset
from llmscratch.runs.checkpoint import TrainState, latest_checkpoint
from llmscratch.runs.config import TrainConfig
from llmscratch.runs.run import Run
from llmscratch.training.loop import Trainer
from llmscratch.training.objectives import NextTokenPrediction, ObjectiveOutput
from llmscratch.training.optim import Schedule, build_optimizer
from llmscratch.training.parallel import apply_activation_checkpointing
from tests.conftest import TINY_CONFIG, new_run
from tests.test_alignment import write_court_pairs

QUIET = ["train.sample_every=0", "train.prompts=[]", "train.dtype=fp32", "train.log_every=1"]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_text):
    """8 steps with every optional feature on; a checkpoint every 2 steps, 3 kept."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["pretrain", "--config", TINY_CONFIG, "--data", str(small_text), "--out", str(out),
                 *QUIET, "train.max_steps=8", "train.checkpoint_every=2",
                 "train.keep_checkpoints=3", "train.eval_every=4", "train.schedule=wsd",
                 "train.tensorboard=true", "train.peak_flops=1e11",
                 "train.activation_checkpointing=true"]) == 0
    return out


def test_wsd_schedule():
    schedule = Schedule(peak_lr=1.0, warmup_steps=10, kind="wsd", min_lr_ratio=0.1,
                        decay_fraction=0.2)

    def lr_at(step):
        return schedule.lr_at(step, 100)

    assert lr_at(0) == pytest.approx(0.1) and lr_at(9) == pytest.approx(1.0)
    assert all(lr_at(s) == 1.0 for s in range(10, 80))  # stable until the last 20%
    assert lr_at(89) == pytest.approx(1.0 - 0.9 * 10 / 20)  # halfway down
    assert lr_at(99) == pytest.approx(0.1)  # ends at lr * min_lr_ratio


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = GPT(get_preset("gpt2-tiny"))
    recomputed = GPT(get_preset("gpt2-tiny"))
    recomputed.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(recomputed)
    ids = torch.randint(0, 512, (2, 16))
    for model in (plain, recomputed):
        model.logits(model(ids)).logsumexp(-1).mean().backward()
    assert list(recomputed.state_dict()) == list(plain.state_dict())  # names unchanged
    for a, b in zip(plain.parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-7)


def test_run_records_metrics_tensorboard_and_keeps_three_checkpoints(run, capsys):
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == ["step-00000004", "step-00000006", "step-00000008"]
    steps = [r for r in records(run) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all(r["mfu"] > 0 and r["mem_gb"] > 0 for r in steps)
    assert [r["lr"] for r in steps][5:] == sorted([r["lr"] for r in steps][5:], reverse=True)
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    (run / "training.png").unlink()
    assert main(["plot", str(run)]) == 0 and (run / "training.png").is_file()
    manifest = json.loads((run / "checkpoints/step-00000008/manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "state.json",
                                      "config.yaml"}
    assert set(manifest["run_files"]) == {"tokenizer/tokenizer.json"}


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_checkpoint_is_detected_and_fallback_only_when_asked(run, tmp_path, capsys,
                                                                     damage):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    weights = broken / "checkpoints/step-00000008/model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    weights.write_bytes(bytes(data))
    expected = "does not match its SHA-256" if damage == "flip" else "is truncated"
    with pytest.raises(LLMScratchError, match=expected):
        latest_checkpoint(Run(broken))
    assert main(["pretrain", "--resume", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err
    hint = f"`llmscratch pretrain --resume {broken} --fallback` continues from the newest intact"
    assert hint in err
    assert main(["generate", "--run", str(broken), "--prompt", "a"]) == 2  # the same hint,
    assert hint in capsys.readouterr().err  # which exists: generate has no --resume
    assert main(["pretrain", "--resume", str(broken), "--fallback", "train.max_steps=8"]) == 0
    assert "falling back to step-00000006" in capsys.readouterr().err
    assert latest_checkpoint(Run(broken)).name == "step-00000008"  # rewritten, intact


# --- SIGKILL at an arbitrary step, then resume: bit-identical to an uninterrupted run ------

# Runs the real CLI, which SIGKILLs itself as it begins step KILL_AT + 1 (a kill at an
# arbitrary step, mid-run), or as it finishes writing checkpoint KILL_SAVE (its weights and
# optimizer written, not yet its state and manifest): no race between test and process.
KILLED_CLI = """
import os, signal, sys
from llmscratch.runs import checkpoint
from llmscratch.training import loop
step, finish = loop.Trainer.train_step, checkpoint._finish
def step_or_die(self, state):
    if state.step == int(os.environ.get("KILL_AT", -1)):
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, state)
def finish_or_die(run, tmp, name, *args):
    if name == os.environ.get("KILL_SAVE"):
        os.kill(os.getpid(), signal.SIGKILL)
    return finish(run, tmp, name, *args)
loop.Trainer.train_step, checkpoint._finish = step_or_die, finish_or_die
from llmscratch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli(*args, kill_at=None, kill_save=None, threads=1):
    """`llmscratch ARGS` in a subprocess with `threads` CPU threads (OMP_NUM_THREADS)."""
    command = [sys.executable, "-m", "llmscratch"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if kill_at is not None or kill_save is not None:
        command = [sys.executable, "-c", KILLED_CLI]
        env.update(KILL_AT=str(kill_at if kill_at is not None else -1),
                   KILL_SAVE=kill_save or "")
    return subprocess.Popen([*command, *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def assert_same_run(straight, resumed, final):
    """The same weights in checkpoint `final`, and the same loss at every step."""
    a = load_file(latest_checkpoint(Run(straight)) / "model.safetensors")
    b = load_file(latest_checkpoint(Run(resumed)) / "model.safetensors")
    assert latest_checkpoint(Run(resumed)).name == final
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = {r["step"]: r["loss"] for r in records(straight) if "loss" in r}
    assert {r["step"]: r["loss"] for r in records(resumed) if "loss" in r} == losses


def test_sigkill_then_resume_is_bit_exact(tmp_path, small_text):
    args = ["--config", TINY_CONFIG, "--data", str(small_text), *QUIET, "train.max_steps=30",
            "train.checkpoint_every=4", "train.eval_every=0"]
    straight = cli("pretrain", *args, "--out", str(tmp_path / "straight"))
    killed_dir = tmp_path / "killed"
    # Killed after step 13, not a checkpoint step: the resumed run redoes 13.. from 12.
    killed = cli("pretrain", *args, "--out", str(killed_dir), kill_at=13)
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read()
    assert straight.wait() == 0, straight.stderr.read()
    assert latest_checkpoint(Run(killed_dir)).name == "step-00000012"
    assert max(r["step"] for r in records(killed_dir) if "loss" in r) == 13

    resumed = cli("pretrain", "--resume", str(killed_dir))
    assert resumed.wait() == 0, resumed.stderr.read()
    assert_same_run(tmp_path / "straight", killed_dir, "step-00000030")


@pytest.mark.parametrize("method", ["dpo", "reward"])
def test_preference_runs_killed_mid_save_and_mid_step_resume_bit_exactly(method, tiny_run,
                                                                          tmp_path):
    """Killed while writing checkpoint 8 (resumed from 4), then again after step 10 (resumed
    from 8): the uninterrupted run's weights and losses, bit for bit. DPO reads its stored
    reference log-probabilities again. The resumes run with 2 threads where the run began
    with 1: the run's train.threads decides, not OMP_NUM_THREADS (a CPU sum split between
    2 threads is added in another order than on 1: the weights would differ by ~1e-7)."""
    data = tmp_path / "pairs.jsonl"
    write_court_pairs(data, n=40)
    args = ["finetune", method, "--base", tiny_run, "--data", data, "train.dtype=fp32",
            "train.batch_size=4", "finetune.val_fraction=0.25", "train.lr=1e-3",
            "finetune.epochs=0", "train.max_steps=12", "train.checkpoint_every=4",
            "train.eval_every=0", "train.log_every=1", "finetune.eval_examples=2"]
    killed_dir = tmp_path / "killed"
    straight = cli(*args, "--out", tmp_path / "straight")
    killed = cli(*args, "--out", killed_dir, kill_save="step-00000008")
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read()
    assert straight.wait() == 0, straight.stderr.read()
    assert latest_checkpoint(Run(killed_dir)).name == "step-00000004"
    assert (killed_dir / "checkpoints" / ".step-00000008.tmp").is_dir()  # the save cut short

    again = cli("finetune", "resume", killed_dir, kill_at=10, threads=2)
    assert again.wait() == -signal.SIGKILL, again.stderr.read()
    assert latest_checkpoint(Run(killed_dir)).name == "step-00000008"
    resumed = cli("finetune", "resume", killed_dir, threads=2)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert_same_run(tmp_path / "straight", killed_dir, "step-00000012")


# --- The NaN/inf guard: a bad step changes nothing; ten in a row stop the run ------------

class InfiniteGradient(torch.autograd.Function):
    """The identity, whose backward makes every gradient non-finite: a finite loss, bad grads."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def poison(monkeypatch, bad_calls, how="loss"):
    """Make the pretraining objective's calls numbered in `bad_calls` (from 0) non-finite."""
    real = NextTokenPrediction.__call__
    calls = itertools.count()

    def call(self, model, batch):
        out = real(self, model, batch)
        if next(calls) in bad_calls:
            loss = out.loss_sum
            loss = loss * float("nan") if how == "loss" else InfiniteGradient.apply(loss)
            out = ObjectiveOutput(loss, out.units, out.tokens)
        return out

    monkeypatch.setattr(NextTokenPrediction, "__call__", call)


class OneBatch:
    """A batch source that always gives the same batch."""

    def __init__(self, batch):
        self.batch = batch

    def next_batch(self, policy=None):
        return self.batch

    def state_dict(self):
        return {}


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_a_non_finite_step_leaves_weights_and_optimizer_untouched(tmp_path, monkeypatch, how):
    torch.manual_seed(0)
    model = GPT(get_preset("gpt2-tiny"))
    cfg = TrainConfig(dtype="fp32", warmup_steps=0)
    optimizer = build_optimizer(model, cfg)
    ids = torch.randint(0, 512, (2, 17))
    trainer = Trainer(model, NextTokenPrediction(torch.device("cpu")),
                      OneBatch((ids[:, :-1], ids[:, 1:])), optimizer, Schedule.from_train(cfg),
                      cfg, new_run(tmp_path / "run"), torch.device("cpu"))
    poison(monkeypatch, bad_calls={1}, how=how)
    state = TrainState()
    assert trainer.train_step(state)["finite"]  # call 0: a normal step moves the weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in optimizer.state.values()]
    out = trainer.train_step(state)  # call 1: poisoned
    assert not out["finite"] and not math.isfinite(out["loss" if how == "loss" else "grad_norm"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = [s["exp_avg"] for s in optimizer.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(moments, after, strict=True))
    assert all(p.grad is None for p in model.parameters())  # nothing left for the next step
    assert trainer.train_step(state)["finite"]  # call 2: training goes on
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ten_non_finite_steps_in_a_row_stop_the_run_with_its_checkpoint_intact(
        tmp_path, small_text, monkeypatch, capsys):
    out = tmp_path / "run"
    # Call 2 alone is skipped and training goes on; from call 5 every step is bad.
    poison(monkeypatch, bad_calls={2} | set(range(5, 100)))
    assert main(["pretrain", "--config", TINY_CONFIG, "--data", str(small_text), *QUIET,
                 "--out", str(out), "train.max_steps=8", "train.checkpoint_every=2",
                 "train.eval_every=0"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last == ("error: 10 non-finite steps in a row trying step 5; lower train.lr or "
                    "use train.dtype=fp32 (the previous checkpoint, step-00000004, is intact)")
    skipped = [(r["step"], r["bad_loss"]) for r in records(out) if "skipped" in r]
    assert skipped == [(3, "nan")] + [(5, "nan")] * 10
    assert [r["step"] for r in records(out) if "loss" in r] == [1, 2, 3, 4]
    assert latest_checkpoint(Run(out)).name == "step-00000004"  # its hashes are checked here
    monkeypatch.undo()  # the cause is gone (say, a lower learning rate): resume
    assert main(["pretrain", "--resume", str(out)]) == 0
    assert latest_checkpoint(Run(out)).name == "step-00000008"


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(
        tmp_path, small_text, monkeypatch, capsys):
    out = tmp_path / "run"
    poison(monkeypatch, bad_calls=set(range(100)))  # every step is bad from the first
    assert main(["pretrain", "--config", TINY_CONFIG, "--data", str(small_text), *QUIET,
                 "--out", str(out), "train.max_steps=8", "train.eval_every=0"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"error: 10 non-finite steps in a row trying step 1; lower train.lr or "
                    f"use train.dtype=fp32 (no checkpoint had been written); {out} was removed")
    assert list(tmp_path.iterdir()) == []  # no half-made run, no temporary folder


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_clip_gradients_matches_torch_bit_for_bit(max_norm):
    from llmscratch.training.loop import clip_gradients

    torch.manual_seed(0)
    models = [GPT(get_preset("gpt2-tiny")) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ids = torch.randint(0, 512, (2, 16))
    for model in models:
        model.logits(model(ids)).logsumexp(-1).mean().backward()
    expected = torch.nn.utils.clip_grad_norm_(models[0].parameters(), max_norm)
    assert clip_gradients(models[1].parameters(), max_norm) == float(expected)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_out_of_memory_in_the_first_step_is_one_line(small_text, tmp_path, monkeypatch, capsys):
    def out_of_memory(self, model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(NextTokenPrediction, "__call__", out_of_memory)
    assert main(["pretrain", "--config", TINY_CONFIG, "--data", str(small_text), *QUIET,
                 "--out", str(tmp_path / "oom")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: out of memory in the first step")
    assert "train.grad_accum" in last
