"""Resolve model names (``camvid-b0``) and paths to files.

Bundled models live in the repository's ``models/`` folder (or ``$SEGRT_MODELS``): a safetensors
checkpoint for the tools that need torch and its exported ONNX for the runtime, which must not.
"""

from __future__ import annotations

import os
from pathlib import Path

from segrt.runtime.errors import ModelLoadError

DEFAULT_MODEL = "camvid-b0"


def models_dir() -> Path:
    env = os.environ.get("SEGRT_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


def bundled_names() -> list[str]:
    folder = models_dir()
    return sorted({p.name.split(".")[0] for p in folder.glob("*.safetensors")} | {p.name.split(".")[0] for p in folder.glob("*.onnx")}) if folder.is_dir() else []


def resolve(name_or_path: str | os.PathLike, kind: str = "onnx") -> Path:
    """A path is returned as is; a bundled name maps to ``models/NAME.{kind}`` (kind: onnx or safetensors)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    text = str(name_or_path)
    if "/" not in text and "\\" not in text and "." not in text:
        candidate = models_dir() / f"{text}.{kind}"
        if candidate.exists():
            return candidate
        raise ModelLoadError(f"no bundled model {text!r} as {kind} in {models_dir()} (bundled: {', '.join(bundled_names()) or 'none'})")
    raise ModelLoadError(f"model file {path} does not exist")
