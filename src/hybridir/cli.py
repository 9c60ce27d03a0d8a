"""`hybridir` command line: one subcommand per pipeline stage.

Each stage module exposes `register(subparsers)`, which adds its subcommand and sets `func`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import UserError

STAGE_MODULES = [
    "fetch", "evaldata", "traindata", "encoder_import", "encode", "evaluate",
    "batches", "train", "beir", "report", "pipeline",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridir", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(f"hybridir.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hybridir.{name}":
                continue  # stage not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The default run is offline; users with hub access can override.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:   # bad input the user can fix: one line; anything else is a bug, with traceback
        print(f"hybridir {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
