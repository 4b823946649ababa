"""Training: resuming from a checkpoint reproduces an uninterrupted run exactly."""

from __future__ import annotations

import json

import pytest
import torch

from segrt.export.model.checkpoints import load_checkpoint
from segrt.export.training.train import TrainConfig, TrainSamples, lr_at, train


def tiny(camvid_root, out, iterations, time_budget=None):
    return TrainConfig(time_budget=time_budget, data=str(camvid_root), out=str(out), iterations=iterations,
                       batch_size=2, crop=(64, 64), base_size=(96, 128), warmup=2, val_every=2, val_limit=2,
                       workers=0, loss="balanced", amp="off", seed=7)


def test_resume_is_exact(camvid_root, tmp_path):
    straight = train(tiny(camvid_root, tmp_path / "a", 4), log=lambda *_: None)
    # Interrupted: a zero time budget stops after the first iteration, as a session limit would.
    first = train(tiny(camvid_root, tmp_path / "b", 4, time_budget=0.0), log=lambda *_: None)
    assert first["iteration"] == 1 and not first["finished"]
    assert first["history"] == []  # a stop for the budget saves state but does not validate (distill does)
    stopped_at = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert stopped_at["iteration"] == 1 and (tmp_path / "b" / "config.json").exists()
    resumed = train(tiny(camvid_root, tmp_path / "b", 4), log=lambda *_: None)
    assert straight["iteration"] == resumed["iteration"] == 4
    a = torch.load(tmp_path / "a" / "train_state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["miou"] for h in straight["history"]] == [h["miou"] for h in resumed["history"]]
    best = load_checkpoint(tmp_path / "a" / "best.safetensors")
    assert best.metadata.classes[0] == "Sky" and best.metadata.input_size == (96, 128)
    assert json.loads((tmp_path / "a" / "best.json").read_text())["images"] == 2


def test_samples_are_deterministic_and_cover_each_epoch(camvid_root):
    from segrt.export.training.augment import AugmentConfig
    from segrt.runtime.datasets import camvid

    ds = camvid(camvid_root, "train")
    s = TrainSamples(ds, AugmentConfig(base_size=(96, 128), crop=(64, 64)), seed=1, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert sorted(s.index(k)[1] for k in range(len(ds))) == list(range(len(ds)))
    x1, y1 = s[5]
    x2, y2 = s[5]
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (3, 64, 64)


def test_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(data="", iterations=100, warmup=10, lr=1e-3)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(0.5e-3)
    assert lr_at(100, cfg) == 0.0
