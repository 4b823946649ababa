"""The JSON manifest written next to every engine, and the checks run on it before an engine is loaded.

A serialized TensorRT engine is opaque and only runs with the TensorRT version and GPU it was built
for; deserialising a mismatched or modified file fails deep inside TensorRT, or worse, does not fail.
So the runtime reads ``model.engine.json`` first, hashes the engine bytes it is about to hand to
TensorRT, and refuses with a message that says what differs.

Standard library only, and under ``runtime/`` because the robot-side runtime reads it; the build side
(``segrt.engines.manifest``) writes manifests with these same types.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from segrt.runtime.errors import EngineCompatibilityError, MissingPluginError, ModelLoadError

MANIFEST_SCHEMA = 1
MANIFEST_KIND = "segrt-tensorrt-engine"


@dataclass
class TensorSpec:
    name: str
    shape: list[int]  # -1 for dynamic dimensions
    dtype: str


@dataclass
class Manifest:
    engine_file: str
    engine_sha256: str
    tensorrt_version: str  # full version of the TensorRT that built it, e.g. 10.3.0.30
    target: str
    compute_capability: list[int]  # of the GPU that built it
    gpu_name: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict  # segrt ModelMetadata, copied from the ONNX
    onnx_file: str = ""
    onnx_sha256: str = ""
    strongly_typed: bool = False
    hardware_compatibility: str = "none"  # none | ampere_plus
    version_compatible: bool = False
    dla_core: int | None = None
    segrt_version: str = ""
    built_at: str = ""
    plan: dict = field(default_factory=dict)
    plugins: list[dict] = field(default_factory=list)  # TensorRT plugins embedded in the engine: id, kind, min_tensorrt
    kind: str = MANIFEST_KIND
    schema: int = MANIFEST_SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> Manifest:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise EngineCompatibilityError(f"{source} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("kind") != MANIFEST_KIND:
            raise EngineCompatibilityError(f"{source} is not a segrt engine manifest")
        if raw.get("schema") != MANIFEST_SCHEMA:
            raise EngineCompatibilityError(f"{source} has manifest schema {raw.get('schema')!r}; this segrt reads "
                                           f"{MANIFEST_SCHEMA}: rebuild the engine")
        try:
            raw["inputs"] = [TensorSpec(**t) for t in raw["inputs"]]
            raw["outputs"] = [TensorSpec(**t) for t in raw["outputs"]]
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (KeyError, TypeError) as exc:
            raise EngineCompatibilityError(f"{source} is missing or has malformed fields: {exc}") from exc


def manifest_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(engine: str | Path) -> Manifest:
    path = manifest_path(engine)
    if not path.is_file():
        raise EngineCompatibilityError(f"{engine} has no manifest ({path.name}); segrt only loads engines it can "
                                       "check: "
                                       "build with `segrt build`, or register an engine built by trtexec with "
                                       "`segrt build --from-plan plan.json --adopt ENGINE`")
    return Manifest.from_json(path.read_text(), source=str(path))


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(".")[:3])
    except ValueError:
        raise EngineCompatibilityError(f"manifest has a malformed TensorRT version {text!r}") from None


def check_versions(manifest: Manifest, running_tensorrt: str) -> None:
    """Same TensorRT major.minor.patch, or for version-compatible engines the same major, not older."""
    built, running = _version_tuple(manifest.tensorrt_version), _version_tuple(running_tensorrt)
    if manifest.version_compatible:
        if running[0] != built[0] or running < built:
            raise EngineCompatibilityError(
                f"engine is version-compatible from TensorRT {manifest.tensorrt_version} within major version "
                f"{built[0]}, "
                f"but this machine runs TensorRT {running_tensorrt}: rebuild the engine here")
    elif running != built:
        raise EngineCompatibilityError(
            f"engine was built with TensorRT {manifest.tensorrt_version} but this machine runs {running_tensorrt}; "
            "engines only load in the TensorRT version that built them: rebuild with `segrt build` on this device")


def _plugin_names(manifest: Manifest) -> str:
    return ", ".join(f"{p.get('id', '?')} ({p.get('kind', '?')}, TensorRT >= {p.get('min_tensorrt', '?')})"
                     for p in manifest.plugins)


def check_plugins(manifest: Manifest, running_tensorrt: str) -> None:
    """An engine embedding plugins (``segrt export --merge-ops plugin``) loads only in a TensorRT that has them."""
    running = _version_tuple(running_tensorrt)
    for plugin in manifest.plugins:
        needed = _version_tuple(str(plugin.get("min_tensorrt", "0")))
        if running < needed:
            raise MissingPluginError(
                f"engine embeds the TensorRT plugin {_plugin_names(manifest)}, which TensorRT {running_tensorrt} "
                "cannot load: build the function-form export (`segrt export --merge-ops function`) for this device")


def plugin_load_error(manifest: Manifest, engine: str | Path, running_tensorrt: str) -> MissingPluginError:
    """TensorRT refused to deserialise an engine whose manifest names plugins: say which."""
    return MissingPluginError(
        f"TensorRT {running_tensorrt} could not deserialise {engine}, which embeds the plugin "
        f"{_plugin_names(manifest)}: the plugin cannot be loaded here. Rebuild the engine on this device, or "
        "build the function-form export (`segrt export --merge-ops function`)")


def check_gpu(manifest: Manifest, compute_capability: tuple[int, int]) -> None:
    built = tuple(manifest.compute_capability)
    cc = f"{compute_capability[0]}.{compute_capability[1]}"
    if manifest.hardware_compatibility == "ampere_plus":
        if compute_capability < (8, 0):
            raise EngineCompatibilityError(f"engine is hardware-compatible from Ampere (8.0) on; this GPU is {cc}")
    elif built != tuple(compute_capability):
        raise EngineCompatibilityError(
            f"engine was built for compute capability {built[0]}.{built[1]} ({manifest.gpu_name}, target "
            f"{manifest.target}) "
            f"but this GPU is {cc}: rebuild it on this device")


def load_checked_engine(engine: str | Path, running_tensorrt: str, compute_capability: tuple[int,
                                                                                             int]) -> tuple[Manifest,
                                                                                                            bytes]:
    """Read manifest and engine, check both, and return the exact bytes that were hashed.

    Raises EngineCompatibilityError before anything is deserialised: on version or GPU mismatch, and on
    a hash mismatch (the engine was modified, truncated or swapped after it was built)."""
    engine = Path(engine)
    manifest = read_manifest(engine)
    if manifest.engine_file and manifest.engine_file != engine.name:
        raise EngineCompatibilityError(f"manifest {manifest_path(engine).name} describes {manifest.engine_file}, "
                                       f"not {engine.name}")
    check_versions(manifest, running_tensorrt)
    check_plugins(manifest, running_tensorrt)
    check_gpu(manifest, compute_capability)
    try:
        data = engine.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read engine {engine}: {exc}") from exc
    digest = sha256_bytes(data)
    if digest != manifest.engine_sha256:
        raise EngineCompatibilityError(
            f"{engine} does not match its manifest (sha256 {digest[:16]}... instead of "
            f"{manifest.engine_sha256[:16]}...): "
            "the file was modified or corrupted after it was built; refusing to deserialise it")
    return manifest, data
