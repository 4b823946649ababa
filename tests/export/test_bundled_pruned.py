"""The bundled pruned models (models/camvid-b0-p30, and camvid-b0-p27: p30 pruned again with widths aligned to
16): resolvable by name, genuinely smaller, and their ONNX computes what their checkpoint does."""

from __future__ import annotations

import numpy as np
import pytest

from segrt.runtime.engine import Engine
from segrt.runtime.models import bundled_names, resolve

REFERENCE = "camvid-b0"
MAX_MACS = {"camvid-b0-p30": 0.31, "camvid-b0-p27": 0.28}  # of the reference's


@pytest.fixture(scope="module", params=sorted(MAX_MACS))
def NAME(request):
    return request.param


@pytest.fixture(scope="module")
def pruned(NAME):
    from segrt.export.loading import load_model

    return load_model(NAME)


def test_bundled_name_resolves_to_both_files(NAME):
    assert NAME in bundled_names()
    assert resolve(NAME, "onnx").name == f"{NAME}.onnx"
    assert resolve(NAME, "safetensors").name == f"{NAME}.safetensors"


def test_checkpoint_alone_gives_a_smaller_dense_model(NAME, pruned):
    from segrt.export.loading import load_model
    from segrt.export.passes.macs import count_macs

    full = load_model(REFERENCE).model
    assert sum(p.numel() for p in pruned.model.parameters()) < sum(p.numel() for p in full.parameters())
    assert pruned.model.config.decoder_dim < full.config.decoder_dim
    cfg = pruned.model.config
    assert all(h < w * r for stage, w, r in zip(cfg.mlp_hidden, cfg.widths, cfg.mlp_ratios) for h in stage)
    assert "pruning" in pruned.metadata.extra and "distillation" in pruned.metadata.extra
    ratio = count_macs(resolve(NAME)).gmacs / count_macs(resolve(REFERENCE)).gmacs
    assert ratio <= MAX_MACS[NAME]


def test_aligned_student_has_mlp_widths_in_multiples_of_16():
    """camvid-b0-p27 (camvid-b0-p30 was pruned before --align existed)."""
    import json

    from segrt.export.loading import load_model

    pruned = load_model("camvid-b0-p27")
    plan = json.loads(pruned.metadata.extra["pruning"])
    assert plan["align"] == 16
    hidden = [h for stage in pruned.model.config.mlp_hidden for h in stage]
    assert hidden == [h for stage in plan["widths"]["mlp"] for h in stage] and all(h % 16 == 0 for h in hidden)
    assert pruned.model.config.decoder_dim % 16 == 0


def test_engine_by_name_matches_the_checkpoint(NAME, pruned, camvid_frame):
    from segrt.export.model.torch_predict import TorchPredictor

    engine = Engine(NAME, threads=1)
    onnx_mask = engine.infer(camvid_frame)
    torch_mask = TorchPredictor(pruned.model.float(), pruned.metadata)(camvid_frame)
    assert onnx_mask.shape == camvid_frame.shape[:2]
    assert np.mean(onnx_mask == torch_mask) > 0.999
