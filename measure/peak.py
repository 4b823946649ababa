"""What this machine can do at best: large matrix multiplies and large array streams, timed in the same run
as the models.

A model's achieved GMAC/s means little alone; against the best throughput this machine reaches on the
same threads, in the same minutes, it says how far the model is from the hardware's limit. A peak is a
*best*: several GEMM sizes (1024 .. 4096), each the best of a few runs, the best over sizes and backends.
A single 1024 GEMM timed at its median in between model runs (the first probe) under-measured: models
showed more than 100% of it.

GEMM probes (multiply-accumulates per second):

- ``numpy fp32``: ``a @ b`` with numpy's BLAS (its own thread count);
- ``onnxruntime fp32``: one MatMul node (MLAS SGEMM), intra-op threads pinned;
- ``onnxruntime int8``: one MatMulInteger node, uint8 x int8, and one QLinearMatMul node (the kernels
  quantized graphs run; MLAS runs them on AMX or AVX-512/AVX VNNI where the CPU has them).

Bandwidth probes (bytes read + written per second): ``numpy`` copy and add of large float32 arrays (one
thread) and an ONNX Runtime Add (intra-op threads pinned). Outputs are preallocated (ONNX Runtime through
I/O binding), so neither kind of probe times page faults of fresh result buffers.

The ONNX probes build their one-node graphs with ``onnx`` (imported lazily: a robot without onnx still
gets the numpy probes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from segrt.measure.bench import Probe
from segrt.runtime.errors import ConfigError

GEMM_SIZES = (1024, 2048, 4096)
STREAM_MB = (16, 256)  # per float32 array: beyond the L2 caches


def _one_node_session(op: str, inputs: list[tuple[str, int, list[int]]], initializers: list, out_type: int,
                      out_shape: list[int], threads: int | None):
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from segrt.export.passes.versions import ir_version_for

    graph = helper.make_graph(
        [helper.make_node(op, [name for name, _, _ in inputs] + [t.name for t in initializers], ["Y"])], "peak",
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        [helper.make_tensor_value_info("Y", out_type, out_shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version_for(17)
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _bound_run(sess, feeds: dict[str, np.ndarray], out: np.ndarray) -> Callable[[], object]:
    """One run of ``sess`` into the preallocated ``out`` (no result allocation inside the timed call)."""
    binding = sess.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output("Y", "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
    keep = (feeds, out)  # the binding holds raw pointers: the arrays must live as long as the step

    def step():
        sess.run_with_iobinding(binding)
        return keep

    return step


def numpy_probe(n: int = 1024) -> Probe:
    def load():
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), dtype=np.float32)
        return lambda: np.matmul(a, b, out=out)

    return Probe(f"numpy fp32 matmul n={n}", "fp32", n**3, load, threads="BLAS default")


def ort_fp32_probe(threads: int | None, n: int = 1024) -> Probe:
    def load():
        from onnx import TensorProto, numpy_helper

        rng = np.random.default_rng(0)
        b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "B")
        sess = _one_node_session("MatMul", [("A", TensorProto.FLOAT, [n, n])], [b], TensorProto.FLOAT, [n, n],
                                 threads)
        return _bound_run(sess, {"A": rng.standard_normal((n, n), dtype=np.float32)},
                          np.empty((n, n), dtype=np.float32))

    return Probe(f"onnxruntime fp32 MatMul n={n}", "fp32", n**3, load, threads=str(threads or "default"))


def ort_int8_probe(threads: int | None, n: int = 2048, signed_activations: bool = False) -> Probe:
    """uint8 x int8 by default; ``signed_activations`` measures int8 x int8, the path MLAS takes when a
    quantized graph's activations are left signed."""

    def load():
        from onnx import TensorProto, numpy_helper

        rng = np.random.default_rng(0)
        b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "B")
        if signed_activations:
            a = rng.integers(-127, 128, (n, n), dtype=np.int8)
        else:
            a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        a_type = TensorProto.INT8 if signed_activations else TensorProto.UINT8
        sess = _one_node_session("MatMulInteger", [("A", a_type, [n, n])], [b], TensorProto.INT32, [n, n], threads)
        return _bound_run(sess, {"A": a}, np.empty((n, n), dtype=np.int32))

    kind = "s8s8" if signed_activations else "u8s8"
    return Probe(f"onnxruntime int8 MatMulInteger ({kind}) n={n}", "int8-s8s8" if signed_activations else "int8",
                 n**3, load, threads=str(threads or "default"))


def ort_qlinear_probe(threads: int | None, n: int = 2048) -> Probe:
    """QLinearMatMul, uint8 activations x int8 weights -> uint8: the kernel of a QOperator-quantized MatMul."""

    def load():
        from onnx import TensorProto, numpy_helper

        rng = np.random.default_rng(0)

        def const(name, value):
            return numpy_helper.from_array(np.asarray(value), name)

        sess = _one_node_session(
            "QLinearMatMul", [("A", TensorProto.UINT8, [n, n])],
            [const("a_scale", np.float32(0.02)), const("a_zero_point", np.uint8(128)),
             numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "B"),
             const("b_scale", np.float32(0.01)), const("b_zero_point", np.int8(0)),
             const("y_scale", np.float32(4.0)), const("y_zero_point", np.uint8(128))],
            TensorProto.UINT8, [n, n], threads)
        return _bound_run(sess, {"A": rng.integers(0, 256, (n, n), dtype=np.uint8)}, np.empty((n, n), dtype=np.uint8))

    return Probe(f"onnxruntime int8 QLinearMatMul (u8s8) n={n}", "int8", n**3, load,
                 threads=str(threads or "default"))


def gemm_probes(threads: int | None, n: int) -> list[Probe]:
    return [numpy_probe(n), ort_fp32_probe(threads, n), ort_int8_probe(threads, n), ort_qlinear_probe(threads, n)]


def default_probes(threads: int | None, sizes: dict[str, int] | None = None) -> list[Probe]:
    """The probes timed in between the models (same conditions): fp32 and int8, at the sizes given per
    precision (the best sizes of :func:`measure_peaks`), else 2048."""
    sizes = sizes or {}
    fp32, int8 = sizes.get("fp32", 2048), sizes.get("int8", 2048)
    return [numpy_probe(fp32), ort_fp32_probe(threads, fp32), ort_int8_probe(threads, int8),
            ort_qlinear_probe(threads, int8)]


def best_seconds(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best


def _stream_probes(threads: int | None, mb: float) -> list[tuple[str, int, Callable[[], Callable[[], object]]]]:
    """(name, bytes moved per call, load) for one array size."""
    count = max(1, int(mb * 2**20 / 4))

    def arrays(k):
        rng = np.random.default_rng(0)
        return [rng.standard_normal(count, dtype=np.float32) for _ in range(k)]

    def numpy_copy():
        src, dst = arrays(2)
        return lambda: np.copyto(dst, src)

    def numpy_add():
        a, b, c = arrays(3)
        return lambda: np.add(a, b, out=c)

    def ort_add():
        from onnx import TensorProto

        a, b, c = arrays(3)
        sess = _one_node_session("Add", [("A", TensorProto.FLOAT, [count]), ("B", TensorProto.FLOAT, [count])], [],
                                 TensorProto.FLOAT, [count], threads)
        return _bound_run(sess, {"A": a, "B": b}, c)

    nbytes = count * 4
    return [("numpy copy", 2 * nbytes, numpy_copy), ("numpy add", 3 * nbytes, numpy_add),
            (f"onnxruntime Add (threads {threads or 'default'})", 3 * nbytes, ort_add)]


def measure_peaks(threads: int | None, sizes: Sequence[int] = GEMM_SIZES, stream_mb: Sequence[float] = STREAM_MB,
                  repeats: int = 3, progress: Callable[[str], None] | None = None) -> dict:
    """The machine's best fp32 / int8 GMAC/s and GB/s: every GEMM probe at every size and every stream probe
    at every array size, each the best of ``repeats`` runs after a warm-up; the best per precision wins.

    Returns ``{"peaks_gmacs_per_s": {precision: best}, "bandwidth_gbs": best, "best": {precision: probe name},
    "gemm": [rows], "bandwidth": [rows], "threads", "repeats"}``. A probe whose library is missing is skipped.
    """
    if repeats < 1 or not sizes or any(int(n) < 1 for n in sizes) or any(mb <= 0 for mb in stream_mb):
        raise ConfigError(f"peak probes need repeats >= 1 and positive sizes, got repeats={repeats}, sizes={sizes}, "
                          f"stream_mb={stream_mb}")
    gemm: list[dict] = []
    stream: list[dict] = []
    skipped: list[dict] = []
    for n in sizes:
        for probe in gemm_probes(threads, int(n)):
            if progress:
                progress(probe.name)
            try:
                step = probe.load()
            except ImportError as exc:
                skipped.append({"name": probe.name, "reason": str(exc)})
                continue
            sec = best_seconds(step, repeats)
            gemm.append({"name": probe.name, "precision": probe.precision, "n": int(n), "macs": probe.macs,
                         "threads": probe.threads, "best_ms": sec * 1000, "gmacs_per_s": probe.macs / sec / 1e9})
            del step
    for mb in stream_mb:
        for name, nbytes, load in _stream_probes(threads, mb):
            if progress:
                progress(f"{name} {mb:g} MB")
            try:
                step = load()
            except ImportError as exc:
                skipped.append({"name": name, "reason": str(exc)})
                continue
            sec = best_seconds(step, repeats)
            stream.append({"name": name, "array_mb": mb, "bytes": nbytes, "best_ms": sec * 1000,
                           "gbs": nbytes / sec / 1e9})
            del step
    peaks: dict[str, float] = {}
    best: dict[str, str] = {}
    best_n: dict[str, int] = {}
    for row in gemm:
        if row["gmacs_per_s"] > peaks.get(row["precision"], 0.0):
            peaks[row["precision"]] = row["gmacs_per_s"]
            best[row["precision"]], best_n[row["precision"]] = row["name"], row["n"]
    bandwidth = max((r["gbs"] for r in stream), default=None)
    return {"peaks_gmacs_per_s": peaks, "bandwidth_gbs": bandwidth, "best": best, "best_size": best_n,
            "gemm": gemm, "bandwidth": stream, "skipped": skipped, "threads": threads, "repeats": repeats}
