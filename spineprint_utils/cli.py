"""The ``spineprint`` command line.

Each pipeline module that offers a command defines ``register_cli(subparsers)``
which adds its sub-parser and sets ``func``; this module only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from ._io import SpineprintError

#: modules that contribute a sub-command, in pipeline order
COMMAND_MODULES = (
    "datasets",
    "acquisition",
    "simulate",
    "preprocess",
    "connectivity",
    "build",
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spineprint",
        description="Spinal cord fMRI fingerprinting: simulate, preprocess, connectivity, build the book.",
    )
    parser.add_argument("--version", action="version", version=f"spineprint {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"spineprint_utils.{name}")
        except ModuleNotFoundError as exc:  # a stage not written yet
            if exc.name == f"spineprint_utils.{name}":
                continue
            raise
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except SpineprintError as exc:
        print(f"spineprint {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spineprint {args.command}: interrupted; completed outputs are kept, rerun to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
