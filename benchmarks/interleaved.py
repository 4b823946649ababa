"""The latency loop the benchmark scripts share: warm-up, then rounds that time every candidate once,
alternating the order (A B C / C B A) so drift in machine load hits all candidates alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np


def time_interleaved(items: Sequence, run: Callable[[object, np.ndarray], object], inputs: Sequence[np.ndarray],
                     rounds: int, warmup: int, progress) -> None:
    """Append each round's latency (ms) to ``item.latencies_ms`` and set ``item.p50_ms``; round ``i``
    feeds ``inputs[i % len(inputs)]`` to every item, and ``run(item, x)`` runs one inference."""
    for item in items:
        for _ in range(warmup):
            run(item, inputs[0])
    task = progress.add_task("latency", total=rounds, info="interleaved")
    for i in range(rounds):
        x = inputs[i % len(inputs)]
        for item in items if i % 2 == 0 else items[::-1]:
            t0 = time.perf_counter()
            run(item, x)
            item.latencies_ms.append(1000 * (time.perf_counter() - t0))
        progress.advance(task)
    for item in items:
        item.p50_ms = statistics.median(item.latencies_ms)
