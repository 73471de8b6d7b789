"""What every command module shares: the parser class, one way to add a command, overrides.

Every mistake on the command line is one line on stderr and exit status 2,
never a usage block: `Parser.error` prints `error: ...` with a pointer to
`--help`, which is where usage and examples live.
"""

from __future__ import annotations

import argparse
import re
import sys

from llmscratch.errors import LLMScratchError

_OVERRIDE = re.compile(r"^(model|data|train)\.\w+=")


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line (argparse prints its usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def add_command(subparsers, name: str, summary: str, examples: str) -> Parser:
    """A subcommand whose --help shows `summary` and the `examples` (one per line)."""
    return subparsers.add_parser(
        name, help=summary, description=summary, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_group(subparsers, name: str, summary: str, examples: str, dest: str):
    """A command that only groups subcommands (`llmscratch tokenizer train|encode|...`)."""
    group = add_command(subparsers, name, summary, examples)
    commands = group.add_subparsers(dest=dest, metavar="COMMAND")

    def missing(args: argparse.Namespace) -> int:
        raise LLMScratchError(f"{name} needs a command: {', '.join(commands.choices)} "
                              f"(see `{group.prog} --help`)")

    group.set_defaults(func=missing)
    return commands


def split_overrides(args: argparse.Namespace) -> list[str]:
    """`--data a.txt train.lr=1e-3`: argparse gives both to --data; take the override back."""
    data = getattr(args, "data", None) or []
    args.data = [d for d in data if not _OVERRIDE.match(d)]
    return [d for d in data if _OVERRIDE.match(d)] + list(args.overrides)


def say(text: str = "", end: str = "\n") -> None:
    """Print to stdout and flush, so that output and errors arrive in order."""
    sys.stdout.write(text + end)
    sys.stdout.flush()


def training_line(steps: int, first_step: int, seconds: float, rate: str = "") -> str:
    """What this process trained: a resumed run's steps since its checkpoint, in the time
    they took (not the whole run's steps against this process's time); `rate`, this
    process's throughput ("1,234 tokens/s"), follows the time."""
    line = f"training: {steps - first_step:,} steps in {seconds:.0f} s" + (
        f", {rate}" if rate else "")
    return line + (f" (steps {first_step + 1:,} to {steps:,} of the run)" if first_step else "")
