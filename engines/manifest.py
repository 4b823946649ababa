"""Writing the engine manifest (the build side). Reading and checking it is the runtime's job:
:mod:`segrt.runtime.backends.engine_manifest`, re-exported here so build code has one import."""

from __future__ import annotations

from pathlib import Path

from segrt.runtime.backends.engine_manifest import (
    MANIFEST_KIND,
    MANIFEST_SCHEMA,
    Manifest,
    TensorSpec,
    check_gpu,
    check_versions,
    load_checked_engine,
    manifest_path,
    read_manifest,
    sha256_bytes,
)
from segrt.runtime.sinks import write_text

__all__ = ["MANIFEST_KIND", "MANIFEST_SCHEMA", "Manifest", "TensorSpec", "check_gpu", "check_versions",
           "load_checked_engine", "manifest_path", "read_manifest", "sha256_bytes", "write_manifest"]


def write_manifest(manifest: Manifest, engine: str | Path) -> Path:
    path = manifest_path(engine)
    write_text(path, manifest.to_json(), "engine manifest")
    return path
