"""The `segrt` command line. Subcommands live in :mod:`segrt.commands`, one module each.

One pattern for every module: the command functions are named ``<command>_command`` (``run_command``,
``train_command`` of `segrt gate train`, ...) and ``register(root)`` adds them: ``root.command(NAME)(...)``
for a command, or, for a group (`gate`, `exit`), a ``typer.Typer`` built in ``register`` with its
subcommands, added by ``root.add_typer(group, name=NAME)``. Options shared by several commands (sizes,
ranges, paths) are checked by the callbacks in :mod:`segrt.commands._args`; the training options are
defined once in :mod:`segrt.commands._training`.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console
from rich.text import Text

from segrt.runtime.errors import SegrtError

try:  # typer >= 0.22 carries its own copy of click; its exceptions are not the installed click's
    from typer._click import exceptions as click_errors
except ImportError:  # older typer runs on the click package
    from click import exceptions as click_errors  # type: ignore[no-redef]

# The CLI reports what failed in one line of its own; OpenCV's C++ warnings ("can't be used to capture by
# name") would only add noise to it. Set before OpenCV is first imported; an explicit setting wins.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="segrt: efficient SegFormer segmentation on the edge (ONNX Runtime, TensorRT).")

# Order is the order of `segrt --help`. A module listed here that is missing is a packaging bug.
COMMANDS = ["run", "export", "info", "eval", "train"]
OPTIONAL_COMMANDS = ["demo", "bench", "build", "targets", "verify", "doctor", "prune", "distill", "exit", "gate",
                     "serve", "export_triton"]

for _name in COMMANDS:
    importlib.import_module(f"segrt.commands.{_name}").register(app)
for _name in OPTIONAL_COMMANDS:
    try:
        importlib.import_module(f"segrt.commands.{_name}").register(app)
    except ModuleNotFoundError as _exc:
        if _exc.name != f"segrt.commands.{_name}":
            raise


def _one_line(err: Console, kind: str, message: str) -> None:
    # soft_wrap: one line per error in logs; Text: paths with [brackets] are not markup.
    err.print(Text.assemble(("error", "bold red"), f" ({kind}): {' '.join(message.split())}"), soft_wrap=True)


def _os_message(exc: OSError) -> str:
    """``cannot use /sys/kernel/x: Permission denied``: the file(s) involved and the system's reason."""
    names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot use {names}: {reason}" if names else reason


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Exit status: 0 done; 1 a check failed (`verify`) or an unexpected error (printed with its
    traceback: a bug to report); 2 a refused input, option or output (one line naming it), also an OSError
    that a command let through (the environment refused: a permission, a full disk); 130 Ctrl-C."""
    err = Console(stderr=True)
    try:
        # standalone_mode=False: click's usage errors come here too, to be printed the same way.
        code = app(args=argv, prog_name="segrt", standalone_mode=False)
    except SegrtError as exc:
        _one_line(err, type(exc).__name__, str(exc))
        sys.exit(2)
    except click_errors.NoArgsIsHelpError as exc:  # `segrt gate`: the group's help, as before
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:  # unknown option, not a number, missing argument, ...
        where = exc.ctx.command_path if isinstance(exc, click_errors.UsageError) and exc.ctx else "segrt"
        _one_line(err, "usage", f"{where}: {exc.format_message()} (see `{where} --help`)")
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except OSError as exc:  # a safety net: the environment refused (permissions, full disk), not a bug
        _one_line(err, type(exc).__name__, _os_message(exc))
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
