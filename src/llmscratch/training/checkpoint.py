"""Run directories and checkpoints, written atomically.

A run directory holds everything a run produced:

    RUN/
      config.yaml               the resolved RunConfig
      tokenizer/tokenizer.json  the tokenizer the model was trained with
      checkpoints/
        step-00000500/          one complete checkpoint:
          model.safetensors       weights
          optimizer.pt            AdamW state (tensors only; loaded weights_only)
          (dcp/                   instead of the two above under FSDP: sharded
                                  model + optimizer, training/sharded.py)
          state.json              step, tokens seen, data-loader position, RNG states
          manifest.json           size and SHA-256 of every file above
        latest                  name of the newest complete checkpoint
      metrics.jsonl, loss.png, samples.md, report.md

Atomicity: a checkpoint is written into a temporary folder, then renamed into
place, and only then does `latest` (itself replaced by an atomic rename) point
to it. A kill at any moment leaves the previous checkpoint complete and named.

Trust: a disk can still fill up, a copy can be cut short, a file can be
edited. Before a checkpoint is used, every file is checked against the
manifest; a mismatch is an error naming the file. `--resume DIR --fallback`
then continues from the newest checkpoint that passes, and only when asked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
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
    data: dict = field(default_factory=dict)  # the loader's state_dict()
    rng_ranks: list = field(default_factory=list)  # each rank's RNG states, under torchrun


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
    np_keys = np.array(np_keys, dtype=np.uint32)
    np.random.set_state((np_name, np_keys, np_pos, np_has_gauss, np_gauss))
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
    info=None,
) -> Path:
    """Write a complete checkpoint for `state.step`, point `latest` at it, prune old ones.

    Under torchrun every rank calls this: FSDP shards are written by all of
    them (training/sharded.py), everything else by rank 0 alone. `info` is the
    run's `DistInfo` (None: a single process).
    """
    from llmscratch.training import sharded
    from llmscratch.training.parallel import DistInfo, barrier, is_sharded, unwrap

    info = info or DistInfo()
    root = Path(run_dir) / CHECKPOINTS
    name = f"step-{state.step:08d}"
    tmp = root / f".{name}.tmp"  # one name that every rank can find
    state.rng = capture_rng()
    state.rng_ranks = sharded.gather_objects(state.rng, info)
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    try:
        if is_sharded(model):
            sharded.save(model, optimizer, tmp / sharded.DCP_DIR)
        elif info.is_main:
            save_file(model_state(unwrap(model)), tmp / "model.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        barrier(info)
        if info.is_main:
            (tmp / "state.json").write_text(json.dumps(dataclasses.asdict(state)))
            write_manifest(tmp)
            final = root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_text(root / "latest", name + "\n")
            for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
                shutil.rmtree(old)
    except BaseException:
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier(info)
    return root / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(ckpt: Path) -> None:
    """manifest.json: the size and SHA-256 of every other file in the checkpoint."""
    files = {}
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        rel = path.relative_to(ckpt).as_posix()
        if rel != "manifest.json":
            files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    (ckpt / "manifest.json").write_text(json.dumps({"files": files}, indent=1))


def verify_checkpoint(ckpt: Path) -> None:
    """Check every file of a checkpoint against its manifest; raise naming the first bad one."""
    manifest = ckpt / "manifest.json"
    if not manifest.is_file():
        raise LLMScratchError(f"checkpoint {ckpt} has no manifest.json (incomplete or corrupt)")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        raise LLMScratchError(f"checkpoint {ckpt}: manifest.json is corrupt ({err})") from None
    for rel, expected in files.items():
        path = ckpt / rel
        if not path.is_file():
            raise LLMScratchError(f"checkpoint {ckpt} is missing {rel}")
        if path.stat().st_size != expected["bytes"]:
            raise LLMScratchError(f"checkpoint {ckpt}: {rel} is truncated "
                                  f"({path.stat().st_size} of {expected['bytes']} bytes)")
        if _sha256(path) != expected["sha256"]:
            raise LLMScratchError(f"checkpoint {ckpt}: {rel} does not match its SHA-256 "
                                  "(the file is corrupt)")


def latest_checkpoint(run_dir: Path, fallback: bool = False) -> Path:
    """The newest checkpoint of a run, verified; with `fallback`, the newest good one."""
    run_dir = Path(run_dir)
    pointer = run_dir / CHECKPOINTS / "latest"
    if not (run_dir / "config.yaml").is_file() or not pointer.is_file():
        raise LLMScratchError(
            f"{run_dir} is not a run directory (no config.yaml or checkpoints/latest); "
            "give the --out directory of a pretrain run"
        )
    newest = run_dir / CHECKPOINTS / pointer.read_text().strip()
    try:
        verify_checkpoint(newest)
        return newest
    except LLMScratchError as err:
        if not fallback:
            raise LLMScratchError(f"{err}; resume with `--resume {run_dir} --fallback` to use "
                                  "the previous good checkpoint") from None
        problem = str(err)
    older = sorted((p for p in (run_dir / CHECKPOINTS).glob("step-*") if p.is_dir()
                    and p.name < newest.name), reverse=True)
    for ckpt in older:
        try:
            verify_checkpoint(ckpt)
        except LLMScratchError:
            continue
        print(f"warning: {problem}; falling back to {ckpt.name}", file=sys.stderr)
        return ckpt
    raise LLMScratchError(f"{problem}, and no older checkpoint of {run_dir} is intact; "
                          "start the run again")


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Copy a checkpoint's weights into `model` (shapes must match exactly)."""
    from llmscratch.training import sharded

    if (ckpt / sharded.DCP_DIR).is_dir():
        sharded.load_model(model, ckpt / sharded.DCP_DIR)
        return
    missing, unexpected = model.load_state_dict(read_weights(ckpt), strict=False)
    # A tied output layer is saved once, under the embedding's name.
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if missing or unexpected:
        raise LLMScratchError(
            f"weights in {ckpt} do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's model.safetensors."""
    try:
        return load_file(ckpt / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise LLMScratchError(f"cannot read weights {ckpt / 'model.safetensors'}: {err}") from None


def load_checkpoint(
    ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, info=None
) -> TrainState:
    """Restore weights, optimizer and RNG states; return the saved TrainState.

    A sharded (FSDP) checkpoint loads into any number of processes, one
    included; a full one loads into a single process or DDP.
    """
    from llmscratch.training import sharded
    from llmscratch.training.parallel import DistInfo, is_sharded, unwrap

    info = info or DistInfo()
    if (ckpt / sharded.DCP_DIR).is_dir():
        sharded.load(model, optimizer, ckpt / sharded.DCP_DIR)
    elif is_sharded(model):
        raise LLMScratchError(f"checkpoint {ckpt} was written without FSDP; resume it with "
                              "train.parallel=ddp (or one process)")
    else:
        load_weights(unwrap(model), ckpt)
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    state = TrainState(**read_json(ckpt / "state.json"))
    same_world = len(state.rng_ranks) == info.world_size
    restore_rng(state.rng_ranks[info.rank] if same_world and info.distributed else state.rng)
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
    if (ckpt / "model.safetensors").is_file():
        # Built on the meta device, the model adopts the tensors in their own dtype:
        # no random initialisation and no second copy (imported models can be large).
        model = GPT.from_state_dict(config.model, read_weights(ckpt))
    else:
        model = GPT(config.model)
        load_weights(model, ckpt)
    return model.to(device).eval(), tokenizer, config
