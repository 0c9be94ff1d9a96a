"""The ``lc4`` command line (also ``python -m lc4``): ``lc4 COMMAND ...``.

Each command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``handler`` (a function of the parsed arguments returning an exit code) through
``set_defaults``. To add a command (``colorize``, ``train``), write such a module and list it in
``COMMAND_MODULES``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .cli_logging import setup_cli_logging

COMMAND_MODULES = ("lc4.eval", "lc4.colorize", "lc4.init_model", "lc4.train.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc4", description="L-C4 language-guided video colorization")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad input and missing weights: one line naming the problem, not a traceback.
        print(f"lc4 {args.command}: error: {error}", file=sys.stderr)
        return 2
