"""`llmscratch data ...`: prepare token shards for training, and inspect them.

    llmscratch data prepare --data FILES --tokenizer DIR --out DIR
    llmscratch data inspect DIR

The options of `prepare` are the fields of `PrepareConfig`, and their help
is those fields' documentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from llmscratch.cli.common import add_command, add_group
from llmscratch.config import field_docs
from llmscratch.data.manifest import read_manifest
from llmscratch.data.prepare import PrepareConfig, prepare


def register(subparsers) -> None:
    """Add `data` and its sub-commands to an argparse sub-parser set."""
    commands = add_group(
        subparsers, "data", "Tokenize corpora once into shards that training memory-maps.",
        "  llmscratch data prepare --data 'books/*.txt' --tokenizer runs/tok --out data/books\n"
        "  llmscratch data inspect data/books\n", dest="data_command")

    p = add_command(
        commands, "prepare",
        "Tokenize .txt/.jsonl/.parquet files into token shards and a manifest, with several "
        "processes, streaming (memory does not grow with the corpus).",
        "  llmscratch data prepare --data corpus/ --tokenizer runs/demo/tokenizer --out data/c\n"
        "  llmscratch data prepare --data 'web/*.parquet' --tokenizer gpt2 --out data/web "
        "--text-field content --workers 8\n"
        "  llmscratch pretrain --config configs/demo.yaml --out runs/c data.prepared=data/c\n")
    docs = field_docs(PrepareConfig)
    for f in dataclasses.fields(PrepareConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", help=docs.get(f.name))
        elif f.name == "data":
            p.add_argument(flag, nargs="+", required=True, metavar="PATH", help=docs["data"])
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            default = f.default
            p.add_argument(flag, type=kind, default=default,
                           required=f.name in ("tokenizer", "out"),
                           help=f"{docs.get(f.name, '')} (default: {default})")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    p.set_defaults(func=cmd_prepare)

    p = add_command(commands, "inspect",
                    "Check every shard of a prepared directory against its manifest.",
                    "  llmscratch data inspect data/books --json\n")
    p.add_argument("dir", help="a directory written by `llmscratch data prepare`")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    p.set_defaults(func=cmd_inspect)


def cmd_prepare(args: argparse.Namespace) -> int:
    names = [f.name for f in dataclasses.fields(PrepareConfig)]
    cfg = PrepareConfig(**{name: getattr(args, name) for name in names})
    manifest = prepare(cfg)
    _print(manifest, args.json)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.dir)
    for split in ("train", "val"):
        manifest.shards(split, verify=True)
    _print(manifest.document, args.json)
    return 0


def _print(manifest: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(manifest))
        return
    tok = manifest["tokenizer"]
    print(f"tokenizer: vocab {tok['vocab_size']:,}, sha256 {tok['sha256'][:16]}...; "
          f"ids stored as {manifest['dtype']}; {manifest['documents']:,} documents")
    for name, split in manifest["splits"].items():
        per_token = split["bytes"] / max(split["tokens"], 1)
        print(f"{name:>5}: {split['tokens']:>14,} tokens in {len(split['shards'])} shard(s), "
              f"{split['bytes']:,} text bytes ({per_token:.2f} bytes/token)")
