"""Run directories and checkpoints, written atomically.

A run directory holds everything a run produced:

    RUN/
      config.yaml               the resolved RunConfig
      tokenizer/tokenizer.json  the tokenizer the model was trained with
      checkpoints/
        step-00000500/          one complete checkpoint:
          model.safetensors       weights
          optimizer.pt            AdamW state (tensors only; loaded weights_only)
          state.json              step, tokens seen, RNG states
        latest                  name of the newest complete checkpoint
      metrics.jsonl, loss.png, samples.md, report.md

Atomicity: a checkpoint is written into a temporary folder, then renamed into
place, and only then does `latest` (itself replaced by an atomic rename) point
to it. A kill at any moment leaves the previous checkpoint complete and named.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmscratch.errors import LLMScratchError

CHECKPOINTS = "checkpoints"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass
class TrainState:
    """Where a run is: enough, with the weights and optimizer, to continue it exactly."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = float("inf")
    rng: dict = field(default_factory=dict)


def capture_rng() -> dict:
    """All random-number generator states that training can touch, as JSON-able lists."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [np_name, np_keys.tolist(), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights to save: tied tensors once (safetensors refuses shared memory)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    keep: int = 2,
) -> Path:
    """Write a complete checkpoint for `state.step`, point `latest` at it, prune old ones."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        save_file(model_state(model), tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        state.rng = capture_rng()
        (tmp / "state.json").write_text(json.dumps(dataclasses.asdict(state)))
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run, or a clear error if there is none."""
    run_dir = Path(run_dir)
    pointer = run_dir / CHECKPOINTS / "latest"
    if not (run_dir / "config.yaml").is_file() or not pointer.is_file():
        raise LLMScratchError(
            f"{run_dir} is not a run directory (no config.yaml or checkpoints/latest); "
            "give the --out directory of a pretrain run"
        )
    ckpt = run_dir / CHECKPOINTS / pointer.read_text().strip()
    if not (ckpt / "model.safetensors").is_file():
        raise LLMScratchError(f"checkpoint {ckpt} is missing model.safetensors")
    return ckpt


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Copy a checkpoint's weights into `model` (shapes must match exactly)."""
    try:
        tensors = load_file(ckpt / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise LLMScratchError(f"cannot read weights {ckpt / 'model.safetensors'}: {err}") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # A tied output layer is saved once, under the embedding's name.
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if missing or unexpected:
        raise LLMScratchError(
            f"weights in {ckpt} do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def load_checkpoint(
    ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> TrainState:
    """Restore weights, optimizer and RNG states; return the saved TrainState."""
    load_weights(model, ckpt)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    state = TrainState(**read_json(ckpt / "state.json"))
    restore_rng(state.rng)
    return state


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise LLMScratchError(f"cannot read {path}: {err}") from None


def load_run(run_dir: Path, device: str | torch.device = "cpu"):
    """The newest model of a run, with its tokenizer and config, ready for inference.

    Returns (model, tokenizer, config); the model is in eval mode on `device`.
    """
    from llmscratch.config import load_config
    from llmscratch.model import GPT
    from llmscratch.tokenizer import Tokenizer

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    config = load_config(run_dir / "config.yaml")
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    model = GPT(config.model)
    load_weights(model, ckpt)
    return model.to(device).eval(), tokenizer, config
