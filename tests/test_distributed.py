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

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from llmscratch.cli import main
from llmscratch.data.prepare import PrepareConfig, prepare
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


def assert_same_losses(run, reference, steps=range(1, STEPS + 1)):
    got, want = losses(run), losses(reference)
    for step in steps:
        assert got[step] == pytest.approx(want[step], abs=1e-5), step


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


def test_muon_under_ddp_two_processes_match_one(tmp_path, data):
    """Muon orthogonalizes the averaged gradient: every rank takes the one-process step."""
    pretrain(tmp_path / "one", data, 1, "train.optimizer=muon")
    pretrain(tmp_path / "ddp", data, 2, "train.optimizer=muon", "train.parallel=ddp")
    assert_same_losses(tmp_path / "ddp", tmp_path / "one")
