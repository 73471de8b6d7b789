"""`llmscratch checkpoint ...` and `llmscratch plot`: looking after runs (runs/).

    llmscratch checkpoint verify RUN          check every checkpoint against its manifest
    llmscratch checkpoint export RUN --out F  the newest weights as one safetensors file
    llmscratch plot RUN                       redraw the plots from the run's metrics
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmscratch.cli.common import add_command, add_group
from llmscratch.errors import LLMScratchError


def register(sub) -> None:
    p = add_command(sub, "plot", "Redraw a run's plots from its metrics.",
                    "  llmscratch plot runs/demo\n")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_plot)

    commands = add_group(sub, "checkpoint", "Verify checkpoints, export their weights.",
                         "  llmscratch checkpoint verify runs/big\n"
                         "  llmscratch checkpoint export runs/big --out big.safetensors\n",
                         dest="checkpoint_command")
    p = add_command(commands, "verify", "Check every checkpoint of a run against its manifest "
                    "(exit 1 if any is not intact).",
                    "  llmscratch checkpoint verify runs/big\n")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_verify)
    p = add_command(commands, "export", "Write the newest checkpoint's weights to one "
                    "safetensors file (gathering FSDP shards, merging a base run's weights).",
                    "  llmscratch checkpoint export runs/big --out big.safetensors\n")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)


def cmd_plot(args: argparse.Namespace) -> int:
    from llmscratch.runs.run import Run
    from llmscratch.training.plots import plot_losses, plot_training

    run = Run.open(args.run)
    records = run.metrics.read()
    if not records:
        raise LLMScratchError(f"{run.path} has no metrics records yet; nothing to plot")
    plot_losses(records, run.loss_plot_path, title=f"{run.path.name}: loss")
    plot_training(records, run.training_plot_path, title=run.path.name)
    print(f"wrote {run.loss_plot_path} and {run.training_plot_path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """One line per checkpoint, then one per problem of the run as a whole.

    Exit status: 0 when everything is intact, 1 when something is not (a
    verdict, not a mistake in the command), 2 for a folder that is not a run.
    """
    from llmscratch.runs.checkpoint import verify_run
    from llmscratch.runs.run import Run

    verdicts = verify_run(Run.open(args.run))
    for name, problem in verdicts:
        print(f"ok       {name}" if problem is None else f"CORRUPT  {name}: {problem}")
    return 1 if any(problem for _, problem in verdicts) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from llmscratch.runs.hf_export import export_safetensors

    out = export_safetensors(Path(args.run), Path(args.out), overwrite=args.overwrite)
    print(f"wrote {out} from {args.run}")
    return 0
