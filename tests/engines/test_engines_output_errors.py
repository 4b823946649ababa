"""The build side's writers (bundle, plan, manifest) report a failed write as an OutputError naming the file,
never a raw OSError. Failures are made in ways that work as root: a path under a regular file, or a
monkeypatched copy that finds the disk full."""

from __future__ import annotations

import errno

import pytest

from segrt.engines import bundle as bundle_module
from segrt.engines.bundle import write_bundle
from segrt.engines.manifest import Manifest, TensorSpec, sha256_bytes, write_manifest
from segrt.engines.plan import BuildRequest, PlanFile
from segrt.engines.targets import get_target
from segrt.runtime.errors import OutputError


def test_a_plan_file_that_cannot_be_written_is_an_output_error(regular_file):
    with pytest.raises(OutputError, match=r"build plan .*regular\.txt/plan\.json"):
        PlanFile(BuildRequest("desktop"), [], {"source": "tiny.onnx"}).save(regular_file / "plan.json")


def test_a_manifest_that_cannot_be_written_is_an_output_error(regular_file):
    manifest = Manifest(engine_file="m.engine", engine_sha256=sha256_bytes(b"x"), tensorrt_version="10.3.0.30",
                        target="jetson-orin", compute_capability=[8, 7], gpu_name="Orin", precision="fp16",
                        inputs=[TensorSpec("pixel_values", [1, 3, 64, 64], "float32")],
                        outputs=[TensorSpec("output", [1, 11, 16, 16], "float32")], metadata={})
    with pytest.raises(OutputError, match=r"engine manifest .*regular\.txt"):
        write_manifest(manifest, regular_file / "m.engine")


def test_a_bundle_folder_under_a_file_is_an_output_error(regular_file, tiny_onnx):
    with pytest.raises(OutputError, match=r"bundle folder .*regular\.txt/bundle"):
        write_bundle(tiny_onnx, regular_file / "bundle", get_target("jetson-orin"), BuildRequest("jetson-orin"))


def test_a_model_copy_on_a_full_disk_is_an_output_error_naming_it(tmp_path, tiny_onnx, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_module.shutil, "copyfile", no_space)
    with pytest.raises(OutputError, match=r"model copy .*bundle/.*\.onnx: No space left"):
        write_bundle(tiny_onnx, tmp_path / "bundle", get_target("jetson-orin"), BuildRequest("jetson-orin"))
