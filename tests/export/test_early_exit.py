"""Early exit (DToP): nothing exits at threshold 1.0 (outputs equal the unmodified model, in PyTorch and
ONNX); with a lower threshold the exported graph computes fewer tokens and exited pixels carry the aux
head's labels; fixed-budget exports have static, smaller shapes; exports match their PyTorch model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from segrt.export.methods.early_exit.model import (
    ExitConfig,
    attach_exit,
    kept_token_counts,
    load_heads,
    make_heads,
    save_heads,
    uncertainty,
)
from segrt.export.onnx_export import export_onnx
from segrt.export.passes.macs import count_macs
from segrt.runtime.engine import Engine
from segrt.runtime.errors import CheckpointError, ConfigError
from segrt.runtime.preprocess import frames_to_input

SIZE = (128, 160)  # stage-3 grid 8x10 = 80 tokens, stage 4 4x5


@pytest.fixture(scope="module")
def heads(random_b0):
    torch.manual_seed(3)
    return make_heads(random_b0.model, ["s2b0", "s2b1", "s1b1"], hidden={"s1b1": 16})  # s1b1: an MLP head


@pytest.fixture(scope="module")
def frame_input(camvid_frame, random_b0):
    meta = random_b0.metadata
    return frames_to_input([camvid_frame], SIZE, meta.mean, meta.std)


def _aux_confidence(random_b0, heads, x: np.ndarray) -> np.ndarray:
    """Top probabilities of the s2b0 head on a real frame (to pick a threshold that makes tokens exit)."""
    model = random_b0.model
    with torch.no_grad():
        feats = model.encoder.stages[1](model.encoder.stages[0](torch.from_numpy(x)))
        t, _, _ = model.encoder.stages[2].patch_embeddings(feats)
        return torch.softmax(heads["s2b0"](t), -1).max(-1).values.numpy().ravel()


@pytest.mark.parametrize("point", ["s2b0", "s2b1", "s1b1"])
@pytest.mark.parametrize("dwconv", ["zeros", "grid"])
def test_threshold_one_equals_unmodified_model(random_b0, heads, frame_input, point, dwconv):
    x = torch.from_numpy(frame_input)
    exit_model = attach_exit(random_b0.model, heads, ExitConfig(point=point, threshold=1.0, dwconv=dwconv))
    budget_all = attach_exit(random_b0.model, heads,
                             ExitConfig(point=point, mode="budget", keep_ratio=1.0, dwconv=dwconv))
    with torch.no_grad():
        ref = random_b0.model(x)
        out = exit_model(x)
        full = budget_all(x)
    assert exit_model.last_stats.exited_fraction == 0.0
    assert exit_model.last_stats.computed == exit_model.last_stats.tokens
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def threshold_one_onnx(random_b0, heads, camvid_frame, tmp_path_factory):
    path = tmp_path_factory.mktemp("exit") / "exit1.onnx"
    export_onnx(attach_exit(random_b0.model, heads, ExitConfig(threshold=1.0)), random_b0.metadata, path, size=SIZE,
                verify_images=[camvid_frame])
    return path


def test_threshold_one_onnx_equals_unmodified_model(random_b0, heads, frame_input, threshold_one_onnx):
    exit_model = attach_exit(random_b0.model, heads, ExitConfig(threshold=1.0))
    path = threshold_one_onnx
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: frame_input})[0]
    with torch.no_grad():
        ref = random_b0.model(torch.from_numpy(frame_input)).numpy()
        exit_model(torch.from_numpy(frame_input))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert kept_token_counts(path, frame_input) == exit_model.last_stats.tokens[2:]  # every token computed


def test_low_threshold_exits_tokens_in_pytorch_and_onnx(random_b0, heads, frame_input, camvid_frame, tmp_path):
    confidence = _aux_confidence(random_b0, heads, frame_input)
    threshold = float(np.quantile(confidence, 0.5))  # about half of the tokens are above it
    cfg = ExitConfig(point="s2b0", threshold=threshold, context=1)
    exit_model = attach_exit(random_b0.model, heads, cfg)
    with torch.no_grad():
        out = exit_model(torch.from_numpy(frame_input))
    stats = exit_model.last_stats
    assert 0.0 < stats.exited_fraction < 1.0
    assert stats.computed[2] < stats.tokens[2] and stats.computed[3] <= stats.tokens[3]
    assert stats.computed[:2] == stats.tokens[:2]
    # exited pixels carry the aux head's labels, the others the decoder's
    exited = stats.exited[:, 0]
    labels = out.argmax(1)
    assert exited.any() and (~exited).any()
    assert torch.equal(labels[exited], stats.aux_logits.argmax(1)[exited])
    with torch.no_grad():
        decoder_labels = random_b0.model(torch.from_numpy(frame_input)).argmax(1)
    assert not torch.equal(labels, decoder_labels)  # the exit changed something
    # the export computes the same, smaller token sets and matches its PyTorch model
    path = tmp_path / "exit-threshold.onnx"
    res = export_onnx(exit_model, random_b0.metadata, path, size=SIZE, verify_images=[camvid_frame])
    assert res.max_rel_error < 1e-4
    assert kept_token_counts(path, frame_input) == stats.computed[2:]
    engine = Engine(path)
    mask = engine.infer(camvid_frame)
    assert mask.shape == camvid_frame.shape[:2]


def test_fixed_budget_export_is_static_and_smaller(random_b0, heads, frame_input, camvid_frame, tmp_path,
                                                   threshold_one_onnx):
    cfg = ExitConfig(point="s2b0", mode="budget", keep_ratio=0.25, context=1)
    exit_model = attach_exit(random_b0.model, heads, cfg)
    path = tmp_path / "exit-budget.onnx"
    res = export_onnx(exit_model, random_b0.metadata, path, size=SIZE, verify_images=[camvid_frame])
    assert res.max_rel_error < 1e-4
    with torch.no_grad():
        exit_model(torch.from_numpy(frame_input))
    stats = exit_model.last_stats
    assert stats.computed[2:] == [20, 5]  # 25% of the 80- and 20-token grids
    assert stats.exited_fraction == pytest.approx(0.75)
    assert count_macs(path).shape_source == "onnx"  # static shapes: no data-dependent sizes
    # threshold 1.0 computes every token whatever the input: the unpruned model's MACs
    assert count_macs(path).total < count_macs(threshold_one_onnx, (1, 3, *SIZE)).total
    assert Engine(path).infer(camvid_frame).shape == camvid_frame.shape[:2]


def test_uncertainty_is_log_odds_and_never_ties_at_saturation():
    logits = torch.tensor([[[30.0, 0.0, 0.0], [40.0, 0.0, 0.0], [1.0, 1.0, 0.0]]])
    u, pred = uncertainty(logits)
    top = torch.softmax(logits, -1).max(-1).values
    assert top[0, 0] == top[0, 1]  # fp32 saturates
    assert u[0, 0] > u[0, 1]  # log-odds still order them
    # log((1 - p) / p) = log(sum of the other classes' exp(logit)) - top logit
    expected = torch.tensor([[np.log(2.0) - 30.0, np.log(2.0) - 40.0, np.log(np.e + 1.0) - 1.0]])
    torch.testing.assert_close(u, expected.float(), rtol=1e-5, atol=1e-5)
    assert pred.tolist() == [[0, 0, 0]]


def test_heads_round_trip_and_bad_input(random_b0, heads, tmp_path):
    path = tmp_path / "heads.safetensors"
    save_heads(heads, path, {"source": "random:b0:11", "hidden": {"s1b1": 16}})
    loaded, info = load_heads(path, random_b0.model)
    assert info["points"] == ["s2b0", "s2b1", "s1b1"]
    for k, v in heads.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    with pytest.raises(CheckpointError):
        load_heads(tmp_path / "missing.safetensors", random_b0.model)
    # MLP heads carry their width in the file's metadata; a linear-head file does not fit MLP heads
    mlp = make_heads(random_b0.model, ["s2b0"], hidden=24)
    save_heads(mlp, tmp_path / "mlp.safetensors", {"source": "random:b0:11", "hidden": 24})
    assert load_heads(tmp_path / "mlp.safetensors", random_b0.model)[0]["s2b0"].mlp[0].out_features == 24
    save_heads(mlp, tmp_path / "mislabelled.safetensors", {"source": "random:b0:11"})
    with pytest.raises(CheckpointError):
        load_heads(tmp_path / "mislabelled.safetensors", random_b0.model)
    with pytest.raises(ConfigError):
        ExitConfig(threshold=1.5)
    with pytest.raises(ConfigError):
        ExitConfig(point="stage3")
    with pytest.raises(ConfigError):
        make_heads(random_b0.model, ["s2b2"])  # B0 stage 3 has two blocks: nothing left to prune
    with pytest.raises(ConfigError):
        attach_exit(random_b0.model, heads, ExitConfig(point="s3b0"))
