"""Row gather / scatter for exported sparse compute, as plain ``Gather`` (index_select) graphs.

Writing a few rows into a tensor with ``x[idx] = v`` or ``x.scatter(...)`` exports as ScatterND /
ScatterElements over the whole tensor, which ONNX Runtime's CPU kernels walk element by element
(tens of milliseconds for one 1/16-grid SegFormer stage). The same result is one row ``Gather`` from
``[values; base]`` with a small integer map (``slot``) saying, for every output row, which input row
it copies: only the map is built by a scatter, over a 1-D vector of row numbers. Gather copies whole
rows, runs on every ONNX backend, and TensorRT needs no plugin for it.
"""

from __future__ import annotations

import torch


def _flat(idx: torch.Tensor, n: int) -> torch.Tensor:
    """(B, k) row positions within each of B blocks of ``n`` rows -> (B*k,) positions in the flattened rows."""
    return (idx + torch.arange(idx.shape[0], device=idx.device).unsqueeze(1) * n).reshape(-1)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), idx (B, k) -> (B, k, C): the rows ``idx`` of every batch item."""
    b, n, c = x.shape
    return x.reshape(b * n, c).index_select(0, _flat(idx, n)).view(b, idx.shape[1], c)


def overwrite_rows(base: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """base (B, N, C) with its rows ``idx`` (B, k, distinct per item) replaced by ``values`` (B, k, C)."""
    b, n, c = base.shape
    k = idx.shape[1]
    flat = _flat(idx, n)
    # output row r copies row slot[r] of [values; base]: its own base row unless it is one of idx
    slot = (b * k + torch.arange(b * n, device=idx.device)).scatter(0, flat, torch.arange(b * k, device=idx.device))
    return torch.cat([values.reshape(b * k, c), base.reshape(b * n, c)]).index_select(0, slot).view(b, n, c)


def scatter_rows(values: torch.Tensor, idx: torch.Tensor, total: int) -> torch.Tensor:
    """values (B, k, C) for rows ``idx`` (B, k) -> (B, total, C) with zeros in every other row (one shared zero
    row, so no zero tensor of the full size is built or stored in the graph)."""
    b, k, c = values.shape
    flat = _flat(idx, total)
    slot = torch.full((b * total,), b * k, dtype=idx.dtype, device=idx.device).scatter(
        0, flat, torch.arange(b * k, device=idx.device))
    return torch.cat([values.reshape(b * k, c), values.new_zeros(1, c)]).index_select(0, slot).view(b, total, c)
