"""``segrt::TokenMerge`` as a TensorRT ahead-of-time plugin (TensorRT >= 10.9, Quickly Deployable Plugins).

:func:`register` defines, with the documented ``tensorrt.plugin`` decorators:

- ``@trtp.register``: inputs x (B, N, C), metric (B, N, C), dst_index (Nd,), src_index (Ns,), attribute
  ``r``; outputs merged (B, Nd + Ns - r, C) in x's type and slot (B, N) int64 - the shape function is
  symbolic (``ShapeExpr`` arithmetic), so it holds for every static size the graph was exported at;
- ``@trtp.autotune``: one type combination, FP32 tensors and INT64 indices, linear layout (the kernel is
  FP32 only; a weakly typed FP16 build reformats around it);
- ``@trtp.aot_impl``: compiles :mod:`segrt.token_merge_kernel` with Triton for the GPU that builds
  the engine (no FP contraction, so the scores round as in the reference) and returns its name, PTX,
  launch parameters (one program per image) and the int32 scalar arguments as symbolic expressions.

The engine then embeds the kernel: running it needs no Python, no triton and no registration
(NVIDIA/TensorRT quickly_deployable_plugins README). Building needs TensorRT >= 10.9, triton and a GPU.
The ONNX side (plugin nodes) is :mod:`segrt.export.methods.merging.plugin_form`; the version rules are
:mod:`segrt.engines.plugin_rules`.
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin reads the decorated functions' annotations
# as objects (TensorDesc, int, Tuple[...]) to tell inputs from attributes and to check the signatures.
import functools
import re
from collections.abc import Callable
from typing import Any, List, Tuple, Union

from segrt.runtime.errors import BackendError, BackendUnavailableError, ConfigError
from segrt.trt_plugins import TOKEN_MERGE

IO_TYPES = "FP32, FP32, INT64, INT64, FP32, INT64"  # x, metric, dst_index, src_index -> merged, slot
KERNEL_ARGS = 11  # pointers and int32 scalars TensorRT passes: 4 inputs, 5 scalars, 2 outputs


@functools.cache
def register() -> str:
    """Define the plugin in TensorRT's registry (once per process); returns its id ``segrt::TokenMerge``.

    Call before parsing a plugin-form ONNX: the parser maps each TokenMerge node (``plugin_namespace``
    "segrt", ``aot`` 1) to this definition."""
    try:
        import triton

        from segrt import token_merge_kernel
    except ImportError as exc:
        raise BackendUnavailableError(f"building an engine with the {TOKEN_MERGE.plugin_id} plugin compiles its "
                                      f"Triton kernel: pip install triton ({exc})") from exc
    define(lambda: compile_kernel(triton, token_merge_kernel))
    return TOKEN_MERGE.plugin_id


def define(compiled: Callable[[], Tuple[str, str, int, int]]) -> None:
    """The decorated definitions (``compiled()`` returns kernel name, PTX, num_warps and shared memory
    bytes; it runs when TensorRT asks for the AOT implementation, i.e. while building)."""
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise BackendUnavailableError(f"the {TOKEN_MERGE.plugin_id} plugin needs tensorrt.plugin "
                                      f"(TensorRT >= {TOKEN_MERGE.min_tensorrt}): {exc}") from exc
    plugin_id = TOKEN_MERGE.plugin_id

    @trtp.register(plugin_id)
    def token_merge_desc(x: trtp.TensorDesc, metric: trtp.TensorDesc, dst_index: trtp.TensorDesc,
                         src_index: trtp.TensorDesc, r: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        kept = dst_index.shape_expr[0] + src_index.shape_expr[0] - r
        merged = trtp.from_shape_expr((x.shape_expr[0], kept, x.shape_expr[2]), dtype=x.dtype)
        slot = trtp.from_shape_expr((x.shape_expr[0], x.shape_expr[1]), dtype=trt.DataType.INT64)
        return merged, slot

    @trtp.autotune(plugin_id)
    def token_merge_autotune(x: trtp.TensorDesc, metric: trtp.TensorDesc, dst_index: trtp.TensorDesc,
                             src_index: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc]
                             ) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(IO_TYPES, "LINEAR")]

    @trtp.aot_impl(plugin_id)
    def token_merge_aot(x: trtp.TensorDesc, metric: trtp.TensorDesc, dst_index: trtp.TensorDesc,
                        src_index: trtp.TensorDesc, r: int, outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc],
                        tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams,
                                              trtp.SymExprs]:
        if x.dtype != trt.DataType.FLOAT or metric.dtype != trt.DataType.FLOAT:
            raise ConfigError(f"{plugin_id} computes in FP32; TensorRT offered {x.dtype} / {metric.dtype}")
        name, ptx, num_warps, shared = compiled()
        params = trtp.KernelLaunchParams()
        params.grid_x = trtp.SymInt32(x.shape_expr[0])  # one program per image: exact selection, no grid barrier
        params.block_x = num_warps * 32
        params.shared_mem = shared
        scalars = (x.shape_expr[1], dst_index.shape_expr[0], src_index.shape_expr[0], x.shape_expr[2], r)
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])
        return name.encode(), ptx.encode(), params, extra


@functools.cache
def compile_kernel(triton: Any, kernel_module: Any, target: Any = None) -> Tuple[str, str, int, int]:
    """Compile the kernel to PTX (for the current GPU, or ``target``: a ``triton.backends.compiler.GPUTarget``,
    which needs no GPU); returns (kernel name, PTX, num_warps, shared memory bytes)."""
    signature = {**kernel_module.SIGNATURE, **{k: "constexpr" for k in kernel_module.CONSTANTS}}
    source = triton.compiler.ASTSource(fn=kernel_module.token_merge_kernel, signature=signature,
                                       constexprs=kernel_module.CONSTANTS)
    try:
        compiled = triton.compile(source, target=target, options={"enable_fp_fusion": False})
    except Exception as exc:
        raise BackendError(f"Triton could not compile the {TOKEN_MERGE.plugin_id} kernel: {type(exc).__name__}: "
                           f"{exc}") from exc
    ptx = compiled.asm["ptx"]
    check_ptx_parameters(ptx, compiled.metadata)
    return compiled.metadata.name, ptx, int(compiled.metadata.num_warps), int(compiled.metadata.shared)


def check_ptx_parameters(ptx: str, metadata: Any) -> int:
    """TensorRT launches an AOT kernel with its input pointers, the extra int32 scalars and its output
    pointers, nothing else. Triton >= 3.3 appends scratch-buffer pointers to every kernel; they may stay
    unset only if the kernel uses no scratch memory. Returns the number of PTX parameters."""
    entry = re.search(r"\.entry\s+\S+\s*\(([^)]*)\)", ptx)
    if entry is None:
        raise BackendError(f"no .entry in the compiled {TOKEN_MERGE.plugin_id} PTX")
    count = entry.group(1).count(".param")
    scratch = [name for name in ("global_scratch_size", "profile_scratch_size") if getattr(metadata, name, 0)]
    if count < KERNEL_ARGS or (count > KERNEL_ARGS and scratch):
        raise BackendError(f"the compiled {TOKEN_MERGE.plugin_id} kernel takes {count} parameters "
                           f"(scratch memory: {', '.join(scratch) or 'none'}); TensorRT passes {KERNEL_ARGS}: use a "
                           "triton version whose kernels need no scratch buffers")
    return count
