"""Sharded checkpoints of FSDP2 runs, through `torch.distributed.checkpoint` (DCP).

Under FSDP no process holds the whole model, so none can write a
safetensors file of it without first gathering everything into one place.
DCP instead has every process write its own shards, plus a metadata file
that says which slice of which tensor each shard holds. Loading reads the
slices each process needs for *its* layout, so a checkpoint written by 8
processes resumes on 4, or on 1 (Wang et al., 2024, "TorchTitan", sec. 3.2).

Parameters and optimizer state are named by their place in the model
(`blocks.0.attn.qkv.weight`), not by position, which is what makes the
layout change possible: `get_model_state_dict` / `get_optimizer_state_dict`
produce such names for sharded and plain models alike.

Trust. DCP stores its metadata, and the optimizer's non-tensor values, as
pickles, and unpickling runs whatever code a crafted file names. So this
module reads them differently from DCP's defaults: the metadata through an
unpickler that builds only DCP's own metadata classes and torch's sizes and
dtypes (`_MetadataUnpickler`), the values through `torch.load(weights_only=True)`.
A file that needs anything else is refused. Checkpoints are also verified
against their manifest before they get here (runs/checkpoint.py). Still,
treat a sharded checkpoint as you would any file format with a complex
parser: load the ones you or your cluster wrote.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from llmscratch.errors import LLMScratchError

DCP_DIR = "dcp"

# What DCP's metadata file may hold: its own dataclasses, torch's sizes and dtypes,
# a layout (pickled as a call of torch.serialization._get_layout, a lookup by name) and
# the path it was saved to. Nothing that can run code of a file's choosing.
_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "StorageMeta", "MetadataIndex", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath")}


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that can build DCP's metadata and nothing else (Python's documented way
    to restrict unpickling: https://docs.python.org/3/library/pickle.html#restricting-globals)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None),
                                            (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not checkpoint metadata")


def read_metadata(folder: Path) -> dcp_metadata.Metadata:
    """A sharded checkpoint's metadata, read by `_MetadataUnpickler`; anything else refused."""
    path = Path(folder) / ".metadata"
    try:
        with path.open("rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as err:
        raise LLMScratchError(
            f"{path} is not a sharded checkpoint's metadata ({err}); refusing to load it "
            "(sharded checkpoints are for runs you trust)") from None
    if not isinstance(metadata, dcp_metadata.Metadata) or not all(
            isinstance(v, _StorageInfo) for v in (metadata.storage_data or {}).values()):
        raise LLMScratchError(f"{path} is not a sharded checkpoint's metadata; refusing to "
                              "load it")
    return metadata


class _SafeReader(FileSystemReader):
    """DCP's file reader, with the metadata read by `read_metadata`."""

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        metadata = read_metadata(Path(self.path))
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyPlanner(DefaultLoadPlanner):
    """DCP's load planner, with non-tensor values read by `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _load(state: dict, path: Path) -> None:
    read_metadata(path)  # refused here, in one clear line, before DCP reads anything
    dcp.load(state, storage_reader=_SafeReader(str(path)), planner=_WeightsOnlyPlanner())


def save(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every rank writes its shards of the model and optimizer state into `path`."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))


def load(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load model and optimizer state from a DCP checkpoint, resharding as needed."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    _load(state, path)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def load_model(model: nn.Module, path: Path) -> None:
    """Load only the weights (for inference or export; works in a single process)."""
    state = {"model": get_model_state_dict(model)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.filterwarnings("ignore", message=".*single process.*")
        _load(state, path)
    set_model_state_dict(model, state["model"])
