"""Three implementations of ``segrt::TokenMerge`` side by side on the inputs a real model merges.

The PyTorch op (:mod:`.ops`), its ONNX function body run by ONNX Runtime, and the Triton kernel of the
TensorRT plugin (:mod:`.triton_kernel`, on the CPU under ``TRITON_INTERPRET=1``) must give the same slots
(every match and selection) and merged tokens within :data:`MERGED_TOLERANCE`. Used by
tests/export/test_merge_plugin.py and benchmarks/merge_kernel_matrix.py (the full B0/B2 x 512/1024 matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from onnx import TensorProto, helper

from segrt.export.methods.merging import ops as merge_ops
from segrt.export.methods.merging import triton_kernel
from segrt.export.passes.versions import ir_version_for

MERGED_TOLERANCE = 1e-5
TIE_EPS = 1e-6  # cosine scores this close are a tie to float32 arithmetic (~1e-7 apart between summation orders)


@dataclass
class MergeCall:
    """The inputs of one TokenMerge call, as the model made them."""

    x: torch.Tensor
    metric: torch.Tensor
    dst_index: torch.Tensor
    src_index: torch.Tensor
    r: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(tokens, channels, sources, merged away)."""
        return self.x.shape[1], self.x.shape[2], self.src_index.numel(), self.r


def record_merge_calls(model: torch.nn.Module, x: torch.Tensor) -> list[MergeCall]:
    """Every TokenMerge call of one forward pass of ``model`` (a model made by ``apply_merging``)."""
    calls: list[MergeCall] = []
    original = merge_ops.token_merge

    def recording(x, metric, dst_index, src_index, r):
        calls.append(MergeCall(x.detach().clone(), metric.detach().clone(), dst_index, src_index, r))
        return original(x, metric, dst_index, src_index, r)

    merge_ops.token_merge = recording
    try:
        with torch.no_grad():
            model(x)
    finally:
        merge_ops.token_merge = original
    return calls


def onnx_merge(call: MergeCall, opset: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX function body of TokenMerge, run by ONNX Runtime on ``call``'s inputs."""
    import onnxruntime as ort

    b, n, c = call.x.shape
    nd, ns = call.dst_index.numel(), call.src_index.numel()
    node = helper.make_node("TokenMerge", ["x", "metric", "dst", "src"], ["merged", "slot"], domain=merge_ops.DOMAIN,
                            r=call.r)
    graph = helper.make_graph(
        [node], "token_merge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, n, c]),
         helper.make_tensor_value_info("metric", TensorProto.FLOAT, [b, n, c]),
         helper.make_tensor_value_info("dst", TensorProto.INT64, [nd]),
         helper.make_tensor_value_info("src", TensorProto.INT64, [ns])],
        [helper.make_tensor_value_info("merged", TensorProto.FLOAT, [b, n - call.r, c]),
         helper.make_tensor_value_info("slot", TensorProto.INT64, [b, n])])
    model = merge_ops.attach_local_functions(
        helper.make_model(graph, ir_version=ir_version_for(opset), opset_imports=[helper.make_opsetid("", opset)]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    merged, slot = sess.run(None, {"x": call.x.numpy(), "metric": call.metric.numpy(),
                                   "dst": call.dst_index.numpy(), "src": call.src_index.numpy()})
    return merged, slot


@dataclass
class Comparison:
    """One implementation against the PyTorch op on one call.

    Matching is discontinuous: where two candidates score within float32 rounding (smooth or upscaled images
    make many near-identical tokens), implementations summing in different orders may choose differently, as
    ONNX Runtime and PyTorch already do (``model.MATCHING_TOLERANCE``). So decisions are compared, not raw
    slots: which sources merge, and into which destination. Every differing decision must be a near-tie
    (its alternatives' cosine scores, in float64, within :data:`TIE_EPS`), and the merged tokens must agree
    within :data:`MERGED_TOLERANCE` wherever the decisions agree (every row when they all do)."""

    shape: tuple[int, int, int, int]
    decisions_differing: int  # sources merged/kept differently or merged into another destination
    near_ties: int  # of those, how many are ties within TIE_EPS
    merged_error: float  # max |difference| of the merged tokens on rows whose members agree
    rows_compared: int

    @property
    def ok(self) -> bool:
        return self.near_ties == self.decisions_differing and self.merged_error <= MERGED_TOLERANCE

    @property
    def identical(self) -> bool:
        return self.decisions_differing == 0 and self.ok


def _decisions(call: MergeCall, ref_slot: np.ndarray, slot: np.ndarray, scores: np.ndarray
               ) -> tuple[int, int, np.ndarray]:
    """(differing decisions, near-ties among them, rows to compare in the merged output, per image)."""
    nd = call.dst_index.numel()
    src = call.src_index.numpy()
    differing = near = 0
    rows = []
    for b in range(ref_slot.shape[0]):
        s_ref, s_new = ref_slot[b, src], slot[b, src]
        m_ref, m_new = s_ref < nd, s_new < nd
        best = scores[b].max(axis=1)
        swapped = np.flatnonzero(m_ref != m_new)  # selection differs: sources at the merge boundary
        differing += swapped.size
        if swapped.size and np.ptp(best[swapped]) <= TIE_EPS:
            near += swapped.size
        moved = np.flatnonzero(m_ref & m_new & (s_ref != s_new))  # merged into another destination
        differing += moved.size
        alt = np.abs(scores[b, moved, s_ref[moved]] - scores[b, moved, s_new[moved]])
        near += int((alt <= TIE_EPS).sum())
        # a row agrees when the same positions feed it: destination rows with the same members, kept rows
        # holding the same source
        n_out = nd + int((~m_ref).sum())
        agree = np.ones(n_out, bool)
        for slots in (s_ref[moved], s_new[moved], s_ref[swapped], s_new[swapped]):
            agree[slots[slots < n_out]] = False
        kept_ref, kept_new = src[~m_ref], src[~m_new]
        if kept_ref.size == kept_new.size:
            agree[nd:] &= kept_ref == kept_new
        else:
            agree[nd:] = False
        rows.append(agree)
    return differing, near, np.stack(rows)


def compare(call: MergeCall) -> dict[str, Comparison]:
    """The Triton kernel and the ONNX function body (ONNX Runtime) against the PyTorch op on one call."""
    with torch.no_grad():
        ref_merged, ref_slot = merge_ops.token_merge(call.x, call.metric, call.dst_index, call.src_index, call.r)
        k_merged, k_slot = triton_kernel.token_merge(call.x, call.metric, call.dst_index, call.src_index, call.r)
    o_merged, o_slot = onnx_merge(call)
    unit = call.metric.double() / call.metric.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = (unit[:, call.src_index] @ unit[:, call.dst_index].transpose(1, 2)).numpy()  # float64 judge
    out = {}
    for name, (merged, slot) in {"triton": (k_merged.numpy(), k_slot.numpy()), "onnxruntime": (o_merged, o_slot)
                                 }.items():
        differing, near, rows = _decisions(call, ref_slot.numpy(), slot, scores)
        if merged.shape != ref_merged.shape:
            out[name] = Comparison(call.shape, differing, near, float("inf"), 0)
            continue
        diff = np.abs(merged - ref_merged.numpy()).max(axis=-1)
        error = float(diff[rows].max()) if rows.any() else 0.0
        out[name] = Comparison(call.shape, differing, near, error, int(rows.sum()))
    return out


def distinct_shapes(calls: list[MergeCall]) -> list[MergeCall]:
    """The first call of every distinct (tokens, channels, sources, r): blocks of a stage repeat shapes."""
    seen: dict[tuple, MergeCall] = {}
    for call in calls:
        seen.setdefault(call.shape, call)
    return list(seen.values())


def tied_call(n_side: int, channels: int, cell: tuple[int, int], r: int, seed: int = 0) -> MergeCall:
    """A merge whose metric tokens are drawn from 6 vectors of one or four +-1 entries: their unit vectors
    and every dot product are exact in any summation order, so many sources tie exactly on their best
    score and many destinations tie for a source in every implementation: each tie-break rule is exercised."""
    from segrt.export.methods.merging.model import cell_partition

    rng = np.random.default_rng(seed)
    n = n_side * n_side
    pool = np.zeros((6, channels), np.float32)
    for i, row in enumerate(pool):
        hot = rng.choice(channels, size=1 if i < 2 else 4, replace=False)
        row[hot] = rng.choice([-1.0, 1.0], size=hot.size)
    metric = pool[rng.integers(0, len(pool), size=(1, n))]
    x = rng.standard_normal((1, n, channels)).astype(np.float32)
    dst, src = cell_partition(n_side, n_side, cell)
    return MergeCall(torch.from_numpy(x), torch.from_numpy(metric), torch.from_numpy(dst), torch.from_numpy(src), r)


# ----------------------------------------------------------------------------- the comparison as a program
# Triton runs kernels on the CPU only when TRITON_INTERPRET=1 is set before triton is imported, which decides
# for the whole process; so the comparisons run in a process of their own:
#   python -m segrt.export.methods.merging.kernel_check FRAME b0:512:hq b2:1024:fast ... ties
# prints one JSON line per compared call.

LOW_RATIO = {"name": "low", "stages": [{"kv": {"ratio": 0.3}}, {"kv": {"ratio": 0.3}}, {"q": {"ratio": 0.3}},
                                        {"q": {"ratio": 0.3}}]}  # merges fewer than it keeps: the other selection


def case_calls(case: str, frame: np.ndarray) -> list[MergeCall]:
    """``variant:size:strategy`` (strategy: a preset or "low") -> the distinct merge calls of that model on
    ``frame``; "ties" -> exact-tie merges, one selecting the merged set and one the kept set."""
    if case == "ties":
        return [tied_call(16, 32, (2, 2), r, seed) for r in (60, 180) for seed in (0, 1)]
    from segrt.export.methods.merging.model import apply_merging
    from segrt.export.model.checkpoints import random_model
    from segrt.runtime.preprocess import frames_to_input

    variant, size, strategy = case.split(":")
    loaded = random_model(f"random:{variant}:11")
    merged = apply_merging(loaded.model, LOW_RATIO if strategy == "low" else strategy)
    x = frames_to_input([frame], (int(size), int(size)), loaded.metadata.mean, loaded.metadata.std)
    return distinct_shapes(record_merge_calls(merged, torch.from_numpy(x)))


def main(argv: list[str] | None = None) -> int:
    import dataclasses
    import json
    import os
    import sys
    import time

    os.environ["TRITON_INTERPRET"] = "1"
    if "triton" in sys.modules:
        raise SystemExit("triton was imported before TRITON_INTERPRET could be set")
    import cv2

    args = sys.argv[1:] if argv is None else argv
    frame = cv2.imread(args[0], cv2.IMREAD_COLOR)
    if frame is None:
        raise SystemExit(f"cannot read {args[0]}")
    failed = 0
    for case in args[1:]:
        for call in case_calls(case, frame):
            start = time.perf_counter()
            results = compare(call)
            failed += not all(r.ok for r in results.values())
            print(json.dumps({"case": case, "shape": call.shape, "seconds": round(time.perf_counter() - start, 2),
                              **{name: {**dataclasses.asdict(r), "ok": r.ok, "identical": r.identical}
                                 for name, r in results.items()}}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
