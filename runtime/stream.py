"""Pipelined streaming: frames in, (frame, mask, timing) out, with capture, inference and rendering
overlapped in threads.

    with engine.stream("0") as stream:            # or Stream(engine, "drive.mp4"), see sources.py
        for result in stream:
            steer(result.mask)
    print(stream.stats.summary())

    capture --[frames]--> inference --[results]--> render (optional) --[rendered]--> caller

Every hand-over is bounded, so nothing queues without limit:

- policy "all" (default for files and folders): every frame, in order; a slow consumer slows the
  capture down instead of piling frames up.
- policy "latest" (default for cameras and network streams): capture never waits; the inference
  thread always takes the newest frame and the stale ones it skipped are counted as dropped. On a
  file this plays at the file's frame rate, the way a camera would deliver it.

A live source that disconnects is reopened with exponential backoff (:class:`Reconnect`) and the
stream gives up with :class:`SourceError` once ``give_up_after`` seconds pass. The end of a file
ends the iteration. An exception in any stage reaches the caller: frames read before it are
delivered first, then it is raised in the caller's thread; the caller never blocks on a dead thread.

The ONNX Runtime and OpenCV calls release the GIL, so decoding, inference and rendering really run
at the same time. The pieces here (:class:`Capture`: one source's capture loop; :class:`Pipeline`: the
caller's side and the render stage) also make :class:`segrt.runtime.multistream.MultiStream`, several
cameras with one batched inference per tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segrt.runtime.arguments import check_callable, check_choice, check_instance, check_int, check_number, describe
from segrt.runtime.errors import BackendError, ConfigError, InputError, SegrtError, SourceDisconnectedError, SourceError
from segrt.runtime.sources import FrameSource, open_source

if TYPE_CHECKING:
    from segrt.runtime.engine import Engine

log = logging.getLogger("segrt.stream")

POLICIES = ("auto", "all", "latest")
MAX_QUEUE = 1024  # frames per hand-over; more would only hide a consumer that cannot keep up
POLL = 0.05  # seconds between checks of the stop flag while a thread waits on a hand-over
STATS_WINDOW = 10_000  # latency samples kept for percentiles: hours of streaming stay in bounded memory


@dataclass(frozen=True)
class Reconnect:
    """Backoff for reopening a live source: first_delay, then x factor up to max_delay, for give_up_after s."""

    first_delay: float = 0.5
    max_delay: float = 5.0
    factor: float = 2.0
    give_up_after: float | None = 60.0  # None: keep trying for as long as the stream runs

    def __post_init__(self) -> None:
        check_number(self.first_delay, "Reconnect.first_delay", minimum=0)
        check_number(self.max_delay, "Reconnect.max_delay", minimum=0)
        check_number(self.factor, "Reconnect.factor", minimum=1)
        check_number(self.give_up_after, "Reconnect.give_up_after", minimum=0, optional=True)


@dataclass
class FrameTiming:
    captured: float  # time.perf_counter() when the frame was read from the source
    infer_ms: float = 0.0  # Engine.infer: preprocessing, network, mask
    render_ms: float = 0.0
    latency_ms: float = 0.0  # capture to hand-over to the caller


@dataclass
class StreamResult:
    index: int  # position in the source; frames dropped by the latest-frame policy leave gaps
    frame: np.ndarray
    mask: np.ndarray
    timing: FrameTiming
    image: np.ndarray | None = None  # what the render function returned, if one was given


Renderer = Callable[[StreamResult, "StreamStats"], np.ndarray]


class StreamStats:
    """Counters and latencies, updated by the pipeline threads and safe to read from any thread. A camera's
    stats in a MultiStream also count everything in their ``parent``, the stats of all cameras together."""

    def __init__(self, parent: StreamStats | None = None) -> None:
        self._parent = parent
        self._lock = threading.Lock()
        self.captured = 0
        self.delivered = 0
        self.dropped = 0
        self.reconnects = 0
        self.first_delivery: float | None = None
        self.last_delivery: float | None = None
        self.max_queued: dict[str, int] = {}  # high-water mark of each hand-over: proves nothing piles up
        self._latency_ms: deque[float] = deque(maxlen=STATS_WINDOW)
        self._infer_ms: deque[float] = deque(maxlen=STATS_WINDOW)
        self._recent: deque[float] = deque(maxlen=30)  # delivery times for the HUD's current FPS

    def _count(self, field: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + n)
        if self._parent is not None:
            self._parent._count(field, n)

    def _queued(self, name: str, depth: int) -> None:
        with self._lock:
            if depth > self.max_queued.get(name, 0):
                self.max_queued[name] = depth
        if self._parent is not None:
            self._parent._queued(name, depth)

    def _delivered(self, now: float, timing: FrameTiming) -> None:
        with self._lock:
            self.delivered += 1
            if self.first_delivery is None:
                self.first_delivery = now
            self.last_delivery = now
            self._latency_ms.append(timing.latency_ms)
            self._infer_ms.append(timing.infer_ms)
            self._recent.append(now)
        if self._parent is not None:
            self._parent._delivered(now, timing)

    @property
    def fps(self) -> float:
        """Steady-state throughput: frames delivered per second after the first one (pipeline fill excluded)."""
        with self._lock:
            if self.delivered < 2 or self.first_delivery is None or self.last_delivery is None:
                return 0.0
            span = self.last_delivery - self.first_delivery
            return (self.delivered - 1) / span if span > 0 else 0.0

    @property
    def recent_fps(self) -> float:
        """Throughput over the last 30 frames, for a live display."""
        with self._lock:
            if len(self._recent) < 2:
                return 0.0
            span = self._recent[-1] - self._recent[0]
            return (len(self._recent) - 1) / span if span > 0 else 0.0

    def latency_ms(self, percentile: float) -> float:
        with self._lock:
            return float(np.percentile(self._latency_ms, percentile)) if self._latency_ms else 0.0

    def infer_ms(self, percentile: float) -> float:
        with self._lock:
            return float(np.percentile(self._infer_ms, percentile)) if self._infer_ms else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.delivered, "captured": self.captured, "dropped": self.dropped, "reconnects": self.reconnects,
            "fps": round(self.fps, 2),
            "latency_ms_p50": round(self.latency_ms(50), 2), "latency_ms_p95": round(self.latency_ms(95), 2),
            "latency_ms_p99": round(self.latency_ms(99), 2),
            "infer_ms_p50": round(self.infer_ms(50), 2), "infer_ms_p95": round(self.infer_ms(95), 2),
        }

    def summary(self) -> str:
        text = (f"{self.delivered} frames at {self.fps:.1f} FPS, latency p50 {self.latency_ms(50):.0f} ms / "
                f"p95 {self.latency_ms(95):.0f} ms (inference p50 {self.infer_ms(50):.0f} ms), dropped {self.dropped}")
        return text + (f", reconnects {self.reconnects}" if self.reconnects else "")


class _End:
    """Marks the end of the stream in a hand-over; carries the error that ended it, if any."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


class LatestSlot:
    """A one-frame hand-over for live sources: put never blocks, a newer frame replaces an unread one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._end: _End | None = None

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced a frame nobody had taken (that frame is dropped)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def end(self, marker: _End) -> None:
        with self._cond:
            self._end = marker
            self._cond.notify()

    def get(self, timeout: float) -> Any:
        """The pending frame, else the end marker once the frame is taken; raises queue.Empty on timeout."""
        with self._cond:
            if self._item is None and self._end is None:
                self._cond.wait(timeout)
            if self._item is not None:
                item, self._item = self._item, None
                return item
            if self._end is not None:
                return self._end
            raise queue.Empty

    def qsize(self) -> int:
        with self._cond:
            return int(self._item is not None)


def put_until(hand_over: queue.Queue, item: Any, stop: threading.Event, stats: StreamStats | None = None,
              name: str = "") -> bool:
    """Blocking put that gives up when ``stop`` is set (False); records the hand-over's depth in ``stats``."""
    while not stop.is_set():
        try:
            hand_over.put(item, timeout=POLL)
        except queue.Full:
            continue
        if stats is not None:
            stats._queued(name, hand_over.qsize())
        return True
    return False


def get_until(hand_over: LatestSlot | queue.Queue, stop: threading.Event) -> Any:
    """Blocking get that returns an end marker when ``stop`` is set."""
    while not stop.is_set():
        try:
            return hand_over.get(timeout=POLL)
        except queue.Empty:
            continue
    return _End()


class Capture:
    """One source read into its hand-over ``frames`` under a policy (see the module doc), in its own thread
    (``run``); a live source that disconnects is reopened with backoff. The hand-over always ends with an
    end marker carrying the error that ended the capture, if any. ``notify()`` is called after each frame
    and after the end marker, for a consumer that waits on several captures at once."""

    def __init__(self, source: FrameSource, policy: str, stats: StreamStats, stop: threading.Event, *,
                 queue_size: int = 1, reconnect: Reconnect | None = None, max_frames: int | None = None,
                 notify: Callable[[], None] | None = None):
        self.source = source
        self.policy = policy
        self.stats = stats
        self.stop = stop  # set by the caller or by a later stage that failed: no point reading on
        self.reconnect = reconnect or Reconnect()
        self.max_frames = max_frames
        self.notify = notify
        self.busy_since: float | None = None  # when the thread entered source.read()/open()
        self.frames: LatestSlot | queue.Queue = LatestSlot() if policy == "latest" else queue.Queue(queue_size)
        # Under "all", capture reads a frame only once there is room for it, so a frame's latency
        # counts from when the pipeline could take it, not from a read done early and held back.
        self._room = threading.Semaphore(queue_size)

    def taken(self) -> None:
        """The consumer took a frame out of ``frames``: under "all" the next one may be read."""
        if self.policy == "all":
            self._room.release()

    def blocked_for(self) -> float:
        """Seconds the thread has been inside one source call (0 when it is not in one)."""
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _notify(self) -> None:
        if self.notify is not None:
            self.notify()

    def run(self) -> None:
        marker = _End()
        index = 0
        # A file under the latest-frame policy is played in real time, as a camera would deliver it.
        period = 1.0 / self.source.fps if self.policy == "latest" and not self.source.live and self.source.fps else 0.0
        due = time.perf_counter()
        has_room = self.policy != "all"  # "all" takes a slot before reading and keeps it until a frame uses it
        try:
            while not self.stop.is_set() and (self.max_frames is None or index < self.max_frames):
                if not has_room:
                    if not self._wait_for_room():
                        break
                    has_room = True
                try:
                    frame = self._timed(self.source.read)
                except SourceDisconnectedError as exc:
                    if not self.source.live:
                        raise
                    if not self._reopen(exc):
                        break
                    continue
                if frame is None:
                    break
                item = (index, time.perf_counter(), frame)
                self.stats._count("captured")
                if isinstance(self.frames, LatestSlot):
                    if self.frames.put(item):
                        self.stats._count("dropped")
                    self.stats._queued("frames", self.frames.qsize())
                elif not put_until(self.frames, item, self.stop, self.stats, "frames"):
                    break
                else:
                    has_room = False
                self._notify()
                index += 1
                if period:
                    due = max(due + period, time.perf_counter() - period)
                    self.stop.wait(max(0.0, due - time.perf_counter()))
        except BaseException as exc:  # noqa: BLE001 - not swallowed: re-raised in the caller's thread
            if isinstance(exc, SegrtError) or not isinstance(exc, Exception):
                marker = _End(exc)
            else:  # a foreign source's own exception: keep it as the cause of a SourceError
                error = SourceError(f"{self.source.name}: reading frame {index} failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                marker = _End(error)
        finally:
            if isinstance(self.frames, LatestSlot):
                self.frames.end(marker)
            else:
                put_until(self.frames, marker, self.stop, self.stats, "frames")
            self._notify()

    def _timed(self, call: Callable[[], Any]) -> Any:
        """Run a source call with the read-timeout watchdog armed."""
        self.busy_since = time.monotonic()
        try:
            return call()
        finally:
            self.busy_since = None

    def _wait_for_room(self) -> bool:
        while not self.stop.is_set():
            if self._room.acquire(timeout=POLL):
                return True
        return False

    def _reopen(self, cause: SourceDisconnectedError) -> bool:
        """Reopen a live source with backoff; False if the stream was stopped meanwhile."""
        self.stats._count("reconnects")
        policy = self.reconnect
        start, delay, attempts = time.monotonic(), policy.first_delay, 0
        log.warning("%s; reconnecting", cause)
        while True:
            self.source.close()
            if self.stop.wait(delay):
                return False
            attempts += 1
            try:
                self._timed(self.source.open)
                log.warning("%s is back after %d attempt(s)", self.source.name, attempts)
                return True
            except SourceError as exc:
                last = exc
            elapsed = time.monotonic() - start
            if policy.give_up_after is not None and elapsed >= policy.give_up_after:
                raise SourceError(f"{cause}; gave up after {attempts} reconnect attempts over {elapsed:.1f} s "
                                  f"(last error: {last})") from cause
            delay = min(delay * policy.factor, policy.max_delay)
            if policy.give_up_after is not None:
                delay = min(delay, max(0.0, policy.give_up_after - elapsed))


class Pipeline:
    """What Stream and MultiStream share: the caller's side (runs once, results handed over with the
    read-timeout watchdog and the dead-thread check, ``close()`` stops every thread within ``stop_timeout``)
    and the optional render stage. Subclasses start their capture and inference threads in ``_stages``."""

    render: Renderer | None
    read_timeout: float | None
    stop_timeout: float
    stats: StreamStats

    def _init_pipeline(self, result_size: int) -> None:
        self._stop = threading.Event()  # the caller is done: every thread exits
        self._stop_capture = threading.Event()  # also set when a later stage failed: no point reading on
        self._results: queue.Queue = queue.Queue(result_size)
        self._rendered: queue.Queue = queue.Queue(result_size) if self.render else self._results
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ caller side
    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self._started or self._closed:
            raise SegrtError(f"a {type(self).__name__} runs once; create a new one (engine.stream(source)) to run "
                             "again")
        self._start()
        try:
            while True:
                item = self._take(self._rendered)
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                now = time.perf_counter()
                item.timing.latency_ms = (now - item.timing.captured) * 1000
                self._stats_of(item)._delivered(now, item.timing)
                yield item
        finally:
            self.close()

    def _stats_of(self, item: Any) -> StreamStats:
        """The stats an item counts in (and its renderer shows)."""
        return self.stats

    def _captures(self) -> list[Capture]:
        raise NotImplementedError

    def _check_blocked(self) -> None:
        """SourceError for a capture stuck in one source call for longer than ``read_timeout``."""
        if self.read_timeout is None:
            return
        for capture in self._captures():
            if capture.blocked_for() > self.read_timeout:
                raise SourceError(f"{capture.source.name}: no frame for {self.read_timeout:g} s, the source is "
                                  "blocked (hung driver or network)")

    def _take(self, hand_over: queue.Queue) -> Any:
        while True:
            try:
                return hand_over.get(timeout=POLL)
            except queue.Empty:
                pass
            self._check_blocked()
            # Every stage forwards an end marker before it exits, so an empty hand-over with no live
            # producer means a thread died without one: fail rather than wait forever.
            if not any(t.is_alive() for t in self._threads):
                try:
                    return hand_over.get_nowait()
                except queue.Empty:
                    raise SegrtError("the stream's worker threads stopped without a result (internal error)") from None

    def close(self) -> None:
        """Stop the threads and release the sources the stream opened. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._stop_capture.set()
        deadline = time.monotonic() + self.stop_timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:  # e.g. a camera driver blocked in read(); daemon threads die with the process
            log.warning("stream threads still running after %.1f s: %s", self.stop_timeout, ", ".join(stuck))
        self._release(stuck)

    def _release(self, stuck: list[str]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ pipeline
    def _stages(self) -> list[tuple[str, Callable[[], None]]]:
        raise NotImplementedError

    def _start(self) -> None:
        self._started = True
        stages = self._stages()
        if self.render is not None:
            stages.append(("render", self._render))
        for name, target in stages:
            thread = threading.Thread(target=target, name=f"segrt-stream-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _put(self, name: str, hand_over: queue.Queue, item: Any, stop: threading.Event | None = None) -> bool:
        """Blocking put that gives up when ``stop`` (default: the stream's stop) is set; False means stopped."""
        return put_until(hand_over, item, stop or self._stop, self.stats, name)

    def _get(self, hand_over: LatestSlot | queue.Queue) -> Any:
        """Blocking get that returns an end marker when the stream stops."""
        return get_until(hand_over, self._stop)

    def _render(self) -> None:
        assert self.render is not None
        marker = _End()
        try:
            while True:
                item = self._get(self._results)
                if isinstance(item, _End):
                    marker = item
                    return
                start = time.perf_counter()
                item.image = self.render(item, self._stats_of(item))
                item.timing.render_ms = (time.perf_counter() - start) * 1000
                if not self._put("rendered", self._rendered, item):
                    return
        except BaseException as exc:  # noqa: BLE001 - not swallowed: re-raised in the caller's thread
            marker = _End(exc)
            self._stop_capture.set()
        finally:
            self._put("rendered", self._rendered, marker)


def check_stream_options(engine: object, method: str, policy: str, render: Renderer | None, queue_size: int,
                         reconnect: Reconnect | None, max_frames: int | None, read_timeout: float | None,
                         stop_timeout: float) -> None:
    """The checks of Stream's and MultiStream's options, all before any source is opened."""
    if not callable(getattr(engine, method, None)):
        raise ConfigError(f"engine must be a segrt Engine, got {describe(engine)}")
    check_choice(policy, "policy", POLICIES)
    check_int(queue_size, "queue_size", minimum=1, maximum=MAX_QUEUE)
    check_callable(render, "render", optional=True)
    check_instance(reconnect, "reconnect", Reconnect, optional=True)
    check_int(max_frames, "max_frames", minimum=0, optional=True)
    check_number(read_timeout, "read_timeout", above=0, optional=True)
    check_number(stop_timeout, "stop_timeout", minimum=0)


class Stream(Pipeline):
    """Runs ``engine`` over ``source`` in three overlapped threads; iterate it to get :class:`StreamResult`.

    ``policy``: "all", "latest" or "auto" (latest for live sources). ``render(result, stats)`` runs in
    its own thread and its return value arrives as ``result.image``. ``queue_size`` bounds each
    hand-over of the "all" policy. ``max_frames`` stops after that many frames read. ``read_timeout``:
    a source blocked in one read or reopen for longer (a hung driver or network) is reported to the
    caller as :class:`SourceError` instead of stalling it. A stream runs once; leaving the ``with``
    block or the loop stops its threads and closes a source it opened.
    """

    def __init__(self, engine: Engine, source: int | str | FrameSource | Any, *, policy: str = "auto",
                 render: Renderer | None = None, queue_size: int = 1, reconnect: Reconnect | None = None,
                 max_frames: int | None = None, read_timeout: float | None = 30.0, stop_timeout: float = 5.0):
        # Every argument before the source is opened: a bad option never leaves a camera open behind it.
        check_stream_options(engine, "infer", policy, render, queue_size, reconnect, max_frames, read_timeout,
                             stop_timeout)
        self.engine = engine
        self._owns_source = not isinstance(source, FrameSource)
        self.source = open_source(source)
        self.policy = ("latest" if self.source.live else "all") if policy == "auto" else policy
        self.render = render
        self.reconnect = reconnect or Reconnect()
        self.max_frames = max_frames
        self.read_timeout = read_timeout
        self.stop_timeout = stop_timeout
        self.stats = StreamStats()
        # A live result waits for a slow consumer in a single slot while capture keeps dropping stale
        # frames, so what the caller gets next is at most one frame old.
        self._init_pipeline(1 if self.policy == "latest" else queue_size)
        self._capture = Capture(self.source, self.policy, self.stats, self._stop_capture, queue_size=queue_size,
                                reconnect=self.reconnect, max_frames=max_frames)

    def __enter__(self) -> Stream:
        return self

    def __iter__(self) -> Iterator[StreamResult]:
        return super().__iter__()

    def _captures(self) -> list[Capture]:
        return [self._capture]

    def _release(self, stuck: list[str]) -> None:
        if not stuck and self._owns_source:
            self.source.close()

    def _stages(self) -> list[tuple[str, Callable[[], None]]]:
        return [("capture", self._capture.run), ("inference", self._infer)]

    def _infer(self) -> None:
        marker = _End()
        try:
            while True:
                item = self._get(self._capture.frames)
                if isinstance(item, _End):
                    marker = item
                    return
                index, captured, frame = item
                self._capture.taken()
                start = time.perf_counter()
                try:
                    mask = self.engine.infer(frame)
                except InputError as exc:  # say which frame of which source it was
                    raise InputError(f"{self.source.name}, frame {index}: {exc}") from exc
                except SegrtError:
                    raise
                except Exception as exc:
                    raise BackendError(f"inference failed on frame {index}: {type(exc).__name__}: {exc}") from exc
                timing = FrameTiming(captured, infer_ms=(time.perf_counter() - start) * 1000)
                if not self._put("results", self._results, StreamResult(index, frame, mask, timing)):
                    return
        except BaseException as exc:  # noqa: BLE001 - not swallowed: re-raised in the caller's thread
            marker = _End(exc)
            self._stop_capture.set()
        finally:
            self._put("results", self._results, marker)
