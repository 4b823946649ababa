"""Static TensorRT compatibility check of an ONNX graph, before any engine is built.

Runs on a host without TensorRT: each rule is one documented limitation of the TensorRT ONNX parser
(``operators.md`` of the 10.x/11.x releases) or of DLA, and each problem names the node it was found
at, so a user can fix the export instead of reading a parser stack trace on the robot.

Model-local ONNX functions (TensorRT >= 9 imports their bodies in place) are checked through their
bodies, scoped by the calling node's name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from segrt.engines.model_info import DEFAULT_DOMAINS, is_quantized
from segrt.engines.targets import Target
from segrt.engines.trt_table import (
    EINSUM_EXTENDED,
    LOCAL_FUNCTIONS,
    OPERATORS,
    PLUGIN_NAMESPACE_FROM_DOMAIN,
    PLUGINS_OVER_LOCAL_FUNCTIONS,
    TENSOR_INPUTS,
    max_opset,
)
from segrt.engines.versions import TrtVersion
from segrt.export.passes.node_attrs import node_attr
from segrt.trt_limits import DLA_MAX_DIM, TOPK_MAX_K

SEVERITIES = ("error", "warning", "info")

# Operators the TensorRT 10 ONNX parser imports (operators.md, TensorRT 10.15 edition); those added after
# 10.0 are gated by release in segrt.engines.trt_table.OPERATORS.
_SUPPORTED_OPS_TEXT = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
"""
SUPPORTED_OPS = frozenset(_SUPPORTED_OPS_TEXT.split())
QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
RESIZE_MODES = ("nearest", "linear")
RESIZE_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
RESIZE_NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
SCATTER_PLUGIN_REDUCTIONS = ("add", "mul", "max", "min")
REDUCE_OPS = frozenset(o for o in SUPPORTED_OPS if o.startswith("Reduce"))
# Layers DLA cannot run: with GPU fallback they move to the GPU (and split the engine into DLA/GPU parts).
NOT_ON_DLA = frozenset({"Gather", "GatherElements", "GatherND", "LayerNormalization", "Erf", "Gelu", "MatMul",
                        "Einsum", "ArgMax", "ArgMin", "TopK", "Cast", "Shape", "Range", "NonZero", "ScatterElements",
                        "ScatterND", "Expand", "Tile", "Where", "CumSum", "Mod"})
FP16_MAX = 65504.0


@dataclass
class Issue:
    severity: str  # error: the parser or builder will fail; warning: builds, but check it; info: FYI
    rule: str
    message: str
    node: str | None = None  # scoped node name, e.g. "block1/TokenMerge_0/node_Add_3"
    op_type: str | None = None
    function: str | None = None  # "domain.name" of the model-local function the node is in

    def __str__(self) -> str:
        where = f" at {self.node} ({self.op_type})" if self.node else ""
        return f"{self.severity}: [{self.rule}]{where}: {self.message}"


@dataclass
class CompatReport:
    target: str
    tensorrt: str
    precision: str
    dla: bool
    model: str
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors: the parser and builder are expected to accept the model."""
        return not self.errors

    @property
    def clean(self) -> bool:
        """No errors and no warnings."""
        return not self.errors and not self.warnings

    def find(self, rule: str) -> list[Issue]:
        return [i for i in self.issues if i.rule == rule]

    def summary(self) -> str:
        infos = len(self.issues) - len(self.errors) - len(self.warnings)
        state = "clean" if self.clean else "OK with warnings" if self.ok else "FAILS"
        return (f"{self.model} for {self.target} (TensorRT {self.tensorrt}, "
                f"{self.precision}{', DLA' if self.dla else ''}): "
                f"{state}: {len(self.errors)} errors, {len(self.warnings)} warnings, {infos} notes")

    def to_text(self) -> str:
        return "\n".join([self.summary(), *(f"  {i}" for i in self.issues)]) + "\n"

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "issues"}, "ok": self.ok, "clean": self.clean,
                "issues": [asdict(i) for i in self.issues]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


# ---------------------------------------------------------------------------------------------- walking
@dataclass
class _Scope:
    """Constants and producers visible in one graph body (main graph, subgraph or function body)."""

    prefix: str
    constants: dict[str, np.ndarray]
    function: str | None = None
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)


def _producers(nodes) -> dict[str, onnx.NodeProto]:
    return {out: node for node in nodes for out in node.output if out}


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"<{node.op_type} #{index}>"


def _constant_value(node: onnx.NodeProto, caller: onnx.NodeProto | None) -> np.ndarray | None:
    """The value of a Constant node; in a function body its attribute may refer to the caller's attribute."""
    for a in node.attribute:
        source = a
        if a.ref_attr_name:
            source = next((c for c in (caller.attribute if caller is not None else []) if c.name == a.ref_attr_name),
                          None)
            if source is None:
                return None
        value = onnx.helper.get_attribute_value(source)
        if a.name == "value" and isinstance(value, onnx.TensorProto):
            return numpy_helper.to_array(value)
        if a.name in ("value_int", "value_ints"):
            return np.array(value, np.int64)
        if a.name in ("value_float", "value_floats"):
            return np.array(value, np.float32)
    return None


def _constants(nodes, initializers, caller: onnx.NodeProto | None = None) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in initializers}
    for node in nodes:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
            value = _constant_value(node, caller)
            if value is not None:
                values[node.output[0]] = value
    return values


def _upper_bound(scope: _Scope, name: str, depth: int = 0) -> float | None:
    """An upper bound of every element of integer tensor ``name``, from constants through Min/Max/Add/Sub,
    reshapes and casts; None when it cannot be bounded statically (TopK's K in the merge functions is
    ``Max(Min(remaining, LIMIT), 1)``: bounded by LIMIT although ``remaining`` is a runtime value)."""
    if name in scope.constants:
        value = scope.constants[name]
        return float(np.max(value)) if value.size else None
    node = scope.producers.get(name)
    if node is None or depth > 32:
        return None
    bounds = [_upper_bound(scope, i, depth + 1) if i else None for i in node.input]
    if node.op_type == "Min":
        known = [b for b in bounds if b is not None]
        return min(known) if known else None
    known = [b for b in bounds if b is not None]
    if node.op_type in ("Max", "Add", "Concat") and known and len(known) == len(bounds):
        return max(known) if node.op_type != "Add" else sum(known)
    if node.op_type == "Sub" and bounds and bounds[0] is not None and node.input[1] in scope.constants:
        return bounds[0] - float(np.min(scope.constants[node.input[1]]))
    if node.op_type in ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Flatten") and bounds:
        return bounds[0]
    return None


class _Checker:
    def __init__(self, model: onnx.ModelProto, target: Target, version: TrtVersion, precision: str, dla: bool):
        self.model, self.target, self.version, self.precision, self.dla = model, target, version, precision, dla
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.issues: list[Issue] = []
        self.used_functions: set[tuple[str, str]] = set()
        self.dla_fallback: list[str] = []
        self.main_ops: dict[str, str] = {}  # main-graph node label -> op type
        self.current_function: str | None = None  # set while checking nodes of a function body

    def add(self, severity: str, rule: str, message: str, node: str | None = None, op_type: str | None = None) -> None:
        self.issues.append(Issue(severity, rule, message, node, op_type, self.current_function))

    # ------------------------------------------------------------------ graph traversal
    def walk(self, nodes, scope: _Scope, depth: int = 0) -> Iterator[tuple[str, onnx.NodeProto, _Scope]]:
        for index, node in enumerate(nodes):
            name = scope.prefix + _node_label(node, index)
            yield name, node, scope
            for a in node.attribute:
                graphs = ([a.g] if a.type == onnx.AttributeProto.GRAPH
                          else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else [])
                for g in graphs:
                    inner = _Scope(f"{name}/{a.name}/", {**scope.constants, **_constants(g.node, g.initializer)},
                                   scope.function, {**scope.producers, **_producers(g.node)})
                    yield from self.walk(g.node, inner, depth)
            fn = self.functions.get((node.domain, node.op_type))
            if fn is not None and depth < 16:
                self.used_functions.add((fn.domain, fn.name))
                inner = _Scope(f"{name}/", _constants(fn.node, [], caller=node), f"{fn.domain}.{fn.name}",
                               _producers(fn.node))
                yield from self.walk(fn.node, inner, depth + 1)

    def run(self) -> list[Issue]:
        self.check_model_header()
        main = _Scope("", _constants(self.model.graph.node, self.model.graph.initializer), None,
                      _producers(self.model.graph.node))
        consumers: dict[str, list[str]] = {}
        for name, node, scope in self.walk(self.model.graph.node, main):
            if scope is main:
                self.main_ops[name] = node.op_type
                for i in node.input:
                    consumers.setdefault(i, []).append(name)
            self.current_function = scope.function
            self.check_node(name, node, scope)
            self.current_function = None
        self.issues = _group_function_issues(self.issues)
        for key in sorted(self.used_functions):
            note = f"model-local function {key[0]}.{key[1]} is inlined by the parser (TensorRT >= 9)"
            if PLUGINS_OVER_LOCAL_FUNCTIONS.available(self.version):
                # No TensorRT plugin implements segrt's functions; only an application-registered one would win.
                note += (f"; TensorRT >= 10.7 would use a plugin creator named {key[1]!r} instead, if the "
                         "application registered one (segrt registers none)")
            self.add("info", "local-function", note)
        self.check_initializers(main, consumers)
        self.check_types()
        self.check_inputs()
        self.check_memory()
        if self.dla_fallback:
            shown = ", ".join(self.dla_fallback[:8]) + (" ..." if len(self.dla_fallback) > 8 else "")
            self.add("info", "dla-gpu-fallback", f"{len(self.dla_fallback)} nodes cannot run on DLA and will run on "
                     f"the GPU (GPU fallback): {shown}")
        return self.issues

    # ------------------------------------------------------------------ whole-model rules
    def check_model_header(self) -> None:
        opset = next((o.version for o in self.model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
        if opset and opset < 9:
            self.add("error", "opset", f"opset {opset} is older than the parser reads (9); re-export with opset >= 17")
        elif opset > max_opset(self.version):
            self.add("warning", "opset", f"opset {opset} is newer than TensorRT {self.version} documents "
                     f"(up to {max_opset(self.version)}); export with opset 17")
        if self.model.functions and not LOCAL_FUNCTIONS.available(self.version):
            self.add("error", "local-function", f"TensorRT {self.version} cannot parse model-local functions")
        quantized = is_quantized(self.model.graph.node)
        if quantized and self.precision != "int8":
            self.add("error", "qdq",
                     f"the graph has Q/DQ nodes but precision is {self.precision}; build with --precision int8")
        if self.dla and self.precision == "fp32":
            self.add("error", "dla-precision", "DLA runs FP16 or INT8 only")
        if self.dla and self.target.dla_cores == 0:
            self.add("error", "dla-unavailable", f"{self.target.name} has no DLA cores")

    def check_inputs(self) -> None:
        init = {i.name for i in self.model.graph.initializer}
        for value in self.model.graph.input:
            if value.name in init:
                continue
            dims = value.type.tensor_type.shape.dim
            dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value") or d.dim_value <= 0]
            if self.dla and dynamic:
                self.add("error", "dla-dynamic-shape",
                         f"input {value.name} has dynamic axes {dynamic}: DLA needs static "
                         "shapes; export with a fixed --size and batch", value.name, "input")
            if self.dla and any(d.dim_value > DLA_MAX_DIM for d in dims):
                self.add("error", "dla-dimension", f"input {value.name} has a dimension above DLA's {DLA_MAX_DIM}",
                         value.name, "input")

    def check_initializers(self, main: _Scope, consumers: dict[str, list[str]]) -> None:
        for tensor in self.model.graph.initializer:
            users = consumers.get(tensor.name, [])
            where = users[0] if users else tensor.name
            if tensor.data_type == onnx.TensorProto.INT64:
                values = main.constants[tensor.name]
                slice_only = users and all(self._op_of(u) == "Slice" for u in users)
                # No warning for values beyond INT32: the parser keeps INT64 natively since TensorRT 9.0
                # (parser changelog 9.0 EA), and segrt plans for 10.x and 11.x only.
                if self.dla and values.size > 1 and not slice_only:
                    self.dla_fallback.append(f"{where} (INT64 weights)")
            elif tensor.data_type == onnx.TensorProto.DOUBLE:
                self.add("warning", "double-weights", f"FP64 weight {tensor.name}: TensorRT casts DOUBLE to FLOAT",
                         where, self._op_of(where))
            elif tensor.data_type == onnx.TensorProto.FLOAT and self.precision in ("fp16", "int8"):
                values = main.constants[tensor.name]
                big = np.abs(values[np.isfinite(values)]) if values.size else values
                if big.size and float(big.max()) > FP16_MAX:
                    self.add("warning", "fp16-range", f"weight {tensor.name} has values up to {float(big.max()):.3g}, "
                             f"beyond FP16's {FP16_MAX:g}: keep its consumers in FP32", where, self._op_of(where))

    def check_types(self) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, check_type=False, strict_mode=False)
        except (onnx.shape_inference.InferenceError, RuntimeError,
                ValueError) as exc:  # best effort: the parser infers its own
            self.add("info", "shape-inference", f"ONNX shape inference failed ({exc}); type rules skipped")
            return
        io = {v.name for v in inferred.graph.input} | {v.name for v in inferred.graph.output}
        producers = {o: _node_label(n, i) for i, n in enumerate(inferred.graph.node) for o in n.output}
        ops = {_node_label(n, i): n.op_type for i, n in enumerate(inferred.graph.node)}
        for value in inferred.graph.value_info:
            elem = value.type.tensor_type.elem_type
            node = producers.get(value.name)
            if elem == onnx.TensorProto.UINT8 and value.name not in io:
                self.add("error", "uint8-tensor", f"tensor {value.name} is UINT8 inside the network; TensorRT supports "
                         "UINT8 only for network inputs and outputs", node, ops.get(node or ""))
            if self.dla:
                dims = value.type.tensor_type.shape.dim
                if any(d.HasField("dim_value") and d.dim_value > DLA_MAX_DIM for d in dims):
                    self.dla_fallback.append(f"{node} (dimension > {DLA_MAX_DIM})")

    def check_memory(self) -> None:
        weights = 0
        for t in self.model.graph.initializer:
            n = int(np.prod(t.dims)) if t.dims else 1
            bytes_per = {"fp32": 4, "fp16": 2,
                         "int8": 1}[self.precision] if t.data_type == onnx.TensorProto.FLOAT else \
                onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            weights += n * bytes_per
        mb = weights / 2**20
        if mb > self.target.memory_budget_mb:
            self.add("warning", "memory-budget", f"weights alone take {mb:.0f} MB at {self.precision}, above the "
                     f"{self.target.name} budget of {self.target.memory_budget_mb} MB")

    def _op_of(self, name: str) -> str | None:
        return self.main_ops.get(name)

    # ------------------------------------------------------------------ per-node rules
    def check_node(self, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
        op, domain = node.op_type, node.domain
        if (domain, op) in self.functions:
            return  # its body is walked and checked
        if domain not in DEFAULT_DOMAINS:
            self.check_custom_op(name, node)
            return
        if op in QOPERATOR_OPS:
            self.add("error", "unsupported-op", f"{op} (QOperator/dynamic quantization) does not parse; export "
                     "explicit Q/DQ instead (`segrt export --precision int8 --int8-form qdq`: QuantizeLinear/"
                     "DequantizeLinear only)", name, op)
            return
        feature = OPERATORS.get(op)
        if feature is not None:
            if not feature.available(self.version):
                self.add("error", "unsupported-op", f"{op} is not parsed by TensorRT {self.version}: "
                         f"{feature.describe()}", name, op)
                return
        elif op not in SUPPORTED_OPS:
            self.add("error", "unsupported-op", f"TensorRT's ONNX parser has no importer for {op}", name, op)
            return
        self.check_tensor_inputs(name, node, scope)
        rule = NODE_RULES.get(op) or (_check_reduce if op in REDUCE_OPS else None)
        if rule is not None:
            rule(self, name, node, scope)
        if self.dla and op in NOT_ON_DLA:
            self.dla_fallback.append(name)

    def check_tensor_inputs(self, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
        """Inputs (axes) that older parsers only read from initializers or Constant nodes."""
        for (op, index), feature in TENSOR_INPUTS.items():
            if node.op_type != op or len(node.input) <= index or not node.input[index]:
                continue
            if node.input[index] not in scope.constants and not feature.available(self.version):
                self.add("error", "version-gated-input", f"input {index} ({node.input[index]}) is computed at run "
                         f"time; TensorRT {self.version} needs a constant there: {feature.describe()}", name, op)
        if node.op_type == "Einsum" and not EINSUM_EXTENDED.available(self.version):
            equation = str(node_attr(node, "equation", "")).replace(" ", "")
            operands = equation.split("->")[0].split(",")
            if "..." in equation or any(len(set(t)) != len(t) for t in operands):
                self.add("error", "version-gated-input", f"Einsum equation {equation!r} uses an ellipsis or a repeated "
                         f"(diagonal) index: {EINSUM_EXTENDED.describe()}", name, op)

    def check_custom_op(self, name: str, node: onnx.NodeProto) -> None:
        op, domain = node.op_type, node.domain
        if domain == "com.microsoft":
            self.add("error", "unsupported-op", f"{op} is an ONNX Runtime contrib operator (com.microsoft); TensorRT "
                     "does not parse it: export without ORT-specific fusions", name, op)
        elif domain.startswith("ai.onnx.") or domain == "ai.onnx.ml":
            self.add("error", "unsupported-op", f"{domain}.{op} is not parsed by TensorRT", name, op)
        else:
            namespace = node_attr(node, "plugin_namespace", None)
            from_domain = PLUGIN_NAMESPACE_FROM_DOMAIN.available(self.version)
            ns = namespace if namespace is not None else (domain if from_domain else "")
            self.add("warning", "plugin-required", f"no model-local function named {domain}.{op}: the parser "
                     f"looks for a TensorRT plugin creator {op!r} (version {node_attr(node, 'plugin_version', '1')}, "
                     f"namespace {ns!r}); it must be registered when building and when loading the engine", name, op)


def _group_function_issues(issues: list[Issue]) -> list[Issue]:
    """A problem in a function body repeats at every call; report it once with its call sites."""
    grouped: dict[tuple, list[Issue]] = {}
    out: list[Issue] = []
    for issue in issues:
        if issue.function is None or issue.node is None:
            out.append(issue)
            continue
        call, _, inner = issue.node.partition("/")
        key = (issue.function, issue.rule, issue.severity, inner, issue.message)
        if key not in grouped:
            grouped[key] = []
            out.append(issue)
        grouped[key].append(issue)
    for (function, _rule, _sev, _inner, message), same in grouped.items():
        calls = [i.node.partition("/")[0] for i in same if i.node]
        shown = ", ".join(calls[:4]) + (f" and {len(calls) - 4} more" if len(calls) > 4 else "")
        same[0].message = f"{message} [in function {function}, called by {shown}]"
    return out


def _constant(scope: _Scope, node: onnx.NodeProto, index: int) -> np.ndarray | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    return scope.constants.get(node.input[index])


def _check_topk(c: _Checker, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
    if node_attr(node, "sorted", 1) != 1:
        c.add("error", "topk", "TopK needs sorted=1", name, "TopK")
    k = _constant(scope, node, 1) if node.input[1:] else np.array(node_attr(node, "k", 0))
    if k is not None:
        if int(np.max(k)) >= TOPK_MAX_K:
            c.add("error", "topk", f"K = {int(np.max(k))} but TensorRT's TopK needs K < {TOPK_MAX_K}", name, "TopK")
        return
    bound = _upper_bound(scope, node.input[1])
    if bound is None or bound >= TOPK_MAX_K:
        c.add("warning", "topk", f"K comes from a runtime tensor{'' if bound is None else f' bounded by {bound:g}'}; "
              f"TensorRT needs K < {TOPK_MAX_K} at run time (bound it with Min(K, {TOPK_MAX_K - 1}))", name, "TopK")


def _check_resize(c: _Checker, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
    mode = node_attr(node, "mode", "nearest")
    if mode not in RESIZE_MODES:
        c.add("error", "resize", f"Resize mode {mode!r} is not supported (only {', '.join(RESIZE_MODES)}); "
              "use bilinear interpolation", name, "Resize")
    transform = node_attr(node, "coordinate_transformation_mode", "half_pixel")
    if transform not in RESIZE_TRANSFORMS:
        c.add("error", "resize", f"coordinate_transformation_mode {transform!r} is not supported", name, "Resize")
    if mode == "nearest" and node_attr(node, "nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST_MODES:
        c.add("error", "resize", f"nearest_mode {node_attr(node, 'nearest_mode')!r} is not supported", name, "Resize")
    if node_attr(node, "antialias", 0):
        c.add("error", "resize", "antialiased Resize is not supported", name, "Resize")
    if node_attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        c.add("error", "resize", "only keep_aspect_ratio_policy 'stretch' is supported", name, "Resize")


def _check_scatter_elements(c: _Checker, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
    reduction = node_attr(node, "reduction", "none")
    if reduction in SCATTER_PLUGIN_REDUCTIONS:
        c.add("warning", "plugin-required", f"ScatterElements with reduction={reduction!r} runs through TensorRT's "
              "ScatterElements plugin from libnvinfer_plugin (segrt's builder and runtime load it; other apps must "
              "call "
              "initLibNvInferPlugins); the plugin has no BF16/INT8 and needs INT64 indices", name, "ScatterElements")


def _check_scatter_nd(c: _Checker, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
    reduction = node_attr(node, "reduction", "none")
    if reduction != "none":
        c.add("error", "scatternd", f"ScatterND supports reduction 'none' only, not {reduction!r}", name, "ScatterND")


def _check_layernorm(c: _Checker, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
    if any(node.output[1:]):
        c.add("error", "layernorm", "only LayerNormalization's first output Y is supported (Mean/InvStdDev are used)",
              name, "LayerNormalization")


def _check_maxpool(c: _Checker, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
    if any(node.output[1:]):
        c.add("error", "maxpool", "MaxPool's Indices output is not supported", name, "MaxPool")


def _check_reduce(c: _Checker, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
    if len(node.input) > 1 and node.input[1] and _constant(scope, node, 1) is None:
        c.add("error", "reduce-axes", f"{node.op_type} axes must be an initializer, not a runtime tensor", name,
              node.op_type)


def _check_quantize(c: _Checker, name: str, node: onnx.NodeProto, scope: _Scope) -> None:
    zero_point = _constant(scope, node, 2)
    if zero_point is not None:
        if zero_point.dtype == np.uint8:
            c.add("error", "qdq", "UINT8 quantization is not supported: quantize symmetrically to INT8 "
                  "(QInt8, zero point 0)", name, node.op_type)
        elif np.any(zero_point != 0):
            c.add("error", "qdq", "zero point must be 0 (symmetric quantization)", name, node.op_type)
    elif len(node.input) > 2 and node.input[2]:
        c.add("warning", "qdq", "zero point is a runtime tensor; TensorRT needs a constant 0", name, node.op_type)


NODE_RULES: dict[str, Callable[[_Checker, str, onnx.NodeProto, _Scope], None]] = {
    "TopK": _check_topk,
    "Resize": _check_resize,
    "ScatterElements": _check_scatter_elements,
    "ScatterND": _check_scatter_nd,
    "LayerNormalization": _check_layernorm,
    "MaxPool": _check_maxpool,
    "QuantizeLinear": _check_quantize,
    "DequantizeLinear": _check_quantize,
}


def check_model(model: onnx.ModelProto, target: Target, version: TrtVersion | str, precision: str = "fp16",
                dla: bool = False, model_name: str = "model") -> CompatReport:
    """Check ``model`` against the parser rules of TensorRT ``version`` for ``target``."""
    version = TrtVersion.parse(version)
    report = CompatReport(target=target.name, tensorrt=str(version), precision=precision, dla=dla, model=model_name)
    report.issues = _Checker(model, target, version, precision, dla).run()
    order = {s: i for i, s in enumerate(SEVERITIES)}
    report.issues.sort(key=lambda i: order[i.severity])
    return report
