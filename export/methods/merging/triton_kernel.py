"""``segrt::TokenMerge`` as one Triton kernel: the kernel the TensorRT AOT plugin embeds in an engine.

Same contract as :func:`segrt.export.methods.merging.ops.token_merge` (inputs x, metric, dst_index,
src_index, attribute r; outputs merged, slot), fused into one launch of one program per batch image:

1. similarity and best match: every source's cosine similarity to every destination, tiled, keeping the
   best score and the first destination reaching it (the lowest index, like ``torch.max`` and ONNX TopK);
2. selection: a source is merged when fewer than r sources rank above it, ranking by score, ties to the
   lower source index. When fewer sources stay than merge, the reference selects the kept set (lowest
   scores, ties to the lower index) instead, which turns the tie-break around; the kernel does the same
   so that ties resolve exactly as in the PyTorch op and the ONNX function body;
3. slots (destinations first, kept sources after them in source order) and the sum/count mean.

The kernel itself is torch-free, in :mod:`segrt.token_merge_kernel` (the engine builder compiles
it); this module launches it on PyTorch tensors for the tests and the export side. Everything is FP32
with IEEE square root, division and dot products (``input_precision="ieee"``: no TF32), because the
merge decision is discontinuous in the scores.

One program per image keeps the selection exact without a grid-wide barrier; it is a correctness-first
kernel and its speed on a GPU is unmeasured (docs/plugins.md). On CPU tensors it runs in Triton's
interpreter (``TRITON_INTERPRET=1`` when triton is imported).
"""

from __future__ import annotations

import torch

from segrt.export.methods.merging.ops import check_merge_size
from segrt.runtime.errors import BackendUnavailableError, ConfigError


def token_merge(x: torch.Tensor, metric: torch.Tensor, dst_index: torch.Tensor, src_index: torch.Tensor,
                r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel (on the CPU only under ``TRITON_INTERPRET=1``); same results as the PyTorch op."""
    if x.dtype != torch.float32 or metric.dtype != torch.float32:
        raise ConfigError(f"the TokenMerge kernel computes in FP32; got x {x.dtype}, metric {metric.dtype}")
    if x.dim() != 3 or metric.shape != x.shape:
        raise ConfigError(f"TokenMerge needs x and metric of one (B, N, C) shape; got {tuple(x.shape)} and "
                          f"{tuple(metric.shape)}")
    b, n, c = x.shape
    nd, ns = dst_index.numel(), src_index.numel()
    check_merge_size(ns, r)
    if nd + ns != n or nd == 0:
        raise ConfigError(f"dst_index ({nd}) and src_index ({ns}) must split the {n} tokens, with a destination")
    x, metric = x.contiguous(), metric.contiguous()
    merged = x.new_empty(b, nd + ns - r, c)
    slot = torch.empty(b, n, dtype=torch.int64, device=x.device)
    try:
        from segrt import token_merge_kernel as tk
    except ImportError as exc:
        raise BackendUnavailableError(f"the TokenMerge kernel needs triton (pip install triton): {exc}") from exc
    interpreted = type(tk.token_merge_kernel).__name__ == "InterpretedFunction"
    if x.device.type == "cpu" and not interpreted:
        raise BackendUnavailableError("the TokenMerge kernel runs on the CPU only in Triton's interpreter: set "
                                      "TRITON_INTERPRET=1 before triton is imported (python -m "
                                      "segrt.export.methods.merging.kernel_check does)")
    dst, src = dst_index.to(torch.int64).contiguous(), src_index.to(torch.int64).contiguous()
    tk.token_merge_kernel[(b,)](x, metric, dst, src, n, nd, ns, c, r, merged, slot, **tk.CONSTANTS)
    return merged, slot
