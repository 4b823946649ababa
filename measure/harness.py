"""The one timing methodology of segrt: ``segrt bench`` and every script in ``benchmarks/`` time through here.

- Interleaved: every round times each candidate once, always in the same order (A B C A B C ...), so load
  from other processes, thermal throttling and frequency changes hit all candidates alike.
- Re-warmed: ``rewarm`` untimed runs of a candidate on the same input precede each of its timed runs, as in a
  stream where one model runs frame after frame. The first run after another model finds the caches full of
  the other model's weights and the other session's worker threads (ONNX Runtime and OpenMP spin-wait after a
  parallel section) still spinning. Measured on this project's 2-core machine at 2 threads (camvid-b0 and two
  gated variants): 77.0 / 68.0 / 55.6 ms straight after one another, 53.6 / 43.9 / 39.9 ms with the re-warm
  run, about what each takes run alone; a 20 ms pause instead did not help (59.1 / 53.8 / 44.3 ms), so there
  is no pause between runs.
- Garbage collection: collected once before the timed rounds and again after every round, disabled inside
  the rounds. A collection inside one candidate's run would be charged to that candidate alone; collecting
  between rounds (untimed, and followed by the next candidate's re-warm run) keeps cyclic garbage bounded.
- Threads: the caller pins every candidate to the same intra-op thread count; the harness records it with
  the CPUs this process may run on.
- Load: the 1-minute load average at the start and at the end goes into the record: latencies measured while
  other work shared the machine are only comparable within one run.

numpy only: no torch, no onnx.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from segrt.runtime.errors import ConfigError

ORDER = "interleaved A B C A B C, the same order every round"
GC_POLICY = "collected before the timed rounds and after each round, disabled inside the rounds"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the platform has none)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cpu_affinity() -> list[int] | None:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def default_threads() -> int:
    """All CPUs this process may run on (what a candidate pins its intra-op threads to by default)."""
    return len(cpu_affinity() or []) or os.cpu_count() or 1


@dataclass
class Conditions:
    """How a set of latencies was measured: enough to tell whether two runs are comparable."""

    rounds: int
    warmup: int
    rewarm: int
    threads: int | None
    affinity: list[int] | None = field(default_factory=cpu_affinity)
    load_average_start: list[float] | None = field(default_factory=load_average)
    load_average_end: list[float] | None = None
    order: str = ORDER
    gc: str = GC_POLICY

    def to_dict(self) -> dict:
        return asdict(self)


def run_interleaved(count: int, untimed: Callable[[int, int], object], timed: Callable[[int, int], object], *,
                    rounds: int, warmup: int = 0, rewarm: int = 1, threads: int | None = None, progress=None,
                    label: str = "latency", order: list[int] | None = None) -> Conditions:
    """Run ``count`` candidates interleaved: ``untimed(i, round)`` runs candidate ``i`` once without timing
    (warm-up, re-warm), ``timed(i, round)`` runs it once and records its own times. ``warmup`` untimed runs
    per candidate come first (callers that warm up right after loading pass 0). ``order`` collects the
    candidate index of every timed run, for tests and reports that show the interleaving."""
    if rounds < 1 or warmup < 0 or rewarm < 0:
        raise ConfigError(f"need rounds >= 1, warmup >= 0 and rewarm >= 0, got rounds={rounds}, warmup={warmup}, "
                          f"rewarm={rewarm}")
    conditions = Conditions(rounds, warmup, rewarm, threads)
    for i in range(count):
        for _ in range(warmup):
            untimed(i, 0)
    task = progress.add_task(label, total=rounds, info="interleaved, re-warmed") if progress is not None else None
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for i in range(count):
                for _ in range(rewarm):
                    untimed(i, r)
                timed(i, r)
                if order is not None:
                    order.append(i)
            gc.collect()
            if task is not None:
                progress.advance(task)
    finally:
        if gc_was_enabled:
            gc.enable()
    conditions.load_average_end = load_average()
    return conditions


@dataclass
class Latencies:
    """Per candidate, the latency (ms) of every timed run, and how they were measured."""

    ms: dict[str, list[float]]
    conditions: Conditions

    def p50(self, name: str) -> float:
        return float(np.median(self.ms[name]))


def time_latencies(runs: Mapping[str, Callable[[np.ndarray], object]], inputs: Sequence[np.ndarray], *, rounds: int,
                   warmup: int, rewarm: int = 1, threads: int | None = None, progress=None) -> Latencies:
    """Time ``runs`` (name -> one inference on a prepared input) interleaved; round ``r`` feeds
    ``inputs[r % len(inputs)]`` to every candidate (a data-dependent model's cost depends on the input)."""
    if not inputs:
        raise ConfigError("time_latencies needs at least one input")
    names = list(runs)
    fns = [runs[n] for n in names]
    ms: dict[str, list[float]] = {n: [] for n in names}

    def untimed(i: int, r: int) -> None:
        fns[i](inputs[r % len(inputs)])

    def timed(i: int, r: int) -> None:
        x = inputs[r % len(inputs)]
        t0 = time.perf_counter()
        fns[i](x)
        ms[names[i]].append(1000 * (time.perf_counter() - t0))

    conditions = run_interleaved(len(names), untimed, timed, rounds=rounds, warmup=warmup, rewarm=rewarm,
                                 threads=threads, progress=progress)
    return Latencies(ms, conditions)
