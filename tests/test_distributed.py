"""`llmscratch pretrain` under torchrun on CPU (gloo): 2 processes train like 1.

The same global batch (8 sequences: 8 in one process, or 4 in each of two)
must give the same losses, within 1e-5, with DDP (AdamW or Muon) and with FSDP2; an FSDP
run must resume from its sharded checkpoint with 2 processes and with 1.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from llmscratch.cli import main
from llmscratch.data.prepare import PrepareConfig, prepare
from llmscratch.model import GPT, get_preset
from llmscratch.runs.checkpoint import latest_checkpoint
from llmscratch.runs.run import Run
from llmscratch.tokenizer import train_bpe
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory, small_text):
    root = tmp_path_factory.mktemp("dist")
    train_bpe([small_text.read_text()], vocab_size=512).save(root / "tok")
    prepare(PrepareConfig(data=[str(small_text)], tokenizer=str(root / "tok"),
                          out=str(root / "data"), val_fraction=0.05, workers=1))
    return root / "data"


def launch(processes: int, *args: str) -> None:
    """`llmscratch ARGS` in one process, or under torchrun in several."""
    launcher = [sys.executable, "-m", "llmscratch"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={processes}", "-m", "llmscratch"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher + list(args), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def pretrain(out, data, processes: int, *overrides: str) -> None:
    """The tiny model on the prepared data: a global batch of 8, shared by the processes."""
    launch(processes, "pretrain", "--config", TINY_CONFIG, f"data.prepared={data}",
           "train.dtype=fp32", f"train.max_steps={STEPS}", "train.log_every=1",
           "train.eval_every=0", "train.checkpoint_every=2", "train.keep_checkpoints=3",
           "train.sample_every=0", "train.prompts=[]", f"train.batch_size={8 // processes}",
           *overrides, "--out", str(out))


def losses(run) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("one") / "run"
    pretrain(out, data, 1)
    return out


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    pretrain(out, data, 2, "train.parallel=fsdp")
    return out


def assert_same_losses(run, reference, steps=range(1, STEPS + 1), tolerance=1e-5):
    got, want = losses(run), losses(reference)
    for step in steps:
        assert got[step] == pytest.approx(want[step], abs=tolerance), step


def test_ddp_two_processes_match_one(tmp_path, data, one_process):
    pretrain(tmp_path / "ddp", data, 2, "train.parallel=ddp")
    assert_same_losses(tmp_path / "ddp", one_process)


def test_fsdp_two_processes_match_one(fsdp_run, one_process):
    assert_same_losses(fsdp_run, one_process)
    ckpt = latest_checkpoint(Run(fsdp_run))
    assert (ckpt / "dcp" / ".metadata").is_file()  # sharded, through torch.distributed.checkpoint


def rewind(run, tmp_path, step: int):
    """A copy of `run` whose newest checkpoint is `step`, as if it had stopped there."""
    copy = tmp_path / "rewound"
    shutil.copytree(run, copy)
    for ckpt in (copy / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    (copy / "checkpoints" / "latest").write_text(f"step-{step:08d}\n")
    return copy


@pytest.mark.parametrize("processes", [2, 1])
def test_fsdp_run_resumes_with_two_processes_or_one(processes, fsdp_run, one_process, tmp_path,
                                                    data):
    run = rewind(fsdp_run, tmp_path, step=2)
    # One process holds the whole global batch of 8; the sharded checkpoint is resharded.
    # Recomputing activations (on top of FSDP with 2) changes no number.
    launch(processes, "pretrain", "--resume", str(run), f"train.batch_size={8 // processes}",
           "train.activation_checkpointing=true")
    assert_same_losses(run, one_process, steps=range(3, STEPS + 1))
    # Sharded (2 processes) or not (1), the newest weights export to one safetensors file.
    export = tmp_path / "weights.safetensors"
    assert main(["checkpoint", "export", str(run), "--out", str(export)]) == 0
    ref = load_file(one_process / "checkpoints/step-00000006/model.safetensors")
    got = load_file(export)
    for name, tensor in ref.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset", ["deepseek-v3-tiny", "qwen3-next-tiny", "gemma4-tiny"])
def test_fsdp_two_processes_match_one_for_the_newer_families(preset, tmp_path, data):
    """Latent attention and experts with a router-bias buffer (DeepSeek V3), Gated DeltaNet
    layers (Qwen3-Next), layers reading an earlier layer's keys (Gemma 4): each block is
    sharded on its own, and the losses are one process's."""
    model = [f"model.preset={preset}", "model.vocab_size=512", "train.seq_len=64"]
    pretrain(tmp_path / "one", data, 1, *model)
    pretrain(tmp_path / "fsdp", data, 2, *model, "train.parallel=fsdp")
    # Gemma 4's unscaled scores make a sharper softmax, where summing the gradients in
    # another order moves the loss by up to 2e-5 after a few steps (test_families.py's
    # kernel-agreement tests give it the same 5e-5).
    assert_same_losses(tmp_path / "fsdp", tmp_path / "one",
                       tolerance=5e-5 if preset == "gemma4-tiny" else 1e-5)


def test_muon_under_ddp_two_processes_match_one(tmp_path, data):
    """Muon orthogonalizes the averaged gradient: every rank takes the one-process step."""
    pretrain(tmp_path / "one", data, 1, "train.optimizer=muon")
    pretrain(tmp_path / "ddp", data, 2, "train.optimizer=muon", "train.parallel=ddp")
    assert_same_losses(tmp_path / "ddp", tmp_path / "one")


# --- the loop divides by the units of every rank, not by a count per rank ---------------

MASKED_STEP = """
import json, os, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from llmscratch.distributed import close_distributed, init_distributed
from llmscratch.model import GPT, get_preset
from llmscratch.runs.checkpoint import TrainState
from llmscratch.runs.config import TrainConfig
from llmscratch.runs.run import Run
from llmscratch.training.loop import Trainer
from llmscratch.training.objectives import NextTokenPrediction
from llmscratch.training.optim import Schedule
from llmscratch.training.parallel import parallelize
from tests.test_loop import Batches, masked_batches

out, parallel = Path(sys.argv[1]), sys.argv[2]
cpu = torch.device("cpu")
info = init_distributed(cpu)
torch.manual_seed(1)
model = GPT(get_preset("gpt2-tiny"))  # the same start on every rank
model = parallelize(model, TrainConfig(parallel=parallel), info, cpu)
optimizer = torch.optim.SGD([{"params": list(model.parameters()), "initial_lr": 0.1}], lr=0.1)
trainer = Trainer(model, NextTokenPrediction(cpu), Batches([masked_batches()[info.rank]]),
                  optimizer, Schedule(peak_lr=0.1, warmup_steps=0),
                  TrainConfig(max_steps=1, grad_clip=0.0, dtype="fp32"), Run(out), cpu, info)
loss = trainer.train_step(TrainState())["loss"]
weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
if info.is_main:
    save_file({k: v.contiguous() for k, v in weights.items() if k != "lm_head.weight"},
              out / "weights.safetensors")
    (out / "loss.json").write_text(json.dumps(loss))
close_distributed()
# Once in a while gloo's worker threads abort the interpreter's teardown ("terminate called
# without an active exception", seen once under pytest -n 2); what is tested is written above.
os._exit(0)
"""


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ranks_with_different_masks_step_like_one_process_with_the_whole_batch(
        tmp_path, parallel):
    """Rank 0 trains on 3 tokens and rank 1 on 28: the step must be the mean over all 31,
    as one process computes it from both micro-batches (tests/test_loop.py)."""
    from tests.test_loop import masked_batches

    script = tmp_path / "masked_step.py"
    script.write_text(MASKED_STEP)
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(script), str(tmp_path), parallel],
                          env=env, capture_output=True, text=True, timeout=300, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]

    first, second = masked_batches()
    inputs, targets = torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])
    torch.manual_seed(1)
    reference = GPT(get_preset("gpt2-tiny"))
    loss = torch.nn.functional.cross_entropy(reference.logits(reference(inputs)).flatten(0, 1),
                                             targets.flatten(), ignore_index=-100)
    loss.backward()
    assert json.loads((tmp_path / "loss.json").read_text()) == pytest.approx(loss.item(),
                                                                               rel=1e-6)
    got = load_file(tmp_path / "weights.safetensors")
    for name, param in reference.named_parameters():
        torch.testing.assert_close(got[name], param.detach() - 0.1 * param.grad,
                                   atol=1e-6, rtol=1e-5)


def test_lora_sft_two_processes_match_one(tmp_path, tiny_run):
    """Fine-tuning under torchrun: LoRA adapters (the rest frozen) under DDP, rows of
    different lengths split over the ranks, the loss on the replies alone: the losses of
    one process with the whole batch, within 1e-5."""
    args = ["finetune", "sft", "--base", str(tiny_run), "--data", "synthetic",
            "finetune.trainable=lora", "finetune.synthetic_train=64",
            "finetune.synthetic_heldout=8", "finetune.eval_examples=0", "finetune.epochs=0",
            "train.max_steps=4", "train.log_every=1", "train.eval_every=0",
            "train.dtype=fp32", "train.lr=1e-2"]
    for processes in (1, 2):
        launch(processes, *args, f"train.batch_size={8 // processes}",
               "--out", str(tmp_path / f"p{processes}"))
    assert_same_losses(tmp_path / "p2", tmp_path / "p1", steps=range(1, 5))


def test_classifier_two_processes_match_one(tmp_path, small_text):
    """A classifier under DDP, every weight training but the output layer, which a
    classifier never uses (untied here, as in the demo's model; DDP refuses a trainable
    weight that gets no gradient): the losses of one process with the whole batch."""
    from tests.test_finetune import write_court_country

    base = tmp_path / "base"
    assert main(["pretrain", "--config", TINY_CONFIG, "--data", str(small_text), "--out",
                 str(base), "model.tie_embeddings=false", "train.max_steps=2",
                 "train.sample_every=0"]) == 0
    data = tmp_path / "court.csv"
    write_court_country(data, n=60)
    args = ["finetune", "classify", "--base", str(base), "--data", str(data),
            "finetune.trainable=all", "finetune.epochs=0", "train.max_steps=4",
            "train.log_every=1", "train.eval_every=0", "train.dtype=fp32", "train.lr=1e-3"]
    for processes in (1, 2):
        launch(processes, *args, f"train.batch_size={8 // processes}",
               "--out", str(tmp_path / f"p{processes}"))
    assert_same_losses(tmp_path / "p2", tmp_path / "p1", steps=range(1, 5))


def test_dpo_two_processes_match_one(tmp_path, tiny_run):
    """DPO under DDP: pairs split over the ranks (each rank's chosen and rejected halves),
    the reference log-probabilities computed before the first step: the losses of one
    process with the whole batch."""
    from tests.test_alignment import write_court_pairs

    data = tmp_path / "pairs.jsonl"
    write_court_pairs(data, n=40)
    args = ["finetune", "dpo", "--base", str(tiny_run), "--data", str(data),
            "finetune.epochs=0", "train.max_steps=4", "train.log_every=1", "train.eval_every=0",
            "finetune.eval_examples=0", "train.dtype=fp32", "train.lr=1e-3"]
    for processes in (1, 2):
        launch(processes, *args, f"train.batch_size={8 // processes}",
               "--out", str(tmp_path / f"p{processes}"))
    assert_same_losses(tmp_path / "p2", tmp_path / "p1", steps=range(1, 5))
