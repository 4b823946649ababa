"""Checkpoint extensions: method-specific structure that a checkpoint rebuilds from its own metadata.

A method whose models carry extra modules (gated Mix-FFNs carry gate weights) registers a restore
function under the key of its entry in the model metadata's ``extra``. The generic loader
(:mod:`.checkpoints`) then rebuilds the plain SegFormer, hands it to every extension the checkpoint names,
and loads the weights into the result, without importing any method: the method's model module
registers itself when it is imported, and :mod:`segrt.export.loading` (the composition root) imports
every method so a loaded name always finds its extension.

A checkpoint names its extensions in the safetensors header (:data:`EXTENSIONS_KEY`, written by
``save_checkpoint`` for every registered key its metadata holds). A named extension that is not registered
is a :class:`CheckpointError`, never a silent load of the model without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from segrt.export.model.segformer import SegFormer
from segrt.runtime.errors import CheckpointError, ConfigError

EXTENSIONS_KEY = "segrt_extensions"  # safetensors header entry: JSON list of extension keys, in restore order

Restore = Callable[[SegFormer, str], SegFormer]
"""``restore(model, extra_json) -> new model`` with the extension's modules (never mutates ``model``)."""

_RESTORERS: dict[str, Restore] = {}


def register_checkpoint_extension(key: str, restore: Restore) -> None:
    """Make checkpoints whose metadata holds ``extra[key]`` load through ``restore``.

    Registering the same function again is a no-op (a module imported twice); a different function under a
    taken key is a programming error, reported rather than silently replacing the first."""
    current = _RESTORERS.get(key)
    if current is not None and _name(current) != _name(restore):
        raise ConfigError(f"checkpoint extension {key!r} is already registered by {_name(current)}")
    _RESTORERS[key] = restore


def registered_extensions() -> tuple[str, ...]:
    return tuple(_RESTORERS)


def extensions_in(extra: Mapping[str, str]) -> list[str]:
    """The registered extensions a model's metadata ``extra`` holds: what a checkpoint of it must name."""
    return [key for key in extra if key in _RESTORERS]


def declared_extensions(header: Mapping[str, str], extra: Mapping[str, str], source: str) -> list[str]:
    """The extensions a checkpoint needs: those its header names; for files written before the header
    entry existed, every registered key of its metadata (a missing one then fails on the unexpected weights)."""
    raw = header.get(EXTENSIONS_KEY)
    if raw is None:
        return extensions_in(extra)
    try:
        keys = json.loads(raw)
    except ValueError:
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(f"{source}: {EXTENSIONS_KEY} must be a JSON list of extension names, got {raw!r}")
    return keys


def restore_extensions(model: SegFormer, keys: list[str], extra: Mapping[str, str], source: str) -> SegFormer:
    """``model`` with every extension in ``keys`` applied in order (each returns a new model)."""
    for key in keys:
        restore = _RESTORERS.get(key)
        if restore is None:
            known = ", ".join(sorted(_RESTORERS)) or "none"
            raise CheckpointError(
                f"{source}: the checkpoint needs the {key!r} extension, which is not registered (registered: {known}); "
                "load it with segrt.export.loading.load_model, which registers every method")
        if key not in extra:
            raise CheckpointError(f"{source}: the checkpoint names the {key!r} extension but its metadata has no "
                                  f"{key!r} entry to restore it from")
        model = restore(model, extra[key])
    return model


def _name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
