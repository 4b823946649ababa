"""Argument checks shared by the runtime's public entry points.

One place turns a wrong type or an out-of-range value into a typed :class:`SegrtError` that names the
argument, instead of a raw TypeError or ValueError from deep inside numpy, OpenCV or ONNX Runtime.
``bool`` is never accepted where a number is asked for (``True`` is an int in Python, never what a
caller meant by ``threads=True``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

from segrt.runtime.errors import ConfigError, SegrtError

MAX_REPR = 60  # characters of a bad value quoted in a message: a 10 MB string must not become the message


def describe(value: object) -> str:
    """``int 5``, ``str 'abc…'`` or ``ndarray of shape (2, 3) uint8``: enough to recognise what was passed."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} {dtype}"
    text = " ".join(repr(value).split())  # one line, whatever the repr looks like
    if len(text) > MAX_REPR:
        text = text[: MAX_REPR - 1] + "…"
    return f"{type(value).__name__} {text}"


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              optional: bool = False, error: type[SegrtError] = ConfigError) -> int | None:
    """``value`` as an int in [minimum, maximum]; None passes only when ``optional``."""
    if value is None and optional:
        return None
    if not _is_integer(value):
        raise error(f"{name} must be an integer{' or None' if optional else ''}, got {describe(value)}")
    number = int(value)
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise error(f"{name} must be in {_range(minimum, maximum)}, got {number}")
    return number


def check_number(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, optional: bool = False,
                 error: type[SegrtError] = ConfigError) -> float | None:
    """``value`` as a finite float in [minimum, maximum] (and > ``above``); None only when ``optional``."""
    if value is None and optional:
        return None
    if not _is_real(value):
        raise error(f"{name} must be a number{' or None' if optional else ''}, got {describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise error(f"{name} must be a finite number, got {number}")
    if above is not None and number <= above:
        raise error(f"{name} must be greater than {above:g}, got {number:g}")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise error(f"{name} must be in {_range(minimum, maximum)}, got {number:g}")
    return number


def check_choice(value: Any, name: str, choices: Iterable[str], *, error: type[SegrtError] = ConfigError) -> str:
    """``value`` must be one of the strings ``choices``; a non-string is a ConfigError whatever ``error`` is."""
    options = tuple(choices)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be one of {', '.join(options)}, got {describe(value)}")
    if value not in options:
        raise error(f"unknown {name} {value[:MAX_REPR]!r}; expected one of {', '.join(options)}")
    return value


def check_bool(value: Any, name: str, *, optional: bool = False, error: type[SegrtError] = ConfigError) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise error(f"{name} must be True or False{' or None' if optional else ''}, got {describe(value)}")
    return value


def check_callable(value: Any, name: str, *, optional: bool = False,
                   error: type[SegrtError] = ConfigError) -> Callable[..., Any] | None:
    if value is None and optional:
        return None
    if not callable(value):
        raise error(f"{name} must be callable{' or None' if optional else ''}, got {describe(value)}")
    return value


def check_instance(value: Any, name: str, kind: type, *, optional: bool = False,
                   error: type[SegrtError] = ConfigError) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise error(f"{name} must be a {kind.__name__}{' or None' if optional else ''}, got {describe(value)}")
    return value


def _range(minimum: float | None, maximum: float | None) -> str:
    low = "-inf" if minimum is None else f"{minimum:g}"
    high = "inf" if maximum is None else f"{maximum:g}"
    return f"[{low}, {high}]"
