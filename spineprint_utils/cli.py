"""The ``spineprint`` command line.

Each pipeline module that offers a command defines ``register_cli(subparsers)``
which adds its sub-parser and sets ``func``; this module only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import signal
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
        epilog="BIDS-App form: spineprint BIDS_DIR OUTPUT_DIR participant [--participant-label L ...] [preprocess "
               "options] (= preprocess BIDS_DIR --out OUTPUT_DIR), then spineprint BIDS_DIR OUTPUT_DIR group "
               "[connectivity options] (= connectivity OUTPUT_DIR).",
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


def os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` for an operating-system error (the path it concerns first)."""
    import errno as _errno

    reason = exc.strerror or str(exc)
    hint = {
        _errno.ENOSPC: "the disk is full; free space or choose another output folder",
        _errno.EFBIG: "file size limit reached (disk quota or ulimit -f); free space or raise the limit",
        _errno.EROFS: "the file system is read-only; choose another output folder",
        _errno.EACCES: "permission denied; choose a folder you can write to",
        _errno.EPERM: "operation not permitted; choose a folder you can write to",
        getattr(_errno, "EDQUOT", -1): "disk quota exceeded",
    }.get(exc.errno)
    where = exc.filename if exc.filename is not None else None
    text = f"{where}: {reason}" if where is not None else reason
    if exc.filename2 is not None:
        text += f" (-> {exc.filename2})"
    return f"{text} ({hint})" if hint else text


def _sigterm_as_interrupt(signum, frame):
    """SIGTERM (e.g. a batch scheduler or ``kill``) stops like Ctrl-C: the
    ``KeyboardInterrupt`` unwinds through the atomic writers, which remove their
    temporary files, and completed runs stay on disk for the rerun. Further SIGTERMs
    are ignored so that they cannot interrupt that clean-up (SIGKILL still works)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


#: analysis levels of the BIDS-App form (Gorgolewski et al. 2017, PLoS Comput Biol 13:e1005209)
ANALYSIS_LEVELS = ("participant", "group")


def bids_app_argv(argv):
    """Translate the BIDS-App form into sub-command arguments, or None if *argv* is not one.

    ``spineprint BIDS_DIR OUTPUT_DIR participant [options]`` ->
    ``preprocess BIDS_DIR --out OUTPUT_DIR [options]`` (every participant, or
    ``--participant-label ...``); ``spineprint BIDS_DIR OUTPUT_DIR group [options]`` ->
    ``connectivity OUTPUT_DIR [options]`` (region time series, FC and the group connectome
    file of the derivatives in OUTPUT_DIR), as fMRIPrep and SpinePrep are called.
    """
    argv = list(argv)
    if len(argv) < 3 or argv[0].startswith("-") or argv[2] not in ANALYSIS_LEVELS:
        return None
    bids_dir, output_dir, level, rest = argv[0], argv[1], argv[2], argv[3:]
    if level == "participant":
        return ["preprocess", bids_dir, "--out", output_dir, *rest]
    return ["connectivity", output_dir, *rest]


def main(argv=None) -> int:
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = set(parser._subparsers._group_actions[0].choices) if parser._subparsers else set()
    if argv and argv[0] not in commands:
        translated = bids_app_argv(argv)
        if translated is not None:
            argv = translated
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    except ValueError:  # not the main thread of the interpreter: leave signals alone
        previous = None
    try:
        result = args.func(args)
    except SpineprintError as exc:
        print(f"spineprint {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # read-only folder, disk full, permission...: one line naming the path
        print(f"spineprint {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spineprint {args.command}: interrupted; completed outputs are kept, rerun to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
