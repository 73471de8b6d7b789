"""Shared fixtures: a small text file and a tiny trained run (built once per session)."""

import os
from pathlib import Path

import pytest

from llmscratch.cli import main
from llmscratch.data.corpus import shakespeare_text
from llmscratch.model import get_preset
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import Run, RunInfo
from llmscratch.tokenizer import train_bpe

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "tiny.yaml")


def pytest_configure(config) -> None:
    """Under `pytest -n N` each worker computes on cores / N threads (at least 1).

    PyTorch takes every core in each process by default: with two workers on two cores,
    four threads would share two cores, and a thread waiting for its slice stalls the
    others' parallel loops. Subprocesses a test starts choose their own count."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // int(workers)))


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` run only where torch sees a CUDA GPU (`pytest -m cuda` picks them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to torch")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """About 120 kB of the cleaned corpus: enough to train a 512-token tokenizer."""
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(shakespeare_text()[:120_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_text) -> Path:
    """A run of configs/tiny.yaml: 20 steps, a checkpoint every 10."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["pretrain", "--config", TINY_CONFIG, "--data", str(small_text),
                 "--out", str(out)]) == 0
    return out


def new_run(path: Path, preset: str = "gpt2-tiny", **info) -> Run:
    """An empty run directory (config, run.json, a small tokenizer) for tests of checkpoints."""
    tokenizer = train_bpe(["a few words to learn a few merges from, a few times"], 260)
    config = RunConfig(model=get_preset(preset))
    return Run.create(path, config, RunInfo(**info), tokenizer)
