"""The one resumable training loop behind train, distill and prune (and, through distill, gate and
exit-head training).

A run supplies only what differs: its ``step(iteration, batch)``, the batches from a given iteration
on, its own state (model, optimiser, ...) and, optionally, a :class:`Validation`. The loop owns the rest:
exact resume, atomic state saves, validation with best (and last) checkpoint, history, the progress bar
and the time budget that stops a run cleanly so it can continue in another session.

Resumption is exact because the loop saves, next to the run's own state, the iteration, the best
score, the history, the elapsed time and the torch RNG state (dropout and drop-path draws replay).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from segrt.runtime import sinks
from segrt.runtime.errors import ConfigError
from segrt.runtime.metrics import SegMetrics
from segrt.runtime.progress import make_progress

# The loop's own entries in a state file; everything else belongs to the run.
LOOP_KEYS = ("iteration", "best_miou", "history", "elapsed", "torch_rng", "replay")
# Config fields that decide which batches the iterations see: a resumed run must keep them, or it would switch
# its data stream half-way while its config.json claims the whole run used the new values. A field missing from
# an older state file (added to the config since) held its default, e.g. no aspect stretch.
REPLAY_FIELDS = ("seed", "batch_size", "crop", "scale", "aspect", "base_size")


class LoopSettings(Protocol):
    """What the loop reads from a run's config. It reads them at every iteration, so a caller may shorten a
    run's time budget while it runs (benchmarks/pruning_control.py stops a distillation that way)."""

    iterations: int
    val_every: int
    time_budget: float | None


@dataclass
class LoopConfig:
    """Loop settings for a run whose own config has no such fields (pruning). ``val_every`` 0: never."""

    iterations: int
    val_every: int = 0
    time_budget: float | None = None


class StateStore(Protocol):
    """Where a run's state lives: ``load`` returns None when there is nothing to resume."""

    path: Path

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename it over ``path``: an interruption (a session limit, a full
    disk, Ctrl-C) never leaves a half-written file, and the previous version stays intact."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with sinks.writing(path, "training state"):
            write(tmp)
            os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder itself is gone or unwritable: keep the error that says so
            pass


@dataclass
class TorchStateFile:
    """The whole state in one ``torch.save`` file (train, distill)."""

    path: Path

    def load(self) -> dict | None:
        return torch.load(self.path, map_location="cpu", weights_only=True) if self.path.exists() else None

    def save(self, state: dict) -> None:
        write_atomic(self.path, lambda tmp: torch.save(state, tmp))


@dataclass
class Validation:
    """Validate a run and keep its best weights in the run folder: best.safetensors and best.json, with
    ``keep_last`` also last.safetensors; history.json at the end. ``on_stop``: also validate when the time
    budget stops a run, so the checkpoints hold everything trained so far."""

    evaluate: Callable[[], SegMetrics]
    save_model: Callable[[Path], None]
    keep_last: bool = False
    on_stop: bool = False


@dataclass
class Job:
    """What one kind of run supplies. ``state()``/``load_state(state)``: its own entries of the state file
    (a mismatching state raises a typed error there); ``batches(start)``: batches for iterations ``start``
    on; ``step(iteration, batch)``: one update, returning the values shown in the progress line;
    ``save_after(iteration)``: extra points to save state at (validation points always save). ``out``: the
    run folder, where ``config`` (a dataclass) is written as config.json once the state is resumed (a
    mismatching state must not overwrite the config of the run it belongs to) and the validation's files go.
    """

    name: str
    store: StateStore
    state: Callable[[], dict]
    load_state: Callable[[dict], None]
    batches: Callable[[int], Iterable[Any]]
    step: Callable[[int, Any], dict[str, float]]
    out: Path | None = None
    config: Any = None
    validation: Validation | None = None
    save_after: Callable[[int], bool] = lambda _it: False

    def __post_init__(self) -> None:
        if self.validation is not None and self.out is None:
            raise ConfigError(f"{self.name}: a validated run needs a run folder (out) for its checkpoints")


@dataclass
class RunState:
    """The loop's own progress, saved with every state."""

    iteration: int = 0
    best: float = -1.0  # best validation mIoU so far
    history: list[dict] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds spent in earlier sessions
    started: float = field(default_factory=time.time)
    saved_at: int = -1

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started


def run_loop(settings: LoopSettings, job: Job, log: Callable[[str], Any] = print) -> dict:
    """Run ``job`` to ``settings.iterations`` or its time budget; returns iteration, best_miou, finished and
    history."""
    run = resume(job, log)
    val, out = job.validation, job.out
    if out and job.config is not None:
        sinks.write_text(out / "config.json", json.dumps(asdict(job.config), indent=2, default=str), "run config")
    stopped = False
    with make_progress() as progress:
        task = progress.add_task(job.name, total=settings.iterations, completed=run.iteration, info="")
        for batch in job.batches(run.iteration):
            info = describe(job.step(run.iteration, batch))
            run.iteration += 1
            progress.update(task, completed=run.iteration, info=info)
            if not progress.console.is_terminal and run.iteration % 25 == 0:  # logs and CI have no live bar
                log(f"iter {run.iteration}/{settings.iterations} {info} elapsed {run.elapsed():.0f}s")
            at_validation = settings.val_every > 0 and run.iteration % settings.val_every == 0
            if val and out and (at_validation or run.iteration == settings.iterations):
                validate(val, out, run, log)
                save(job, run)
            elif job.save_after(run.iteration):
                save(job, run)
            if settings.time_budget is not None and time.time() - run.started > settings.time_budget:
                stopped = True
                break
    finish(job, run, stopped, log)
    return {"iteration": run.iteration, "best_miou": run.best, "finished": run.iteration >= settings.iterations,
            "history": run.history}


def resume(job: Job, log: Callable[[str], Any]) -> RunState:
    state = job.store.load()
    if state is None:
        return RunState()
    check_replay(job, state)
    job.load_state({k: v for k, v in state.items() if k not in LOOP_KEYS})
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    run = RunState(iteration=int(state["iteration"]), best=float(state.get("best_miou", -1.0)),
                   history=json.loads(state.get("history", "[]")), elapsed_before=float(state.get("elapsed", 0.0)))
    run.saved_at = run.iteration
    log(f"resumed from {job.store.path} at iteration {run.iteration} (best mIoU {run.best:.4f})")
    return run


def replay_settings(config: Any) -> dict[str, Any]:
    """The :data:`REPLAY_FIELDS` of a run config (a dataclass), as JSON values (tuples become lists)."""
    values = asdict(config) if config is not None else {}
    return {k: json.loads(json.dumps(values[k])) for k in REPLAY_FIELDS if k in values}


def check_replay(job: Job, state: dict) -> None:
    """A state saved by an older segrt has no record (nothing to compare); otherwise every recorded field must
    match the command's."""
    if "replay" not in state or job.config is None:
        return
    saved, now = json.loads(state["replay"]), replay_settings(job.config)
    defaults = {f.name: json.loads(json.dumps(f.default)) for f in fields(job.config) if f.default is not MISSING}
    for key in now:
        before = saved.get(key, defaults.get(key, now[key]))
        if before != now[key]:
            raise ConfigError(f"{job.store.path} was started with {key} {before}, this command has {now[key]}: "
                              "resuming would change the data stream half-way; rerun with the same settings or "
                              "use another output folder")


def save(job: Job, run: RunState) -> None:
    job.store.save({**job.state(), "torch_rng": torch.get_rng_state(), "iteration": run.iteration,
                    "best_miou": run.best, "history": json.dumps(run.history), "elapsed": run.elapsed(),
                    "replay": json.dumps(replay_settings(job.config))})
    run.saved_at = run.iteration


def validate(val: Validation, out: Path, run: RunState, log: Callable[[str], Any]) -> None:
    it = run.iteration
    metrics = val.evaluate()
    run.history.append({"iteration": it, "miou": metrics.miou, "pixel_accuracy": metrics.pixel_accuracy,
                        "elapsed": run.elapsed()})
    if metrics.miou > run.best:
        run.best = metrics.miou
        with sinks.writing(out / "best.safetensors", "checkpoint"):
            val.save_model(out / "best.safetensors")
        sinks.write_text(out / "best.json", json.dumps({"iteration": it, **metrics.to_dict()}, indent=2), "metrics")
    if val.keep_last:
        with sinks.writing(out / "last.safetensors", "checkpoint"):
            val.save_model(out / "last.safetensors")
    log(f"iter {it}: val mIoU {metrics.miou:.4f} (best {run.best:.4f}) pixel acc {metrics.pixel_accuracy:.4f}")


def finish(job: Job, run: RunState, stopped: bool, log: Callable[[str], Any]) -> None:
    """The end of a session: validate what is not validated yet, save, and say how to continue."""
    val, out = job.validation, job.out
    validated = bool(run.history) and run.history[-1]["iteration"] == run.iteration
    if val and out and not validated and (not stopped or val.on_stop):
        validate(val, out, run, log)
    if stopped or run.saved_at != run.iteration:
        save(job, run)
    if stopped:
        log(f"time budget reached at iteration {run.iteration}; resume with the same command")
    if val and out:
        sinks.write_text(out / "history.json", json.dumps(run.history, indent=2), "training history")


def describe(values: dict[str, float]) -> str:
    """``{"round": 2, "loss": 0.51, "lr": 6e-4}`` -> ``"round 2 loss 0.510 lr 6.00e-04"`` for the progress line."""

    def fmt(v: float) -> str:
        if isinstance(v, int):
            return str(v)
        return f"{v:.2e}" if v != 0 and abs(v) < 1e-3 else f"{v:.3f}"

    return " ".join(f"{k} {fmt(v)}" for k, v in values.items())
