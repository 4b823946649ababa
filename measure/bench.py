"""Side-by-side latency benchmark: several candidates, one machine, the same moments.

Every candidate (an ONNX tier on ONNX Runtime, a TensorRT engine, eager PyTorch, a peak-throughput
probe) is loaded and warmed up, then timed with the one methodology of :mod:`segrt.measure.harness`
(interleaved A B C A B C, an untimed re-warm run before each timed run, GC out of the timed runs,
threads and load recorded).

Each timed run is the whole frame pipeline with the stages timed separately: preprocessing
(:func:`frames_to_input`), the network, and postprocessing (upsampling + argmax to a mask). The
headline latency is the network's; end-to-end adds the two stages every candidate shares.

Peak memory, per candidate, is what it adds to the process: the resident set growth while it is
loaded and warmed up (weights, arenas, caches) plus the largest transient growth during one of its
timed runs, measured by resetting the kernel's RSS high-water mark (``/proc/self/clear_refs``) before
the run and reading ``VmHWM`` after it. tracemalloc would only see Python and numpy allocations,
not ONNX Runtime's or PyTorch's native ones, so it would miss almost all of it.

This module never imports torch; PyTorch candidates are built by :mod:`segrt.measure.peers`.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segrt.measure.harness import load_average, run_interleaved
from segrt.runtime.errors import BackendUnavailableError, ConfigError, SegrtError
from segrt.runtime.preprocess import frames_to_input, labels_to_mask, logits_to_mask

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
STAGES = ("preprocess", "network", "postprocess")


# ----------------------------------------------------------------------------- memory


def _status_kb(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def rss_mb() -> float | None:
    """Current resident set size of this process."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    kb = _status_kb("VmHWM")
    return kb / 1024 if kb is not None else None


# ----------------------------------------------------------------------------- candidates


@dataclass
class Runner:
    """A loaded candidate: ``infer`` maps a prepared (N, 3, H, W) float32 batch to the network output."""

    infer: Callable[[np.ndarray], np.ndarray]
    close: Callable[[], None] = lambda: None
    info: dict = field(default_factory=dict)  # backend, provider, threads, library versions


@dataclass
class Candidate:
    """Something to benchmark. ``load(size)`` builds it for an input size (H, W)."""

    name: str
    kind: str  # onnxruntime | tensorrt | pytorch | transformers | peak
    load: Callable[[tuple[int, int]], Runner]
    precision: str = "fp32"
    source: str = ""
    fixed_size: tuple[int, int] | None = None  # models exported for one size skip the others
    mean: Sequence[float] = IMAGENET[0]
    std: Sequence[float] = IMAGENET[1]
    macs: Callable[[tuple[int, int]], int | None] | None = None
    note: str = ""
    # Slow one-off work (an export) done before load memory is measured.
    prepare: Callable[[tuple[int, int]], None] | None = None


@dataclass
class Probe:
    """A peak-throughput probe: ``step()`` does ``macs`` multiply-accumulates of one precision."""

    name: str
    precision: str
    macs: int
    load: Callable[[], Callable[[], object]]
    threads: str = ""


def pipeline_predictor(cand: Candidate, runner: Runner, size: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """Frame -> label mask through exactly the pipeline that is timed (for accuracy next to speed)."""
    return lambda frame: _to_mask(runner.infer(frames_to_input([frame], size, cand.mean, cand.std)), frame.shape[:2])


def summarize(values_ms: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values_ms, dtype=np.float64)
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "mean": float(v.mean()),
            "min": float(v.min()), "max": float(v.max()), "std": float(v.std())}


def _to_mask(out: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if out.ndim == 3 or not np.issubdtype(out.dtype, np.floating):  # in-graph ArgMax: (N, h, w) labels
        return labels_to_mask(out[0], hw)
    return logits_to_mask(out[0], hw)


@dataclass
class _Live:
    cand: Candidate
    runner: Runner
    load_mb: float | None
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    transient_mb: list[float] = field(default_factory=list)


@dataclass
class _LiveProbe:
    probe: Probe
    step: Callable[[], object]
    times: list[float] = field(default_factory=list)


class Schedule:
    """The order of the timed runs, kept so that tests and reports can show the interleaving."""

    def __init__(self) -> None:
        self.order: list[str] = []


def _timed_pipeline(live: _Live, frame: np.ndarray, size: tuple[int, int], track_memory: bool) -> None:
    before = rss_mb() if track_memory else None
    if track_memory:
        reset_peak_rss()
    t0 = time.perf_counter()
    x = frames_to_input([frame], size, live.cand.mean, live.cand.std)
    t1 = time.perf_counter()
    out = live.runner.infer(x)
    t2 = time.perf_counter()
    _to_mask(out, frame.shape[:2])
    t3 = time.perf_counter()
    for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2)):
        live.times[stage].append(dt * 1000)
    if track_memory and before is not None:
        hwm = peak_rss_mb()
        if hwm is not None:
            live.transient_mb.append(max(0.0, hwm - before))


def benchmark_size(candidates: Sequence[Candidate], size: tuple[int, int], frame: np.ndarray, *, runs: int = 20,
                   warmup: int = 3, probes: Sequence[Probe] = (), progress=None, schedule: Schedule | None = None,
                   rewarm: int = 1, threads: int | None = None, calibration: dict | None = None) -> dict:
    """Load, warm up and time ``candidates`` (and ``probes``) at one input size with the harness's methodology
    (:mod:`segrt.measure.harness`: interleaved, ``rewarm`` untimed runs before each timed one); ``threads``
    is recorded with the run's conditions. ``calibration`` (:func:`segrt.measure.peak.measure_peaks`) supplies
    best-of peaks and the memory bandwidth; a peak is the best of it and of the interleaved probes' best runs.

    Returns ``{"size", "results", "probes", "skipped", "conditions"}``; results keep the candidates' order
    and carry ``speedup_vs_first`` (how many times faster than the first measured candidate).
    """
    if runs < 1 or warmup < 0 or rewarm < 0:
        raise ConfigError(f"need runs >= 1, warmup >= 0 and rewarm >= 0, got runs={runs}, warmup={warmup}, "
                          f"rewarm={rewarm}")
    track_memory = reset_peak_rss()
    skipped: list[dict] = []
    live = _load_candidates(candidates, size, frame, warmup, skipped)
    live_probes = _load_probes(probes, warmup, skipped)
    warm_inputs = [frames_to_input([frame], size, item.cand.mean, item.cand.std) for item in live]

    def untimed(i: int, _round: int) -> None:
        if i < len(live):
            live[i].runner.infer(warm_inputs[i])
        else:
            live_probes[i - len(live)].step()

    def timed(i: int, _round: int) -> None:
        if i < len(live):
            _timed_pipeline(live[i], frame, size, track_memory)
            return
        lp = live_probes[i - len(live)]
        t = time.perf_counter()
        lp.step()
        lp.times.append((time.perf_counter() - t) * 1000)

    names = [item.cand.name for item in live] + [lp.probe.name for lp in live_probes]
    order: list[int] = []
    conditions = run_interleaved(len(names), untimed, timed, rounds=runs, rewarm=rewarm, threads=threads,
                                 progress=progress, label=f"bench {size[0]}x{size[1]}", order=order)
    if schedule is not None:
        schedule.order.extend(names[i] for i in order)
    probe_results = [_probe_result(lp) for lp in live_probes]
    peaks = machine_peaks(probe_results, (calibration or {}).get("peaks_gmacs_per_s"))
    results = [_result(item, size, runs, warmup, peaks) for item in live]
    for item in live:
        item.runner.close()
    if results:
        base = results[0]["latency_ms"]["p50"]
        base_e2e = results[0]["end_to_end_ms"]["p50"]
        for r in results:
            r["speedup_vs_first"] = base / r["latency_ms"]["p50"]
            r["end_to_end_speedup_vs_first"] = base_e2e / r["end_to_end_ms"]["p50"]
    return {"size": list(size), "results": results, "probes": probe_results, "peaks_gmacs_per_s": peaks,
            "bandwidth_gbs": (calibration or {}).get("bandwidth_gbs"), "peak_calibration": calibration,
            "skipped": skipped, "conditions": conditions.to_dict()}


def _load_candidates(candidates: Sequence[Candidate], size: tuple[int, int], frame: np.ndarray, warmup: int,
                     skipped: list[dict]) -> list[_Live]:
    """Load and warm up each candidate in turn, measuring what its loading adds to the process."""
    live: list[_Live] = []
    for cand in candidates:
        if cand.fixed_size is not None and tuple(cand.fixed_size) != tuple(size):
            skipped.append({"name": cand.name,
                            "reason": f"exported for {cand.fixed_size[0]}x{cand.fixed_size[1]} only"})
            continue
        try:
            if cand.prepare is not None:
                cand.prepare(size)
            gc.collect()
            rss0 = rss_mb()
            runner = cand.load(size)
        except (SegrtError, ImportError, ModuleNotFoundError) as exc:
            skipped.append({"name": cand.name, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        item = _Live(cand, runner, None)
        for _ in range(warmup):
            _timed_pipeline(item, frame, size, False)
        item.times = {s: [] for s in STAGES}
        rss1 = rss_mb()
        item.load_mb = (rss1 - rss0) if rss0 is not None and rss1 is not None else None
        live.append(item)
    return live


def _load_probes(probes: Sequence[Probe], warmup: int, skipped: list[dict]) -> list[_LiveProbe]:
    live_probes = []
    for probe in probes:
        try:
            step = probe.load()
        except (SegrtError, ImportError) as exc:
            skipped.append({"name": probe.name, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        for _ in range(max(1, warmup)):
            step()
        live_probes.append(_LiveProbe(probe, step))
    return live_probes


def _probe_result(lp: _LiveProbe) -> dict:
    latency = summarize(lp.times)
    return {"name": lp.probe.name, "precision": lp.probe.precision, "macs": lp.probe.macs,
            "threads": lp.probe.threads, "latency_ms": latency,
            "gmacs_per_s": lp.probe.macs / (latency["p50"] / 1000) / 1e9,
            "best_gmacs_per_s": lp.probe.macs / (latency["min"] / 1000) / 1e9}


def machine_peaks(probe_results: Sequence[dict], calibrated: dict[str, float] | None = None) -> dict[str, float]:
    """Best measured GMAC/s per precision (a probe's best run, not its median: a peak is what the machine
    reaches), and at least the ``calibrated`` best-of peaks; a float16 model is held against the float32 peak."""
    peaks: dict[str, float] = dict(calibrated or {})
    for p in probe_results:
        best = max(p["gmacs_per_s"], p.get("best_gmacs_per_s", 0.0))
        peaks[p["precision"]] = max(peaks.get(p["precision"], 0.0), best)
    return peaks


def _result(item: _Live, size: tuple[int, int], runs: int, warmup: int, peaks: dict[str, float]) -> dict:
    net = summarize(item.times["network"])
    e2e = summarize([sum(v) for v in zip(*(item.times[s] for s in STAGES))])
    macs = None
    if item.cand.macs is not None:
        try:
            macs = item.cand.macs(size)
        except (SegrtError, ImportError) as exc:
            item.runner.info["macs_error"] = str(exc)
    achieved = macs / (net["p50"] / 1000) / 1e9 if macs else None
    peak_kind = "int8" if item.cand.precision == "int8" else "fp32"
    peak = peaks.get(peak_kind)
    transient = max(item.transient_mb) if item.transient_mb else None
    return {
        "name": item.cand.name, "kind": item.cand.kind, "precision": item.cand.precision, "source": item.cand.source,
        "size": list(size), "runs": runs, "warmup": warmup, "note": item.cand.note,
        "latency_ms": net, "end_to_end_ms": e2e,
        "stages_ms": {s: summarize(item.times[s])["p50"] for s in STAGES},
        "throughput_fps": 1000.0 / net["mean"], "end_to_end_fps": 1000.0 / e2e["mean"],
        "memory_mb": {"load": item.load_mb, "transient": transient,
                      "peak": (item.load_mb or 0.0) + (transient or 0.0) if item.load_mb is not None else None},
        "macs": macs, "gmacs": macs / 1e9 if macs else None, "gmacs_per_s": achieved,
        "peak_kind": peak_kind, "pct_of_peak": 100.0 * achieved / peak if achieved and peak else None,
        "info": item.runner.info,
    }


# ----------------------------------------------------------------------------- ONNX Runtime / TensorRT candidates


def ort_plain_session(path: str | Path, threads: int | None):
    """An ONNX Runtime CPU session with default session options, except the pinned thread count."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def segrt_candidate(path: str | Path, name: str | None = None, backend: str = "auto", threads: int | None = None,
                    macs: Callable[[tuple[int, int]], int | None] | None = None) -> Candidate:
    """An exported model (ONNX or TensorRT engine) run by segrt's own backend, as ``Engine`` runs it."""
    from segrt.runtime.engine import ENGINE_SUFFIXES, open_backend

    path = Path(path)
    is_engine = path.suffix.lower() in ENGINE_SUFFIXES
    meta, fixed = _peek(path, is_engine)
    note = ""
    if meta is not None and meta.form == "frame":
        # These rows time the network on a prepared input; a frame-form model's frame-to-mask time is the
        # end-to-end section (measure/cameras.py). Its network is cut out to a scratch file.
        path, note = _network_file(path), "network of a frame-form model"
        meta, fixed = _peek(path, is_engine)

    def load(size: tuple[int, int]) -> Runner:
        try:
            backend_obj = open_backend(path, backend, threads=threads)
        except ModuleNotFoundError as exc:  # tensorrt / cuda-python missing: a skip, not a crash
            raise BackendUnavailableError(f"TensorRT is not installed on this machine ({exc.name}); "
                                          "engine not benchmarked") from exc
        info = {"backend": backend_obj.name, "threads": threads, "path": str(path)}
        return Runner(backend_obj.run, backend_obj.close, info)

    precision = (meta.extra.get("precision") if meta else None) or ("engine" if is_engine else "fp32")
    return Candidate(name or path.stem, "tensorrt" if is_engine else "onnxruntime", load, precision=precision,
                     source=str(path), fixed_size=fixed, mean=meta.mean if meta else IMAGENET[0],
                     std=meta.std if meta else IMAGENET[1], macs=macs, note=note)


def network_path(path: Path, scratch: Path) -> Path | None:
    """The logits-form network of the ONNX at ``path`` as a file (``path`` itself when it is logits form);
    None for a TensorRT engine, whose network cannot be cut out."""
    from segrt.runtime.engine import ENGINE_SUFFIXES

    if path.suffix.lower() in ENGINE_SUFFIXES:
        return None
    import onnx

    from segrt.export.passes.frame_graph import is_frame_form, network_of

    model = onnx.load(str(path))
    if not is_frame_form(model):
        return path
    out = scratch / f"{path.stem}.network.onnx"
    onnx.save(network_of(model), str(out))
    return out


def _network_file(path: Path) -> Path:
    import atexit
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="segrt-bench-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return network_path(path, scratch) or path


def _peek(path: Path, is_engine: bool):
    """Metadata and fixed input size without keeping a session open (engines: nothing to peek at)."""
    if is_engine:
        return None, None
    from segrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, threads=1)
    try:
        shape = backend.input_shape
        fixed = (shape[2], shape[3]) if shape[2] and shape[3] else None
        return backend.metadata, fixed
    finally:
        backend.close()


# ----------------------------------------------------------------------------- the machine


def cpu_features() -> dict:
    """CPU model and the SIMD / matrix extensions that decide which kernels can run."""
    info: dict = {"machine": platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        info["affinity"] = sorted(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
        info["model"] = model.group(1).strip() if model else platform.processor()
        have = set(flags.group(1).split()) if flags else set()
        info["extensions"] = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                          "avx_vnni_int8", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                                          "amx_bf16") if f in have]
    except OSError:
        info["model"] = platform.processor()
    return info


def environment(threads: int | None) -> dict:
    import onnxruntime as ort

    env = {"cpu": cpu_features(), "threads": threads, "python": platform.python_version(),
           "numpy": np.__version__, "onnxruntime": ort.__version__, "platform": platform.platform(),
           "load_average": load_average()}
    import sys

    if "torch" in sys.modules:  # only report torch when a PyTorch candidate pulled it in
        env["torch"] = sys.modules["torch"].__version__
    if "transformers" in sys.modules:
        env["transformers"] = sys.modules["transformers"].__version__
    return env
