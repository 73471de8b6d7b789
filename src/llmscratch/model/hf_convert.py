"""Hugging Face checkpoints in and out: GPT-2, Llama 3, Qwen3 and Qwen3-MoE.

A Hugging Face model folder holds `config.json` (the architecture) and its
weights as safetensors: one `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Converting is two translations:

- the config: `config_from_hf` / `config_to_hf` (hf_config.py) map Hugging
  Face's fields (hidden_size, num_key_value_heads, rope_scaling...) onto
  `ModelConfig`;
- the tensors: `weight_links` lists, for every one of our tensors, the
  Hugging Face tensors it is made of. Most are the same matrix under another
  name. Three kinds are not: our fused q/k/v projection is Hugging Face's
  q_proj, k_proj and v_proj concatenated; our stacked MoE experts are its E
  per-expert matrices stacked; and GPT-2's `Conv1D` layers store (in, out),
  the transpose of a Linear weight. The one table serves both directions.

Loading never needs the model's memory twice: the model is built on the meta
device (no memory), shards are opened memory-mapped, and each parameter
becomes its tensor (`GPT.from_state_dict`), copied only to change dtype or
to fuse q/k/v.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmscratch.errors import LLMScratchError
from llmscratch.model.config import DTYPES, ModelConfig, torch_dtype
from llmscratch.model.hf_config import config_from_hf, config_to_hf, family_of
from llmscratch.model.transformer import GPT

# Tensor dtypes in safetensors headers that hold plain (unquantized) weights.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Non-weight tensors some checkpoints carry: GPT-2's causal-mask buffers, RoPE tables.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


# --- the tensor table -----------------------------------------------------------------


@dataclass
class Link:
    """Our tensor `ours` is made of the Hugging Face tensors `theirs`.

    join: "same" (one tensor, the same matrix), "cat" (concatenated along dim
    0: q, k, v) or "stack" (stacked along a new dim 0: one per expert).
    transpose: stored as (in, out) by GPT-2's Conv1D, the transpose of ours.
    """

    ours: str
    theirs: list[str]
    join: str = "same"
    transpose: bool = False


def weight_links(config: ModelConfig) -> list[Link]:
    """For every tensor of our model, the Hugging Face tensors it is made of."""
    family, c = family_of(config), config
    links: list[Link] = []

    def same(ours: str, theirs: str, transpose: bool = False, bias: bool = False) -> None:
        links.append(Link(f"{ours}.weight", [f"{theirs}.weight"], transpose=transpose))
        if bias:
            links.append(Link(f"{ours}.bias", [f"{theirs}.bias"]))

    if family == "gpt2":
        same("tok_emb", "transformer.wte")
        same("pos_emb", "transformer.wpe")
        for i in range(c.n_layer):
            ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
            same(f"{ours}.ln_1", f"{theirs}.ln_1", bias=c.bias)
            same(f"{ours}.attn.qkv", f"{theirs}.attn.c_attn", transpose=True, bias=c.bias)
            same(f"{ours}.attn.proj", f"{theirs}.attn.c_proj", transpose=True, bias=c.bias)
            same(f"{ours}.ln_2", f"{theirs}.ln_2", bias=c.bias)
            same(f"{ours}.mlp.fc", f"{theirs}.mlp.c_fc", transpose=True, bias=c.bias)
            same(f"{ours}.mlp.proj", f"{theirs}.mlp.c_proj", transpose=True, bias=c.bias)
        same("ln_f", "transformer.ln_f", bias=c.bias)
    else:
        same("tok_emb", "model.embed_tokens")
        for i in range(c.n_layer):
            ours, theirs = f"blocks.{i}", f"model.layers.{i}"
            attn = f"{theirs}.self_attn"
            same(f"{ours}.ln_1", f"{theirs}.input_layernorm")
            for kind in ["weight", "bias"] if c.bias or c.qkv_bias else ["weight"]:
                qkv = [f"{attn}.{p}_proj.{kind}" for p in "qkv"]
                links.append(Link(f"{ours}.attn.qkv.{kind}", qkv, join="cat"))
            if c.qk_norm:
                same(f"{ours}.attn.q_norm", f"{attn}.q_norm")
                same(f"{ours}.attn.k_norm", f"{attn}.k_norm")
            same(f"{ours}.attn.proj", f"{attn}.o_proj", bias=c.bias)
            same(f"{ours}.ln_2", f"{theirs}.post_attention_layernorm")
            if c.mlp == "moe":
                same(f"{ours}.mlp.router", f"{theirs}.mlp.gate")
                for ours_name, theirs_name in [("gate", "gate_proj"), ("up", "up_proj"),
                                               ("proj", "down_proj")]:
                    experts = [f"{theirs}.mlp.experts.{e}.{theirs_name}.weight"
                               for e in range(c.n_expert)]
                    links.append(Link(f"{ours}.mlp.{ours_name}", experts, join="stack"))
            else:
                same(f"{ours}.mlp.gate", f"{theirs}.mlp.gate_proj", bias=c.bias)
                same(f"{ours}.mlp.up", f"{theirs}.mlp.up_proj", bias=c.bias)
                same(f"{ours}.mlp.proj", f"{theirs}.mlp.down_proj", bias=c.bias)
        same("ln_f", "model.norm")
    if not c.tie_embeddings:
        same("lm_head", "lm_head")
    return links


def their_shapes(link: Link, our_shape: torch.Size, config: ModelConfig) -> list[tuple]:
    """The shape each Hugging Face tensor of `link` must have, given our tensor's shape."""
    if link.join == "stack":
        return [tuple(our_shape[1:])] * len(link.theirs)
    if link.join == "cat":  # q, k, v rows: H Dh, Hkv Dh, Hkv Dh
        rows = [config.n_head * config.head_dim] + [config.kv_heads * config.head_dim] * 2
        return [(r, *our_shape[1:]) for r in rows]
    return [tuple(reversed(our_shape)) if link.transpose else tuple(our_shape)]


def join_tensors(link: Link, pieces: list[torch.Tensor]) -> torch.Tensor:
    """Hugging Face tensors -> ours."""
    if link.join == "cat":
        return torch.cat(pieces, dim=0)
    if link.join == "stack":
        return torch.stack(pieces, dim=0)
    return pieces[0].t() if link.transpose else pieces[0]


def split_tensor(link: Link, tensor: torch.Tensor, config: ModelConfig) -> list[torch.Tensor]:
    """Ours -> Hugging Face tensors (contiguous, ready to save)."""
    if link.join == "cat":
        rows = [shape[0] for shape in their_shapes(link, tensor.shape, config)]
        pieces = list(tensor.split(rows, dim=0))
    elif link.join == "stack":
        pieces = list(tensor.unbind(0))
    else:
        pieces = [tensor.t() if link.transpose else tensor]
    return [p.contiguous() for p in pieces]


# --- reading a folder -----------------------------------------------------------------


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


def load_hf_model(folder: str | os.PathLike, dtype: str | None = None) -> GPT:
    """A Hugging Face model folder as our `GPT`, in `dtype` ("fp32", "bf16"; default:
    the checkpoint's own, with fp16 widened to fp32)."""
    folder = Path(folder)
    config = read_hf_config(folder)
    weights = SafetensorsFolder(folder)
    config = replace(config, dtype=dtype or _checkpoint_dtype(weights))
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in GPT(config).state_dict().items()}
    tensors, used = {}, set()
    for link in weight_links(config):
        expected = their_shapes(link, shapes[link.ours], config)
        pieces = [weights.read(name, shape)
                  for name, shape in zip(link.theirs, expected, strict=True)]
        tensors[link.ours] = join_tensors(link, pieces).to(config.torch_dtype).contiguous()
        used.update(link.theirs)
    unknown = sorted(
        name for name in set(weights.shard_of) - used
        if not name.endswith(IGNORED_SUFFIXES) and not (name == "lm_head.weight"
                                                        and config.tie_embeddings)
    )
    if unknown:
        raise LLMScratchError(f"the checkpoint has tensors this architecture does not use, "
                              f"e.g. {unknown[0]} ({len(unknown)} in all)")
    return GPT.from_state_dict(config, tensors)


def read_hf_config(folder: Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LLMScratchError(f"{folder} is not a Hugging Face model folder (no config.json)")
    return config_from_hf(read_json(path), str(path))


def _checkpoint_dtype(weights: SafetensorsFolder) -> str:
    stored = weights.dtype_of(next(iter(weights.shard_of)))
    return "bf16" if stored == "BF16" else "fp32"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LLMScratchError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise LLMScratchError(f"{path} must hold a JSON object")
    return data


def check_dtype(dtype: str | None) -> str | None:
    """`dtype` if we can convert to it (None = keep the checkpoint's), else a clear error."""
    if dtype is not None and dtype not in DTYPES:
        raise LLMScratchError(f"unsupported dtype {dtype!r}; choose {' or '.join(DTYPES)}")
    return dtype


def hf_tensors(model: GPT, dtype: str | None = None) -> dict[str, torch.Tensor]:
    """Our model's weights under Hugging Face's names and layouts."""
    config = model.config
    ours = model.state_dict()
    cast_to = torch_dtype(dtype) if dtype else None
    tensors = {}
    for link in weight_links(config):
        pieces = split_tensor(link, ours[link.ours], config)
        for name, piece in zip(link.theirs, pieces, strict=True):
            tensors[name] = piece.to(cast_to) if cast_to is not None else piece
    if family_of(config) == "gpt2" and not config.bias:  # GPT-2 always has biases: zeros
        for name, piece in list(tensors.items()):
            if name.startswith("transformer.h.") or name.startswith("transformer.ln_f"):
                bias = name.removesuffix(".weight") + ".bias"
                width = piece.shape[-1] if piece.dim() == 2 else piece.shape[0]
                tensors[bias] = torch.zeros(width, dtype=piece.dtype)
    return tensors


# --- converting folders ---------------------------------------------------------------

# Files of a Hugging Face folder besides the weights and config.json: the tokenizer,
# its special tokens and chat template, generation defaults. Kept as they are.
HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "chat_template.jinja", "chat_template.json",
                 "vocab.json", "merges.txt")
CONVERTED_STEP = "step-00000000"
SHARD_BYTES = 5 * 2**30  # the hub's customary shard size


def resolve_source(source: str) -> Path:
    """A local Hugging Face folder, or a hub id ("org/name") downloaded when online."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise LLMScratchError(f"{source} is not a folder (nor a hub id like org/name)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise LLMScratchError(f"{source} is not a local folder, and HF_HUB_OFFLINE forbids "
                              "downloading it; give the path of a downloaded copy")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LLMScratchError("downloading needs huggingface_hub: pip install 'llmscratch[hf]'"
                              ) from None
    try:
        patterns = ["config.json", "*.safetensors", "model.safetensors.index.json",
                    *HF_SIDE_FILES]
        return Path(snapshot_download(source, allow_patterns=patterns))
    except Exception as err:  # network, authentication, unknown repo: all one line
        reason = " ".join(str(err).split())[:200]
        raise LLMScratchError(f"cannot download {source} from the hub: {reason}") from None


def convert_from_hf(source: str, out: Path, dtype: str | None = None,
                    overwrite: bool = False) -> Path:
    """Write a Hugging Face model as a run directory that `load_run` reads.

    OUT/config.yaml, OUT/tokenizer/ and OUT/checkpoints/step-00000000/model.safetensors
    (with its manifest, and `latest` pointing at it) follow the layout of a pretraining run
    (training/checkpoint.py), so `generate --run` and `eval --run` take it; OUT/hf/
    keeps the source's tokenizer files and chat template for `convert_to_hf`.
    """
    from llmscratch.config import RunConfig, save_config
    from llmscratch.tokenizer.hf_json import load_hf_tokenizer
    from llmscratch.training.checkpoint import (
        CHECKPOINTS,
        atomic_write_text,
        model_state,
        write_manifest,
    )

    check_dtype(dtype)
    out = _check_out(out, overwrite)
    folder = resolve_source(source)
    if not (folder / "tokenizer.json").is_file():
        raise LLMScratchError(f"no tokenizer.json in {folder}; a converted model needs its "
                              "tokenizer to generate or evaluate")
    model = load_hf_model(folder, dtype)
    tokenizer = load_hf_tokenizer(folder)

    def write(tmp: Path) -> None:
        save_config(RunConfig(model=model.config), tmp / "config.yaml")
        tokenizer.save(tmp / "tokenizer")
        checkpoint = tmp / CHECKPOINTS / CONVERTED_STEP
        checkpoint.mkdir(parents=True)
        save_file(model_state(model), checkpoint / "model.safetensors")
        write_manifest(checkpoint)  # load_run verifies every checkpoint against it
        atomic_write_text(tmp / CHECKPOINTS / "latest", CONVERTED_STEP + "\n")
        _copy_side_files(folder, tmp / "hf")

    return _write_folder(out, write)


def convert_to_hf(run: Path, out: Path, dtype: str | None = None, overwrite: bool = False,
                  shard_bytes: int = SHARD_BYTES) -> Path:
    """Write a run (or a converted model) as a Hugging Face folder:
    config.json, safetensors (sharded above `shard_bytes`, with an index) and the
    tokenizer, loadable by `AutoModelForCausalLM` and `AutoTokenizer`."""
    from llmscratch.tokenizer.hf_json import save_hf_tokenizer
    from llmscratch.training.checkpoint import load_run

    check_dtype(dtype)
    out = _check_out(out, overwrite)
    model, tokenizer, _ = load_run(Path(run))
    config = replace(model.config, dtype=dtype or _dtype_name(model.tok_emb.weight.dtype))
    hf_config = config_to_hf(config)
    tensors = hf_tensors(model, config.dtype)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        _save_shards(tensors, tmp, shard_bytes)
        if (Path(run) / "hf" / "tokenizer.json").is_file():  # imported: keep the originals
            _copy_side_files(Path(run) / "hf", tmp)
        else:
            save_hf_tokenizer(tokenizer, tmp)
            specials = tokenizer.special_tokens
            eos = "<|endoftext|>" if "<|endoftext|>" in specials else None
            tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos,
                                "model_max_length": config.context_length}
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))

    return _write_folder(out, write)


def _dtype_name(dtype: torch.dtype) -> str:
    return next((name for name in DTYPES if torch_dtype(name) == dtype), "fp32")


def _check_out(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise LLMScratchError(f"{out} already exists; choose a new folder or pass --overwrite")
    return out


def _write_folder(out: Path, write) -> Path:
    """Run `write(tmp)` on a temporary folder beside `out`, then move it into place:
    a failure or a kill leaves no half-written `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _copy_side_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in HF_SIDE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


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
