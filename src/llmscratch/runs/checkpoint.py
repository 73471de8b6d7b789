"""Checkpoints: written atomically, verified against their manifest before any use.

    checkpoints/
      step-00000500/            one complete checkpoint:
        model.safetensors         weights (with a base run: only the tensors that train)
        optimizer.pt              optimizer state (tensors and numbers; loaded weights_only)
        (dcp/                     instead of the two above under FSDP: sharded model and
                                  optimizer, runs/sharded.py)
        config.yaml               the run's config.yaml when the checkpoint was written
        state.json                step, tokens seen, data-loader position, RNG states
        manifest.json             size and SHA-256 of every file above, and of the run's
                                  tokenizer
      latest                    name of the newest complete checkpoint

Atomicity: a checkpoint is written into a temporary folder, then renamed into
place, and only then does `latest` (itself replaced by an atomic rename) point
to it. A kill at any moment leaves the previous checkpoint complete and named;
a full disk leaves it too, and says so.

Trust: a disk can fill up, a copy can be cut short, a file can be edited or
added. Before a checkpoint is used, every file in it must be listed in the
manifest with its size and hash, and every listed file must match; the
manifest, not the folder's contents, says what format the weights are in.
A mismatch is an error naming the file; `llmscratch pretrain --resume DIR
--fallback` (a fine-tuning run: `llmscratch finetune resume DIR --fallback`)
then continues from the newest checkpoint that passes, and only when asked.
Nothing is ever unpickled: weights are safetensors, the optimizer's state is
read with `torch.load(weights_only=True)`, and sharded checkpoints through a
reader that refuses anything but their metadata (runs/sharded.py).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmscratch.distributed import DistInfo, barrier, gather_objects, is_sharded, unwrap
from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_json, atomic_write_text, read_json, sha256_file
from llmscratch.runs import sharded
from llmscratch.runs.config import RunConfig, load_config
from llmscratch.runs.run import Run

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
CONFIG = "config.yaml"
MANIFEST = "manifest.json"


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


def model_state(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Weights to save: tied tensors once (safetensors refuses shared memory); with
    `trainable_only`, only the parameters that train (the rest comes from the base run)."""
    trains = {name for name, p in model.named_parameters() if p.requires_grad}
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen or (trainable_only and name not in trains):
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors


# --- writing ----------------------------------------------------------------------------


def save_checkpoint(run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainState, keep: int = 2, info: DistInfo | None = None,
                    trainable_only: bool = False) -> Path:
    """Write a complete checkpoint for `state.step`, point `latest` at it, prune old ones.

    Under torchrun every rank calls this: FSDP shards are written by all of
    them (runs/sharded.py), everything else by rank 0 alone. With
    `trainable_only` the weights file holds only the parameters that train
    (LoRA adapters, a head): the run's run.json names the base run for the rest.
    """
    info = info or DistInfo()
    name = run.checkpoint_dir(state.step).name
    tmp = run.checkpoints_dir / f".{name}.tmp"  # one name that every rank can find
    state.rng = capture_rng()
    state.rng_ranks = gather_objects(state.rng, info)
    try:
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(info)
        if is_sharded(model):
            sharded.save(model, optimizer, tmp / sharded.DCP_DIR)
        elif info.is_main:
            save_file(model_state(unwrap(model), trainable_only), tmp / WEIGHTS)
            save_torch(optimizer.state_dict(), tmp / OPTIMIZER)
        barrier(info)
        if info.is_main:
            _finish(run, tmp, name, state, trainable_only, keep)
    except (OSError, RuntimeError, SafetensorError, LLMScratchError) as err:
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, RuntimeError) and not _is_write_failure(err):
            raise  # a bug, not the disk: keep its traceback
        raise LLMScratchError(f"cannot write checkpoint {name} in {run.checkpoints_dir}: "
                              f"{_reason(err)}") from None
    barrier(info)
    return run.checkpoints_dir / name


def _finish(run: Run, tmp: Path, name: str, state: TrainState, trainable_only: bool,
            keep: int) -> None:
    """Rank 0: state, config and manifest, then rename into place and prune."""
    (tmp / STATE).write_text(json.dumps(dataclasses.asdict(state)))
    shutil.copyfile(run.config_path, tmp / CONFIG)
    write_manifest(tmp, run, trainable_only)
    final = run.checkpoints_dir / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(run.latest_path, name + "\n")
    for old in run.checkpoint_dirs()[:-keep]:
        shutil.rmtree(old)


def save_weights(run: Run, model: torch.nn.Module, step: int = 0,
                 trainable_only: bool = False) -> Path:
    """A checkpoint of weights alone (an imported model's, or imported adapters with
    `trainable_only`): no optimizer, no loop state."""
    name = run.checkpoint_dir(step).name
    tmp = run.checkpoints_dir / f".{name}.tmp"
    try:
        tmp.mkdir(parents=True)
        save_file(model_state(model, trainable_only), tmp / WEIGHTS)
        shutil.copyfile(run.config_path, tmp / CONFIG)
        write_manifest(tmp, run, trainable_only)
        tmp.rename(run.checkpoints_dir / name)
        atomic_write_text(run.latest_path, name + "\n")
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LLMScratchError(f"cannot write weights into {run.path}: {_reason(err)}") from None
    return run.checkpoints_dir / name


def _is_write_failure(err: RuntimeError) -> bool:
    """Sharded saving may report a full disk as a RuntimeError ("... failed writing ...")."""
    return any(word in str(err).lower() for word in ("write", "space", "disk"))


def save_torch(obj: object, path: Path) -> None:
    """torch.save, with a full disk (or any failure to write) raised as the OSError it is.

    torch.save turns a failed write into a RuntimeError whose text names no
    cause ("unexpected pos 576 vs 534"); writing through our own file object
    lets us see the OSError underneath and raise that instead.
    """
    with path.open("wb") as f:
        writer = _Writer(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


class _Writer:
    """A file object that remembers the OSError that stopped a write."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split())[:200]


def write_manifest(ckpt: Path, run: Run, trainable_only: bool = False) -> None:
    """manifest.json: the size and SHA-256 of every other file in the checkpoint, and of
    the run's tokenizer (which the weights belong with)."""
    files = {}
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        rel = path.relative_to(ckpt).as_posix()
        if rel != MANIFEST:
            files[rel] = _file_entry(path)
    run_files = {}
    for path in sorted(run.tokenizer_dir.glob("*.json")):
        run_files[path.relative_to(run.path).as_posix()] = _file_entry(path)
    atomic_write_json(ckpt / MANIFEST, {"files": files, "run_files": run_files,
                                        "trainable_only": trainable_only})


def _file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


# --- verifying ----------------------------------------------------------------------------


def read_manifest(ckpt: Path) -> dict:
    """A checkpoint's manifest (unverified: `verify_checkpoint` checks the files)."""
    if not (ckpt / MANIFEST).is_file():
        raise LLMScratchError(f"checkpoint {ckpt} has no manifest.json (incomplete or corrupt)")
    try:
        manifest = read_json(ckpt / MANIFEST)
        files = manifest["files"]
        if not isinstance(files, dict) or not isinstance(manifest.get("run_files", {}), dict):
            raise TypeError("files must be a mapping")
    except (LLMScratchError, KeyError, TypeError) as err:
        raise LLMScratchError(f"checkpoint {ckpt}: manifest.json is corrupt ({err})") from None
    return manifest


def verify_checkpoint(ckpt: Path, run: Run | None = None) -> dict:
    """Check every file of a checkpoint against its manifest; return the manifest.

    Raises naming the first problem: a listed file missing, truncated or
    changed, a file that the manifest does not list (added afterwards: it is
    never read), or, given the `run`, a changed tokenizer.
    """
    manifest = read_manifest(ckpt)
    files = manifest["files"]
    for rel, expected in files.items():
        _check_file(ckpt / rel, expected, f"checkpoint {ckpt}: {rel}")
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        rel = path.relative_to(ckpt).as_posix()
        if rel != MANIFEST and rel not in files:
            raise LLMScratchError(
                f"checkpoint {ckpt} holds {rel}, which its manifest does not list (added after "
                "the checkpoint was written); it will not be read: remove it")
    if run is not None:
        for rel, expected in manifest.get("run_files", {}).items():
            _check_file(run.path / rel, expected,
                        f"{run.path / rel} (checkpoint {ckpt.name} was written with another)")
    return manifest


def _check_file(path: Path, expected: dict, label: str) -> None:
    if not path.is_file():
        raise LLMScratchError(f"{label} is missing")
    size = path.stat().st_size
    if size != expected.get("bytes"):
        raise LLMScratchError(f"{label} is truncated or changed ({size} of "
                              f"{expected.get('bytes')} bytes)")
    if sha256_file(path) != expected.get("sha256"):
        raise LLMScratchError(f"{label} does not match its SHA-256 (the file is corrupt)")


def latest_checkpoint(run: Run, fallback: bool = False) -> Path:
    """The newest checkpoint of a run, verified; with `fallback`, the newest good one."""
    if not run.latest_path.is_file():
        raise LLMScratchError(f"{run.path} has no checkpoint yet (no checkpoints/latest); "
                              "make it again with the command that made it, and --overwrite")
    newest = run.checkpoints_dir / run.latest_path.read_text().strip()
    try:
        if not newest.is_dir() or newest.parent != run.checkpoints_dir:
            raise LLMScratchError(f"checkpoints/latest of {run.path} names {newest.name}, "
                                  "which does not exist")
        verify_checkpoint(newest, run)
        return newest
    except LLMScratchError as err:
        if not fallback:
            raise LLMScratchError(f"{err}; {_fallback_hint(run)}") from None
        problem = str(err)
    for ckpt in reversed(run.checkpoint_dirs()):
        if ckpt.name >= newest.name:
            continue
        try:
            verify_checkpoint(ckpt, run)
        except LLMScratchError:
            continue
        print(f"warning: {problem}; falling back to {ckpt.name}", file=sys.stderr)
        return ckpt
    raise LLMScratchError(f"{problem}, and no older checkpoint of {run.path} is intact; "
                          "start the run again")


def resumable_checkpoint(run: Run, kind: str, fallback: bool = False) -> Path:
    """The checkpoint that `llmscratch pretrain --resume` (kind "pretrain") or `finetune
    resume` ("finetune") continues `run` from: its newest (with `fallback`, its newest
    intact). A run resumes only with the command that made it; an imported or merged
    model, or adapters imported over a base, hold weights without a training state
    (state.json: the step, the data's position, the random generators), and train further
    only as the base of a new run."""
    command, made_as = run.resume_command(), run.read_info().kind
    ckpt = latest_checkpoint(run, fallback=fallback) if command else None
    if ckpt is None or not (ckpt / STATE).is_file():
        raise LLMScratchError(f"{run.path} holds a model without a training state to continue "
                              f"(it was {'merged' if made_as == 'merged' else 'imported'}, not "
                              "trained here); train it further as the base of a new run: "
                              f"`llmscratch finetune sft --base {run.path} --out NEW` "
                              "(or classify, reward, dpo, rl)")
    if made_as != kind:
        raise LLMScratchError(f"{run.path} is not a "
                              f"{'pretraining' if kind == 'pretrain' else 'fine-tuning'} run; "
                              f"resume it with `{command}`")
    return ckpt


def _fallback_hint(run: Run) -> str:
    """What to do about a damaged newest checkpoint: the command that continues training
    from the newest intact one, if the run trains, and the one that lists them."""
    verify = f"`llmscratch checkpoint verify {run.path}` lists the intact checkpoints"
    resume = run.resume_command()
    return f"`{resume} --fallback` continues from the newest intact one; {verify}" if resume \
        else verify


def verify_run(run: Run) -> list[tuple[str, str | None]]:
    """Every checkpoint's verdict, oldest first, then the run's: (name, None) when intact,
    (name, problem) when not. The run's own checks: `latest` names a checkpoint
    that exists, and config.yaml's model is the one that checkpoint was trained with."""
    verdicts: list[tuple[str, str | None]] = []
    for ckpt in run.checkpoint_dirs():
        try:
            verify_checkpoint(ckpt, run)
            verdicts.append((ckpt.name, None))
        except LLMScratchError as err:
            verdicts.append((ckpt.name, str(err)))
    latest_name = run.latest_path.relative_to(run.path).as_posix()
    if not run.latest_path.is_file():
        return verdicts + [(latest_name, "missing: the run has no complete checkpoint")]
    latest = run.checkpoints_dir / run.latest_path.read_text().strip()
    if not latest.is_dir() or latest.parent != run.checkpoints_dir:
        return verdicts + [(latest_name, f"names {latest.name}, which does not exist")]
    saved = checkpoint_config(latest)
    if saved is not None:
        current = run.read_config().model
        changed = [f"model.{k}" for k, v in vars(saved.model).items()
                   if getattr(current, k) != v]
        if changed:
            verdicts.append((run.config_path.name, f"{', '.join(changed)} differ from the "
                             f"config {latest.name} was trained with"))
    return verdicts


# --- reading (only verified checkpoints) ----------------------------------------------


def is_sharded_checkpoint(manifest: dict) -> bool:
    """Whether the manifest lists FSDP shards (dcp/...) rather than model.safetensors."""
    return any(rel.startswith(sharded.DCP_DIR + "/") for rel in manifest["files"])


def checkpoint_config(ckpt: Path) -> RunConfig | None:
    """The config a checkpoint was written with (None for checkpoints older than that)."""
    return load_config(ckpt / CONFIG) if (ckpt / CONFIG).is_file() else None


def read_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's model.safetensors."""
    try:
        return load_file(ckpt / WEIGHTS)
    except (SafetensorError, OSError) as err:
        raise LLMScratchError(f"cannot read weights {ckpt / WEIGHTS}: {err}") from None


def load_weights(model: torch.nn.Module, ckpt: Path, manifest: dict,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Copy a verified checkpoint's weights (`tensors`, when already read) into `model`.

    A full checkpoint must cover every tensor of the model (a tied output
    layer is saved once, under the embedding's name); a trainable-only one
    (manifest "trainable_only") replaces the tensors it holds and keeps the
    rest, which came from the base run. Names and shapes must match exactly.
    """
    if is_sharded_checkpoint(manifest):
        sharded.load_model(model, ckpt / sharded.DCP_DIR)
        return
    tensors = read_weights(ckpt) if tensors is None else tensors
    expected = model.state_dict()
    unexpected = sorted(set(tensors) - set(expected))
    missing = [] if manifest.get("trainable_only") else sorted(
        k for k in set(expected) - set(tensors)
        if not (k == "lm_head.weight" and getattr(model.config, "tie_embeddings", False)))
    wrong = [k for k in tensors if k in expected and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        shapes = "; ".join(f"{k} is {tuple(tensors[k].shape)} in the checkpoint, "
                           f"{tuple(expected[k].shape)} in the model" for k in wrong[:2])
        raise LLMScratchError(
            f"the weights in {ckpt} do not fit the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}{'; ' + shapes if shapes else ''}); the model section of the "
            "config must be the one the run was trained with")
    model.load_state_dict(tensors, strict=False)


def load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    info: DistInfo | None = None) -> TrainState:
    """Restore weights, optimizer and RNG states from a verified checkpoint; return its state.

    A sharded (FSDP) checkpoint loads into any number of processes, one
    included; a full one loads into a single process or DDP.
    """
    info = info or DistInfo()
    manifest = read_manifest(ckpt)
    if is_sharded_checkpoint(manifest):
        sharded.load(model, optimizer, ckpt / sharded.DCP_DIR)
    elif is_sharded(model):
        raise LLMScratchError(f"checkpoint {ckpt} was written without FSDP; resume it with "
                              "train.parallel=ddp (or one process)")
    else:
        load_weights(unwrap(model), ckpt, manifest)
        try:
            optimizer.load_state_dict(torch.load(ckpt / OPTIMIZER, weights_only=True))
        except pickle.UnpicklingError as err:  # not tensors and numbers: never unpickled
            raise LLMScratchError(f"{ckpt / OPTIMIZER} holds more than optimizer state "
                                  f"({_reason(err)}); refusing to load it") from None
        except (ValueError, KeyError, RuntimeError) as err:
            raise LLMScratchError(f"the optimizer state in {ckpt} does not fit this run "
                                  f"({_reason(err)}); resume with the run's own "
                                  "train.optimizer") from None
    document = read_json(ckpt / STATE, "checkpoint state")
    known = {f.name for f in dataclasses.fields(TrainState)}
    if not set(document) <= known:
        raise LLMScratchError(f"{ckpt / STATE} is corrupt (unknown fields "
                              f"{sorted(set(document) - known)})")
    state = TrainState(**document)
    same_world = len(state.rng_ranks) == info.world_size
    restore_rng(state.rng_ranks[info.rank] if same_world and info.distributed else state.rng)
    return state
