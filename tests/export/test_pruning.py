"""Structured pruning: exact surgery, consistent shapes, exact MAC accounting, checkpoints, and the
multi-task scoring loop on real CamVid batches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from segrt.export.methods.pruning.groups import Gates, PrunePlan, apply_plan, config_macs
from segrt.export.methods.pruning.recipe import PruneConfig, _Scorer, presence_targets, prune, select
from segrt.export.model.checkpoints import load_checkpoint, save_checkpoint
from segrt.runtime.errors import ConfigError

SIZE = (128, 160)


def _input(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _random_plan(cfg, fraction: float, seed: int = 0) -> tuple[PrunePlan, Gates]:
    """Drop ``fraction`` of every group family at random; the gates zero exactly the dropped groups."""
    rng = random.Random(seed)
    plan, gates = PrunePlan.full(cfg), Gates(cfg)
    for kind, s, b in gates.keys():
        kept = plan.kept(kind, s, b)
        for i in rng.sample(kept, int(len(kept) * fraction)):
            kept.remove(i)
            with torch.no_grad():
                gates.get(kind, s, b)[i] = 0.0
    return plan, gates


@pytest.fixture(scope="module")
def pruned_pair(random_b0):
    model = random_b0.model.eval()
    plan, gates = _random_plan(model.config, 0.4)
    return model, plan, gates, apply_plan(model, plan).eval()


def test_full_plan_is_the_same_function(random_b0):
    model = random_b0.model.eval()
    pruned = apply_plan(model, PrunePlan.full(model.config))
    x = _input()
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))
    assert config_macs(pruned.config, SIZE) == config_macs(model.config, SIZE)


def test_removing_groups_equals_zeroing_their_gates(pruned_pair):
    model, plan, gates, pruned = pruned_pair
    x = _input(1)
    handles = gates.install(model)
    try:
        with torch.no_grad():
            gated = model(x)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        out, dense = pruned(x), model(x)
    scale = gated.abs().max().item()
    assert (out - gated).abs().max().item() < 1e-5 * scale  # removal is exactly the zeroed gates
    assert (dense - gated).abs().max().item() > 1e-3 * scale  # and the groups did matter


def test_shapes_shrink_consistently_across_attention_mlp_and_decoder(pruned_pair):
    model, plan, _, pruned = pruned_pair
    cfg = model.config
    for s, stage in enumerate(pruned.encoder.stages):
        width = cfg.widths[s]
        for b, block in enumerate(stage.blocks):
            att, mlp = block.attention, block.mlp
            heads, chans, hid = len(plan.heads[s][b]), len(plan.channels[s][b]), len(plan.mlp[s][b])
            assert (att.heads, att.head_dim) == (heads, chans)
            for proj in (att.q_proj, att.k_proj, att.v_proj):
                assert tuple(proj.weight.shape) == (heads * chans, width)
            assert tuple(att.o_proj.weight.shape) == (width, heads * chans)
            assert tuple(mlp.fc1.weight.shape) == (hid, width)
            assert tuple(mlp.dwconv.weight.shape) == (hid, 1, 3, 3)
            assert tuple(mlp.fc2.weight.shape) == (width, hid)
            assert hid < cfg.hidden_width(s, b) and heads * chans < cfg.attn_width(s, b)
    d = len(plan.decoder)
    head = pruned.decode_head
    assert d < cfg.decoder_dim
    assert all(p.proj.weight.shape[0] == d for p in head.linear_projections)
    assert tuple(head.linear_fuse.weight.shape[:2]) == (d, 4 * d)
    assert head.batch_norm.num_features == d
    assert tuple(head.classifier.weight.shape) == (cfg.num_classes, d, 1, 1)
    assert pruned(_input())[0].shape == model(_input())[0].shape


def test_pruned_checkpoint_reloads_from_the_file_alone(pruned_pair, random_b0, tmp_path):
    _, _, _, pruned = pruned_pair
    path = tmp_path / "pruned.safetensors"
    save_checkpoint(pruned, random_b0.metadata, path)
    loaded = load_checkpoint(path)
    assert loaded.model.config == pruned.config
    x = _input(2)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), pruned(x))


@pytest.mark.parametrize("fold", [True, False])
def test_pruned_model_exports_and_mac_count_matches_the_graph(pruned_pair, random_b0, tmp_path, fold):
    from segrt.export.onnx_export import export_onnx
    from segrt.export.passes.macs import count_macs as onnx_macs

    _, _, _, pruned = pruned_pair
    result = export_onnx(pruned, random_b0.metadata, tmp_path / "pruned.onnx", size=SIZE, fold=fold)
    assert result.label_agreement > 0.999
    assert onnx_macs(result.path).total == config_macs(pruned.config, SIZE, folded=fold)


def test_presence_targets_from_labels():
    from segrt.runtime.datasets import IGNORE

    labels = torch.tensor([[[0, 0, IGNORE], [3, 3, IGNORE]], [[IGNORE, IGNORE, IGNORE], [1, 1, 1]]])
    expected = torch.zeros(2, 4)
    expected[0, [0, 3]] = 1
    expected[1, 1] = 1
    assert torch.equal(presence_targets(labels, 4), expected)


def test_dead_channel_scores_zero_and_goes_first(random_b0, camvid_root):
    model = apply_plan(random_b0.model.eval(), PrunePlan.full(random_b0.model.config)).eval()
    with torch.no_grad():
        model.encoder.stages[2].blocks[1].mlp.fc2.weight[:, 7] = 0.0  # channel 7 contributes nothing
    from segrt.export.training.train import seg_loss

    scorer = _Scorer(model)
    x = _input(3)
    y = torch.randint(0, 11, (2, *SIZE))
    seg_loss(model(x), y, "ce", None).backward()
    scorer.add("seg")
    scorer.acc["cls"] = {k: torch.ones_like(v) for k, v in scorer.acc["seg"].items()}
    scores = scorer.combined(cls_weight=0.0)
    scorer.close()
    mlp = scores[("mlp", 2, 1)]
    assert mlp[7] == 0.0 and (np.delete(mlp, 7) > 0).all()
    cfg = model.config
    plan = select(cfg, PrunePlan.full(cfg), scores, config_macs(cfg, SIZE) - 1, SIZE, True, 0.1)
    assert 7 not in plan.mlp[2][1]


def test_select_refuses_an_unreachable_budget(random_b0):
    cfg = random_b0.model.config
    scores = {k: np.ones(len(PrunePlan.full(cfg).kept(*k))) for k in Gates(cfg).keys()}
    with pytest.raises(ConfigError, match="cannot reach"):
        select(cfg, PrunePlan.full(cfg), scores, config_macs(cfg, SIZE) // 50, SIZE, True, 0.5)


def test_prune_on_camvid_meets_the_budget_and_resumes(random_b0, camvid_root, tmp_path):
    from segrt.export.model.checkpoints import random_model

    cfg = PruneConfig(data=str(camvid_root), flops=0.6, rounds=2, steps=2, cls_warmup=1, batch_size=1, crop=(64, 64),
                      size=SIZE, loss="ce", threads=2, save_every=1, time_budget=0.0)
    out = tmp_path / "pruned.safetensors"
    first = prune(random_model("random:b0:11"), cfg, out, log=lambda *_: None)
    assert not first["finished"] and not out.exists()  # stopped for the budget, state saved
    state = json.loads(Path(first["state"]).read_text())
    assert state["iteration"] == 1 and state["config"]["flops"] == 0.6  # models/bundle_pruned.py reads the config
    other = PruneConfig(**{**cfg.__dict__, "flops": 0.5})
    with pytest.raises(ConfigError, match="different model or settings"):
        prune(random_model("random:b0:11"), other, out, log=lambda *_: None)
    cfg.time_budget = None
    result = prune(random_model("random:b0:11"), cfg, out, log=lambda *_: None)
    assert result["finished"] and result["fraction"] <= 0.6
    loaded = load_checkpoint(out)
    assert config_macs(loaded.model.config, SIZE) <= 0.6 * config_macs(random_b0.model.config, SIZE)
    assert "pruning" in loaded.metadata.extra
    with torch.no_grad():
        assert loaded.model(_input()).shape[1] == 11


def test_cli_rejects_a_bad_budget_with_a_typed_error(camvid_root, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "segrt", "prune", "random:b0:11", "--flops", "1.5",
                        "--data", str(camvid_root), "-o", str(tmp_path / "p.safetensors")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "ConfigError" in r.stderr and "--flops" in r.stderr
    assert not (tmp_path / "p.safetensors").exists()
