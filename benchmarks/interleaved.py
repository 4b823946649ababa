"""The latency loop the benchmark scripts share: warm-up, then rounds that time every candidate once,
alternating the order (A B C / C B A) so drift in machine load hits all candidates alike.

Every timed run follows an untimed run of the same candidate on the same input, as in a stream where one
model runs frame after frame. Timing the first run after another model has run measures something else:
caches hold the other model's weights and ONNX Runtime's worker threads of the other session may still be
spin-waiting. Measured here (CamVid frame, 512x512, 2 threads, camvid-b0 vs its gated and frozen-gate
variants): back to back without the re-warm run 77.0 / 68.0 / 55.6 ms (ratios 1.13x, 1.38x); with it
53.6 / 43.9 / 39.9 ms (1.22x, 1.34x), the same as each model timed alone (48.3 / 37.9 / 33.6 ms under
the profiler, 1.27x, 1.44x). A 20 ms sleep instead of the re-warm run did not help (59.1 / 53.8 / 44.3).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np


def time_interleaved(items: Sequence, run: Callable[[object, np.ndarray], object], inputs: Sequence[np.ndarray],
                     rounds: int, warmup: int, progress, rewarm: int = 1) -> None:
    """Append each round's latency (ms) to ``item.latencies_ms`` and set ``item.p50_ms``; round ``i``
    feeds ``inputs[i % len(inputs)]`` to every item, and ``run(item, x)`` runs one inference. ``rewarm``
    untimed runs of the same item precede each timed one."""
    for item in items:
        for _ in range(warmup):
            run(item, inputs[0])
    task = progress.add_task("latency", total=rounds, info="interleaved, re-warmed")
    for i in range(rounds):
        x = inputs[i % len(inputs)]
        for item in items if i % 2 == 0 else items[::-1]:
            for _ in range(rewarm):
                run(item, x)
            t0 = time.perf_counter()
            run(item, x)
            item.latencies_ms.append(1000 * (time.perf_counter() - t0))
        progress.advance(task)
    for item in items:
        item.p50_ms = statistics.median(item.latencies_ms)
