"""`segrt prune --align N`: pruned widths are multiples of N (or the original width), as close below the MAC
budget as those steps allow, recorded in the checkpoint and shown by `segrt info`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segrt.export.methods.pruning.align import families, is_aligned, step_of, widths
from segrt.export.methods.pruning.groups import Gates, PrunePlan, config_macs
from segrt.export.methods.pruning.recipe import PruneConfig, prune, select
from segrt.export.model.checkpoints import load_checkpoint

SIZE = (128, 160)


def _scores(cfg, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.random(len(PrunePlan.full(cfg).kept(*k))) for k in Gates(cfg).keys()}


def _aligned_widths(cfg, plan: PrunePlan, align: int) -> list[str]:
    """The families whose width is neither a multiple of ``align`` nor the original (empty: all aligned)."""
    full = PrunePlan.full(cfg)
    return [f"{key}: {len(plan.kept(*key))}" for key in families(cfg) if not is_aligned(plan, full, key, align)]


@pytest.mark.parametrize(("align", "fraction", "seed"), [(16, 0.5, 0), (16, 0.7, 1), (8, 0.4, 2)])
def test_select_aligns_every_width_and_stays_close_below_the_budget(random_b0, align, fraction, seed):
    cfg = random_b0.model.config
    target = int(config_macs(cfg, SIZE) * fraction)
    plan = select(cfg, PrunePlan.full(cfg), _scores(cfg, seed), target, SIZE, True, 0.125, align)
    assert _aligned_widths(cfg, plan, align) == []
    got = widths(cfg, plan)
    assert all(w % align == 0 for row in got["mlp"] + got["attention"] for w in row) and got["decoder"] % align == 0
    macs = config_macs(plan.config(cfg), SIZE)
    assert macs <= target
    # as close as the steps allow: no family can take one more aligned step up without passing the budget
    full = PrunePlan.full(cfg)
    for key in families(cfg):
        kept = plan.kept(*key)
        room = len(full.kept(*key)) - len(kept)
        if room >= step_of(plan, key, align):
            bigger = PrunePlan.from_json(plan.to_json())
            bigger.kept(*key).extend(sorted(set(full.kept(*key)) - set(kept))[:step_of(plan, key, align)])
            assert config_macs(bigger.config(cfg), SIZE) > target, key


def test_align_1_keeps_the_unrounded_selection(random_b0):
    cfg = random_b0.model.config
    scores = _scores(cfg, 3)
    target = int(config_macs(cfg, SIZE) * 0.5)
    legacy = select(cfg, PrunePlan.full(cfg), scores, target, SIZE, True, 0.125)
    one = select(cfg, PrunePlan.full(cfg), scores, target, SIZE, True, 0.125, 1)
    assert one == legacy
    assert _aligned_widths(cfg, one, 16)  # without rounding some widths are off the 16-channel grid
    assert _aligned_widths(cfg, select(cfg, PrunePlan.full(cfg), scores, target, SIZE, True, 0.125, 16), 16) == []


def test_prune_on_camvid_records_the_alignment_and_info_shows_it(random_b0, camvid_root, tmp_path, capsys,
                                                                  monkeypatch):
    from segrt.cli import main
    from segrt.export.model.checkpoints import random_model
    from segrt.export.onnx_export import export_onnx

    cfg = PruneConfig(data=str(camvid_root), flops=0.6, rounds=1, steps=2, cls_warmup=1, batch_size=1, crop=(64, 64),
                      size=SIZE, loss="ce", threads=2, align=16)
    out = tmp_path / "pruned.safetensors"
    result = prune(random_model("random:b0:11"), cfg, out, log=lambda *_: None)
    assert result["finished"] and result["fraction"] <= 0.6
    loaded = load_checkpoint(out)
    record = json.loads(loaded.metadata.extra["pruning"])
    assert record["align"] == 16
    pcfg = loaded.model.config
    plan = PrunePlan(**record["plan"])
    assert plan.config(random_b0.model.config) == pcfg
    assert record["widths"] == widths(random_b0.model.config, plan)
    assert _aligned_widths(random_b0.model.config, plan, 16) == []
    before = widths(random_b0.model.config, PrunePlan.full(random_b0.model.config))
    assert any(w < full for w, full in zip(sum(record["widths"]["mlp"], []), sum(before["mlp"], [])))
    with torch.no_grad():
        assert loaded.model(torch.zeros(1, 3, *SIZE)).shape[1] == 11
    onnx_path = export_onnx(loaded.model, loaded.metadata, tmp_path / "pruned.onnx", size=SIZE).path
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(onnx_path)])
    assert exit_info.value.code == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "pruning" in line)
    assert "widths multiples of 16 channels" in row and f"{record['gmacs']:.3f} of" in row


def test_info_summary_names_the_alignment():
    from segrt.commands.info import _pruning_summary

    rec = {"gmacs": 0.5, "source_gmacs": 1.0}
    assert "multiples of 16" in _pruning_summary(json.dumps({**rec, "align": 16}))
    assert "not rounded (--align 1)" in _pruning_summary(json.dumps({**rec, "align": 1}))
    assert "before --align" in _pruning_summary(json.dumps(rec))


@pytest.mark.parametrize("value", ["0", "-16", "abc", "2.5"])
def test_cli_refuses_a_bad_align_on_one_line(camvid_root, tmp_path, capsys, value):
    from segrt.cli import main

    out = tmp_path / "p.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "random:b0:11", "--align", value, "--data", str(camvid_root), "-o", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "--align" in err, err
    assert not out.exists()


def test_prune_refuses_a_bad_align_from_the_api(camvid_root, tmp_path):
    from segrt.export.model.checkpoints import random_model
    from segrt.runtime.errors import ConfigError

    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="--align"):
            prune(random_model("random:b0:11"), PruneConfig(data=str(camvid_root), align=bad), tmp_path / "p.st")
