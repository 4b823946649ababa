"""Resolve model names (``camvid-b0``) and paths to files.

Bundled models live in the repository's ``models/`` folder (or ``$SEGRT_MODELS``): a safetensors
checkpoint for the tools that need torch and its exported ONNX for the runtime, which must not.

A plain string without a path separator or a dot (``"camvid-b0"``) is a bundled name first: a file or
folder of that name in the working directory does not shadow the bundled model (write ``./camvid-b0``
or pass a ``Path`` to mean the local one). Everything else is a path, and it must be a readable regular
file: a directory, FIFO, device, socket, broken symlink or symlink loop each gets its own message.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from segrt.runtime.arguments import describe
from segrt.runtime.errors import ModelLoadError

DEFAULT_MODEL = "camvid-b0"
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; a longer "path" is a mistake, reported without touching the disk
KINDS = ("onnx", "safetensors")


def models_dir() -> Path:
    env = os.environ.get("SEGRT_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


def bundled_names() -> list[str]:
    folder = models_dir()
    if not folder.is_dir():
        return []
    return sorted({p.name.split(".")[0] for p in folder.glob("*.safetensors")}
                  | {p.name.split(".")[0] for p in folder.glob("*.onnx")})


def is_bundled_name(text: str) -> bool:
    return bool(text) and "/" not in text and "\\" not in text and "." not in text


def _quoted(text: str) -> str:
    """``text`` in quotes, cut to 60 characters: a message must stay readable whatever was passed."""
    return repr(text) if len(text) <= 60 else repr(text[:59]) + f"… ({len(text)} characters)"


def model_text(name_or_path: object, argument: str = "model") -> str:
    """The path or name as a string, or ModelLoadError naming ``argument`` when it is neither."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelLoadError(f"{argument} must be a model file path or a bundled model name "
                             f"({', '.join(bundled_names()) or 'none bundled'}), got {describe(name_or_path)}")
    text = os.fspath(name_or_path)
    if not isinstance(text, str):  # a PathLike may return bytes
        raise ModelLoadError(f"{argument} must be a text path, got {describe(text)}")
    if not text.strip():
        raise ModelLoadError(f"{argument} is an empty string; expected a model file path or a bundled model name")
    if "\x00" in text:
        raise ModelLoadError(f"{argument} {_quoted(text)} contains a NUL character; no file can have that name")
    if len(text) > MAX_PATH_CHARS:
        raise ModelLoadError(f"{argument} {_quoted(text)} is longer than any path ({MAX_PATH_CHARS} characters)")
    return text


def check_model_file(path: Path) -> Path:
    """``path`` if it is a regular, readable, non-empty file; otherwise ModelLoadError saying what it is."""
    try:
        info = path.stat()  # follows symlinks: a link to a good model is a good model
    except FileNotFoundError:
        if path.is_symlink():
            raise ModelLoadError(f"model file {path} is a broken symlink (its target does not exist)") from None
        raise ModelLoadError(f"model file {path} does not exist") from None
    except OSError as exc:
        reasons = {errno.ELOOP: "is a symlink loop", errno.EACCES: "cannot be accessed (permission denied)",
                   errno.ENAMETOOLONG: "has a name too long for the file system",
                   errno.ENOTDIR: "has a part that is not a folder"}
        reason = reasons.get(exc.errno or 0, f"cannot be accessed ({exc.strerror or exc})")
        raise ModelLoadError(f"model file {path} {reason}") from None
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise ModelLoadError(f"model file {path} is a directory, not a model file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
        raise ModelLoadError(f"model file {path} is {kind}, not a regular file")
    if info.st_size == 0:
        raise ModelLoadError(f"model file {path} is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model file {path} cannot be read (permission denied)")
    return path


def resolve(name_or_path: str | os.PathLike, kind: str = "onnx") -> Path:
    """A bundled name maps to ``models/NAME.{kind}`` (kind: onnx or safetensors); a path must be a model file."""
    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    text = model_text(name_or_path)
    if isinstance(name_or_path, str) and is_bundled_name(text):
        candidate = models_dir() / f"{text}.{kind}"
        if os.path.isfile(candidate):  # os.path, not Path: a 300-character name is False, not an OSError
            return candidate
        if not os.path.lexists(text):
            raise ModelLoadError(f"no bundled model {_quoted(text)} as {kind} in {models_dir()} "
                                 f"(bundled: {', '.join(bundled_names()) or 'none'})")
    path = Path(text)
    if len(path.name) > 255:  # NAME_MAX: say so instead of the OS's "File name too long" from stat
        raise ModelLoadError(f"model file {_quoted(text)} has a file name longer than 255 characters")
    return check_model_file(path)
