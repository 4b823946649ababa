"""Hostile and broken checkpoints: refused with a typed segrt error that names the problem, before a pickle
can run code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segrt.export.model.checkpoints import load_checkpoint
from segrt.runtime.errors import ModelLoadError, UnsafeModelError


# ------------------------------------------------------------------------------------------ checkpoints
class _Touch:
    """Pickles to a call of Path.touch: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_unless_trusted(tmp_path, random_b0):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pth"
    torch.save({"state_dict": random_b0.model.state_dict(), "hook": _Touch(marker)}, path)
    with pytest.raises(UnsafeModelError, match="--trust-pickle"):
        load_checkpoint(path)
    assert not marker.exists(), "refusing must not unpickle the payload"
    loaded = load_checkpoint(path, trust_pickle=True)
    assert marker.exists()  # trusting really unpickles, payload and all: that is why it is opt-in
    for key, value in random_b0.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_tensor_only_pickle_loads_without_trust(tmp_path, random_b0):
    path = tmp_path / "weights.pth"
    torch.save({"model": random_b0.model.state_dict(), "epoch": 12, "note": "plain containers"}, path)
    loaded = load_checkpoint(path)
    key = "decode_head.classifier.weight"
    assert torch.equal(loaded.model.state_dict()[key], random_b0.model.state_dict()[key])


def test_cli_export_has_the_trust_flag(tmp_path, random_b0):
    from typer.testing import CliRunner

    from segrt.cli import app

    path = tmp_path / "model.pth"
    torch.save({"state_dict": random_b0.model.state_dict(), "hook": _Touch(tmp_path / "x")}, path)
    result = CliRunner().invoke(app, ["export", str(path), "-o", str(tmp_path / "m.onnx"), "--size", "64x64"])
    assert result.exit_code != 0 and not (tmp_path / "x").exists()
    assert isinstance(result.exception, UnsafeModelError) or "trust-pickle" in result.output
    help_text = CliRunner().invoke(app, ["export", "--help"]).output
    assert "--trust-pickle" in help_text


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_checkpoints_are_model_load_errors(tmp_path, random_b0, suffix):
    from segrt.export.model.checkpoints import save_checkpoint

    whole = tmp_path / f"whole{suffix}"
    if suffix == ".safetensors":
        save_checkpoint(random_b0.model, random_b0.metadata, whole)
    else:
        torch.save(random_b0.model.state_dict(), whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(cut)
    assert str(cut) in str(info.value)


@pytest.mark.parametrize("metadata,field", [
    ("[1, 2, 3]", "JSON object"), ("null", "JSON object"), ("{", "JSON"), ('{"classes": "abc"}', "'classes'"),
    ('{"classes": ["a"], "std": [0, 0, 0]}', "'std'"), ('{"classes": ["a"], "input_size": "512x512"}', "'input_size'"),
    ('{"classes": ["a"], "palette": [[999, 0, 0]]}', "'palette'"),
])
def test_checkpoint_metadata_is_checked_like_onnx_metadata(tmp_path, random_b0, metadata, field):
    # safetensors checkpoints carry the same segrt record as ONNX files, read by the same ModelMetadata code
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from segrt.export.model.checkpoints import META_KEY, save_checkpoint

    good = tmp_path / "good.safetensors"
    save_checkpoint(random_b0.model, random_b0.metadata, good)
    with safe_open(str(good), "pt") as f:
        header = dict(f.metadata())
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata={**header, META_KEY: metadata})
    assert load_checkpoint(good).metadata.classes == random_b0.metadata.classes
    with pytest.raises(ModelLoadError, match=field):
        load_checkpoint(bad)
