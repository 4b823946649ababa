"""Dynamic gated Mix-FFN neurons: a gate forced open reproduces the unpruned model (PyTorch and ONNX), the
fixed-ratio export computes exactly k neurons per block, both exports match their PyTorch model and run
through Engine, gated checkpoints reload from the file alone, and the distillation hooks train the gates."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from segrt.export.methods.gating.model import (
    GATING_KEY,
    GatedMixFFN,
    GatingConfig,
    attach_gates,
    calibrate_gates,
    frames_to_batches,
    freeze_gates,
    frozen_plan,
    gated_blocks,
    kept_count,
    kept_per_block,
    mlp_savings,
    set_mode,
    sparsity_loss,
)
from segrt.export.methods.gating.recipe import export_gated
from segrt.export.model.checkpoints import LoadedModel, load_checkpoint, save_checkpoint
from segrt.export.model.extensions import EXTENSIONS_KEY
from segrt.export.model.segformer import SegFormer, SegFormerConfig
from segrt.runtime.engine import Engine
from segrt.runtime.errors import ConfigError
from segrt.runtime.preprocess import frames_to_input

SIZE = (128, 160)
OPEN = -1e9  # a threshold every score clears


def _input(frame, meta) -> torch.Tensor:
    return torch.from_numpy(frames_to_input([frame], SIZE, meta.mean, meta.std))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def unpruned(random_b0):
    """A seeded random B0 with one block per stage: every Mix-FFN width of B0, half the export time."""
    torch.manual_seed(0)
    model = SegFormer(SegFormerConfig.from_variant("b0", 11, depths=(1, 1, 1, 1))).eval()
    return LoadedModel(model, copy.deepcopy(random_b0.metadata), "random-b0-depth1", "2" * 64)


@pytest.fixture(scope="module")
def gated(unpruned, camvid_root):
    """The unpruned model with gates calibrated on real CamVid frames to keep half the neurons."""
    import cv2

    model = attach_gates(unpruned.model, GatingConfig(keep_ratio=0.5))  # a copy: unpruned stays as it is
    frames = [cv2.imread(str(p)) for p in sorted((camvid_root / "train").glob("*.png"))[:4]]
    calibrate_gates(model, frames_to_batches(frames, SIZE, unpruned.metadata.mean, unpruned.metadata.std), 0.5)
    meta = copy.deepcopy(unpruned.metadata)
    meta.extra = {**meta.extra, GATING_KEY: GatingConfig(keep_ratio=0.5).to_json()}
    return LoadedModel(model, meta, "gated-random-b0", unpruned.sha256)


@pytest.fixture(scope="module")
def reference(unpruned, camvid_frame):
    with torch.no_grad():
        return unpruned.model(_input(camvid_frame, unpruned.metadata)).numpy()


@pytest.mark.parametrize("mode, options", [("open", {}), ("mask", {"threshold": OPEN}), ("topk", {"keep_ratio": 1.0}),
                                           ("threshold", {"threshold": OPEN})])
def test_gate_forced_open_equals_unpruned_model(gated, camvid_frame, reference, mode, options):
    model = set_mode(copy.deepcopy(gated.model), mode, **options)
    with torch.no_grad():
        out = model(_input(camvid_frame, gated.metadata)).numpy()
    assert _rel(out, reference) < 1e-5
    if mode != "open":
        assert kept_per_block(model) == [b.hidden for b in gated_blocks(model)]


def test_calibrated_gate_prunes_and_depends_on_the_image(gated, camvid_root, reference, camvid_frame):
    import cv2

    model = set_mode(copy.deepcopy(gated.model), "mask", threshold=0.0)
    with torch.no_grad():
        out = model(_input(camvid_frame, gated.metadata)).numpy()
        kept_a = kept_per_block(model)
        other = cv2.imread(str(max((camvid_root / "val").glob("*.png"))))
        model(_input(other, gated.metadata))
        kept_b = kept_per_block(model)
    hidden = [b.hidden for b in gated_blocks(model)]
    assert all(0 < k < h for k, h in zip(kept_a, hidden))  # really pruned, never empty
    assert 0.3 < sum(kept_a) / sum(hidden) < 0.7  # calibrated near the 0.5 target
    assert _rel(out, reference) > 1e-3  # pruning changes the output
    assert mlp_savings(model.cpu(), SIZE, kept_a) > 0
    assert len(kept_b) == len(kept_a)


def test_threshold_mode_equals_mask_mode(gated, camvid_frame):
    """The gathered (exported) computation keeps the same neurons as the masked (trained) one."""
    x = _input(camvid_frame, gated.metadata)
    model = copy.deepcopy(gated.model)
    with torch.no_grad():
        masked = set_mode(model, "mask", threshold=0.0)(x).numpy()
        kept_mask = kept_per_block(model)
        gathered = set_mode(model, "threshold", threshold=0.0)(x).numpy()
        kept_gather = kept_per_block(model)
    assert kept_mask == kept_gather
    assert _rel(gathered, masked) < 1e-5


def test_topk_batches_agree_with_single_images(gated, camvid_root):
    import cv2

    frames = [cv2.imread(str(p)) for p in sorted((camvid_root / "val").glob("*.png"))[:2]]
    x = torch.from_numpy(frames_to_input(frames, SIZE, gated.metadata.mean, gated.metadata.std))
    model = set_mode(copy.deepcopy(gated.model), "topk", keep_ratio=0.5)
    with torch.no_grad():
        both = model(x).numpy()
        single = [model(x[i : i + 1]).numpy()[0] for i in range(2)]
    assert all(_rel(both[i], single[i]) < 1e-5 for i in range(2))


def test_threshold_mode_refuses_batches(gated):
    model = set_mode(copy.deepcopy(gated.model), "threshold")
    with pytest.raises(ConfigError, match="one image at a time"):
        model(torch.zeros(2, 3, *SIZE))


def test_sparsity_loss_measures_the_distance_to_the_target(gated, camvid_frame):
    model = set_mode(copy.deepcopy(gated.model), "mask", threshold=OPEN)
    model(_input(camvid_frame, gated.metadata))
    assert float(sparsity_loss(model, 0.5).detach()) == pytest.approx(0.25)  # everything kept: (1 - 0.5)^2
    assert float(sparsity_loss(model, 1.0).detach()) == 0.0


def test_gated_checkpoint_reloads_from_the_file_alone(gated, camvid_frame, tmp_path):
    from safetensors import safe_open

    path = tmp_path / "gated.safetensors"
    save_checkpoint(gated.model, gated.metadata, path)
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()[EXTENSIONS_KEY]) == [GATING_KEY]  # a loader without gating refuses it
    loaded = load_checkpoint(path)
    assert len(gated_blocks(loaded.model)) == 4
    assert all(isinstance(b, GatedMixFFN) for b in gated_blocks(loaded.model))
    x = _input(camvid_frame, gated.metadata)
    with torch.no_grad():
        a = set_mode(copy.deepcopy(gated.model), "mask", threshold=0.0)(x)
        b = set_mode(loaded.model, "mask", threshold=0.0)(x)
    assert torch.equal(a, b)


def _open_export(loaded, path, mode, frame):
    options = {"keep_ratio": 1.0} if mode == "topk" else {"threshold": OPEN}
    return export_gated(loaded.model, loaded.metadata, path, mode, size=SIZE, verify_images=[frame], **options)


@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_open_gate_export_equals_unpruned_model(gated, camvid_frame, reference, tmp_path, mode):
    path = tmp_path / f"open-{mode}.onnx"
    _open_export(gated, path, mode, camvid_frame)
    with Engine(path, threads=2) as engine:
        assert engine.metadata.input_size == SIZE
        logits = engine.logits(camvid_frame)
    assert _rel(logits[None], reference) < 1e-4


@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_pruned_exports_match_their_pytorch_model_and_run_in_engine(gated, camvid_frame, tmp_path, mode):
    path = tmp_path / f"gated-{mode}.onnx"
    result = export_gated(gated.model, gated.metadata, path, mode, size=SIZE, verify_images=[camvid_frame])
    assert result.max_rel_error < 1e-4  # verified against this gated model in PyTorch (not the unpruned one)
    model = set_mode(copy.deepcopy(gated.model), mode)
    with torch.no_grad():
        expected = model(_input(camvid_frame, gated.metadata)).numpy()
    with Engine(path, threads=2) as engine:
        assert _rel(engine.logits(camvid_frame)[None], expected) < 1e-4
        mask = engine.infer(camvid_frame)
    assert mask.shape == camvid_frame.shape[:2]
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert ("TopK" in ops) == (mode == "topk") and ("NonZero" in ops) == (mode == "threshold")
    if mode == "topk":
        _assert_k_neurons(proto, [kept_count(b.hidden, 0.5) for b in gated_blocks(gated.model)])


def _assert_k_neurons(proto: onnx.ModelProto, ks: list[int]) -> None:
    """TopK asks for k per block, and the fc1 slice, depth-wise kernel and fc2 slice all hold k neurons."""
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    topk = [int(np.asarray(consts[n.input[1]]).ravel()[0]) for n in proto.graph.node if n.op_type == "TopK"]
    assert topk == ks
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    # slices of weights (initializers), batch 1: fc1 rows (k, C), fc1 bias (k,), dw kernel (k, 1, 3, 3), fc2 rows (k, C)
    gathered = [shapes[n.output[0]] for n in inferred.graph.node if n.op_type in ("GatherND", "Gather")
                and n.input[0] in consts and n.output[0] in shapes]
    for k in set(ks):
        assert sum(1 for s in gathered if s[0] == k) >= 4 * ks.count(k)
    assert {s[0] for s in gathered} == set(ks)  # no gathered slice at any other width


def test_gate_training_hooks_move_the_gates(random_b0, camvid_root, tmp_path):
    """Two iterations of the distillation trainer with the gating hooks: the gates learn and the checkpoint
    it writes reloads as a gated model."""
    from segrt.export.methods.gating.recipe import gating_hooks
    from segrt.export.training.distill import DistillConfig, distill

    teacher = LoadedModel(copy.deepcopy(random_b0.model), copy.deepcopy(random_b0.metadata), "teacher",
                          random_b0.sha256)
    student_model = attach_gates(random_b0.model, GatingConfig(keep_ratio=0.5))
    meta = copy.deepcopy(random_b0.metadata)
    meta.extra = {**meta.extra, GATING_KEY: GatingConfig(keep_ratio=0.5).to_json()}
    student = LoadedModel(student_model, meta, "gated", "1" * 64)
    before = {k: v.clone() for k, v in student_model.state_dict().items() if ".gate." in k}
    cfg = DistillConfig(data=str(camvid_root), out=str(tmp_path), iterations=2, batch_size=1, crop=(64, 64),
                        base_size=(96, 128), loss="ce", val_every=100, val_limit=1, workers=0, threads=2, amp="off",
                        stage1=0.5)
    result = distill(teacher, student, cfg, log=lambda *_: None,
                     hooks=gating_hooks(0.5, 10.0, 10.0))
    assert result["finished"]
    after = student_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    reloaded = load_checkpoint(tmp_path / "last.safetensors")
    assert len(gated_blocks(reloaded.model)) == 8


def test_kept_count_alignment():
    assert kept_count(128, 0.3) == 38 and kept_count(128, 0.3, align=16) == 32
    assert kept_count(256, 0.3, align=16) == 80 and kept_count(1024, 0.3, align=16) == 304
    assert kept_count(64, 0.05, align=16) == 16  # never below one aligned group
    assert kept_count(24, 1.0, align=16) == 24  # never above the block's width (2 x 16 > 24)


def test_frozen_gates_keep_the_top_mean_scores_and_open_equals_unpruned(gated, unpruned, camvid_frame, reference):
    x = _input(camvid_frame, gated.metadata)
    plan = frozen_plan(copy.deepcopy(gated.model), [x])
    scores = []
    model = set_mode(copy.deepcopy(gated.model), "mask")
    hooks = [b.gate.register_forward_hook(lambda m, a, out: scores.append(out[0])) for b in gated_blocks(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    kept = [k for stage in plan.mlp for k in stage]
    for block, s, k in zip(gated_blocks(model), scores, kept):
        assert len(k) == block.k and set(k) == set(s.topk(block.k).indices.tolist())
    # every neuron kept: the frozen model is the unpruned one, a plain SegFormer without gates
    full = freeze_gates(set_mode(copy.deepcopy(gated.model), "mask", keep_ratio=1.0), [x])
    assert not gated_blocks(full)
    with torch.no_grad():
        assert _rel(full(x).numpy(), reference) < 1e-6


def test_static_export_is_a_smaller_dense_graph(gated, unpruned, camvid_frame, tmp_path):
    with pytest.raises(ConfigError):
        export_gated(gated.model, gated.metadata, tmp_path / "none.onnx", "static", size=SIZE)
    x = _input(camvid_frame, gated.metadata)
    result = export_gated(gated.model, gated.metadata, tmp_path / "static.onnx", "static", size=SIZE,
                          calibration=[x], align=16)
    assert result.max_rel_error < 1e-4
    proto = onnx.load(str(result.path))
    assert not {"TopK", "NonZero", "GatherND"} & {n.op_type for n in proto.graph.node}
    hidden = [kept_count(b.hidden, 0.5, 16) for b in gated_blocks(gated.model)]
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["segrt"])
    assert json.loads(meta["extra"]["gating_export"])["kept"] == hidden
    with Engine(result.path) as engine:
        assert engine.infer(camvid_frame).shape == camvid_frame.shape[:2]


def test_load_model_registers_the_gating_extension_in_a_fresh_process():
    """The composition root alone (no gating import by the caller) rebuilds the bundled gated model."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "models" / "camvid-b0-gate30.safetensors"
    code = ("import sys; from segrt.export.loading import load_model; m = load_model(sys.argv[1]).model; "
            "print(sum(type(x).__name__ == 'GatedMixFFN' for x in m.modules()))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8"]


def test_bundled_gates_load_from_the_file_alone():
    from pathlib import Path

    from segrt.export.loading import load_model

    gated = load_model(str(Path(__file__).resolve().parents[2] / "models" / "camvid-b0-gate30.safetensors"))
    blocks = gated_blocks(gated.model)
    assert len(blocks) == 8 and {b.gating.keep_ratio for b in blocks} == {0.3}
    assert [b.k for b in blocks] == [kept_count(b.hidden, 0.3) for b in blocks]
