"""Importing a Hugging Face model as a run: `llmscratch convert from-hf`.

A Hugging Face model folder holds `config.json` (the architecture), its
weights as safetensors (one `model.safetensors`, or shards listed in
`model.safetensors.index.json`), its tokenizer (`tokenizer.json`) and, for
chat models, a chat template (`tokenizer_config.json`). Importing is

    config.json                -> ModelConfig            (model/hf_config.py)
    safetensors                -> our tensors            (model/hf_weights.py)
    tokenizer.json             -> our Tokenizer          (tokenizer/hf_json.py)
    eos ids, chat template     -> the run's generation settings (run.json)

and the result is a run like any other (runs/run.py), of kind "import":
`generate`, `eval` and fine-tuning take it. Loading never needs the model's
memory twice: shards are opened memory-mapped and each of our tensors is
built from them (copied only to change dtype or to fuse q/k/v). Pickled
`pytorch_model.bin` weights are never loaded.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from llmscratch.errors import LLMScratchError
from llmscratch.io import read_json
from llmscratch.model.config import DTYPES, ModelConfig
from llmscratch.model.hf_config import config_from_hf
from llmscratch.model.hf_weights import model_from_hf, text_model_names
from llmscratch.model.transformer import GPT
from llmscratch.runs.checkpoint import save_weights
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import END_OF_TEXT_TOKENS, GenerationSettings, Run, RunInfo
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.hf_json import load_hf_tokenizer

# Tensor dtypes in safetensors headers that hold plain (unquantized) weights.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# A model's id on the hub: `name` or `org/name`, letters, digits and -_. (not first).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", re.ASCII)
# Files of a Hugging Face folder besides the weights and config.json: the tokenizer,
# its special tokens and chat template, generation defaults. Kept as they are.
HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "chat_template.jinja", "chat_template.json",
                 "vocab.json", "merges.txt")


class SafetensorsFolder:
    """The tensors of a folder's safetensors files, opened memory-mapped, read on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handles: dict[str, object] = {}  # shard file name -> open safetensors file
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise LLMScratchError(f"{index} has no weight_map")
            self.shard_of = dict(weight_map)
        elif (folder / "model.safetensors").is_file():
            self.shard_of = dict.fromkeys(self._open("model.safetensors").keys(),
                                          "model.safetensors")
        else:
            raise LLMScratchError(
                f"no model.safetensors or model.safetensors.index.json in {folder}; "
                "save the model with safetensors (pickled .bin weights are not loaded)"
            )
        if not self.shard_of:
            raise LLMScratchError(f"the safetensors files in {folder} hold no tensors")
        for shard in sorted(set(self.shard_of.values())):
            if not (folder / shard).is_file():
                raise LLMScratchError(f"missing shard {shard} (listed in {index.name}) in {folder}")

    def _open(self, shard: str):
        if shard not in self._handles:
            try:
                self._handles[shard] = safe_open(str(self.folder / shard), framework="pt")
            except (SafetensorError, OSError) as err:
                reason = " ".join(str(err).split())
                raise LLMScratchError(f"cannot read {self.folder / shard}: corrupt or not a "
                                      f"safetensors file ({reason})") from None
        return self._handles[shard]

    def dtype_of(self, name: str) -> str:
        """The dtype of tensor `name` as safetensors spells it ("BF16", "F32", ...)."""
        return self._open(self.shard_of[name]).get_slice(name).get_dtype()

    def read(self, name: str, shape: tuple) -> torch.Tensor:
        """Tensor `name`, after checking it exists, has `shape` and holds plain floats."""
        if name not in self.shard_of:
            raise LLMScratchError(f"tensor {name} is missing from the checkpoint in {self.folder}")
        tensor_slice = self._open(self.shard_of[name]).get_slice(name)
        found, dtype = tuple(tensor_slice.get_shape()), tensor_slice.get_dtype()
        if found != shape:
            raise LLMScratchError(f"tensor {name} has shape {found}, expected {shape} "
                                  "from config.json")
        if dtype not in FLOAT_DTYPES:
            raise LLMScratchError(f"tensor {name} has unsupported dtype {dtype} "
                                  "(quantized checkpoints are not loaded)")
        return self._open(self.shard_of[name]).get_tensor(name)

def read_hf_config(folder: Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LLMScratchError(f"{folder} is not a Hugging Face model folder (no config.json)")
    return config_from_hf(read_json(path), str(path))


def check_dtype(dtype: str | None) -> str | None:
    """`dtype` if we can convert to it (None = keep the checkpoint's), else a clear error."""
    if dtype is not None and dtype not in DTYPES:
        raise LLMScratchError(f"unsupported dtype {dtype!r}; choose {' or '.join(DTYPES)}")
    return dtype


def load_hf_model(folder: str | os.PathLike, dtype: str | None = None) -> GPT:
    """A Hugging Face model folder as our `GPT`, in `dtype` ("fp32", "bf16"; default:
    the checkpoint's own, with fp16 widened to fp32)."""
    folder = Path(folder)
    config = read_hf_config(folder)
    weights = SafetensorsFolder(folder)
    stored = weights.dtype_of(next(iter(weights.shard_of)))
    config = replace(config, dtype=dtype or ("bf16" if stored == "BF16" else "fp32"))
    names = text_model_names(weights.shard_of)  # a multimodal model's text model
    return model_from_hf(config, lambda name, shape: weights.read(names.get(name, name), shape),
                         names)


def generation_settings(folder: Path, tokenizer: Tokenizer) -> GenerationSettings:
    """Stop ids and chat template from a Hugging Face folder's own files.

    Stop ids: `eos_token_id` of generation_config.json, else of config.json
    (an id or a list); where neither names one, the tokenizer's end-of-text
    token. The chat template: chat_template.jinja, else tokenizer_config.json's
    `chat_template` (a string, or a list of named templates: "default").
    """
    stop_ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        if (folder / name).is_file():
            eos = read_json(folder / name).get("eos_token_id")
            stop_ids = [eos] if isinstance(eos, int) else [i for i in eos or []
                                                           if isinstance(i, int)]
            if stop_ids:
                break
    if not stop_ids:
        specials = tokenizer.special_tokens
        stop_ids = [specials[t] for t in END_OF_TEXT_TOKENS if t in specials]
    config = {}
    if (folder / "tokenizer_config.json").is_file():
        config = read_json(folder / "tokenizer_config.json")
    template = config.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return GenerationSettings(stop_ids, template if isinstance(template, str) else None,
                              _token_text(config.get("bos_token")),
                              _token_text(config.get("eos_token")))


def _token_text(token) -> str:
    """A special token as tokenizer_config.json gives it: a string, or {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else ""


def resolve_source(source: str) -> Path:
    """The Hugging Face folder that `source` names: a folder, or a model on the hub.

    The rule: a path that exists is a folder (or an error); anything else in
    the form of a hub id, `name` or `org/name` (`gpt2`, `Qwen/Qwen3-0.6B`),
    is a hub id, fetched into huggingface_hub's cache, or with HF_HUB_OFFLINE
    set read from that cache alone, with no network.
    """
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise LLMScratchError(f"{source} is a file; give a Hugging Face model folder or a hub id")
    if not is_hub_id(source):
        raise LLMScratchError(f"{source} is neither a folder nor a hub id (such as gpt2 or "
                              "Qwen/Qwen3-0.6B)")
    return download(source)


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a model id on the hub (huggingface_hub's rule)."""
    return bool(HUB_ID.fullmatch(name)) and len(name) <= 96 and "--" not in name \
        and ".." not in name and not name.endswith(".git")


def download(repo_id: str) -> Path:
    """A hub model's config, safetensors and tokenizer files, from the hub's cache or the
    network; every failure (offline, unreachable, unknown, gated) is one line."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:  # an optional dependency (the hf extra), so imported only when downloading
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LLMScratchError(f"{repo_id} is not a local folder, and downloading it needs "
                              "huggingface_hub: pip install 'llmscratch[hf]'") from None
    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json", *HF_SIDE_FILES]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns,
                                      local_files_only=offline))
    except Exception as err:  # network, cache, authentication, unknown repo: all one line
        raise LLMScratchError(_download_error(repo_id, err, offline)) from None


def _download_error(repo_id: str, err: Exception, offline: bool) -> str:
    """What went wrong fetching `repo_id`, in one line, by the kind of huggingface_hub error."""
    kind = type(err).__name__
    if offline and kind == "LocalEntryNotFoundError":
        return (f"{repo_id} is not a local folder nor in the Hugging Face cache, and "
                "HF_HUB_OFFLINE forbids downloading it; unset HF_HUB_OFFLINE, or give the "
                "path of a downloaded copy")
    if kind == "RepositoryNotFoundError":
        return (f"{repo_id} is neither a local folder nor a model on the Hugging Face hub "
                "(if it is private, log in first: hf auth login)")
    if kind == "GatedRepoError":
        return (f"{repo_id} is gated on the Hugging Face hub: accept its terms on its page, "
                "then log in (hf auth login)")
    if kind == "LocalEntryNotFoundError":  # the hub could not be reached
        return (f"cannot download {repo_id}: the Hugging Face hub cannot be reached and no "
                "copy is in its cache; check the network, or give a local folder")
    reason = " ".join(str(err).split())[:200]
    return f"cannot download {repo_id} from the Hugging Face hub: {kind}: {reason}"


def convert_from_hf(source: str, out: Path, dtype: str | None = None,
                    overwrite: bool = False) -> Path:
    """Write a Hugging Face model as a run directory (kind "import").

    Everything is read and checked before `out` is touched; the run keeps the
    source's tokenizer files and chat template in RUN/hf/ for `convert to-hf`.
    """
    check_dtype(dtype)
    Run.check_new(out, overwrite)
    folder = resolve_source(source)
    if not (folder / "tokenizer.json").is_file():
        raise LLMScratchError(f"no tokenizer.json in {folder}; a converted model needs its "
                              "tokenizer to generate or evaluate")
    model = load_hf_model(folder, dtype)
    tokenizer = Tokenizer.from_parts(load_hf_tokenizer(folder))
    if tokenizer.vocab_size > model.config.vocab_size:  # it would index past the embeddings
        raise LLMScratchError(f"{folder}: the tokenizer's ids run to {tokenizer.vocab_size - 1:,}"
                              f", but the model has {model.config.vocab_size:,} embedding rows; "
                              "the tokenizer is not this model's")
    info = RunInfo(kind="import", source=str(source),
                   generation=generation_settings(folder, tokenizer))

    def fill(run: Run) -> None:
        save_weights(run, model)
        copy_side_files(folder, run.hf_dir)

    return Run.create(out, RunConfig(model=model.config), info, tokenizer, overwrite, fill).path


def copy_side_files(source: Path, target: Path) -> None:
    """A Hugging Face folder's tokenizer files, chat template and generation defaults."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in HF_SIDE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, target / name)
    except OSError as err:
        raise LLMScratchError(f"cannot write {target}: {err.strerror}") from None
