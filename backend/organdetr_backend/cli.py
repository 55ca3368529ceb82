"""The ``organdetr`` console script: one entry point, one sub-command per module.

Each sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and keeps heavy imports
(torch, the network) inside ``run`` so that ``organdetr --help`` stays fast; only the module of the command named
on the command line is imported.
Exit codes: 0 success, 2 bad input or usage (one line on stderr), 1 internal error.
Every command gets ``--threads``, defaulting to a count that is fast on a shared machine
(:mod:`organdetr_backend.threads`).
"""

from __future__ import annotations

import argparse
import codecs
import gc
import importlib
import os
import sys
from collections.abc import Collection

from organdetr.errors import UserInputError

from . import __version__
from .allocator import keep_freed_memory
from .threads import THREADS_HELP, configure_threads, use_passive_waiting

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2

COMMANDS: dict[str, tuple[str, str]] = {
    "detect": ("organdetr_backend.detect_command", "detect organs in CT volumes and write boxes"),
    "serve": ("organdetr_backend.serve_command", "run the HTTP inference service"),
    "train": ("organdetr.train", "train a detector on an MSD-style dataset.json or a training pack"),
    "pack": ("organdetr.training_pack", "preprocess a dataset.json once into one file (a training pack) to train from"),
    "evaluate": ("organdetr.evaluate", "evaluate a detector with COCO-style 3D metrics"),
    "models": ("organdetr_backend.models_command", "list the installed models and the names --model accepts"),
    "xray": ("organdetr_backend.xray_command", "X-ray views of a CT; 3D organ boxes from 2D boxes in several views"),
}


def build_parser(with_arguments: Collection[str] = COMMANDS.keys()) -> argparse.ArgumentParser:
    """The command line, with the arguments of the commands in ``with_arguments``: only their modules are imported
    (the others, e.g. train and evaluate with their training stack, take seconds to import)."""
    parser = argparse.ArgumentParser(prog="organdetr", description="Organ-DETR 3D organ detection for CT.")
    parser.add_argument("--version", action="version", version=f"organdetr {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name not in with_arguments:
            continue
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
        sub.set_defaults(run=module.run)
    return parser


def requested_commands(argv: list[str]) -> list[str]:
    """The command named on the command line, as a list (empty when there is none): the first argument that is not
    an option, as the top level has only ``--help`` and ``--version``, which take no value."""
    return [argument for argument in argv if not argument.startswith("-")][:1]


def use_utf8_stdio() -> None:
    """Write stdout and stderr as UTF-8 whatever the process locale (hosts may run with an ASCII "C" locale):
    results printed as JSON or CSV, and messages, can hold non-ASCII organ names and paths."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if encoding and codecs.lookup(encoding).name != "utf-8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; None: this process's own, as the console script does just before it exits."""
    if argv is not None:
        return run_command(argv)
    keep_freed_memory()  # a process of its own: freed memory is kept for its next scan (organdetr_backend.allocator)
    code = run_command(sys.argv[1:])
    # The process ends next: spare it the interpreter's final garbage collections over the ~200k objects of torch and
    # the command (0.5 s). Objects are still freed by reference counting; only reference cycles are left to the OS.
    gc.freeze()
    return code


def run_command(argv: list[str]) -> int:
    use_passive_waiting()  # before build_parser: command modules may import torch, which initialises OpenMP
    use_utf8_stdio()
    args = build_parser(requested_commands(argv)).parse_args(argv)
    try:
        args.threads = configure_threads(args.threads)
        if getattr(args, "model", None) is not None:  # installed model names -> folders, for every command
            from .model_catalog import resolve_model  # imports torch: only after use_passive_waiting()

            args.model = resolve_model(args.model)
        return int(args.run(args) or EXIT_OK)
    except UserInputError as error:
        print(f"organdetr {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"organdetr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the last line of defence: one readable line, traceback on request
        if os.environ.get("ORGANDETR_DEBUG"):
            raise
        print(
            f"organdetr {args.command}: internal error: {type(error).__name__}: {error} "
            "(set ORGANDETR_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
