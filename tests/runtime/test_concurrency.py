"""One Engine shared by many threads gives exactly the masks a single thread gets (README "Guarantees")."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from segrt.runtime.engine import Engine

THREADS = 6


@pytest.fixture(scope="module")
def frames(camvid_root) -> list[np.ndarray]:
    """Real CamVid frames at several sizes, so threads push different shapes through one session at once."""
    paths = sorted((camvid_root / "val").glob("*.png"))[:4]
    sizes = [(160, 120), (96, 72), (200, 150), (64, 48)]
    return [cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), size) for p, size in zip(paths, sizes, strict=True)]


@pytest.fixture(scope="module")
def engine(tiny_onnx) -> Engine:
    return Engine(tiny_onnx, threads=1)


def run_concurrently(tasks):
    """Runs the callables on THREADS threads; the first THREADS start together at a barrier, so the
    engine really is entered by all threads at once rather than one after another."""
    barrier = threading.Barrier(THREADS, timeout=120)

    def run(n: int):
        if n < THREADS:
            barrier.wait()
        return tasks[n]()

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(run, range(len(tasks))))


def test_many_threads_infer_on_one_engine_like_one_thread(engine, frames):
    expected = [engine.infer(f) for f in frames]
    order = [n % len(frames) for n in range(THREADS * 4)]
    results = run_concurrently([lambda i=i: engine.infer(frames[i]) for i in order])
    for n, (i, mask) in enumerate(zip(order, results, strict=True)):
        assert np.array_equal(mask, expected[i]), f"call {n} (frame {i}) differs from the single-thread mask"


def test_infer_and_infer_batch_mixed_across_threads(engine, frames):
    single = [engine.infer(f) for f in frames]
    batch = engine.infer_batch(frames[::-1])
    def task(n: int):
        if n % 2:
            return lambda: engine.infer_batch(frames[::-1])
        return lambda: engine.infer(frames[n % len(frames)])

    tasks = [task(n) for n in range(THREADS * 3)]
    for n, out in enumerate(run_concurrently(tasks)):
        if n % 2:
            assert all(np.array_equal(a, b) for a, b in zip(out, batch, strict=True))
        else:
            assert np.array_equal(out, single[n % len(frames)])
    # batching changes nothing either
    assert all(np.array_equal(a, b) for a, b in zip(batch, single[::-1], strict=True))


def test_streams_sharing_one_engine_match_single_frame_inference(engine, frames):
    """Two Streams on one Engine at the same time (each with its own threads) deliver the same masks."""
    from segrt.runtime.sources import FrameSource

    class Frames(FrameSource):
        def __init__(self, items):
            self.items, self.name = list(items), "frames"

        def open(self):
            pass

        def read(self):
            return self.items.pop(0) if self.items else None

        def close(self):
            self.items = []

    expected = [engine.infer(f) for f in frames]

    def run_stream():
        return [(r.index, r.mask) for r in engine.stream(Frames(frames * 3))]

    outputs = run_concurrently([run_stream] * THREADS)
    for out in outputs:
        assert [i for i, _ in out] == list(range(len(frames) * 3))
        assert all(np.array_equal(mask, expected[i % len(frames)]) for i, mask in out)


def test_many_threads_call_logits_on_one_engine_like_one_thread(frames, bundled_logits_onnx):
    """``logits`` shares the engine across threads like ``infer`` does (the bundled network: no torch)."""
    with Engine(bundled_logits_onnx, threads=1) as engine:
        expected = [engine.logits(f) for f in frames]
        order = [n % len(frames) for n in range(THREADS * 2)]
        results = run_concurrently([lambda i=i: engine.logits(frames[i]) for i in order])
    for n, (i, logits) in enumerate(zip(order, results, strict=True)):
        assert logits.shape == expected[i].shape and np.array_equal(logits, expected[i]), f"call {n} (frame {i})"
    assert not np.array_equal(expected[0], expected[1])  # different frames: the comparison can tell them apart
