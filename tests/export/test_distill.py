"""Distillation: every loss is zero when the student reproduces the teacher and positive when it does
not, the adapters bridge different widths, the two-stage schedule, and exact resumption on CamVid."""

from __future__ import annotations

import random

import pytest
import torch

from segrt.export.methods.pruning.groups import PrunePlan, apply_plan
from segrt.export.training.distill import (
    DistillConfig,
    Distiller,
    channel_distribution_loss,
    distill,
    forward_with_features,
    hierarchical_context_loss,
    logit_kd_loss,
    stage_weights,
)
from segrt.runtime.errors import ConfigError

SIZE = (128, 160)


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pruned_student(random_b0):
    model = random_b0.model.eval()
    plan = PrunePlan.full(model.config)
    rng = random.Random(0)
    for s in range(4):
        for b in range(2):
            kept = plan.mlp[s][b]
            for i in rng.sample(kept, len(kept) // 2):
                kept.remove(i)
    plan.decoder = plan.decoder[::2]
    return apply_plan(model, plan).eval()


@pytest.mark.parametrize("assistant", [False, True])
def test_losses_are_zero_for_identical_teacher_and_student(random_b0, batch, assistant):
    model = random_b0.model.eval()
    with torch.no_grad():
        out = forward_with_features(model, batch)
        losses = Distiller(model.config.widths, model.config.widths, assistant).losses(out, out)
    expected = {"kd", "features", "embeddings"} | ({"assistant"} if assistant else set())
    assert set(losses) == expected
    for name, value in losses.items():
        assert value.item() == pytest.approx(0.0, abs=1e-6), name


def test_losses_are_positive_for_a_pruned_student(random_b0, pruned_student, batch):
    teacher = random_b0.model.eval()
    distiller = Distiller(pruned_student.config.widths, teacher.config.widths)
    with torch.no_grad():
        losses = distiller.losses(forward_with_features(pruned_student, batch), forward_with_features(teacher, batch))
    assert all(v.item() > 1e-6 for v in losses.values())


def test_plain_losses_vanish_only_on_agreement():
    torch.manual_seed(0)
    a, b = torch.randn(2, 11, 8, 10), torch.randn(2, 11, 8, 10)
    assert logit_kd_loss(a, a, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert logit_kd_loss(a, b, 2.0).item() > 0.0
    e, f = torch.randn(2, 40, 16), torch.randn(2, 40, 16)
    assert channel_distribution_loss(e, e).item() == pytest.approx(0.0, abs=1e-7)
    assert channel_distribution_loss(e, f).item() > 0.0
    assert hierarchical_context_loss([a], [a]).item() == 0.0
    assert hierarchical_context_loss([a], [b]).item() > 0.0


def test_adapters_bridge_a_narrower_student_to_a_wider_teacher(random_b0, batch):
    from segrt.export.model.segformer import SegFormer, SegFormerConfig

    teacher = SegFormer(SegFormerConfig.from_variant("b1", 11)).eval()
    student = random_b0.model.eval()
    distiller = Distiller(student.config.widths, teacher.config.widths, assistant=True)
    s_out = forward_with_features(student, batch)
    fused = distiller.csf(s_out["features"])
    assert [f.shape[1] for f in fused] == list(teacher.config.widths)
    with torch.no_grad():
        t_out = forward_with_features(teacher, batch)
    losses = distiller.losses(s_out, t_out)
    sum(losses.values()).backward()  # gradients reach the student through every adapter
    assert student.encoder.stages[0].patch_embeddings.proj.weight.grad is not None
    student.zero_grad(set_to_none=True)


def test_two_stage_schedule():
    cfg = DistillConfig(data="-", iterations=100, stage1=0.3, stage2_features=0.2, kd_weight=1.0)
    first, second = stage_weights(10, cfg), stage_weights(30, cfg)
    assert first["kd"] == 0.0 and first["features"] == 1.0
    assert second["kd"] == 1.0 and second["features"] == pytest.approx(0.2)


def test_distill_resumes_exactly(random_b0, pruned_student, camvid_root, tmp_path):
    import copy

    from segrt.export.model.checkpoints import LoadedModel

    teacher = LoadedModel(copy.deepcopy(random_b0.model), random_b0.metadata, random_b0.source, random_b0.sha256)

    def run(out, budget, aspect=(1.0, 1.0)):
        student = LoadedModel(apply_plan(pruned_student, _identity_plan(pruned_student)), random_b0.metadata,
                              "pruned-student", "0" * 64)
        cfg = DistillConfig(data=str(camvid_root), out=str(out), iterations=2, batch_size=1, crop=(64, 64),
                            base_size=(96, 128), loss="ce", val_every=100, val_limit=1, workers=0, threads=2,
                            amp="off", stage1=0.5, time_budget=budget, aspect=aspect)
        return distill(teacher, student, cfg, log=lambda *_: None)

    straight = run(tmp_path / "a", None)
    assert straight["finished"] and (tmp_path / "a" / "best.safetensors").exists()
    stopped = run(tmp_path / "b", 0.0)
    assert stopped["iteration"] == 1 and not stopped["finished"]
    # a stop for the budget validates, so best/last checkpoints hold everything trained so far
    assert [h["iteration"] for h in stopped["history"]] == [1] and (tmp_path / "b" / "last.safetensors").exists()
    config = (tmp_path / "b" / "config.json").read_text()
    with pytest.raises(ConfigError, match="aspect"):  # another data stream half-way: refused, nothing touched
        run(tmp_path / "b", None, aspect=(0.75, 1.5))
    assert (tmp_path / "b" / "config.json").read_text() == config
    resumed = run(tmp_path / "b", None)
    assert resumed["finished"]
    a = torch.load(tmp_path / "a" / "distill_state.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "b" / "distill_state.pt", weights_only=True)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _identity_plan(model):
    return PrunePlan.full(model.config)
