"""`llmscratch convert ...` and `llmscratch inspect`: real checkpoints and model sizes.

    llmscratch convert from-hf SRC OUT     a Hugging Face folder as a run (runs/hf_import.py)
    llmscratch convert to-hf RUN OUT       a run as a Hugging Face folder (runs/hf_export.py)
    llmscratch inspect PRESET|RUN|HF_DIR   parameters, FLOPs, memory, KV cache per token
                                           (model/footprint.py)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmscratch.cli.common import add_command, add_group
from llmscratch.errors import LLMScratchError


def register(subparsers) -> None:
    """Add ``convert from-hf|to-hf`` and ``inspect`` to an argparse sub-parser set."""
    directions = add_group(
        subparsers, "convert", "Convert model checkpoints from and to Hugging Face folders.",
        "  llmscratch convert from-hf ~/models/Qwen3-0.6B runs/qwen3-0.6b --dtype bf16\n"
        "  llmscratch convert to-hf runs/demo runs/demo-hf\n", dest="convert_command")

    p = add_command(directions, "from-hf",
                    "Import a Hugging Face model (GPT-2, Llama 3, Qwen3, Qwen3-MoE) as a run "
                    "directory.",
                    "  llmscratch convert from-hf gpt2 runs/gpt2    # OpenAI's GPT-2 124M, "
                    "from the hub\n"
                    "  llmscratch convert from-hf ~/models/Llama-3.2-1B runs/llama-1b\n"
                    "  llmscratch convert from-hf Qwen/Qwen3-0.6B runs/qwen3 --dtype fp32  "
                    "# hub id: downloads\n"
                    "  llmscratch generate --run runs/qwen3 --prompt 'The capital of France is'\n")
    p.add_argument("source", metavar="SRC", help="Hugging Face folder (config.json + safetensors "
                   "+ tokenizer.json), or, where no such path exists, a hub id such as gpt2 or "
                   "Qwen/Qwen3-0.6B (with HF_HUB_OFFLINE=1: from the hub's cache only)")
    p.add_argument("out", metavar="OUT", help="new run directory to write")
    p.add_argument("--dtype", help="bf16 or fp32 (default: the checkpoint's; fp16 becomes fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is a run")
    p.set_defaults(func=cmd_from_hf)

    p = add_command(directions, "to-hf",
                    "Export a run (or an imported model) as a Hugging Face folder.",
                    "  llmscratch convert to-hf runs/demo runs/demo-hf\n"
                    "  python -c \"from transformers import AutoModelForCausalLM as M; "
                    "M.from_pretrained('runs/demo-hf')\"\n")
    p.add_argument("run", metavar="RUN", help="run directory (pretrained or converted)")
    p.add_argument("out", metavar="OUT", help="new folder to write")
    p.add_argument("--dtype", help="bf16 or fp32 (default: the weights' own)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it holds a Hugging Face model")
    p.set_defaults(func=cmd_to_hf)

    p = add_command(subparsers, "inspect",
                    "Parameters, FLOPs per token, memory and KV-cache bytes per token of a "
                    "preset, run or Hugging Face folder.",
                    "  llmscratch inspect qwen3-30b-a3b\n"
                    "  llmscratch inspect llama-3.1-8b --batch 4 --seq 8192 --dtype bf16\n"
                    "  llmscratch inspect runs/demo --json\n")
    p.add_argument("model", metavar="PRESET|RUN|HF_DIR", help="a preset name, a run directory "
                   "or a Hugging Face model folder")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    p.add_argument("--seq", type=int, help="tokens per sequence (default: the context length)")
    p.add_argument("--dtype", default="", help="bf16 or fp32 for weights and activations "
                   "(default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)


def cmd_from_hf(args: argparse.Namespace) -> int:
    from llmscratch.runs.hf_import import convert_from_hf

    out = convert_from_hf(args.source, Path(args.out), args.dtype, args.overwrite)
    print(f"wrote {out} (try: llmscratch generate --run {out} --prompt 'Hello')")
    return 0


def cmd_to_hf(args: argparse.Namespace) -> int:
    from llmscratch.runs.hf_export import convert_to_hf

    out = convert_to_hf(Path(args.run), Path(args.out), args.dtype, args.overwrite)
    print(f"wrote {out} (AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from llmscratch.model.config import DTYPES
    from llmscratch.model.footprint import footprint

    if args.dtype and args.dtype not in DTYPES:
        raise LLMScratchError(f"unsupported dtype {args.dtype!r}; choose {' or '.join(DTYPES)}")
    if args.batch < 1 or (args.seq is not None and args.seq < 1):
        raise LLMScratchError(f"--batch and --seq must be at least 1, got --batch {args.batch} "
                              f"--seq {args.seq}")
    config, source = resolve_model(args.model)
    report = {"model": args.model, "source": source,
              **footprint(config, args.batch, args.seq or 0, args.dtype)}
    if args.json:
        print(json.dumps(report))
    else:
        print(render(report))
    return 0


def resolve_model(spec: str):
    """(ModelConfig, kind) for a preset name, a run directory or a Hugging Face folder."""
    from llmscratch.model.presets import PRESETS
    from llmscratch.runs.hf_import import read_hf_config
    from llmscratch.runs.run import Run

    path = Path(spec)
    if spec in PRESETS and not path.exists():
        return PRESETS[spec], "preset"
    if Run.is_run(path):
        return Run(path).read_config().model, "run"
    if (path / "config.json").is_file():
        return read_hf_config(path), "hf"
    raise LLMScratchError(f"{spec!r} is not a preset, a run directory or a Hugging Face folder "
                          f"(config.json); presets: {', '.join(PRESETS)}")


def render(report: dict) -> str:
    """The report as aligned text."""
    params, flops, memory = report["parameters"], report["flops_per_token"], report["memory_bytes"]
    lines = [f"{report['model']} ({report['source']})", report["architecture"], "",
             "parameters"]
    for key in ("total", "embedding", "non_embedding", "active"):
        lines.append(f"  {key.replace('_', '-'):<15}{params[key]:>18,}  {_si(params[key])}")
    lines += ["", f"FLOPs per token at {report['seq']:,} tokens of context",
              f"  {'training':<15}{_si(flops['training'])}FLOP",
              f"  {'inference':<15}{_si(flops['inference'])}FLOP", "",
              f"memory ({report['dtype']}, batch {report['batch']} x {report['seq']:,} tokens)"]
    for key, value in memory.items():
        label = key.replace("_total", " total").replace("_", " ")
        lines.append(f"  {label:<15}{value / 2**30:>12,.2f} GiB")
    return "\n".join(lines + ["", f"kv cache per sequence ({report['dtype']})",
                              *kv_cache_lines(report["kv_cache"])])


def kv_cache_lines(kv: dict) -> list[str]:
    """The cache's bytes per token of context (every layer keeping every token, then
    with sliding-window layers keeping their window), and the fixed state of Gated
    DeltaNet layers (model/footprint.py: kv_cache_bytes)."""
    n, local = kv["attention_layers"], kv["local_layers"]
    lines = []
    if n:
        label = "full" if local else "per token"
        lines.append(f"  {label:<15}{kv['per_token']:>18,}  bytes per token, every token "
                     f"in {'each of the' if n > 1 else 'the'} {n} attention "
                     f"layer{'s' if n > 1 else ''}")
    if local:
        window_bytes = kv["window"] * (kv["per_token"] - kv["per_token_global"])
        lines.append(f"  {'sliding':<15}{kv['per_token_global']:>18,}  bytes per token in the "
                     f"{n - local} global layers, and the last {kv['window']:,} tokens in the "
                     f"{local} local ones: {_binary(window_bytes)}")
    if kv["linear_layers"]:
        lines.append(f"  {'state':<15}{kv['state_per_sequence']:>18,}  bytes, the same at any "
                     f"length, in the {kv['linear_layers']} Gated DeltaNet layers: "
                     f"{_binary(kv['state_per_sequence'])}")
    return lines


def _binary(n: int) -> str:
    """n bytes in KiB, MiB or GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n} bytes"


def _si(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} "
