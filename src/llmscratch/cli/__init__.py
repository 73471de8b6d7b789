"""The `llmscratch` command: one entry point, a module per command group.

    llmscratch demo | pretrain               cli/train.py      recipes/
    llmscratch finetune, classify, lora      cli/finetune.py   recipes/finetune.py, adapters.py
    llmscratch generate                      cli/generate.py   generation/
    llmscratch eval, report                  cli/eval.py       evaluation/, recipes/eval_*.py
    llmscratch chat                          cli/chat.py       generation/engine.py
    llmscratch serve                         cli/serve.py      serving/
    llmscratch tokenizer train|encode|...    cli/tokenizer.py  tokenizer/
    llmscratch data prepare|inspect          cli/data.py       data/
    llmscratch convert from-hf|to-hf, inspect  cli/convert.py  runs/, model/
    llmscratch checkpoint verify|export, plot  cli/runs.py     runs/, training/plots.py

Each command is thin: arguments -> typed config -> one library call. A
command module imports the stage it runs inside the command's function, so
a command loads only what it uses (the tokenizer commands start without
torch). User mistakes raise `LLMScratchError`; `main` prints its one line
and returns 2, without a traceback; so do failures of the machine the user
can act on (a full disk, a read-only folder).
"""

from __future__ import annotations

import sys

from llmscratch import __version__
from llmscratch.cli import (
    chat,
    convert,
    data,
    eval,
    finetune,
    generate,
    runs,
    serve,
    tokenizer,
    train,
)
from llmscratch.cli.common import Parser
from llmscratch.errors import LLMScratchError, TrainingInterrupted


def build_parser() -> Parser:
    parser = Parser(
        prog="llmscratch", description="Build a large language model from scratch.",
        epilog="run `llmscratch COMMAND --help` for each command's options and examples",
    )
    parser.add_argument("--version", action="version", version=f"llmscratch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # In the order of the pipeline.
    train.register(sub)
    finetune.register(sub)
    tokenizer.register(sub)
    data.register(sub)
    generate.register(sub)
    eval.register(sub)
    chat.register(sub)
    serve.register(sub)
    convert.register(sub)
    runs.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a mistake already reported in one line
        return int(done.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except LLMScratchError as err:
        return _fail(str(err))
    except OSError as err:  # the machine, not a bug: a full disk, a read-only folder, ...
        where = f"{err.filename}: " if err.filename else ""
        return _fail(f"{where}{err.strerror or err}")
    except TrainingInterrupted as stop:
        sys.stdout.flush()
        print(f"\ninterrupted at step {stop.step}; checkpoint saved. Continue with "
              f"`llmscratch pretrain --resume DIR` (a fine-tuning run: "
              f"`llmscratch finetune resume DIR`).", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("\ninterrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    """The one line a user sees for a mistake: `error: ...` on stderr, exit status 2."""
    sys.stdout.flush()
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2
