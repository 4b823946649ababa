"""Pruned widths rounded to multiples of ``align`` channels, as close to the MAC budget as they can be.

CPU GEMM kernels (MLAS, oneDNN) and TensorRT tactics work in blocks of 8/16 channels: a width of 154
costs nearly what 160 costs, so an unaligned plan pays for MACs it does not get. After the greedy
selection of :func:`.recipe.select`, every pruned width is moved to a multiple of ``align``:

- ``mlp``: the Mix-FFN hidden width (fc1 rows, depth-wise filters, fc2 columns);
- ``chan``: the attention width ``heads x head_dim`` that the q/k/v/output projections see; with the
  head count fixed, ``head_dim`` moves in steps of ``align / gcd(align, heads)``;
- ``decoder``: the decoder channels.

Head counts are not rounded (1..8 heads per block; they fix the ``chan`` step). A width is never 0 and
never above the original one; an original width that is not a multiple of ``align`` stays allowed
(unpruned). Rounding goes down first, then families step back up, most important channels per MAC
first, while the model stays within the budget, so the result is as close below the budget as these
steps allow. Which channels a step removes or restores follows the round's importance scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from segrt.export.methods.pruning.groups import PrunePlan, config_macs
from segrt.runtime.errors import ConfigError

Key = tuple[str, int, int]


def families(cfg) -> list[Key]:
    keys: list[Key] = [(kind, s, b) for s in range(len(cfg.depths)) for b in range(cfg.depths[s])
                       for kind in ("mlp", "chan")]
    return keys + [("decoder", 0, 0)]


def step_of(plan: PrunePlan, key: Key, align: int) -> int:
    """How many groups of ``key`` make one multiple of ``align`` channels."""
    kind, s, b = key
    return align // math.gcd(align, len(plan.heads[s][b])) if kind == "chan" else align


def width(plan: PrunePlan, key: Key) -> int:
    """Channels a family's groups make: the attention width for ``chan``, else the group count."""
    kind, s, b = key
    n = len(plan.kept(*key))
    return n * len(plan.heads[s][b]) if kind == "chan" else n


def allowed_counts(full: int, step: int, least: int) -> list[int]:
    """Group counts a family may keep: multiples of ``step`` from ``least`` (rounded up) to ``full``, and ``full``."""
    first = max(1, math.ceil(least / step))
    return sorted({k * step for k in range(first, full // step + 1)} | {full})


def is_aligned(plan: PrunePlan, full: PrunePlan, key: Key, align: int) -> bool:
    return width(plan, key) % align == 0 or len(plan.kept(*key)) == len(full.kept(*key))


def align_plan(cfg, plan: PrunePlan, score_of: dict[Key, dict[int, float]], target: int, size, folded: bool,
               align: int, min_kept: Callable[[Key], int]) -> PrunePlan:
    """``plan`` with every mlp/chan/decoder width aligned (see the module doc), at most ``target`` MACs.

    ``score_of[key][index]`` is the importance of group ``index`` (original numbering); groups without a
    score (removed in an earlier round) are the last restored and the first removed.
    """
    full = PrunePlan.full(cfg)
    plan = PrunePlan.from_json(plan.to_json())
    options = {key: allowed_counts(len(full.kept(*key)), step_of(plan, key, align), min_kept(key))
               for key in families(cfg)}

    def score(key: Key, idx: int) -> float:
        return score_of.get(key, {}).get(idx, -1.0)

    def resized(key: Key, count: int) -> tuple[PrunePlan, float]:
        """A copy keeping ``count`` groups of ``key``; the importance it adds (> 0) or removes (< 0)."""
        new = PrunePlan.from_json(plan.to_json())
        kept = new.kept(*key)
        if count < len(kept):
            drop = sorted(kept, key=lambda i: score(key, i))[:len(kept) - count]
            for i in drop:
                kept.remove(i)
            return new, -sum(max(score(key, i), 0.0) for i in drop)
        spare = sorted(set(full.kept(*key)) - set(kept), key=lambda i: -score(key, i))[:count - len(kept)]
        kept.extend(spare)
        kept.sort()
        return new, sum(max(score(key, i), 0.0) for i in spare)

    def macs_of(p: PrunePlan) -> int:
        return config_macs(p.config(cfg), size, folded)

    for key, counts in options.items():  # round down (never below the smallest allowed count)
        n = len(plan.kept(*key))
        if n not in counts:
            plan, _ = resized(key, max([c for c in counts if c <= n], default=counts[0]))
    macs = macs_of(plan)
    while macs > target:  # rounding up to a non-zero width can overshoot: give up the cheapest steps
        best = None
        for key, counts in options.items():
            lower = [c for c in counts if c < len(plan.kept(*key))]
            if not lower:
                continue
            new, lost = resized(key, lower[-1])
            saved = macs - macs_of(new)
            if saved > 0 and (best is None or -lost / saved < best[0]):
                best = (-lost / saved, new)
        if best is None:
            raise ConfigError(f"cannot reach {target / 1e9:.3f} GMACs with widths aligned to {align}: the smallest "
                              f"aligned model has {macs / 1e9:.3f} GMACs; lower --align or --min-keep, or raise "
                              "--flops")
        plan = best[1]
        macs = macs_of(plan)
    while True:  # fill the budget back, most importance per MAC first
        fill: tuple[float, PrunePlan, int] | None = None
        for key, counts in options.items():
            higher = [c for c in counts if c > len(plan.kept(*key))]
            if not higher:
                continue
            new, gained = resized(key, higher[0])
            new_macs = macs_of(new)
            if new_macs <= target and (fill is None or gained / max(new_macs - macs, 1) > fill[0]):
                fill = (gained / max(new_macs - macs, 1), new, new_macs)
        if fill is None:
            return plan
        _, plan, macs = fill


def widths(cfg, plan: PrunePlan) -> dict:
    """The widths a plan leaves, per family, for the checkpoint's pruning record and `segrt info`."""
    stages = range(len(cfg.depths))
    return {"mlp": [[len(plan.mlp[s][b]) for b in range(cfg.depths[s])] for s in stages],
            "attention": [[width(plan, ("chan", s, b)) for b in range(cfg.depths[s])] for s in stages],
            "heads": [[len(plan.heads[s][b]) for b in range(cfg.depths[s])] for s in stages],
            "decoder": len(plan.decoder)}
