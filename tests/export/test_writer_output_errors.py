"""The export side's writers (training state and run files, the FP16 pass) report a failed write as an
OutputError naming the file, never a raw OSError, and leave no temporary file behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from segrt.export.passes.fp16 import export_fp16
from segrt.export.training import loop
from segrt.runtime.errors import OutputError


def test_a_training_state_that_cannot_be_written_is_an_output_error(regular_file):
    with pytest.raises(OutputError, match=r"training state .*regular\.txt/state\.pt"):
        loop.write_atomic(regular_file / "state.pt", lambda tmp: tmp.write_bytes(b"state"))


def test_a_full_disk_while_saving_state_keeps_the_old_state_and_no_temporary(tmp_path):
    state = tmp_path / "state.pt"
    state.write_bytes(b"old")

    def no_space(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"state\.pt: No space left"):
        loop.write_atomic(state, no_space)
    assert state.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_run_files_that_cannot_be_written_are_output_errors(regular_file, monkeypatch):
    def checkpoint(path: Path) -> None:
        path.write_bytes(b"weights")  # as safetensors would: a raw OSError under a regular file

    class Metrics:
        miou, pixel_accuracy = 0.5, 0.9

        def to_dict(self) -> dict:
            return {"miou": self.miou}

    val = loop.Validation(evaluate=Metrics, save_model=checkpoint)
    with pytest.raises(OutputError, match=r"checkpoint .*regular\.txt/best\.safetensors"):
        loop.validate(val, regular_file, loop.RunState(), lambda message: None)


def test_an_fp16_model_that_cannot_be_written_is_an_output_error(regular_file, tiny_onnx):
    with pytest.raises(OutputError, match=r"FP16 model .*regular\.txt/m\.onnx"):
        export_fp16(tiny_onnx, regular_file / "m.onnx", verify=False)
