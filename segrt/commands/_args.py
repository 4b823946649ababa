"""Argument parsing shared by several commands."""

from __future__ import annotations

import typer

from segrt.runtime.errors import ConfigError


def parse_size(text: str) -> tuple[int, int]:
    """``512x1024`` or ``512`` -> (H, W)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            h, w = int(parts[0]), int(parts[1])
            if h > 0 and w > 0:
                return h, w
    except ValueError:
        pass
    raise ConfigError(f"bad size {text!r}; expected HxW such as 512x512")


def fail(message: str) -> None:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(2)
