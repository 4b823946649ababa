"""What a segrt model carries with it: classes, palette, input size, normalisation, provenance.

The same record travels in safetensors checkpoints (``__metadata__``), ONNX ``metadata_props`` and
TensorRT engine manifests, so that a runtime needs no side files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from segrt.runtime.errors import ModelLoadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METADATA_KEY = "segrt"


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct RGB colours for ``n`` classes (the PASCAL VOC bit-interleaving scheme)."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


@dataclass
class ModelMetadata:
    classes: list[str]
    palette: list[tuple[int, int, int]] = field(default_factory=list)  # RGB per class
    input_size: tuple[int, int] | None = (512, 512)  # (H, W); None means any size (dynamic export)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB, on [0, 1] pixels
    std: tuple[float, float, float] = IMAGENET_STD
    output: str = "logits"  # "logits" (B,K,h,w) or "labels" (B,h,w)
    segrt_version: str = ""
    source_sha256: str = ""
    source: str = ""
    architecture: str = ""  # SegFormerConfig JSON, so a graph can be traced back to its model
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.palette:
            self.palette = default_palette(len(self.classes))
        self.palette = [tuple(int(v) for v in c) for c in self.palette]  # type: ignore[misc]
        if len(self.palette) < len(self.classes):
            raise ModelLoadError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        if self.input_size is not None:
            self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        try:
            raw = json.loads(text)
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"model metadata is not valid segrt metadata: {exc}") from exc
