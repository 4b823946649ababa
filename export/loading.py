"""Turn a model argument (bundled name, checkpoint path, ``random:b0:11``) into a PyTorch model.

The composition root of model loading: it imports every method's model code (:mod:`segrt.export.methods`) so
that each registers its checkpoint extension, and the generic checkpoint loader never imports a method.
"""

from __future__ import annotations

from pathlib import Path

import segrt.export.methods  # noqa: F401  (registers every method's checkpoint extension)
from segrt.export.model.checkpoints import LoadedModel, load_checkpoint, random_model
from segrt.runtime.models import resolve


def load_model(spec: str | Path, *, trust_pickle: bool = False) -> LoadedModel:
    text = str(spec)
    if text.startswith("random:"):
        return random_model(text)
    return load_checkpoint(resolve(text, "safetensors"), trust_pickle=trust_pickle)
