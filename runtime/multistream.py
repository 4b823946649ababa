"""Several cameras, one batched inference per tick: ``engine.stream([src1, src2, ...])`` or ``MultiStream``.

    with engine.stream(["0", "1", "rtsp://10.0.0.5/stream"]) as stream:
        for r in stream:                       # r.camera.index, r.camera.name, r.index, r.timing.captured
            steer(r.camera.index, r.mask)
    print(stream.stats.summary())              # per camera and all together

    capture 0 --[frames]--\\
    capture 1 --[frames]---> inference: one Engine.infer_batch per tick --[results]--> render (optional) --> caller
    capture N --[frames]--/

Each source is captured in its own thread exactly as :class:`segrt.runtime.stream.Stream` captures it
(:class:`Capture`: policy "latest" for live sources, "all" for files and folders, reconnects, bounded
hand-overs). One inference thread, per tick, takes the fresh frame of every camera that has one and runs
them as one ``Engine.infer_batch`` (frames of the same size share a batch), then hands the results over
in camera order. Under "all" no frame of a file is lost: a camera whose frames wait slows its own capture
down. A source that ends finishes only its camera; the stream ends when every camera has ended (live
cameras end only at ``max_frames`` or on an error). An exception in any thread reaches the caller after the
results before it (a camera blocked in one read for longer than ``read_timeout`` is one, even while the
others deliver), and ``close()`` stops every thread within ``stop_timeout``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segrt.runtime.arguments import describe
from segrt.runtime.errors import BackendError, ConfigError, InputError, SegrtError
from segrt.runtime.sources import FrameSource, open_source
from segrt.runtime.stream import (
    POLL,
    Capture,
    FrameTiming,
    Pipeline,
    Reconnect,
    Renderer,
    StreamResult,
    StreamStats,
    _End,
    check_stream_options,
)

if TYPE_CHECKING:
    from segrt.runtime.engine import Engine

MAX_CAMERAS = 64


@dataclass(frozen=True)
class Camera:
    index: int  # position in the list of sources
    name: str  # the source's name (device, URL or file)


@dataclass
class MultiStreamResult(StreamResult):
    camera: Camera = field(default_factory=lambda: Camera(0, ""))
    tick: int = 0  # the inference tick (batch) the frame ran in; a tick has at most one frame per camera
    batch: int = 1  # frames in that tick


class MultiStreamStats(StreamStats):
    """All cameras together (throughput, latency percentiles and counters over every delivered frame) and,
    in ``cameras``, each camera's own stats."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.cameras = [StreamStats(parent=self) for _ in self.names]

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "cameras": [{"camera": i, "name": n, **s.as_dict()}
                                                 for i, (n, s) in enumerate(zip(self.names, self.cameras))]}

    def summary(self) -> str:
        lines = [f"{len(self.cameras)} cameras: {super().summary()}"]
        lines += [f"  camera {i} ({n}): {s.summary()}" for i, (n, s) in enumerate(zip(self.names, self.cameras))]
        return "\n".join(lines)


class MultiStream(Pipeline):
    """Runs ``engine`` over several ``sources`` (anything :func:`open_source` takes, or FrameSource objects)
    with one capture thread per source and one batched inference per tick; iterate it to get
    :class:`MultiStreamResult`. The options are those of :class:`segrt.runtime.stream.Stream`, applied to
    every camera (``policy`` "auto": latest for live sources, all for files; ``max_frames`` per camera);
    ``render(result, camera_stats)`` gets the stats of the result's camera.
    """

    def __init__(self, engine: Engine, sources: Sequence[int | str | FrameSource | Any], *, policy: str = "auto",
                 render: Renderer | None = None, queue_size: int = 1, reconnect: Reconnect | None = None,
                 max_frames: int | None = None, read_timeout: float | None = 30.0, stop_timeout: float = 5.0):
        check_stream_options(engine, "infer_batch", policy, render, queue_size, reconnect, max_frames, read_timeout,
                             stop_timeout)
        if not isinstance(sources, (list, tuple)) or not sources:
            raise ConfigError(f"sources must be a non-empty list or tuple of sources, got {describe(sources)}")
        if len(sources) > MAX_CAMERAS:
            raise ConfigError(f"{len(sources)} sources; a MultiStream takes at most {MAX_CAMERAS}")
        self.engine = engine
        self.render = render
        self.reconnect = reconnect or Reconnect()
        self.max_frames = max_frames
        self.read_timeout = read_timeout
        self.stop_timeout = stop_timeout
        self.sources: list[FrameSource] = []
        self._owned: list[bool] = []
        try:
            for source in sources:
                self.sources.append(open_source(source))
                self._owned.append(not isinstance(source, FrameSource))
        except BaseException:  # one camera that cannot open leaves none of the others open
            for opened, owned in zip(self.sources, self._owned):
                if owned:
                    opened.close()
            raise
        self.cameras = [Camera(i, s.name) for i, s in enumerate(self.sources)]
        self.policies = [("latest" if s.live else "all") if policy == "auto" else policy for s in self.sources]
        self.stats = MultiStreamStats([c.name for c in self.cameras])
        # One tick's results fit in the hand-over, so inference never waits for the caller mid-tick; a live
        # camera's result is then at most one tick old when the caller takes it.
        live = all(p == "latest" for p in self.policies)
        self._init_pipeline(len(self.sources) * (1 if live else queue_size))
        self._arrived = threading.Event()  # set by a capture after each frame and at its end
        self._capture_list = [
            Capture(s, p, self.stats.cameras[i], self._stop_capture, queue_size=queue_size, reconnect=self.reconnect,
                    max_frames=max_frames, notify=self._arrived.set)
            for i, (s, p) in enumerate(zip(self.sources, self.policies))]

    def __enter__(self) -> MultiStream:
        return self

    def __iter__(self) -> Iterator[MultiStreamResult]:
        return super().__iter__()

    def _stats_of(self, item: Any) -> StreamStats:
        return self.stats.cameras[item.camera.index]

    def _captures(self) -> list[Capture]:
        return self._capture_list

    def _release(self, stuck: list[str]) -> None:
        for i, (source, owned) in enumerate(zip(self.sources, self._owned)):
            if owned and f"segrt-stream-capture-{i}" not in stuck:
                source.close()

    def _stages(self) -> list[tuple[str, Callable[[], None]]]:
        stages = [(f"capture-{i}", c.run) for i, c in enumerate(self._capture_list)]
        return [*stages, ("inference", self._infer)]

    # ------------------------------------------------------------------ inference
    def _fresh(self, active: list[int]) -> list[tuple[int, tuple[int, float, np.ndarray]]]:
        """The frame each active camera has waiting (cameras that ended leave ``active``)."""
        taken = []
        for cam in list(active):
            try:
                item = self._capture_list[cam].frames.get(timeout=0)
            except queue.Empty:  # nothing new from this camera yet
                continue
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                active.remove(cam)
                continue
            self._capture_list[cam].taken()
            taken.append((cam, item))
        return taken

    def _infer(self) -> None:
        marker = _End()
        active = list(range(len(self.sources)))
        tick = 0
        try:
            while active and not self._stop.is_set():
                self._arrived.clear()  # before looking: a frame arriving meanwhile sets it again
                batch = self._fresh(active)
                self._check_blocked()  # every tick: a hung camera is reported even while the others deliver
                if not batch:
                    if active:
                        self._arrived.wait(POLL)
                    continue
                masks, infer_ms = self._run(batch)
                for (cam, (index, captured, frame)), mask in zip(batch, masks):
                    result = MultiStreamResult(index, frame, mask, FrameTiming(captured, infer_ms=infer_ms),
                                               camera=self.cameras[cam], tick=tick, batch=len(batch))
                    if not self._put("results", self._results, result):
                        return
                tick += 1
        except BaseException as exc:  # noqa: BLE001 - not swallowed: re-raised in the caller's thread
            marker = _End(exc)
            self._stop_capture.set()
        finally:
            self._put("results", self._results, marker)

    def _run(self, batch: list[tuple[int, tuple[int, float, np.ndarray]]]) -> tuple[list[np.ndarray], float]:
        def where() -> str:
            return ", ".join(f"frames[{k}] = {self.cameras[c].name} frame {item[0]}" for k, (c, item) in
                             enumerate(batch))

        start = time.perf_counter()
        try:
            masks = self.engine.infer_batch([item[2] for _, item in batch])
        except InputError as exc:  # say which frame of which camera each batch position was
            raise InputError(f"{exc} ({where()})") from exc
        except SegrtError:
            raise
        except Exception as exc:
            raise BackendError(f"inference failed on {where()}: {type(exc).__name__}: {exc}") from exc
        return masks, (time.perf_counter() - start) * 1000
