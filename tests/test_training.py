"""Training: schedule, data order, checkpoints, Ctrl-C and bit-exact resume."""

import math
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmscratch.data.loader import TokenWindows
from llmscratch.errors import TrainingInterrupted
from llmscratch.model import GPT, get_preset
from llmscratch.recipes import budget as budget_module
from llmscratch.recipes import finetune as finetune_module
from llmscratch.recipes import pretrain as pretrain_module
from llmscratch.runs.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from llmscratch.runs.config import TrainConfig, load_config
from llmscratch.runs.metrics import MetricsLog
from llmscratch.runs.run import Run
from llmscratch.training import loop as loop_module
from llmscratch.training import precision
from llmscratch.training.loop import Trainer
from llmscratch.training.optim import Schedule, build_optimizer
from tests.conftest import TINY_CONFIG, new_run
from tests.test_families import TINY


def latest(path) -> str:
    return latest_checkpoint(Run(path)).name


def test_warmup_then_cosine_schedule():
    schedule = Schedule(peak_lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert schedule.lr_at(0, 110) == pytest.approx(0.1)  # (0 + 1) / 10
    assert schedule.lr_at(4, 110) == pytest.approx(0.5)
    assert schedule.lr_at(10, 110) == pytest.approx(1.0)  # peak right after warm-up
    middle = 10 + (110 - 10 - 1) / 2
    assert schedule.lr_at(middle, 110) == pytest.approx(0.55)  # halfway down the cosine
    assert schedule.lr_at(109, 110) == pytest.approx(0.1)  # ends at lr * min_lr_ratio
    lrs = [schedule.lr_at(s, 110) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_weight_decay_only_on_matrices():
    model = GPT(get_preset("gpt2-tiny"))
    decay, no_decay = build_optimizer(model, TrainConfig()).param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()


def test_stacked_expert_biases_are_neither_decayed_nor_given_to_muon():
    """gpt-oss's expert biases are (E, F) and (E, D): vectors, whatever their dims."""
    model = GPT(get_preset("gpt-oss-tiny"))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = build_optimizer(model, TrainConfig()).param_groups
    decayed = {names[id(p)] for p in decay["params"]}
    assert {n.rsplit(".", 1)[-1] for n in decayed} == {"weight", "gate", "up", "proj"}
    assert {"blocks.0.mlp.gate_bias", "blocks.0.attn.sinks"} <= {names[id(p)]
                                                                for p in no_decay["params"]}
    muon = build_optimizer(model, TrainConfig(optimizer="muon")).param_groups
    in_muon = {names[id(p)] for g in muon if g["muon"] for p in g["params"]}
    assert "blocks.0.mlp.router.weight" in in_muon
    decayed = {names[id(p)] for g in muon if g["weight_decay"] > 0 for p in g["params"]}
    assert not any(n.endswith("bias") for n in in_muon | decayed)


def test_batches_cover_each_epoch_once_and_are_reproducible():
    tokens = np.arange(1000, dtype=np.int32)
    batches = TokenWindows([tokens], seq_len=10, batch_size=9, seed=3)
    per_epoch = batches.windows_per_epoch
    starts = [int(x[0]) for i in range(per_epoch // 9) for x in batches.batch(i)[0]]
    assert len(set(starts)) == len(starts)  # no window twice in an epoch
    assert len({s % 10 for s in starts}) == 1  # one offset per epoch: non-overlapping
    inputs, targets = batches.batch(5)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are inputs shifted by one
    again = TokenWindows([tokens], seq_len=10, batch_size=9, seed=3)
    assert torch.equal(again.batch(5)[0], inputs)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    run = new_run(tmp_path / "run")
    torch.manual_seed(0)
    model = GPT(get_preset("gpt2-tiny"))
    optimizer = build_optimizer(model, TrainConfig())
    ids = torch.randint(0, 512, (2, 16))
    model.logits(model(ids)).sum().backward()
    optimizer.step()
    save_checkpoint(run, model, optimizer, TrainState(step=3, tokens_seen=99))
    restored = GPT(get_preset("gpt2-tiny"))
    state = load_checkpoint(latest_checkpoint(run), restored, build_optimizer(restored,
                                                                              TrainConfig()))
    assert (state.step, state.tokens_seen) == (3, 99)
    assert torch.equal(restored(ids), model(ids))


def test_only_the_last_checkpoints_are_kept(tmp_path):
    run = new_run(tmp_path / "run")
    model = GPT(get_preset("gpt2-tiny"))
    optimizer = build_optimizer(model, TrainConfig())
    for step in (10, 20, 30):
        save_checkpoint(run, model, optimizer, TrainState(step=step), keep=2)
    assert [p.name for p in run.checkpoint_dirs()] == ["step-00000020", "step-00000030"]
    assert latest_checkpoint(run).name == "step-00000030"


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_ctrl_c_then_resume_is_bit_exact(tmp_path, small_text, monkeypatch, optimizer):
    """An interrupted and resumed run ends with exactly the weights of an uninterrupted one."""
    config = load_config(TINY_CONFIG, ["train.max_steps=16", "train.eval_every=4",
                                       "train.checkpoint_every=100", "train.dtype=fp32",
                                       f"train.optimizer={optimizer}"])
    config.data.files = [str(small_text)]
    pretrain_module.pretrain(config, tmp_path / "straight")

    validate = Trainer._validate

    def ctrl_c_at_step_8(self, state):
        validate(self, state)
        if state.step == 8:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C

    monkeypatch.setattr(Trainer, "_validate", ctrl_c_at_step_8)
    with pytest.raises(TrainingInterrupted) as stop:
        pretrain_module.pretrain(config, tmp_path / "stopped")
    assert stop.value.step == 8
    assert latest(tmp_path / "stopped") == "step-00000008"
    monkeypatch.setattr(Trainer, "_validate", validate)
    result = pretrain_module.resume(tmp_path / "stopped")

    straight = load_file(latest_checkpoint(Run(tmp_path / "straight")) / "model.safetensors")
    resumed = load_file(latest_checkpoint(Run(tmp_path / "stopped")) / "model.safetensors")
    assert latest(tmp_path / "stopped") == "step-00000016"
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert math.isfinite(result.final.bpb)


@pytest.mark.parametrize("preset", TINY)
def test_every_family_trains_resumes_bit_exact_and_fine_tunes(preset, tmp_path, small_text,
                                                              monkeypatch):
    """Each family's tiny model (latent attention, experts with a router bias buffer, Gated
    DeltaNet states, KV sharing, ...): a run trains; one interrupted and resumed ends with
    exactly the weights (and buffers) of an uninterrupted one; and SFT with LoRA and DPO
    each take steps from it with finite losses."""
    config = load_config(TINY_CONFIG, [f"model.preset={preset}", "train.max_steps=6",
                                       "train.eval_every=3", "train.checkpoint_every=100",
                                       "train.dtype=fp32", "train.seq_len=64",
                                       "train.sample_tokens=0"])
    config.data.files = [str(small_text)]
    result = pretrain_module.pretrain(config, tmp_path / "straight")
    assert math.isfinite(result.final.bpb)

    validate = Trainer._validate

    def ctrl_c_at_step_3(self, state):
        validate(self, state)
        if state.step == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "_validate", ctrl_c_at_step_3)
    with pytest.raises(TrainingInterrupted):
        pretrain_module.pretrain(config, tmp_path / "stopped")
    monkeypatch.setattr(Trainer, "_validate", validate)
    pretrain_module.resume(tmp_path / "stopped")
    straight = load_file(latest_checkpoint(Run(tmp_path / "straight")) / "model.safetensors")
    resumed = load_file(latest_checkpoint(Run(tmp_path / "stopped")) / "model.safetensors")
    if preset == "deepseek-v3-tiny":  # the router's bias is a buffer: saved and restored too
        assert "blocks.1.mlp.expert_bias" in straight and "blocks.0.attn.kv_b.weight" in straight
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    small = ["finetune.synthetic_train=16", "finetune.synthetic_heldout=4",
             "finetune.eval_examples=0", "train.batch_size=4", "train.dtype=fp32",
             "finetune.epochs=0", "train.max_steps=2", "train.log_every=1",
             "finetune.overlong=skip"]  # gpt2-tiny reads 64 tokens; some prompts are longer
    for method, extra in [("sft", ["finetune.trainable=lora"]), ("dpo", [])]:
        ft = finetune_module.finetune_config(method, None, "synthetic", small + extra)
        finetune_module.finetune(ft, tmp_path / "straight", tmp_path / method)
        losses = [r["loss"] for r in MetricsLog(tmp_path / method / "metrics.jsonl").read()
                  if "loss" in r]
        assert len(losses) == 2 and all(map(math.isfinite, losses)), (method, losses)


def test_compiled_run_gives_the_losses_of_the_eager_run(tmp_path, small_text, monkeypatch):
    """train.compile=true changes how the forward runs, not what it computes; and it compiles
    the training step once: validation (every 2 steps, then over the whole held-out text,
    whose last window is shorter) and the samples (a growing cache) run the plain forward,
    where each of their shapes would otherwise compile it again."""
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    losses, val_losses = {}, {}
    for compile_ in ("false", "true"):
        config = load_config(TINY_CONFIG, ["train.max_steps=4", "train.log_every=1",
                                           "train.eval_every=2", "train.dtype=fp32",
                                           f"train.compile={compile_}"])
        config.data.files = [str(small_text)]
        result = pretrain_module.pretrain(config, tmp_path / compile_)
        records = MetricsLog(tmp_path / compile_ / "metrics.jsonl").read()
        losses[compile_] = [r["loss"] for r in records if "loss" in r]
        val_losses[compile_] = [r["val_loss"] for r in records if "val_loss" in r]
        assert result.samples and all(text for _, text in result.samples)
    assert len(losses["true"]) == 4 and len(val_losses["true"]) == 2
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-5)
    np.testing.assert_allclose(val_losses["true"], val_losses["false"], rtol=1e-5)


def step_clock(monkeypatch, seconds_per_step, *modules) -> None:
    """Give `modules` a clock that only training steps move: `seconds_per_step(step)` each
    (sums exact in binary). No test of a time limit reads the wall clock."""
    clock = [0.0]

    class StepClock:
        @staticmethod
        def perf_counter() -> float:
            return clock[0]

    step = Trainer.train_step

    def timed_step(self, state):
        clock[0] += seconds_per_step(state.step)
        return step(self, state)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    for module in modules:
        monkeypatch.setattr(module, "time", StepClock)


def test_max_seconds_stops_early_like_a_last_step_and_resume_finishes(
        tmp_path, small_text, monkeypatch):
    # A second a step: after 2 steps, 2 s >= 1.5 s, and the run ends there.
    step_clock(monkeypatch, lambda step: 1.0, loop_module)
    config = load_config(TINY_CONFIG, ["train.max_steps=6", "train.max_seconds=1.5",
                                       "train.checkpoint_every=100", "train.dtype=fp32"])
    config.data.files = [str(small_text)]
    result = pretrain_module.pretrain(config, tmp_path / "run")
    assert latest(tmp_path / "run") == "step-00000002"  # stopped after 2 steps
    assert math.isfinite(result.final.bpb)  # evaluated as at the end
    # The limit counts seconds of this process; the resumed run goes on to max_steps.
    pretrain_module.resume(tmp_path / "run", ["train.max_seconds=0"])
    assert latest(tmp_path / "run") == "step-00000006"


def test_budget_seconds_sizes_the_run_and_records_its_length(tmp_path, small_text, monkeypatch):
    # 1/32 s a step and a 1-second budget: the length is decided after 25 steps (5 skipped,
    # 20 timed), with 25/32 s spent: 25 + (1 - 25/32) x 32 = 32 steps.
    step_clock(monkeypatch, lambda step: 1 / 32, budget_module)
    config = load_config(TINY_CONFIG, ["train.max_steps=1000", "train.budget_seconds=1",
                                       "train.warmup_steps=30", "train.eval_every=0",
                                       "train.checkpoint_every=0", "train.dtype=fp32"])
    config.data.files = [str(small_text)]
    pretrain_module.pretrain(config, tmp_path / "run")
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert latest(tmp_path / "run") == "step-00000032"
    assert saved.train.max_steps == 32  # the chosen length, so a resume keeps it
    assert saved.train.budget_seconds == 0


def budget_runs(tmp_path, small_text, monkeypatch, seconds_per_step) -> dict[str, int]:
    """Steps a cosine and a WSD run of a 2.5 s budget train, on a clock that only the
    training steps move (`step_clock`). Plans are made every 10 steps after the first, at
    step 25."""
    step_clock(monkeypatch, seconds_per_step, budget_module)
    monkeypatch.setattr(budget_module, "REPLAN_EVERY", 10)
    steps = {}
    for schedule in ("cosine", "wsd"):
        config = load_config(TINY_CONFIG, [
            "train.max_steps=1000", "train.budget_seconds=2.5", "train.warmup_steps=30",
            f"train.schedule={schedule}", "train.decay_fraction=0.3", "train.eval_every=0",
            "train.checkpoint_every=0", "train.dtype=fp32"])
        config.data.files = [str(small_text)]
        pretrain_module.pretrain(config, tmp_path / schedule)
        steps[schedule] = int(latest(tmp_path / schedule).split("-")[1])
        saved = load_config(tmp_path / schedule / "config.yaml")
        assert saved.train.max_steps == steps[schedule]  # a resume keeps the last plan
        assert saved.train.budget_seconds == 0
    return steps


def test_budget_seconds_plans_a_wsd_run_again_when_the_machine_slows_down(
        tmp_path, small_text, monkeypatch):
    # 1/64 s a step, then 1/16 s from step 30 on. A cosine run keeps the length planned at
    # step 25: 25 + (2.5 - 25/64) x 64 = 160 steps; a WSD run plans again until its decay
    # begins, so it ends with fewer steps.
    steps = budget_runs(tmp_path, small_text, monkeypatch,
                        lambda step: 1 / 64 if step < 30 else 1 / 16)
    assert steps["cosine"] == 160
    assert steps["wsd"] < 0.8 * steps["cosine"]


def test_budget_seconds_plans_a_wsd_run_longer_when_the_machine_speeds_up(
        tmp_path, small_text, monkeypatch):
    # 1/32 s a step, then 1/128 s from step 30 on: cosine keeps 25 + (2.5 - 25/32) x 32 = 80
    # steps; WSD plans again and trains longer (never past train.max_steps).
    steps = budget_runs(tmp_path, small_text, monkeypatch,
                        lambda step: 1 / 32 if step < 30 else 1 / 128)
    assert steps["cosine"] == 80
    assert 1.5 * steps["cosine"] < steps["wsd"] <= 1000


def test_budget_seconds_never_lengthens_a_run(tmp_path, small_text):
    config = load_config(TINY_CONFIG, ["train.max_steps=30", "train.budget_seconds=1e6",
                                       "train.eval_every=0", "train.dtype=fp32"])
    config.data.files = [str(small_text)]
    pretrain_module.pretrain(config, tmp_path / "run")
    assert latest(tmp_path / "run") == "step-00000030"
    assert load_config(tmp_path / "run" / "config.yaml").train.max_steps == 30


@pytest.mark.parametrize(("speedup", "expected"), [(0.01, "fp32"), (1.0, "fp32"), (2.2, "bf16")])
def test_auto_dtype_takes_bf16_only_where_it_is_faster(speedup, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    assert precision.resolve_dtype("auto", torch.device("cpu")) == expected
    assert precision.resolve_dtype("fp32", torch.device("cpu")) == "fp32"  # asked for: kept
    assert precision.resolve_dtype("bf16", torch.device("cpu")) == "bf16"


def test_cpu_bf16_speedup_is_measured():
    speedup = precision.cpu_bf16_speedup()
    assert math.isfinite(speedup) and speedup > 0


def test_auto_dtype_is_resolved_into_the_saved_config(tmp_path, small_text, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 0.01)  # bf16 slow here
    config = load_config(TINY_CONFIG, ["train.max_steps=2", "train.dtype=auto"])
    config.data.files = [str(small_text)]
    pretrain_module.pretrain(config, tmp_path / "run")
    assert load_config(tmp_path / "run" / "config.yaml").train.dtype == "fp32"
    with pytest.raises(ValueError, match="resolved"):
        precision.autocast_dtype("auto")


def test_plots_leave_the_users_matplotlib_backend_alone(tmp_path):
    """Importing the plotting modules and drawing a run's plots must not switch matplotlib's
    backend: in a notebook that would stop every later figure from showing inline."""
    import subprocess
    import sys

    script = (
        "import matplotlib; matplotlib.use('svg')\n"
        "from pathlib import Path\n"
        "from llmscratch.evaluation.classification import plot_confusion, score\n"
        "from llmscratch.training.plots import plot_losses\n"
        f"out = Path({str(tmp_path)!r})\n"
        "plot_losses([{'tokens': 1, 'loss': 2.0}, {'tokens': 2, 'val_loss': 1.5}],"
        " out / 'loss.png')\n"
        "plot_confusion(score([0, 1], [0, 0], ['a', 'b']), out / 'confusion.png')\n"
        "print(matplotlib.get_backend())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "svg"
    for name in ("loss.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_trains_8_steps_and_loss_falls(preset: str, out, small_text) -> None:
    """8 fp32 steps of `preset` on the small text: finite losses, the last one clearly lower."""
    config = load_config(TINY_CONFIG, [f"model.preset={preset}", "train.max_steps=8",
                                       "train.log_every=1", "train.dtype=fp32"])
    config.data.files = [str(small_text)]
    pretrain_module.pretrain(config, out)
    losses = [r["loss"] for r in MetricsLog(out / "metrics.jsonl").read() if "loss" in r]
    assert len(losses) == 8 and all(map(math.isfinite, losses))
    assert losses[-1] < losses[0] - 0.25


def test_gemma4_tiny_trains_and_its_loss_falls(tmp_path, small_text):
    """KV-sharing layers (queries only, over earlier layers' keys) train end to end; the
    checkpoint holds the layer scalars, untrained, and no key or value rows for them."""
    assert_trains_8_steps_and_loss_falls("gemma4-tiny", tmp_path / "run", small_text)
    weights = load_file(latest_checkpoint(Run(tmp_path / "run")) / "model.safetensors")
    assert torch.equal(weights["blocks.5.scalar"], torch.ones(1))
    assert weights["blocks.3.attn.qkv.weight"].shape == (4 * 16 + 2 * 2 * 16, 64)  # q, k, v
    assert weights["blocks.4.attn.qkv.weight"].shape == (4 * 16, 64)  # q only


def test_qwen3_next_tiny_trains_and_its_loss_falls(tmp_path, small_text):
    """Gated DeltaNet layers, the gated attention and the shared expert train end to end
    (the recipe's closing sample decodes through their cached state)."""
    assert_trains_8_steps_and_loss_falls("qwen3-next-tiny", tmp_path / "run", small_text)
