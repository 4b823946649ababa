"""The shared training loop: exact resume, time budget, best checkpoint, atomic state saves.

A tiny regression job with dropout and a momentum optimiser stands in for a SegFormer run, so every
property is checked in a second; train, distill and prune exercise the same loop on CamVid in their
own tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from segrt.export.training import loop as loop_module
from segrt.export.training.loop import Job, LoopConfig, TorchStateFile, Validation, run_loop, write_atomic
from segrt.runtime.errors import ConfigError, OutputError
from segrt.runtime.metrics import SegMetrics

ITERATIONS = 6


def quiet(*_):
    pass


class TinyRun:
    """Dropout draws from the global torch RNG and SGD keeps momentum: a resume that lost either diverges."""

    def __init__(self, out: Path, mious: list[float] | None = None):
        torch.manual_seed(0)  # every session starts like a fresh process; the loop restores the RNG state
        self.out = out
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.mious = mious  # scripted validation scores, else a real score of the model
        self.saved_models: dict[int, dict[str, torch.Tensor]] = {}
        self.steps: list[int] = []

    def batches(self, start: int):
        for it in range(start, ITERATIONS):
            x = torch.randn(4, 8, generator=torch.Generator().manual_seed(it))
            yield x, x.sum(dim=1, keepdim=True)

    def step(self, it: int, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        x, y = batch
        loss = nn.functional.mse_loss(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.steps.append(it)
        return {"loss": loss.item()}

    def evaluate(self) -> SegMetrics:
        if self.mious is not None:
            miou = self.mious.pop(0)
        else:
            self.model.eval()
            x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1000))
            with torch.no_grad():
                miou = 1.0 / (1.0 + nn.functional.mse_loss(self.model(x), x.sum(dim=1, keepdim=True)).item())
            self.model.train()
        return SegMetrics(miou=miou, pixel_accuracy=miou, per_class_iou={}, images=16)

    def save_model(self, path: Path) -> None:
        save_file(self.model.state_dict(), path)

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])

    def job(self, settings: LoopConfig, on_stop: bool = False) -> Job:
        self.out.mkdir(parents=True, exist_ok=True)
        return Job("tiny", TorchStateFile(self.out / "state.pt"),
                   state=lambda: {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()},
                   load_state=self.load_state, batches=self.batches, step=self.step, out=self.out, config=settings,
                   validation=Validation(self.evaluate, self.save_model, keep_last=True, on_stop=on_stop))


def run(out: Path, budget: float | None = None, mious: list[float] | None = None,
        on_stop: bool = False) -> tuple[dict, TinyRun]:
    tiny = TinyRun(out, mious)
    settings = LoopConfig(ITERATIONS, val_every=2, time_budget=budget)
    return run_loop(settings, tiny.job(settings, on_stop), log=quiet), tiny


def model_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "state.pt", weights_only=True)["model"]


def test_resume_after_every_iteration_equals_an_uninterrupted_run(tmp_path):
    straight, _ = run(tmp_path / "straight")
    sessions = 0
    while True:  # a zero budget stops every session after one iteration, as a session limit would
        result, tiny = run(tmp_path / "resumed", budget=0.0)
        sessions += 1
        assert tiny.steps == [sessions - 1]  # each session continues where the last one stopped
        if result["finished"]:
            break
    assert sessions == ITERATIONS and result["iteration"] == straight["iteration"] == ITERATIONS
    a, b = model_state(tmp_path / "straight"), model_state(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [(h["iteration"], h["miou"]) for h in straight["history"]] == \
           [(h["iteration"], h["miou"]) for h in result["history"]]
    assert [h["iteration"] for h in straight["history"]] == [2, 4, 6]


def test_a_finished_run_does_nothing_more(tmp_path):
    first, _ = run(tmp_path)
    again, tiny = run(tmp_path)
    assert tiny.steps == [] and again["iteration"] == ITERATIONS and again["finished"]
    assert again["history"] == first["history"]


def test_time_budget_stops_and_saves(tmp_path):
    result, tiny = run(tmp_path / "plain", budget=0.0)
    state = torch.load(tmp_path / "plain" / "state.pt", weights_only=True)
    assert tiny.steps == [0] and result["iteration"] == state["iteration"] == 1 and not result["finished"]
    assert result["history"] == [] and not (tmp_path / "plain" / "best.safetensors").exists()
    assert all(torch.equal(v, tiny.model.state_dict()[k]) for k, v in state["model"].items())
    # on_stop: the interrupted run is validated, so its checkpoints hold everything trained so far
    result, _ = run(tmp_path / "validated", budget=0.0, on_stop=True)
    assert [h["iteration"] for h in result["history"]] == [1]
    assert (tmp_path / "validated" / "best.safetensors").exists()


def test_time_budget_is_read_while_the_run_runs(tmp_path):
    """A caller may shorten the budget mid-run (benchmarks/pruning_control.py stops a distillation so)."""
    tiny = TinyRun(tmp_path)
    settings = LoopConfig(ITERATIONS, val_every=2)
    step = tiny.step

    def step_then_stop_at_3(it, batch):
        if it == 2:
            settings.time_budget = 0.0
        return step(it, batch)

    tiny.step = step_then_stop_at_3  # type: ignore[method-assign]
    result = run_loop(settings, tiny.job(settings), log=quiet)
    assert result["iteration"] == 3 and not result["finished"]


def test_best_checkpoint_follows_validation(tmp_path):
    mious = [0.2, 0.5, 0.3]
    result, tiny = run(tmp_path, mious=list(mious))
    assert [h["miou"] for h in result["history"]] == mious and result["best_miou"] == 0.5
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["iteration"] == 4 and best["miou"] == 0.5
    best_weights = load_file(tmp_path / "best.safetensors")
    last_weights = load_file(tmp_path / "last.safetensors")
    final = tiny.model.state_dict()
    assert all(torch.equal(last_weights[k], final[k]) for k in final)  # last: the final model
    assert not all(torch.equal(best_weights[k], final[k]) for k in final)  # best: iteration 4's, not the last
    assert json.loads((tmp_path / "history.json").read_text()) == result["history"]


def test_an_interrupted_save_leaves_the_previous_state(tmp_path, monkeypatch):
    run(tmp_path, budget=0.0)  # a good state at iteration 1
    before = (tmp_path / "state.pt").read_bytes()

    def save_then_crash(obj, path):  # half a file, then the session dies
        Path(path).write_bytes(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module.torch, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "state.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
    resumed, tiny = run(tmp_path)  # and the run goes on from it
    assert tiny.steps == list(range(1, ITERATIONS)) and resumed["finished"]


def test_write_atomic_replaces_only_a_complete_file(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, lambda tmp: tmp.write_text("complete"))
    assert target.read_text() == "complete"

    def partial(tmp: Path) -> None:
        tmp.write_text("part")
        raise OSError("disk full")

    with pytest.raises(OutputError, match=r"state\.json: disk full"):  # typed, naming the file
        write_atomic(target, partial)
    assert target.read_text() == "complete" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_state_the_run_refuses_is_not_overwritten(tmp_path):
    run(tmp_path, budget=0.0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert "config.json" in before and "state.pt" in before
    tiny = TinyRun(tmp_path)

    def refuse(state: dict) -> None:
        raise ConfigError("belongs to another run")

    tiny.load_state = refuse  # type: ignore[method-assign]
    other = LoopConfig(ITERATIONS, val_every=3)  # its config.json would differ
    with pytest.raises(ConfigError):
        run_loop(other, tiny.job(other), log=quiet)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
