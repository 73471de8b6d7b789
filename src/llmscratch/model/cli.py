"""`llmscratch convert ...` and `llmscratch inspect`: real checkpoints and model sizes.

`register(subparsers)` adds the commands to the main parser
(`llmscratch/cli.py`); each leaf sets ``func``, a function from the parsed
arguments to an exit code. Errors are raised as `LLMScratchError` and printed
by the main entry point as one line. Torch and the model are imported inside
the commands, so other commands do not pay for them at start-up.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmscratch.errors import LLMScratchError


def register(subparsers) -> None:
    """Add ``convert from-hf|to-hf`` and ``inspect`` to an argparse sub-parser set."""
    convert = subparsers.add_parser(
        "convert", help="convert model checkpoints from and to Hugging Face folders",
        description="Convert model checkpoints from and to Hugging Face folders.",
        epilog="examples:\n"
        "  llmscratch convert from-hf ~/models/Qwen3-0.6B runs/qwen3-0.6b --dtype bf16\n"
        "  llmscratch convert to-hf runs/demo runs/demo-hf\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    directions = convert.add_subparsers(dest="convert_command", metavar="DIRECTION")
    convert.set_defaults(func=lambda args: _usage(convert))

    p = _leaf(directions, "from-hf",
              "Import a Hugging Face model (GPT-2, Llama 3, Qwen3, Qwen3-MoE) as a run directory.",
              "  llmscratch convert from-hf ~/models/Llama-3.2-1B runs/llama-1b\n"
              "  llmscratch convert from-hf Qwen/Qwen3-0.6B runs/qwen3 --dtype fp32  "
              "# hub id: downloads\n"
              "  llmscratch generate --run runs/qwen3 --prompt 'The capital of France is'\n")
    p.add_argument("source", metavar="SRC", help="Hugging Face folder (config.json + safetensors "
                   "+ tokenizer.json), or a hub id such as Qwen/Qwen3-0.6B")
    p.add_argument("out", metavar="OUT", help="new run directory to write")
    p.add_argument("--dtype", help="bf16 or fp32 (default: the checkpoint's; fp16 becomes fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_from_hf)

    p = _leaf(directions, "to-hf",
              "Export a run (or an imported model) as a Hugging Face folder.",
              "  llmscratch convert to-hf runs/demo runs/demo-hf\n"
              "  python -c \"from transformers import AutoModelForCausalLM as M; "
              "M.from_pretrained('runs/demo-hf')\"\n")
    p.add_argument("run", metavar="RUN", help="run directory (pretrained or converted)")
    p.add_argument("out", metavar="OUT", help="new folder to write")
    p.add_argument("--dtype", help="bf16 or fp32 (default: the weights' own)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_to_hf)

    p = _leaf(subparsers, "inspect",
              "Parameters, FLOPs per token and memory of a preset, run or Hugging Face folder.",
              "  llmscratch inspect qwen3-30b-a3b\n"
              "  llmscratch inspect llama-3.1-8b --batch 4 --seq 8192 --dtype bf16\n"
              "  llmscratch inspect runs/demo --json\n")
    p.add_argument("model", metavar="PRESET|RUN|HF_DIR", help="a preset name, a run directory "
                   "or a Hugging Face model folder")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    p.add_argument("--seq", type=int, default=0, help="tokens per sequence "
                   "(default: the context length)")
    p.add_argument("--dtype", default="", help="bf16 or fp32 for weights and activations "
                   "(default: the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)


def _leaf(commands, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    return commands.add_parser(
        name, help=summary, description=summary, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def cmd_from_hf(args: argparse.Namespace) -> int:
    from llmscratch.model.hf_convert import convert_from_hf

    out = convert_from_hf(args.source, Path(args.out), args.dtype, args.overwrite)
    print(f"wrote {out} (try: llmscratch generate --run {out} --prompt 'Hello')")
    return 0


def cmd_to_hf(args: argparse.Namespace) -> int:
    from llmscratch.model.hf_convert import convert_to_hf

    out = convert_to_hf(Path(args.run), Path(args.out), args.dtype, args.overwrite)
    print(f"wrote {out} (AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from llmscratch.model.config import DTYPES
    from llmscratch.model.footprint import footprint

    if args.dtype and args.dtype not in DTYPES:
        raise LLMScratchError(f"unsupported dtype {args.dtype!r}; choose {' or '.join(DTYPES)}")
    if args.batch < 1 or args.seq < 0:
        raise LLMScratchError("--batch must be >= 1 and --seq >= 0")
    config, source = resolve_model(args.model)
    report = {"model": args.model, "source": source,
              **footprint(config, args.batch, args.seq, args.dtype)}
    if args.json:
        print(json.dumps(report))
    else:
        print(render(report))
    return 0


def resolve_model(spec: str):
    """(ModelConfig, kind) for a preset name, a run directory or a Hugging Face folder."""
    from llmscratch.model.config import PRESETS

    path = Path(spec)
    if spec in PRESETS and not path.exists():
        return PRESETS[spec], "preset"
    if (path / "config.yaml").is_file():
        from llmscratch.config import load_config

        return load_config(path / "config.yaml").model, "run"
    if (path / "config.json").is_file():
        from llmscratch.model.hf_convert import read_hf_config

        return read_hf_config(path), "hf"
    raise LLMScratchError(f"{spec!r} is not a preset, a run directory (config.yaml) or a Hugging "
                          f"Face folder (config.json); presets: {', '.join(PRESETS)}")


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
    return "\n".join(lines)


def _si(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} "


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2
