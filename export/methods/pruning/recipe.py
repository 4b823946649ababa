"""Multi-task channel pruning of a SegFormer to a MAC budget (after MTP, Chen, Zhang & Wang,
"Multi-task pruning for semantic segmentation networks", 2020).

MTP's observation: a segmentation network carries two tasks, the dense segmentation it is trained for
and the image-level recognition its backbone learned, and a channel can be redundant for one and vital
for the other. So every group's importance is scored under both tasks, with the tasks' updates
alternating. Here the image-level task is multi-label "which classes are present", derived from the
segmentation labels, predicted by a small head (global average pool + Linear) on the deepest features.

Procedure (kept simple, close to the paper's scheme):
1. Warm up the classification head on the frozen network.
2. In each of ``rounds`` rounds: alternate segmentation and classification batches; on each, take the
   gradient of that task's loss w.r.t. every group gate (:class:`.prune_groups.Gates`, all at 1, so a
   first-order Taylor estimate of the loss change when the group is removed), accumulate its square per
   task, keep training the classification head on its turns. Each task's scores are normalised by
   their mean, then combined; a group's priority is its combined importance per MAC it costs.
3. Remove the lowest-priority groups until the round's MAC target (geometric steps to the budget),
   rebuild the smaller dense model from the original weights, and score again.

The result is a plain smaller SegFormer (:func:`.prune_groups.apply_plan`) that exports and runs like
any other; accuracy is recovered afterwards by :mod:`.distill`. The state after every round and every
``save_every`` steps is saved, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segrt.runtime.datasets import IGNORE, open_dataset
from segrt.runtime.errors import ConfigError
from segrt.runtime.progress import make_progress

from segrt.export.training.augment import AugmentConfig
from segrt.export.model.checkpoints import LoadedModel
from segrt.export.methods.pruning.groups import Gates, PrunePlan, apply_plan, config_macs, group_costs, shrunk
from segrt.export.model.segformer import SegFormer
from segrt.export.training.train import TrainSamples, class_weights, seg_loss


@dataclass
class PruneConfig:
    data: str
    format: str = "camvid"
    flops: float = 0.5  # target MACs as a fraction of the source model's
    count: str = "folded"  # "folded": the decoder as export ships it; "unfolded": the PyTorch graph
    size: tuple[int, int] | None = None  # MAC counting size; default: the model's input size
    rounds: int = 3
    steps: int = 24  # scoring batches per round (alternating tasks)
    cls_warmup: int = 16  # batches that train only the classification head first
    batch_size: int = 4
    crop: tuple[int, int] = (320, 320)
    scale: tuple[float, float] = (0.75, 1.5)
    cls_weight: float = 1.0  # weight of the classification task's normalised importance
    cls_lr: float = 1e-3
    loss: str = "balanced"
    min_keep: float = 0.125  # every group family keeps at least this fraction of its channels
    seed: int = 0
    threads: int | None = None
    time_budget: float | None = None
    save_every: int = 4


class PresenceHead(nn.Module):
    """Image-level multi-label classifier on the deepest stage: which classes appear in the image."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.fc(deepest.float().mean(dim=(2, 3)))


def presence_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, K) 0/1: class k occurs in the image (ignored pixels do not count)."""
    valid = labels.clone()
    valid[valid == IGNORE] = num_classes
    onehot = F.one_hot(valid.flatten(1), num_classes + 1).amax(dim=1)
    return onehot[:, :num_classes].float()


def _min_kept(plan_full: PrunePlan, kind: str, s: int, b: int, frac: float) -> int:
    # one head is enough to keep attention; other families keep a fraction of their original width
    full = len(plan_full.kept(kind, s, b))
    return 1 if kind == "head" else max(1, int(np.ceil(full * frac)))


def select(cfg, plan: PrunePlan, scores: dict[tuple, np.ndarray], target: int, size, folded: bool,
           min_keep: float) -> PrunePlan:
    """Greedily remove the group with the least importance per MAC until the model fits ``target``.

    ``plan`` is in the original model's (``cfg``'s) indices; ``scores[(kind, s, b)]`` holds one
    importance per group ``plan`` keeps, in its order (the order of the gates of the model it builds).
    Costs are recomputed as the structure shrinks (a channel's cost depends on the heads left, etc.).
    """
    full = PrunePlan.full(cfg)
    plan = PrunePlan.from_json(plan.to_json())
    queue = {key: sorted(zip(vals.tolist(), plan.kept(*key))) for key, vals in scores.items()}
    macs = config_macs(plan.config(cfg), size, folded)
    costs = group_costs(cfg, plan, size, folded)
    while macs > target:
        best = None
        for key, cost in costs.items():
            if cost <= 0 or len(plan.kept(*key)) <= _min_kept(full, *key, min_keep):
                continue
            imp, idx = queue[key][0]
            if best is None or imp / cost < best[0]:
                best = (imp / cost, key, idx)
        if best is None:
            raise ConfigError(f"cannot reach {target / 1e9:.3f} GMACs: every group family is at its minimum "
                              f"({min_keep:.0%} kept); lower --min-keep or raise --flops")
        _, key, idx = best
        plan.kept(*key).remove(idx)
        queue[key].pop(0)
        macs -= costs[key]
        # only the families of the touched block change cost (a head's cost depends on its channels ...)
        fresh = group_costs(cfg, plan, size, folded) if key[0] != "mlp" else None
        costs = fresh if fresh is not None else {**costs, key: _cost_of(cfg, plan, key, size, folded)}
    return plan


def _cost_of(cfg, plan: PrunePlan, key: tuple, size, folded: bool) -> int:
    if len(plan.kept(*key)) <= 1:
        return 0
    now = plan.config(cfg)
    return config_macs(now, size, folded) - config_macs(shrunk(now, *key), size, folded)


class _Scorer:
    """Accumulates squared gate gradients per task for the current (partly pruned) model."""

    def __init__(self, model: SegFormer):
        self.gates = Gates(model.config)
        self.handles = self.gates.install(model)
        self.acc = {task: {k: torch.zeros_like(g) for k, g in self.gates.gates.items()} for task in ("seg", "cls")}

    def add(self, task: str) -> None:
        for k, g in self.gates.gates.items():
            if g.grad is not None:
                self.acc[task][k] += g.grad.detach() ** 2
                g.grad = None

    def combined(self, cls_weight: float) -> dict[tuple, np.ndarray]:
        def normalised(task):
            allv = torch.cat([v for v in self.acc[task].values()])
            return {k: v / allv.mean().clamp_min(1e-30) for k, v in self.acc[task].items()}

        seg, cls = normalised("seg"), normalised("cls")
        out = {}
        for name in self.gates.gates:
            kind, s, b = name.split("_")
            out[(kind, int(s), int(b))] = (seg[name] + cls_weight * cls[name]).numpy()
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def prune(source: LoadedModel, cfg: PruneConfig, out: str | Path, state_path: str | Path | None = None, log=print) -> dict:
    """Prune ``source`` to ``cfg.flops`` of its MACs; writes the smaller model to ``out`` (safetensors)."""
    from segrt.export.model.checkpoints import save_checkpoint

    if not 0.0 < cfg.flops <= 1.0:
        raise ConfigError(f"--flops must be in (0, 1], got {cfg.flops}")
    if cfg.count not in ("folded", "unfolded"):
        raise ConfigError(f"count must be 'folded' or 'unfolded', got {cfg.count!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    state_path = Path(state_path) if state_path else out.with_name(out.name + ".prune_state.json")
    state_path.parent.mkdir(parents=True, exist_ok=True)
    base = source.model.eval()
    model_cfg = base.config
    size = tuple(cfg.size or source.metadata.input_size or (512, 512))
    folded = cfg.count == "folded"
    macs0 = config_macs(model_cfg, size, folded)
    target = int(macs0 * cfg.flops)
    train_set = open_dataset(cfg.data, cfg.format, "train")
    if len(train_set.classes) != model_cfg.num_classes:
        raise ConfigError(f"dataset has {len(train_set.classes)} classes, model {model_cfg.num_classes}")
    base_size = tuple(source.metadata.input_size or (384, 512))
    samples = TrainSamples(train_set, AugmentConfig(base_size, tuple(cfg.crop), tuple(cfg.scale)), cfg.seed,
                           source.metadata.mean, source.metadata.std)
    weights = class_weights(train_set, len(train_set)) if cfg.loss == "balanced" else None
    deepest = model_cfg.widths[-1]
    head = PresenceHead(deepest, model_cfg.num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.cls_lr)

    plan = PrunePlan.full(model_cfg)
    start_round, start_step, history = 0, 0, []
    acc_saved = None
    elapsed_before = 0.0
    if state_path.exists():
        st = json.loads(state_path.read_text())
        if st["source_sha256"] != source.sha256 or _settings(st["config"]) != _settings(asdict(cfg)):
            raise ConfigError(f"{state_path} belongs to a different model or settings; delete it to start over")
        plan = PrunePlan.from_json(st["plan"])
        start_round, start_step, history = st["round"], st["step"], st["history"]
        elapsed_before = st["elapsed"]
        acc_saved = st.get("acc")
        head_state = torch.load(state_path.with_suffix(".head.pt"), weights_only=True)
        head.load_state_dict(head_state["head"])
        opt.load_state_dict(head_state["opt"])
        log(f"resumed pruning at round {start_round} step {start_step}")
    t0 = time.time()

    def batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [samples[k * cfg.batch_size + i] for i in range(cfg.batch_size)]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

    def save(round_: int, step: int, scorer: _Scorer | None) -> None:
        acc = None
        if scorer is not None:
            acc = {t: {k: v.tolist() for k, v in d.items()} for t, d in scorer.acc.items()}
        torch.save({"head": head.state_dict(), "opt": opt.state_dict()}, state_path.with_suffix(".head.pt"))
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"source_sha256": source.sha256, "config": json.loads(json.dumps(asdict(cfg))),
                                   "plan": plan.to_json(), "round": round_, "step": step, "history": history,
                                   "acc": acc, "elapsed": elapsed_before + time.time() - t0}))
        tmp.replace(state_path)

    def over_budget() -> bool:
        return cfg.time_budget is not None and time.time() - t0 > cfg.time_budget

    total_steps = cfg.cls_warmup + cfg.rounds * cfg.steps
    done = 0 if start_round == 0 and start_step == 0 else cfg.cls_warmup + start_round * cfg.steps + start_step
    stopped = False
    with make_progress() as progress:
        task = progress.add_task("prune", total=total_steps, completed=done, info="")
        for rnd in range(start_round, cfg.rounds):
            model = apply_plan(base, plan).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            scorer = _Scorer(model)
            if acc_saved is not None and rnd == start_round:
                for t in ("seg", "cls"):
                    for k, v in acc_saved[t].items():
                        scorer.acc[t][k] = torch.tensor(v)
            first = start_step if rnd == start_round else 0
            warm = cfg.cls_warmup if rnd == 0 and first == 0 else 0
            for w in range(warm):  # the presence head must mean something before it scores channels
                x, y = batch(10_000_000 + w)
                with torch.no_grad():
                    feats = model.encoder(x)
                loss = F.binary_cross_entropy_with_logits(head(feats[-1]), presence_targets(y, model_cfg.num_classes))
                opt.zero_grad()
                loss.backward()
                opt.step()
                progress.update(task, advance=1, info=f"presence head bce {loss.item():.3f}")
            for step in range(first, cfg.steps):
                x, y = batch(rnd * cfg.steps + step)
                feats = model.encoder(x)
                if step % 2 == 0:  # segmentation turn
                    loss = seg_loss(model.decode_head(feats), y, cfg.loss, weights)
                    loss.backward()
                    scorer.add("seg")
                    info = f"round {rnd + 1}: seg loss {loss.item():.3f}"
                else:  # classification turn: scores and the presence head both learn from it
                    loss = F.binary_cross_entropy_with_logits(head(feats[-1]), presence_targets(y, model_cfg.num_classes))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    scorer.add("cls")
                    info = f"round {rnd + 1}: presence bce {loss.item():.3f}"
                progress.update(task, advance=1, info=info)
                if (step + 1) % cfg.save_every == 0 or over_budget():
                    save(rnd, step + 1, scorer)
                if over_budget():
                    stopped = True
                    break
            if stopped:
                scorer.close()
                break
            scores = scorer.combined(cfg.cls_weight)
            scorer.close()
            round_target = int(macs0 * cfg.flops ** ((rnd + 1) / cfg.rounds))
            plan = select(model_cfg, plan, scores, round_target, size, folded, cfg.min_keep)
            macs = config_macs(plan.config(model_cfg), size, folded)
            history.append({"round": rnd + 1, "gmacs": macs / 1e9, "fraction": macs / macs0})
            log(f"round {rnd + 1}/{cfg.rounds}: {macs / 1e9:.3f} GMACs ({macs / macs0:.1%} of {macs0 / 1e9:.3f})")
            acc_saved = None
            save(rnd + 1, 0, None)
    if stopped:
        log(f"time budget reached; resume with the same command (state in {state_path})")
        return {"finished": False, "state": str(state_path), "history": history}
    pruned = apply_plan(base, plan).eval()
    meta = source.metadata
    meta.extra = {**meta.extra, "pruning": json.dumps({"method": "multi-task channel pruning", "flops": cfg.flops,
                                                        "count": cfg.count, "size": list(size),
                                                        "source_sha256": source.sha256, "source_gmacs": macs0 / 1e9,
                                                        "gmacs": config_macs(pruned.config, size, folded) / 1e9,
                                                        "plan": json.loads(plan.to_json())})}
    save_checkpoint(pruned, meta, out)
    result = {"finished": True, "out": str(out), "source_gmacs": macs0 / 1e9,
              "gmacs": config_macs(pruned.config, size, folded) / 1e9, "history": history}
    result["fraction"] = result["gmacs"] / result["source_gmacs"]
    return result


def _settings(raw: dict) -> dict:
    # what must match for a resumed run to continue the same one (time budget and threads may change)
    return {k: v for k, v in json.loads(json.dumps(raw)).items() if k not in ("time_budget", "threads")}
