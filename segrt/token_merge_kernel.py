"""The ``segrt::TokenMerge`` Triton kernel that the TensorRT AOT plugin compiles and embeds in an engine.

Triton only, at the root of the package because both sides use it: the engine builder compiles it
(:mod:`segrt.engines.token_merge_plugin`) and the export side launches it on PyTorch tensors
(:mod:`segrt.export.methods.merging.triton_kernel`, which documents the algorithm). Parameters follow
TensorRT's AOT plugin calling convention: input pointers, int32 scalars (the plugin's SymInt32 extra
arguments), output pointers, then compile-time constants.

Memory: between the phases each source's best score and destination are parked in the ``slot`` output
(score bits << 32 | destination; bit 31 flags a merged source), so the plugin needs no workspace.
``tl.debug_barrier`` separates the phases because one program's threads read what others wrote.
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK_S = 64  # sources per tile
BLOCK_D = 64  # destinations per tile
BLOCK_C = 32  # channels per chunk: every SegFormer width (32..512) is a multiple
NORM_EPS = 1e-12  # as the PyTorch op and the ONNX body
INPUTS = ("x", "metric", "dst_index", "src_index")
SCALARS = ("n", "nd", "ns", "c", "r")
OUTPUTS = ("merged", "slot")
# triton.compiler.ASTSource signature of the non-constexpr parameters, in order
SIGNATURE = {"x_ptr": "*fp32", "metric_ptr": "*fp32", "dst_ptr": "*i64", "src_ptr": "*i64", "n": "i32",
             "nd": "i32", "ns": "i32", "c": "i32", "r": "i32", "merged_ptr": "*fp32", "slot_ptr": "*i64"}
CONSTANTS = {"BLOCK_S": BLOCK_S, "BLOCK_D": BLOCK_D, "BLOCK_C": BLOCK_C, "EPS": NORM_EPS}


@triton.jit
def token_merge_kernel(x_ptr, metric_ptr, dst_ptr, src_ptr, n, nd, ns, c, r, merged_ptr, slot_ptr,
                       BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
                       EPS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    x_b = x_ptr + b * n * c
    m_b = metric_ptr + b * n * c
    slot_b = slot_ptr + b * n
    n_out = nd + ns - r
    out_b = merged_ptr + b * n_out * c
    keep = ns - r
    flip = keep < r
    k = tl.minimum(r, keep)
    one = tl.full([BLOCK_S], 1, tl.int64)
    flag = one << 31
    low31 = flag - 1

    # 1. best destination of every source, parked in slot[src position]
    for s0 in range(0, ns, BLOCK_S):
        so = s0 + tl.arange(0, BLOCK_S)
        smask = so < ns
        spos = tl.load(src_ptr + so, mask=smask, other=0)
        ss = tl.zeros([BLOCK_S], dtype=tl.float32)
        for c0 in range(0, c, BLOCK_C):
            co = c0 + tl.arange(0, BLOCK_C)
            v = tl.load(m_b + spos[:, None] * c + co[None, :], mask=smask[:, None] & (co[None, :] < c), other=0.0)
            ss += tl.sum(v * v, axis=1)
        snorm = tl.maximum(tl.sqrt_rn(ss), EPS)
        best = tl.full([BLOCK_S], float("-inf"), tl.float32)
        best_d = tl.zeros([BLOCK_S], dtype=tl.int32)
        for d0 in range(0, nd, BLOCK_D):
            do = d0 + tl.arange(0, BLOCK_D)
            dmask = do < nd
            dpos = tl.load(dst_ptr + do, mask=dmask, other=0)
            dss = tl.zeros([BLOCK_D], dtype=tl.float32)
            for c0 in range(0, c, BLOCK_C):
                co = c0 + tl.arange(0, BLOCK_C)
                v = tl.load(m_b + dpos[:, None] * c + co[None, :], mask=dmask[:, None] & (co[None, :] < c), other=0.0)
                dss += tl.sum(v * v, axis=1)
            dnorm = tl.maximum(tl.sqrt_rn(dss), EPS)
            acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
            for c0 in range(0, c, BLOCK_C):
                co = c0 + tl.arange(0, BLOCK_C)
                cm = co[None, :] < c
                a = tl.load(m_b + spos[:, None] * c + co[None, :], mask=smask[:, None] & cm, other=0.0)
                e = tl.load(m_b + dpos[:, None] * c + co[None, :], mask=dmask[:, None] & cm, other=0.0)
                acc += tl.dot(tl.div_rn(a, snorm[:, None]), tl.trans(tl.div_rn(e, dnorm[:, None])),
                              input_precision="ieee")
            acc = tl.where(dmask[None, :], acc, float("-inf"))
            tile_best = tl.max(acc, axis=1)
            tile_arg = tl.argmax(acc, axis=1, tie_break_left=True).to(tl.int32)
            better = tile_best > best  # strict: an earlier tile keeps a tie (lowest index wins)
            best = tl.where(better, tile_best, best)
            best_d = tl.where(better, d0 + tile_arg, best_d)
        bits = best.to(tl.int32, bitcast=True).to(tl.int64)
        tl.store(slot_b + spos, (bits << 32) + best_d.to(tl.int64), mask=smask)
    tl.debug_barrier()

    # 2. selection: rank every source against all others; flag the merged ones (bit 31)
    for i0 in range(0, ns, BLOCK_S):
        io = i0 + tl.arange(0, BLOCK_S)
        imask = io < ns
        ipos = tl.load(src_ptr + io, mask=imask, other=0)
        packed_i = tl.load(slot_b + ipos, mask=imask, other=0)
        key_i = (packed_i >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        key_i = tl.where(flip, -key_i, key_i)
        above = tl.zeros([BLOCK_S], dtype=tl.int32)
        for j0 in range(0, ns, BLOCK_S):
            jo = j0 + tl.arange(0, BLOCK_S)
            jmask = jo < ns
            jpos = tl.load(src_ptr + jo, mask=jmask, other=0)
            key_j = (tl.load(slot_b + jpos, mask=jmask, other=0) >> 32).to(tl.int32).to(tl.float32,
                                                                                         bitcast=True)
            key_j = tl.where(flip, -key_j, key_j)
            wins = (key_j[None, :] > key_i[:, None]) | ((key_j[None, :] == key_i[:, None])
                                                        & (jo[None, :] < io[:, None]))
            above += tl.sum((wins & jmask[None, :]).to(tl.int32), axis=1)
        chosen = above < k
        merged = chosen != flip
        tl.store(slot_b + ipos, packed_i + tl.where(merged, flag, 0), mask=imask)
    tl.debug_barrier()

    # 3. final slots; kept sources are copied to their place after the destinations
    kept_before = tl.zeros([1], dtype=tl.int64)
    for s0 in range(0, ns, BLOCK_S):
        so = s0 + tl.arange(0, BLOCK_S)
        smask = so < ns
        spos = tl.load(src_ptr + so, mask=smask, other=0)
        packed = tl.load(slot_b + spos, mask=smask, other=0)
        is_merged = ((packed >> 31) & 1) == 1
        kept = tl.where(smask & (~is_merged), 1, 0).to(tl.int64)
        rank = tl.cumsum(kept, axis=0) - kept + kept_before
        slot = tl.where(is_merged, packed & low31, nd + rank)
        tl.store(slot_b + spos, slot, mask=smask)
        kept_before += tl.sum(kept, axis=0)
        row_mask = smask & (~is_merged)
        for c0 in range(0, c, BLOCK_C):
            co = c0 + tl.arange(0, BLOCK_C)
            cm = co[None, :] < c
            v = tl.load(x_b + spos[:, None] * c + co[None, :], mask=row_mask[:, None] & cm, other=0.0)
            tl.store(out_b + slot[:, None] * c + co[None, :], v, mask=row_mask[:, None] & cm)
    for d0 in range(0, nd, BLOCK_D):
        do = d0 + tl.arange(0, BLOCK_D)
        dmask = do < nd
        dpos = tl.load(dst_ptr + do, mask=dmask, other=0)
        tl.store(slot_b + dpos, do.to(tl.int64), mask=dmask)
    tl.debug_barrier()

    # 4. destinations: (own value + merged sources) / (1 + their count), one-hot tiles on the dot unit
    for d0 in range(0, nd, BLOCK_D):
        do = d0 + tl.arange(0, BLOCK_D)
        dmask = do < nd
        dpos = tl.load(dst_ptr + do, mask=dmask, other=0)
        for c0 in range(0, c, BLOCK_C):
            co = c0 + tl.arange(0, BLOCK_C)
            cm = co[None, :] < c
            acc = tl.load(x_b + dpos[:, None] * c + co[None, :], mask=dmask[:, None] & cm, other=0.0)
            count = tl.full([BLOCK_D], 1.0, tl.float32)
            for s0 in range(0, ns, BLOCK_S):
                so = s0 + tl.arange(0, BLOCK_S)
                smask = so < ns
                spos = tl.load(src_ptr + so, mask=smask, other=0)
                sslot = tl.load(slot_b + spos, mask=smask, other=-1)
                hit = ((sslot[None, :] == do[:, None]) & smask[None, :]).to(tl.float32)
                v = tl.load(x_b + spos[:, None] * c + co[None, :], mask=smask[:, None] & cm, other=0.0)
                acc += tl.dot(hit, v, input_precision="ieee")
                count += tl.sum(hit, axis=1)
            tl.store(out_b + do[:, None] * c + co[None, :], tl.div_rn(acc, count[:, None]),
                     mask=dmask[:, None] & cm)
