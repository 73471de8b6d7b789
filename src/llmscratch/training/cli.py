"""`llmscratch plot` and `llmscratch checkpoint ...`: looking after runs.

    llmscratch plot RUN                      redraw loss.png and training.png
    llmscratch checkpoint verify RUN         check every file against its manifest
    llmscratch checkpoint export RUN --out F the newest weights as one safetensors file

`register(subparsers)` adds them to the main parser (llmscratch/cli.py).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from llmscratch.errors import LLMScratchError


def _parser(subparsers, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=summary, description=summary,
                                 epilog="examples:\n" + examples,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def register(subparsers) -> None:
    p = _parser(subparsers, "plot", "Redraw a run's plots from its metrics.jsonl.",
                "  llmscratch plot runs/demo\n")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_plot)

    group = _parser(subparsers, "checkpoint", "Verify checkpoints, export their weights.",
                    "  llmscratch checkpoint verify runs/big\n"
                    "  llmscratch checkpoint export runs/big --out big.safetensors\n")
    commands = group.add_subparsers(dest="checkpoint_command", metavar="COMMAND")
    group.set_defaults(func=lambda args: group.print_help() or 2)
    p = _parser(commands, "verify", "Check every checkpoint of a run against its manifest.",
                "  llmscratch checkpoint verify runs/big\n")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_verify)
    p = _parser(commands, "export", "Write the newest checkpoint's weights to one safetensors "
                "file (gathering FSDP shards).",
                "  llmscratch checkpoint export runs/big --out big.safetensors\n")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.set_defaults(func=cmd_export)


def cmd_plot(args: argparse.Namespace) -> int:
    from llmscratch.training.metrics import MetricsLog, plot_losses, plot_training

    run = Path(args.run)
    records = MetricsLog(run / "metrics.jsonl").read()
    if not records:
        raise LLMScratchError(f"{run} has no metrics.jsonl records; give a run directory")
    plot_losses(records, run / "loss.png", title=f"{run.name}: loss")
    plot_training(records, run / "training.png", title=run.name)
    print(f"wrote {run / 'loss.png'} and {run / 'training.png'}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from llmscratch.training.checkpoint import CHECKPOINTS, latest_checkpoint, verify_checkpoint

    run = Path(args.run)
    latest_checkpoint(run, fallback=True)  # is it a run at all?
    bad = 0
    for ckpt in sorted((run / CHECKPOINTS).glob("step-*")):
        try:
            verify_checkpoint(ckpt)
            print(f"ok       {ckpt.name}")
        except LLMScratchError as err:
            bad += 1
            print(f"CORRUPT  {ckpt.name}: {err}")
    return 1 if bad else 0


def cmd_export(args: argparse.Namespace) -> int:
    from llmscratch.training import sharded
    from llmscratch.training.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(Path(args.run))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if (ckpt / sharded.DCP_DIR).is_dir():
        sharded.export_safetensors(ckpt, out)
    else:
        shutil.copyfile(ckpt / "model.safetensors", out)
    print(f"wrote {out} from {ckpt}")
    return 0
