"""The one timing methodology: interleaving, re-warm runs, input cycling, GC out of the timed runs, the record."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from segrt.measure.harness import GC_POLICY, default_threads, run_interleaved, time_latencies
from segrt.runtime.errors import ConfigError


def test_interleaved_rewarmed_and_cycling_inputs():
    inputs = [np.full(2, i, dtype=np.float32) for i in range(3)]
    calls: list[tuple[str, int]] = []
    runs = {name: (lambda x, name=name: calls.append((name, int(x[0])))) for name in ("A", "B")}
    lat = time_latencies(runs, inputs, rounds=4, warmup=2, rewarm=1, threads=3)
    assert calls[:4] == [("A", 0), ("A", 0), ("B", 0), ("B", 0)]  # warm-up on the first input
    timed = calls[4:]
    # each round: A re-warm, A timed, B re-warm, B timed, all on input round % 3
    assert timed == [(n, r % 3) for r in range(4) for n in ("A", "A", "B", "B")]
    assert {n: len(v) for n, v in lat.ms.items()} == {"A": 4, "B": 4}
    assert all(v >= 0 for v in lat.ms["A"]) and lat.p50("B") == pytest.approx(np.median(lat.ms["B"]))
    c = lat.conditions.to_dict()
    assert c["threads"] == 3 and c["rounds"] == 4 and c["warmup"] == 2 and c["rewarm"] == 1
    assert c["gc"] == GC_POLICY and c["load_average_start"] and c["load_average_end"]


def test_gc_is_off_inside_the_rounds_and_restored_after():
    seen: list[bool] = []
    run_interleaved(2, lambda i, r: None, lambda i, r: seen.append(gc.isenabled()), rounds=3)
    assert seen == [False] * 6
    assert gc.isenabled()


def test_gc_is_restored_when_a_run_fails():
    def boom(i, r):
        raise RuntimeError("inference failed")

    with pytest.raises(RuntimeError):
        run_interleaved(1, lambda i, r: None, boom, rounds=2)
    assert gc.isenabled()


def test_rewarm_zero_times_the_first_run_after_switching():
    order: list[int] = []
    untimed: list[int] = []
    run_interleaved(3, lambda i, r: untimed.append(i), lambda i, r: None, rounds=2, rewarm=0, order=order)
    assert order == [0, 1, 2, 0, 1, 2] and untimed == []


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"rounds": 1, "warmup": -1}, {"rounds": 1, "rewarm": -1}])
def test_bad_settings_are_typed_errors(kwargs):
    with pytest.raises(ConfigError):
        run_interleaved(1, lambda i, r: None, lambda i, r: None, **kwargs)


def test_default_threads_is_the_cpus_we_may_run_on():
    assert 1 <= default_threads() <= (len(__import__("os").sched_getaffinity(0)))
