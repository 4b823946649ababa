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
   gradient of that task's loss w.r.t. every group gate (:class:`.groups.Gates`, all at 1, so a
   first-order Taylor estimate of the loss change when the group is removed), accumulate its square per
   task, keep training the classification head on its turns. Each task's scores are normalised by
   their mean, then combined; a group's priority is its combined importance per MAC it costs.
3. Remove the lowest-priority groups until the round's MAC target (geometric steps to the budget),
   rebuild the smaller dense model from the original weights, and score again.

The result is a plain smaller SegFormer (:func:`.groups.apply_plan`) that exports and runs like any
other; accuracy is recovered afterwards by :mod:`segrt.export.training.distill`. The scoring runs in the
shared training loop (:mod:`segrt.export.training.loop`): the state after every round and every
``save_every`` steps is saved, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segrt.export.methods.pruning.align import align_plan, widths
from segrt.export.methods.pruning.groups import Gates, PrunePlan, apply_plan, config_macs, group_costs, shrunk
from segrt.export.model.checkpoints import LoadedModel, save_checkpoint
from segrt.export.model.segformer import SegFormer
from segrt.export.training.augment import AugmentConfig
from segrt.export.training.loop import Job, LoopConfig, run_loop, write_atomic
from segrt.export.training.train import TrainSamples, class_weights, seg_loss
from segrt.runtime.datasets import IGNORE, open_dataset
from segrt.runtime.errors import ConfigError


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
    align: int = 16  # pruned widths are multiples of this many channels (1: no rounding); see .align
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
           min_keep: float, align: int = 1) -> PrunePlan:
    """Greedily remove the group with the least importance per MAC until the model fits ``target``.

    ``plan`` is in the original model's (``cfg``'s) indices; ``scores[(kind, s, b)]`` holds one
    importance per group ``plan`` keeps, in its order (the order of the gates of the model it builds).
    Costs are recomputed as the structure shrinks (a channel's cost depends on the heads left, etc.).
    ``align`` > 1 then rounds the widths to multiples of it (:func:`.align.align_plan`), still within ``target``.
    """
    full = PrunePlan.full(cfg)
    plan = PrunePlan.from_json(plan.to_json())
    score_of = {key: dict(zip(plan.kept(*key), vals.tolist())) for key, vals in scores.items()}
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
    if align > 1:
        plan = align_plan(cfg, plan, score_of, target, size, folded, align,
                          lambda key: _min_kept(full, *key, min_keep))
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


class PruneStateFiles:
    """Pruning state in two files, each written atomically: a JSON file anyone can read (settings, plan,
    rounds so far; models/bundle_pruned.py reads its config) and the presence head with its optimiser
    beside it (``.head.pt``). The head file is written first and names its iteration, so a crash between
    the two writes is detected instead of resuming with a head from a later step. A state of another
    model or other settings is refused."""

    def __init__(self, path: Path, cfg: PruneConfig, source_sha256: str):
        self.path, self.head_path, self.cfg, self.source_sha256 = path, path.with_suffix(".head.pt"), cfg, source_sha256

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        st = json.loads(self.path.read_text())
        if st["source_sha256"] != self.source_sha256 or _settings(st["config"]) != _settings(asdict(self.cfg)):
            raise ConfigError(f"{self.path} belongs to a different model or settings; delete it to start over")
        head = torch.load(self.head_path, weights_only=True)
        iteration = st.get("iteration", self._legacy_iteration(st["round"], st["step"]))
        if head.get("iteration", iteration) != iteration:
            raise ConfigError(f"{self.head_path} does not match {self.path} (interrupted while saving); "
                              "delete both to start over")
        return {**st, **head, "iteration": iteration, "rounds": st["history"], "history": "[]"}

    def save(self, state: dict) -> None:
        it = state["iteration"]
        head = {"head": state["head"], "opt": state["opt"], "torch_rng": state["torch_rng"], "iteration": it}
        write_atomic(self.head_path, lambda tmp: torch.save(head, tmp))
        round_, step = divmod(max(it - self.cfg.cls_warmup, 0), self.cfg.steps)
        record = {"source_sha256": self.source_sha256, "config": json.loads(json.dumps(asdict(self.cfg))),
                  "plan": state["plan"],
                  "round": round_, "step": step, "iteration": it, "history": state["rounds"],
                  "acc": state["acc"], "elapsed": state["elapsed"]}
        write_atomic(self.path, lambda tmp: tmp.write_text(json.dumps(record)))

    def _legacy_iteration(self, round_: int, step: int) -> int:
        # states written before the loop was shared name (round, step); (0, 0) meant "nothing done yet"
        return 0 if (round_, step) == (0, 0) else self.cfg.cls_warmup + round_ * self.cfg.steps + step


class PruneRun:
    """What pruning supplies to the training loop. Iterations 0 .. cls_warmup - 1 train the presence head;
    then each round scores ``steps`` batches (alternating tasks) and, on its last one, removes groups."""

    def __init__(self, source: LoadedModel, cfg: PruneConfig, size: tuple[int, int], log=print):
        self.source, self.cfg, self.size, self.log = source, cfg, size, log
        self.base = source.model.eval()
        self.model_cfg = self.base.config
        self.folded = cfg.count == "folded"
        self.macs0 = config_macs(self.model_cfg, size, self.folded)
        train_set = open_dataset(cfg.data, cfg.format, "train")
        if len(train_set.classes) != self.model_cfg.num_classes:
            raise ConfigError(f"dataset has {len(train_set.classes)} classes, model {self.model_cfg.num_classes}")
        base_size = tuple(source.metadata.input_size or (384, 512))
        self.samples = TrainSamples(train_set, AugmentConfig(base_size, tuple(cfg.crop), tuple(cfg.scale)),
                                    cfg.seed, source.metadata.mean, source.metadata.std)
        self.weights = class_weights(train_set, len(train_set)) if cfg.loss == "balanced" else None
        self.head = PresenceHead(self.model_cfg.widths[-1], self.model_cfg.num_classes)
        self.opt = torch.optim.Adam(self.head.parameters(), lr=cfg.cls_lr)
        self.plan = PrunePlan.full(self.model_cfg)
        self.rounds: list[dict] = []
        self.current: tuple[int, SegFormer, _Scorer] | None = None  # the round being scored
        self.resumed_acc: dict | None = None  # accumulators of a round interrupted half-way

    @property
    def iterations(self) -> int:
        return self.cfg.cls_warmup + self.cfg.rounds * self.cfg.steps

    def batches(self, start: int):
        for it in range(start, self.iterations):
            # warm-up batches come from far beyond the scoring ones, so they never repeat them
            k = 10_000_000 + it if it < self.cfg.cls_warmup else it - self.cfg.cls_warmup
            items = [self.samples[k * self.cfg.batch_size + i] for i in range(self.cfg.batch_size)]
            yield torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

    def step(self, it: int, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        x, y = batch
        if it < self.cfg.cls_warmup:  # the presence head must mean something before it scores channels
            _, model, _ = self.round(0)
            with torch.no_grad():
                feats = model.encoder(x)
            return {"presence head bce": self.train_head(feats[-1], y).item()}
        rnd, step = divmod(it - self.cfg.cls_warmup, self.cfg.steps)
        _, model, scorer = self.round(rnd)
        feats = model.encoder(x)
        if step % 2 == 0:  # segmentation turn
            loss = seg_loss(model.decode_head(feats), y, self.cfg.loss, self.weights)
            loss.backward()
            scorer.add("seg")
            values = {"round": rnd + 1, "seg loss": loss.item()}
        else:  # classification turn: scores and the presence head both learn from it
            values = {"round": rnd + 1, "presence bce": self.train_head(feats[-1], y).item()}
            scorer.add("cls")
        if step == self.cfg.steps - 1:
            self.finish_round(rnd)
        return values

    def train_head(self, deepest: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = presence_targets(labels, self.model_cfg.num_classes)
        loss = F.binary_cross_entropy_with_logits(self.head(deepest), targets)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss

    def round(self, rnd: int) -> tuple[int, SegFormer, _Scorer]:
        """The model of round ``rnd`` (the plan so far applied, frozen) with gates to score it."""
        if self.current is None or self.current[0] != rnd:
            model = apply_plan(self.base, self.plan).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            scorer = _Scorer(model)
            if self.resumed_acc is not None:
                for t in ("seg", "cls"):
                    for k, v in self.resumed_acc[t].items():
                        scorer.acc[t][k] = torch.tensor(v)
                self.resumed_acc = None
            self.current = (rnd, model, scorer)
        return self.current

    def finish_round(self, rnd: int) -> None:
        """Remove the lowest-priority groups down to this round's MAC target (geometric steps to the budget)."""
        _, _, scorer = self.round(rnd)
        scores = scorer.combined(self.cfg.cls_weight)
        scorer.close()
        self.current = None
        round_target = int(self.macs0 * self.cfg.flops ** ((rnd + 1) / self.cfg.rounds))
        self.plan = select(self.model_cfg, self.plan, scores, round_target, self.size, self.folded, self.cfg.min_keep,
                           self.cfg.align)
        macs = config_macs(self.plan.config(self.model_cfg), self.size, self.folded)
        self.rounds.append({"round": rnd + 1, "gmacs": macs / 1e9, "fraction": macs / self.macs0})
        self.log(f"round {rnd + 1}/{self.cfg.rounds}: {macs / 1e9:.3f} GMACs ({macs / self.macs0:.1%} of "
                 f"{self.macs0 / 1e9:.3f})")

    def save_after(self, it: int) -> bool:
        """Every ``save_every`` scoring steps of a round, and after every round."""
        if it <= self.cfg.cls_warmup:
            return False
        done_in_round = (it - self.cfg.cls_warmup - 1) % self.cfg.steps + 1
        return done_in_round % self.cfg.save_every == 0 or done_in_round == self.cfg.steps

    def state(self) -> dict:
        scorer = self.current[2] if self.current is not None else None
        acc = None if scorer is None else {t: {k: v.tolist() for k, v in d.items()} for t, d in scorer.acc.items()}
        return {"plan": self.plan.to_json(), "rounds": self.rounds, "acc": acc,
                "head": self.head.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state: dict) -> None:
        self.plan = PrunePlan.from_json(state["plan"])
        self.rounds = state["rounds"]
        self.resumed_acc = state.get("acc")
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["opt"])
        if state["step"] == self.cfg.steps:
            # a state of the loop before it was shared, saved between a round's last batch and its selection
            self.finish_round(state["round"])

    def close(self) -> None:
        if self.current is not None:
            self.current[2].close()
            self.current = None


def prune(source: LoadedModel, cfg: PruneConfig, out: str | Path, state_path: str | Path | None = None,
          log=print) -> dict:
    """Prune ``source`` to ``cfg.flops`` of its MACs; writes the smaller model to ``out`` (safetensors)."""
    if not 0.0 < cfg.flops <= 1.0:
        raise ConfigError(f"--flops must be in (0, 1], got {cfg.flops}")
    if isinstance(cfg.align, bool) or not isinstance(cfg.align, int) or cfg.align < 1:
        raise ConfigError(f"--align must be a whole number of channels >= 1 (1: no rounding), got {cfg.align!r}")
    if cfg.count not in ("folded", "unfolded"):
        raise ConfigError(f"count must be 'folded' or 'unfolded', got {cfg.count!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    state_path = Path(state_path) if state_path else out.with_name(out.name + ".prune_state.json")
    state_path.parent.mkdir(parents=True, exist_ok=True)
    size = tuple(cfg.size or source.metadata.input_size or (512, 512))
    run = PruneRun(source, cfg, size, log)
    job = Job("prune", PruneStateFiles(state_path, cfg, source.sha256), state=run.state, load_state=run.load_state,
              batches=run.batches, step=run.step, save_after=run.save_after)
    try:
        result = run_loop(LoopConfig(run.iterations, time_budget=cfg.time_budget), job, log)
    finally:
        run.close()
    if not result["finished"]:
        log(f"state in {state_path}")
        return {"finished": False, "state": str(state_path), "history": run.rounds}
    return write_pruned(run, out)


def write_pruned(run: PruneRun, out: Path) -> dict:
    """The smaller dense model, its pruning recorded in its metadata so it reloads from the file alone."""
    pruned = apply_plan(run.base, run.plan).eval()
    gmacs = config_macs(pruned.config, run.size, run.folded) / 1e9
    meta = run.source.metadata
    record = {"method": "multi-task channel pruning", "flops": run.cfg.flops, "count": run.cfg.count,
              "size": list(run.size), "source_sha256": run.source.sha256, "source_gmacs": run.macs0 / 1e9,
              "gmacs": gmacs, "align": run.cfg.align, "widths": widths(run.model_cfg, run.plan),
              "plan": json.loads(run.plan.to_json())}
    meta.extra = {**meta.extra, "pruning": json.dumps(record)}
    save_checkpoint(pruned, meta, out)
    return {"finished": True, "out": str(out), "source_gmacs": run.macs0 / 1e9, "gmacs": gmacs,
            "history": run.rounds, "fraction": gmacs / (run.macs0 / 1e9)}


def _settings(raw: dict) -> dict:
    # what must match for a resumed run to continue the same one (time budget and threads may change);
    # states written before --align existed rounded nothing
    return {"align": 1, **{k: v for k, v in json.loads(json.dumps(raw)).items() if k not in ("time_budget", "threads")}}
