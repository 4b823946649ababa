"""Turn a model argument (bundled name, checkpoint path, ``random:b0:11``) into a PyTorch model."""

from __future__ import annotations

from pathlib import Path

from segrt.runtime.models import resolve

from segrt.export.model.checkpoints import LoadedModel, load_checkpoint, random_model


def load_model(spec: str | Path, *, trust_pickle: bool = False) -> LoadedModel:
    text = str(spec)
    if text.startswith("random:"):
        return random_model(text)
    return load_checkpoint(resolve(text, "safetensors"), trust_pickle=trust_pickle)
