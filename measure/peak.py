"""What this machine can do at best: large matrix multiplies timed in the same run as the models.

A model's achieved GMAC/s means little alone; against the throughput of a large, cache-friendly
matmul on the same threads, in the same minutes, it says how far the model is from the hardware's
limit. Probes:

- ``numpy fp32``: ``a @ b`` with numpy's BLAS (its own default thread count);
- ``onnxruntime fp32``: one MatMul node on ONNX Runtime (MLAS SGEMM), intra-op threads pinned;
- ``onnxruntime int8``: one MatMulInteger node, uint8 x int8 (the combination MLAS runs on AMX or
  AVX-512 VNNI), intra-op threads pinned.

The ONNX probes build their one-node graphs with ``onnx`` (imported lazily: a robot without onnx
still gets the numpy probe).
"""

from __future__ import annotations

import numpy as np

from segrt.measure.bench import Probe


def numpy_probe(n: int = 1024) -> Probe:
    def load():
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), dtype=np.float32)
        return lambda: np.matmul(a, b, out=out)

    return Probe("numpy fp32 matmul", "fp32", n**3, load, threads="BLAS default")


def _one_node_session(op: str, a_type: int, b: np.ndarray, out_type: int, threads: int | None):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    n = b.shape[0]
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])], "peak",
        [helper.make_tensor_value_info("A", a_type, [n, n])], [helper.make_tensor_value_info("Y", out_type, [n, n])],
        [numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_fp32_probe(threads: int | None, n: int = 1024) -> Probe:
    def load():
        from onnx import TensorProto

        rng = np.random.default_rng(0)
        sess = _one_node_session("MatMul", TensorProto.FLOAT, rng.standard_normal((n, n), dtype=np.float32),
                                 TensorProto.FLOAT, threads)
        feed = {"A": rng.standard_normal((n, n), dtype=np.float32)}
        return lambda: sess.run(None, feed)

    return Probe("onnxruntime fp32 MatMul", "fp32", n**3, load, threads=str(threads or "default"))


def ort_int8_probe(threads: int | None, n: int = 2048, signed_activations: bool = False) -> Probe:
    """uint8 x int8 by default; ``signed_activations`` measures int8 x int8, the path MLAS takes when a
    quantized graph's activations are left signed."""

    def load():
        from onnx import TensorProto

        rng = np.random.default_rng(0)
        sess = _one_node_session("MatMulInteger", TensorProto.INT8 if signed_activations else TensorProto.UINT8,
                                 rng.integers(-127, 128, (n, n), dtype=np.int8), TensorProto.INT32, threads)
        if signed_activations:
            a = rng.integers(-127, 128, (n, n), dtype=np.int8)
        else:
            a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        feed = {"A": a}
        return lambda: sess.run(None, feed)

    kind = "s8s8" if signed_activations else "u8s8"
    return Probe(f"onnxruntime int8 MatMulInteger ({kind})", "int8" if not signed_activations else "int8-s8s8",
                 n**3, load, threads=str(threads or "default"))


def default_probes(threads: int | None) -> list[Probe]:
    return [numpy_probe(), ort_fp32_probe(threads), ort_int8_probe(threads)]
