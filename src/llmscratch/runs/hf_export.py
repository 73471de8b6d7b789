"""Exporting a run's newest model: as a Hugging Face folder, or as one safetensors file.

    convert_to_hf(run, out)           config.json + safetensors (+ index) + tokenizer files:
                                      `AutoModelForCausalLM.from_pretrained(out)` loads it
    export_safetensors(run, out)      `llmscratch checkpoint export`: the weights alone,
                                      FSDP shards gathered, a base run's tensors merged in

Both read the run through runs/load.py (verified checkpoint, its own
config) and write atomically: into a temporary file or folder beside the
target, renamed into place at the end. An existing file is replaced only
with `overwrite`; a folder follows the rule of every output folder (io.py:
`check_output_folder`): replaced only with `overwrite`, and only if it
holds a Hugging Face model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_json, check_output_folder, write_folder
from llmscratch.model.config import DTYPES, torch_dtype
from llmscratch.model.hf_config import config_to_hf
from llmscratch.model.hf_weights import hf_tensors
from llmscratch.model.lora import remove_lora
from llmscratch.runs.checkpoint import model_state
from llmscratch.runs.hf_import import check_dtype, copy_side_files
from llmscratch.runs.load import load_model
from llmscratch.runs.run import Run
from llmscratch.tokenizer.hf_json import save_hf_tokenizer

SHARD_BYTES = 5 * 2**30  # the hub's customary shard size


def convert_to_hf(run_dir: str | Path, out: str | Path, dtype: str | None = None,
                  overwrite: bool = False, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write a run (or an imported model) as a Hugging Face folder:
    config.json, safetensors (sharded above `shard_bytes`, with an index) and the
    tokenizer, loadable by `AutoModelForCausalLM` and `AutoTokenizer`."""
    check_dtype(dtype)
    out = Path(out)
    check_output_folder(out, overwrite, is_hf_folder, "a Hugging Face model folder")
    run = Run.open(run_dir)
    model = load_model(run)
    remove_lora(model)  # a LoRA run exports as its merged model (runs/load.py)
    tokenizer = run.tokenizer()
    config = replace(model.config, dtype=dtype or _dtype_name(model.tok_emb.weight.dtype))
    hf_config = config_to_hf(config)
    tensors = hf_tensors(model, config.dtype)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        _save_shards(tensors, tmp, shard_bytes)
        if (run.hf_dir / "tokenizer.json").is_file():  # imported: keep the originals
            copy_side_files(run.hf_dir, tmp)
        else:
            save_hf_tokenizer(tokenizer.parts, tmp)
            stop_ids = run.generation_settings().stop_token_ids
            eos = tokenizer.decode(stop_ids[:1]) if stop_ids else None
            atomic_write_json(tmp / "tokenizer_config.json", {
                "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos,
                "model_max_length": config.context_length})

    try:
        return write_folder(out, write)
    except SafetensorError as err:
        raise LLMScratchError(f"cannot write {out}: {err}") from None


def export_safetensors(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """The newest model's weights as one safetensors file, under our tensor names."""
    out = Path(out)
    _check_file_target(out, overwrite)
    model = load_model(Run.open(run_dir))
    remove_lora(model)  # a LoRA run's adapters, merged into its weights

    def write(tmp: Path) -> None:
        save_file(model_state(model), tmp)

    return _write_file(out, write)


def _dtype_name(dtype: torch.dtype) -> str:
    return next((name for name in DTYPES if torch_dtype(name) == dtype), "fp32")


def is_hf_folder(path: Path) -> bool:
    """Whether `path` holds a Hugging Face model (its config.json)."""
    return (path / "config.json").is_file()


def _check_file_target(out: Path, overwrite: bool) -> None:
    """Fail, changing nothing, unless the file `out` may be written."""
    if out.is_dir():
        raise LLMScratchError(f"{out} is a directory; give the name of a .safetensors file")
    if out.exists() and not overwrite:
        raise LLMScratchError(f"{out} already exists; choose a new name or pass --overwrite")


def _write_file(out: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` on a temporary file beside `out`, then rename it into place: a
    failure or a kill leaves `out` as it was."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    except OSError as err:
        raise LLMScratchError(f"cannot write {out}: {err.strerror}") from None
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise LLMScratchError(f"cannot write {out}: {reason}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _save_shards(tensors: dict[str, torch.Tensor], folder: Path, shard_bytes: int) -> None:
    """One model.safetensors, or numbered shards plus model.safetensors.index.json."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
