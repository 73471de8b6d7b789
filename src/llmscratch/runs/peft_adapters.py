"""LoRA adapters in Hugging Face PEFT's format, in and out.

A PEFT adapter folder holds two files:

    adapter_config.json        r, lora_alpha, lora_dropout, target_modules, the base model...
    adapter_model.safetensors  base_model.model.<HF module>.lora_A.weight  (r, in)
                               base_model.model.<HF module>.lora_B.weight  (out, r)

`peft.PeftModel.from_pretrained(hf_model, folder)` puts it on a
`transformers` model. Here the base is our model as runs/hf_export.py
exports it, so module names follow model/hf_weights.py:

    export_peft_adapter(model, out, base_model_name_or_path)   our LoRA layers -> PEFT folder
    import_peft_adapter(model, folder)                         PEFT folder -> LoRA layers on ours

Most layers are the same matrix under another name, and their A and B
carry over as they are. GPT-2's layers are `Conv1D`s, which store the
weight transposed; PEFT still keeps A (r, in) and B (out, r) for them and
only records `fan_in_fan_out: true`. One layout differs: our attention
has one fused `qkv` layer where Llama and Qwen3 have q_proj, k_proj and
v_proj, the fused weight's rows being q's, then k's, then v's. Both
directions are exact:

    export   one LoRA (A, B) on qkv = on q, k and v the same A each, and
             B split by rows: B_q, B_k, B_v.
    import   LoRAs (A_q, B_q), (A_k, B_k), (A_v, B_v) of rank r each = one
             LoRA of rank 3r on qkv, with A = [A_q; A_k; A_v] stacked by rows
             and B block-diagonal, each B_i in its own rows and columns:

                 B = | B_q  0    0   |      x A^T B^T gives q's rows x A_q^T B_q^T,
                     | 0    B_k  0   |      k's rows x A_k^T B_k^T, v's x A_v^T B_v^T
                     | 0    0    B_v |

             and alpha = 3 x lora_alpha, so alpha / rank, the scaling, is
             PEFT's. Pieces with other scalings (PEFT's rank_pattern,
             alpha_pattern, use_rslora) have their ratio folded into their B.
             A piece the adapter leaves out (often k) is rows of zeros in B.

Llama's and Qwen3's gate_proj and up_proj are our separate `mlp.gate`
and `mlp.up`, so they carry over one to one. A Qwen3-MoE router (our
`mlp.router`) is Hugging Face's `mlp.gate`: an nn.Linear in transformers 4,
which PEFT adapts, but a router module of its own in transformers 5, which
it does not; adapt only attention there. gpt-oss's router (`mlp.router` in
both) is likewise a module of its own (GptOssTopKRouter), which PEFT refuses.
Experts are never adapted.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from llmscratch.errors import LLMScratchError
from llmscratch.io import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_folder,
    read_json,
    write_folder,
)
from llmscratch.model.hf_config import family_of
from llmscratch.model.hf_weights import their_shapes, weight_links
from llmscratch.model.lora import (
    OUTPUT_LAYER,
    LoRALinear,
    add_lora_layer,
    freeze_all_but_lora,
    lora_layers,
)
from llmscratch.model.transformer import GPT

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's prefix: its wrapper, then the transformers model
# adapter_config.json options that change what the adapter computes, and that we do not do.
UNSUPPORTED = {"use_dora": False, "lora_bias": False, "bias": "none", "modules_to_save": None,
               "target_parameters": None, "trainable_token_indices": None,
               "layer_replication": None}


@dataclass
class HFLayer:
    """Our linear layer `ours` is the Hugging Face layers `theirs`, stacked by rows.

    rows: the out-features of each of `theirs` (one entry unless fused: q, k, v).
    conv1d: GPT-2's Conv1D (PEFT's fan_in_fan_out).
    """

    ours: str
    theirs: list[str]
    rows: list[int]
    conv1d: bool


def hf_layers(model: GPT) -> dict[str, HFLayer]:
    """Every linear layer of ours that LoRA may adapt, by our module name, with its HF names."""
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    layers = {}
    for link in weight_links(model.config):
        ours = link.ours.removesuffix(".weight")
        if link.join == "stack" or ours == link.ours or ours == OUTPUT_LAYER:
            continue  # MoE experts (3-D), biases, the output layer
        if link.order is not None:
            continue  # rows regrouped (Qwen3-Next's projections): not split into theirs yet
        if not isinstance(model.get_submodule(ours), (nn.Linear, LoRALinear)):
            continue  # embeddings and norms
        our_shape = shapes[link.ours]  # (O, I)
        rows = ([shape[0] for shape in their_shapes(link, our_shape, model.config)]
                if link.join == "cat" else [our_shape[0]])
        layers[ours] = HFLayer(ours, [t.removesuffix(".weight") for t in link.theirs], rows,
                               link.transpose)
    return layers


# --- export ----------------------------------------------------------------------------


def export_peft_adapter(model: GPT, out: str | Path, base_model_name_or_path: str | None = None,
                        overwrite: bool = False) -> Path:
    """Write the model's LoRA layers as a PEFT adapter folder for its Hugging Face export.

    `base_model_name_or_path` is recorded in adapter_config.json (PEFT loads
    that model when none is given); it should name the model exported from
    the same base weights (runs/hf_export.py). Adapters must be unmerged:
    merged ones are already inside the weights. `out` follows the rule of
    every output folder (io.py: `check_output_folder`): a folder of other
    files is never written into, an adapter folder replaced only with `overwrite`.
    """
    out = Path(out)
    layers = lora_layers(model)
    if not layers:
        raise LLMScratchError("the model has no LoRA layers to export; apply_lora first")
    if any(layer.merged for layer in layers.values()):
        raise LLMScratchError("the LoRA layers are merged into the weights; unmerge_lora "
                              "before exporting the adapter")
    check_output_folder(out, overwrite, is_adapter_folder, "a PEFT adapter folder")
    targets = hf_layers(model)
    tensors, ranks, alphas = {}, {}, {}
    for name, layer in layers.items():
        if name not in targets:
            raise LLMScratchError(f"the LoRA layer {name} has no Hugging Face counterpart; "
                                  "only the blocks' linear layers can be exported")
        target = targets[name]
        B_pieces = layer.lora_B.detach().split(target.rows, dim=0)  # (rows_i, r) each
        for theirs, B in zip(target.theirs, B_pieces, strict=True):
            # The same A for every piece; each its own copy (safetensors refuses shared memory).
            tensors[f"{PREFIX}{theirs}.lora_A.weight"] = layer.lora_A.detach().cpu().clone()
            tensors[f"{PREFIX}{theirs}.lora_B.weight"] = B.cpu().clone()
            ranks[theirs], alphas[theirs] = layer.rank, layer.alpha
    config = _adapter_config(layers, targets, ranks, alphas, base_model_name_or_path)
    weights = safetensors_bytes(tensors, metadata={"format": "pt"})

    def write(folder: Path) -> None:
        atomic_write_bytes(folder / WEIGHTS_FILE, weights)
        atomic_write_json(folder / CONFIG_FILE, config, indent=2)

    return write_folder(out, write)


def _adapter_config(layers: dict[str, LoRALinear], targets: dict[str, HFLayer],
                    ranks: dict[str, int], alphas: dict[str, float],
                    base_model_name_or_path: str | None) -> dict:
    """adapter_config.json: the commonest rank and alpha, and per-module exceptions."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    adapted = set(ranks)
    # Short names ("q_proj") where they pick out exactly the adapted layers, else full names.
    all_layers = {t for layer in targets.values() for t in layer.theirs}
    short = {name.rsplit(".", 1)[-1] for name in adapted}
    covered = {name for name in all_layers if name.rsplit(".", 1)[-1] in short}
    target_modules = sorted(short if covered == adapted else adapted)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": _number(alpha),
        "lora_dropout": next(iter(layers.values())).dropout,
        "target_modules": target_modules,
        "rank_pattern": {m: rank for m, rank in sorted(ranks.items()) if rank != r},
        "alpha_pattern": {m: _number(a) for m, a in sorted(alphas.items()) if a != alpha},
        "fan_in_fan_out": any(targets[name].conv1d for name in layers),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def is_adapter_folder(path: Path) -> bool:
    """Whether `path` holds a PEFT adapter (its adapter_config.json)."""
    return (path / CONFIG_FILE).is_file()


# --- import ----------------------------------------------------------------------------


def import_peft_adapter(model: GPT, folder: str | Path) -> list[str]:
    """Put the PEFT adapter in `folder` on `model` as LoRA layers; freeze everything else.

    In place; returns the names of our adapted layers. What is adapted, and
    each layer's rank, is read from the tensors (so PEFT's layers_to_transform
    and exclude_modules need no reading), and must agree with what the config
    says: target_modules, r and rank_pattern; alpha comes from lora_alpha and
    alpha_pattern. Fails, changing nothing, if the config and the tensors
    disagree, a weight is not finite, the adapter was made for another
    architecture (module names or shapes differ) or it uses an option we do
    not implement (DoRA, trained biases, modules_to_save...).
    """
    folder = Path(folder)
    config = read_adapter_config(folder)
    if lora_layers(model):
        raise LLMScratchError("the model already has LoRA layers; import the adapter into a "
                              "model without them")
    targets = hf_layers(model)
    where = {theirs: (ours, i) for ours, layer in targets.items()
             for i, theirs in enumerate(layer.theirs)}
    pairs = _read_pairs(folder)
    check_against_config(config, pairs, folder)
    pieces: dict[str, dict[int, tuple]] = {}  # our module -> piece index -> (A, B, scaling)
    for theirs, (A, B) in pairs.items():
        if theirs not in where:
            raise LLMScratchError(_unknown_module(theirs, folder, model))
        ours, i = where[theirs]
        in_features = model.get_submodule(ours).in_features
        _check_shapes(theirs, A, B, in_features, targets[ours].rows[i], folder)
        pieces.setdefault(ours, {})[i] = (A, B, _scaling(config, theirs, A.shape[0]))
    for ours, found in pieces.items():
        A, B, scaling = fuse_pieces(found, targets[ours].rows)  # (R, I), (O, R)
        rank = A.shape[0]
        layer = add_lora_layer(model, ours, rank, scaling * rank, config["lora_dropout"])
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
    freeze_all_but_lora(model)
    return list(pieces)


def fuse_pieces(pieces: dict[int, tuple[torch.Tensor, torch.Tensor, float]], rows: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One LoRA (A, B, scaling) on a fused layer, equal to LoRAs on some of its row blocks.

    pieces: row block i -> (A_i (r_i, I), B_i (rows[i], r_i), scaling s_i), for the
    blocks that have one. Returns A (R, I) with R = sum r_i, B (O, R) block-diagonal
    (zeros where a block has no LoRA) and s = the first piece's scaling, each
    B_i multiplied by s_i / s (1 when they agree). See the module docstring.
    """
    order = sorted(pieces)
    A = torch.cat([pieces[i][0] for i in order], dim=0)  # (R, I)
    scaling = pieces[order[0]][2]
    B = A.new_zeros(sum(rows), A.shape[0])  # (O, R)
    col = 0
    for i in order:
        _, B_i, s_i = pieces[i]
        row = sum(rows[:i])
        B[row : row + B_i.shape[0], col : col + B_i.shape[1]] = B_i * (s_i / scaling)
        col += B_i.shape[1]
    return A, B, scaling


def read_adapter_config(folder: Path) -> dict:
    """adapter_config.json, checked to describe a LoRA we can compute.

    Defaults are PEFT's (r 8, lora_alpha 8). The numbers must be numbers, the
    patterns (rank_pattern's and alpha_pattern's keys, a target_modules that is
    one string) regular expressions; whether they agree with the tensors is
    checked when those are read (`check_against_config`).
    """
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise LLMScratchError(f"no {CONFIG_FILE} in {folder}; not a PEFT adapter folder")
    config = read_json(path, "adapter config")
    if config.get("peft_type") != "LORA":
        raise LLMScratchError(f"{path}: peft_type {config.get('peft_type')!r} is not "
                              "supported (only 'LORA')")
    for key, plain in UNSUPPORTED.items():
        if config.get(key) not in (plain, None, False, [], {}):
            raise LLMScratchError(f"{path}: {key}={config[key]!r} is not supported "
                                  f"(only {plain!r})")
    dropout = config.setdefault("lora_dropout", 0.0)
    if not (_is_number(dropout) and 0 <= dropout < 1):
        raise LLMScratchError(f"{path}: lora_dropout={dropout!r} must be in [0, 1)")
    config["r"], config["lora_alpha"] = config.get("r", 8), config.get("lora_alpha", 8)
    _check_rank(config["r"], f"{path}: r")
    _check_alpha(config["lora_alpha"], f"{path}: lora_alpha")
    for name, check in (("rank_pattern", _check_rank), ("alpha_pattern", _check_alpha)):
        patterns = config.setdefault(name, {}) or {}
        if not isinstance(patterns, dict):
            raise LLMScratchError(f"{path}: {name} must map module names to numbers")
        for key, value in patterns.items():
            _check_regex(key, f"{path}: {name} key")
            check(value, f"{path}: {name}[{key!r}]")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        _check_regex(targets, f"{path}: target_modules")
    elif targets is not None and not (isinstance(targets, list) and targets
                                      and all(isinstance(t, str) for t in targets)):
        raise LLMScratchError(f"{path}: target_modules must be a list of module names or one "
                              f"regular expression, got {targets!r}")
    if not isinstance(config.get("use_rslora", False), bool):
        raise LLMScratchError(f"{path}: use_rslora must be true or false")
    return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _check_rank(value, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LLMScratchError(f"{what} must be a whole number of at least 1, got {value!r}")


def _check_alpha(value, what: str) -> None:
    if not _is_number(value) or value <= 0:
        raise LLMScratchError(f"{what} must be a finite number above 0, got {value!r}")


def _check_regex(pattern, what: str) -> None:
    try:
        re.compile(pattern)
    except (re.error, TypeError) as err:
        raise LLMScratchError(f"{what} {pattern!r} is not a regular expression ({err})"
                              ) from None


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module setting: the value of the first key matching the module name's end
    (the regex `(.*\\.)?key$`), else `default`."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scaling(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling of `module`: alpha / r, or alpha / sqrt(r) with use_rslora; alpha
    from alpha_pattern (`_pattern_value`), else lora_alpha."""
    alpha = _pattern_value(config["alpha_pattern"], module, config["lora_alpha"])
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _targeted(targets, module: str) -> bool:
    """Whether PEFT's target_modules names `module`: a regex matching the whole name, or a
    list holding the name or its end after a dot ("q_proj"); "all-linear": every layer."""
    if targets is None or targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in targets)


def check_against_config(config: dict, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                         folder: Path) -> None:
    """The tensors are what adapter_config.json says: each adapted module is one that
    target_modules names, with the rank r (or rank_pattern) gives, and finite weights;
    each name in target_modules adapts at least one module."""
    path = folder / CONFIG_FILE
    targets = config.get("target_modules")
    for module, (A, B) in pairs.items():
        if not _targeted(targets, module):
            raise LLMScratchError(f"{path}: target_modules {targets!r} does not name {module}, "
                                  f"which {WEIGHTS_FILE} adapts")
        rank = _pattern_value(config["rank_pattern"], module, config["r"])
        if A.dim() == 2 and A.shape[0] != rank:
            raise LLMScratchError(f"{path}: {module} should have rank {rank}, but its lora_A "
                                  f"in {WEIGHTS_FILE} has {A.shape[0]} rows")
        for half, tensor in (("lora_A", A), ("lora_B", B)):
            if not torch.isfinite(tensor).all():
                raise LLMScratchError(f"{folder / WEIGHTS_FILE}: {module}.{half} holds NaN or "
                                      "infinite values; the adapter is broken")
    if isinstance(targets, list):
        unused = [t for t in targets if t != "all-linear" and not any(
            _targeted([t], module) for module in pairs)]
        if unused:
            raise LLMScratchError(f"{path}: target_modules names {', '.join(unused)}, which no "
                                  f"tensor of {WEIGHTS_FILE} adapts")


def _read_pairs(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """adapter_model.safetensors as HF module name -> (lora_A (r, in), lora_B (out, r))."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise LLMScratchError(f"no {WEIGHTS_FILE} in {folder}; save the adapter with "
                              "safetensors (pickled adapter_model.bin is not loaded)")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        reason = " ".join(str(err).split())
        raise LLMScratchError(f"cannot read {path}: {reason}") from None
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(rf"{re.escape(PREFIX)}(.+)\.(lora_A|lora_B)\.weight", key)
        if match is None:
            raise LLMScratchError(f"{path}: tensor {key} is not a LoRA A or B of a linear "
                                  "layer; only plain LoRA adapters are supported")
        halves.setdefault(match[1], {})[match[2]] = tensor
    pairs = {}
    for module, half in halves.items():
        if set(half) != {"lora_A", "lora_B"}:
            raise LLMScratchError(f"{path}: {module} has {next(iter(half))} but not its pair")
        pairs[module] = (half["lora_A"], half["lora_B"])
    if not pairs:
        raise LLMScratchError(f"{path} holds no LoRA tensors")
    return pairs


def _unknown_module(module: str, folder: Path, model: GPT) -> str:
    """The error for an adapted module that our model lacks."""
    family = family_of(model.config)
    if ".experts." in module:
        return (f"the adapter in {folder} adapts {module}: LoRA on Mixture-of-Experts "
                "experts is not supported (they are stacked 3-D tensors here)")
    if module.rsplit(".", 1)[-1] == OUTPUT_LAYER:
        return (f"the adapter in {folder} adapts the output layer {module}, which LoRA does "
                "not adapt here (see model/lora.py)")
    return (f"the adapter in {folder} adapts {module}, which this {family} model "
            f"({model.config.n_layer} layers) has no linear layer for: it was made for "
            "another architecture")


def _check_shapes(module: str, A: torch.Tensor, B: torch.Tensor, in_features: int,
                  out_features: int, folder: Path) -> None:
    rank = A.shape[0]
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != in_features or (
            tuple(B.shape) != (out_features, rank)):
        raise LLMScratchError(
            f"the adapter in {folder} does not fit this model: {module} has lora_A "
            f"{tuple(A.shape)} and lora_B {tuple(B.shape)}, the model's layer takes "
            f"{in_features} features to {out_features}; it was made for another architecture")
