"""The `segrt` command line. Subcommands live in :mod:`segrt.commands`, one module each."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from rich.text import Text

from segrt.runtime.errors import SegrtError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="segrt: efficient SegFormer segmentation on the edge (ONNX Runtime, TensorRT).")

# Order is the order of `segrt --help`. A module listed here that is missing is a packaging bug.
COMMANDS = ["run", "export", "info", "eval", "train"]
OPTIONAL_COMMANDS = ["demo", "bench", "build", "targets", "verify", "prune", "distill", "exit", "gate"]

for _name in COMMANDS:
    importlib.import_module(f"segrt.commands.{_name}").register(app)
for _name in OPTIONAL_COMMANDS:
    try:
        importlib.import_module(f"segrt.commands.{_name}").register(app)
    except ModuleNotFoundError as _exc:
        if _exc.name != f"segrt.commands.{_name}":
            raise


def main() -> None:
    err = Console(stderr=True)
    try:
        app()
    except SegrtError as exc:
        # soft_wrap: one line per error in logs; Text: paths with [brackets] are not markup.
        err.print(Text.assemble(("error", "bold red"), f" ({type(exc).__name__}): {exc}"), soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
