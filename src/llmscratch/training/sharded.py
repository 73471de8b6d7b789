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

`export_safetensors` turns a sharded checkpoint into one model.safetensors
for inference or sharing (`llmscratch checkpoint export`).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

DCP_DIR = "dcp"


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def save(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every rank writes its shards of the model and optimizer state into `path`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))


def load(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load model and optimizer state from a DCP checkpoint, resharding as needed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])


def load_model(model: nn.Module, path: Path) -> None:
    """Load only the weights (for inference; works in a single process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])


def export_safetensors(ckpt: Path, out: Path) -> Path:
    """Gather a sharded checkpoint's weights into one safetensors file (no GPUs needed)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(Path(ckpt) / DCP_DIR), str(full))
        weights = torch.load(full, weights_only=True)["model"]
    seen: set[int] = set()
    tensors = {}
    for name, tensor in weights.items():  # tied weights once, as model_state() does
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.contiguous()
    save_file(tensors, out)
    return out


def gather_objects(obj, info) -> list:
    """`obj` from every rank, in rank order ([] with one process)."""
    if not info.distributed:
        return []
    objects = [None] * info.world_size
    dist.all_gather_object(objects, obj)
    return objects
