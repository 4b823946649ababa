"""Argument checks shared by every command.

A bad value is refused before any work starts, with a :class:`ConfigError` (or, for a result that
cannot be written, an :class:`OutputError`) whose message names the option: `segrt` prints it on one
line and exits with status 2. Values click cannot even parse (``--iterations abc``) are click usage
errors, which also name the option and exit with status 2.

Numeric options take a ``callback=`` from here (``positive``, ``fraction``, ...); sizes go through
:func:`parse_size`, bounded by ``MIN_SIDE``/``MAX_SIDE`` and ``MAX_AREA`` so that an absurd size is refused
before anything is allocated; paths take ``existing_path``, ``existing_file``, ``existing_folder``,
``output_file`` or ``output_folder``.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer

from segrt.runtime.errors import ConfigError, OutputError

# Model input sizes (export, train crops, eval, bench): 32 px is SegFormer's output stride; 4096 px a side
# and 2048 x 2048 in area bound the attention maps of stage 1 (an export at the area limit needs several GB).
MIN_SIDE = 32
MAX_SIDE = 4096
MAX_AREA = 2048 * 2048


def option_name(param: typer.CallbackParam | None, fallback: str = "value") -> str:
    """``--lr`` for an option (its longest flag), ``MODEL`` for an argument."""
    if param is None:
        return fallback
    flags = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    if flags:
        return max(flags, key=len)
    name = getattr(param, "human_readable_name", None) or getattr(param, "name", None)
    return str(name).upper() if name else fallback


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """``512x1024`` or ``512`` -> (H, W), each side MIN_SIDE..MAX_SIDE and H*W at most MAX_AREA."""
    parts = str(text).strip().lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ConfigError(f"{option} {text!r}: expected HxW such as 512x512 (or one number for a square)")
    h, w = values
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ConfigError(f"{option} {text!r}: each side must be {MIN_SIDE}..{MAX_SIDE} pixels")
    if h * w > MAX_AREA:
        raise ConfigError(f"{option} {text!r}: {h * w} pixels is more than the {MAX_AREA} "
                          f"({math.isqrt(MAX_AREA)}x{math.isqrt(MAX_AREA)}) a model input may have")
    return h, w


def size_option(param: typer.CallbackParam, value: str | None) -> str | None:
    """Callback for size options: checked while parsing, so a bad size fails before the model loads."""
    if value is not None:
        parse_size(value, option_name(param))
    return value


def in_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[typer.CallbackParam, Any], Any]:
    """A callback refusing values outside [low, high] (open ends with ``low_open``/``high_open``) and NaN/inf."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    lo, hi = ("(" if low is None else lo), (")" if high is None else hi)
    interval = f"{lo}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{hi}"

    def check(param: typer.CallbackParam, value: Any) -> Any:
        if value is None:  # an optional option left out
            return value
        for v in value if isinstance(value, (list, tuple)) else [value]:
            bad = not math.isfinite(v)
            bad = bad or (low is not None and (v <= low if low_open else v < low))
            bad = bad or (high is not None and (v >= high if high_open else v > high))
            if bad:
                raise ConfigError(f"{option_name(param)} {v!r} is out of range: expected a value in {interval}")
        return value

    return check


positive = in_range(0, low_open=True)  # learning rates, weights that must act, time budgets, tolerances
non_negative = in_range(0)  # loss weights, seeds, worker counts, tolerances that may be exact
at_least_one = in_range(1)  # counts: iterations, batch sizes, frames, threads
fraction = in_range(0, 1, low_open=True)  # (0, 1]: keep ratios, MAC budgets
unit_interval = in_range(0, 1)  # [0, 1]: opacities, agreements, stage splits
finite = in_range()  # any real number, but not NaN or infinity (scores, thresholds on raw scores)


def _kind(path: Path) -> str | None:
    """'file', 'folder', another kind ('FIFO', 'device', ...) or None when nothing is there."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or a file where a folder would be
        return None
    except OSError as exc:  # a symlink loop, a name too long, no permission to look
        return exc.strerror or type(exc).__name__
    except ValueError:  # a NUL byte in the name
        return "invalid name"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return "FIFO" if stat.S_ISFIFO(mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "socket"


KINDS = ("file", "folder", "FIFO", "device", "socket")


def _is_a(kind: str) -> str:
    """' is a FIFO' for a kind of file, ': Too many levels of symbolic links' for a problem looking at it."""
    return f" is a {kind}" if kind in KINDS else f": {kind}"


def _existing(value: Path | None, param: typer.CallbackParam | None, allowed: tuple[str, ...]) -> Path | None:
    if value is None:
        return value
    kind = _kind(Path(value))
    what = " or ".join(allowed)
    if kind is None:
        raise ConfigError(f"{option_name(param)} {value}: no such {what}")
    if kind not in allowed:
        raise ConfigError(f"{option_name(param)} {value}{_is_a(kind)}, not a {what}")
    return value


def existing_path(param: typer.CallbackParam, value: Path | None) -> Path | None:
    """A file or folder that exists (never a FIFO or device, which would block or never end)."""
    return _existing(value, param, ("file", "folder"))


def existing_file(param: typer.CallbackParam, value: Path | None) -> Path | None:
    return _existing(value, param, ("file",))


def existing_folder(param: typer.CallbackParam, value: Path | None) -> Path | None:
    return _existing(value, param, ("folder",))


def model_spec(param: typer.CallbackParam, value: str | None) -> str | None:
    """A model given by name (bundled, ``random:...``) or path: a path that exists must be a file or folder."""
    if value is not None and value.strip() == "":
        raise ConfigError(f"{option_name(param)} is empty: give a model file or a bundled model name")
    if value is not None:
        kind = _kind(Path(value))
        if kind not in (None, "file", "folder"):
            raise ConfigError(f"{option_name(param)} {value}{_is_a(kind)}, not a model file or folder")
    return value


def _writable_parent(path: Path, option: str) -> None:
    for parent in [path.parent, *path.parent.parents]:
        kind = _kind(parent)
        if kind == "folder":
            return
        if kind is not None:
            raise OutputError(f"{option} {path}: {parent}{_is_a(kind)}, not a folder")


def _probe_writable(path: Path, option: str, start: Path) -> None:
    """Create and remove a hidden file in the nearest folder that exists (the path itself for a folder), so
    a read-only place (/sys, /proc, a read-only mount) is refused before the work, not after it."""
    folder = next((p for p in [start, *start.parents] if _kind(p) == "folder"), None)
    if folder is None:
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".segrt-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write in {folder}: {exc.strerror or type(exc).__name__}") from None


def output_file(param: typer.CallbackParam, value: Path | None) -> Path | None:
    """A file to write: not a folder, no file where one of its folders would have to be, in a writable place."""
    if value is None:
        return value
    option, kind = option_name(param), _kind(Path(value))
    if kind not in (None, "file"):
        raise OutputError(f"{option} {value}{_is_a(kind)}; give a file name to write")
    _writable_parent(Path(value), option)
    _probe_writable(Path(value), option, Path(value).parent)
    return value


def output_folder(param: typer.CallbackParam, value: Path | None) -> Path | None:
    """A folder to write into: a folder, or a path where one can be created."""
    if value is None:
        return value
    option, kind = option_name(param), _kind(Path(value))
    if kind not in (None, "folder"):
        raise OutputError(f"{option} {value}{_is_a(kind)}, not a folder")
    _writable_parent(Path(value), option)
    _probe_writable(Path(value), option, Path(value))
    return value


def choice(*allowed: str) -> Callable[[typer.CallbackParam, str | None], str | None]:
    """A callback accepting one of ``allowed`` (case as given), naming the option and the choices otherwise."""

    def check(param: typer.CallbackParam, value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise ConfigError(f"{option_name(param)} {value!r}: expected one of {', '.join(allowed)}")
        return value

    return check


def fail(message: str) -> NoReturn:
    """Refuse a combination of options: a ConfigError, printed on one line by `segrt`, exit status 2."""
    raise ConfigError(message)
