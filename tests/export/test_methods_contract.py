"""Every speed-up method's entry point returns a new model and never mutates its argument: after the call the
argument has the same weights, the same modules and the same train/eval modes, and the result shares no
parameter storage with it (so training or editing the result can never reach the argument)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from segrt.export.methods.early_exit.model import EarlyExitSegFormer, ExitConfig, attach_exit, make_heads
from segrt.export.methods.folding import FoldedHead, fold_decoder
from segrt.export.methods.gating.model import GatingConfig, attach_gates, gated_blocks
from segrt.export.methods.merging.model import apply_merging
from segrt.export.methods.pruning.groups import PrunePlan, apply_plan
from segrt.export.model.segformer import SegFormer, SegFormerConfig


def _half_mlp_plan(model: SegFormer) -> PrunePlan:
    plan = PrunePlan.full(model.config)
    plan.mlp = [[kept[: len(kept) // 2] for kept in stage] for stage in plan.mlp]
    return plan


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# name -> (call the method on the argument, check that the method really changed something in its result)
METHODS: dict[str, tuple[Callable[[SegFormer], nn.Module], Callable[[SegFormer, nn.Module], bool]]] = {
    "merging": (lambda m: apply_merging(m, "hq"),
                lambda m, r: any(b.attention.token_merge is not None for s in r.encoder.stages for b in s.blocks)),
    "gating": (lambda m: attach_gates(m, GatingConfig(keep_ratio=0.5)),
               lambda m, r: len(gated_blocks(r)) == sum(m.config.depths)),
    "early_exit": (lambda m: attach_exit(m, make_heads(m, ["s2b0"], hidden=8), ExitConfig(point="s2b0")),
                   lambda m, r: isinstance(r, EarlyExitSegFormer)),
    "folding": (fold_decoder, lambda m, r: any(isinstance(x, FoldedHead) for x in r.modules())),
    "pruning": (lambda m: apply_plan(m, _half_mlp_plan(m)), lambda m, r: _count_params(r) < _count_params(m)),
}


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, str, bool]]]:
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    structure = [(name, type(m).__name__, m.training) for name, m in model.named_modules()]
    return weights, structure


@pytest.fixture
def argument() -> SegFormer:
    """A small seeded SegFormer in training mode (a method that switches its argument to eval is caught)."""
    torch.manual_seed(0)
    return SegFormer(SegFormerConfig.from_variant("b0", 5, depths=(1, 1, 1, 1))).train()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_returns_a_new_model_and_leaves_its_argument_untouched(method, argument):
    apply, changed = METHODS[method]
    weights, structure = _snapshot(argument)
    storages = {p.data_ptr() for p in argument.state_dict().values()}

    result = apply(argument)

    assert result is not argument
    assert changed(argument, result), f"{method} returned a model it did not change"
    after_weights, after_structure = _snapshot(argument)
    assert after_structure == structure
    assert after_weights.keys() == weights.keys()
    assert all(torch.equal(after_weights[k], weights[k]) for k in weights)
    shared = [k for k, v in result.state_dict().items() if v.data_ptr() in storages]
    assert not shared, f"{method}'s result shares tensors with its argument: {shared[:4]}"
