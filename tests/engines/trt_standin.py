"""Strict CPU stand-ins for ``tensorrt`` and ``cuda.bindings.runtime``, so segrt's builder, backend and
verify code run their TensorRT/CUDA paths in tests on a machine without either.

``StrictTensorRT`` is generated from the installed tensorrt-stubs (the signatures ``make typecheck`` uses)
and gated by :mod:`segrt.engines.trt_table` for the TensorRT version it pretends to be:

- an attribute, enum member or method the stubs do not declare raises AttributeError;
- a call whose arguments bind to none of the stub's signatures raises TypeError (wrong arity/keyword);
- assigning a read-only property or an undeclared attribute raises AttributeError;
- an API member the table says is missing in that version (``BuilderFlag.FP16`` in 11.x, a parser flag
  from 10.15 in 10.3) raises AttributeError, as the real module would.

Behind the strict surface sit small CPU behaviours (``_Builder``, ``_Runtime``, ...). They never stand for
TensorRT results: the "engine" is a JSON description of what the builder was asked to do, so a test can
check the requests segrt made, and the "inference" is a fixed numpy function of the input so a test can
check the data path (copies, chunking, devices), not accuracy.
"""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import inspect
import json
import re
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segrt.engines.trt_table import api_available

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
from trt_typings import fix_signature  # noqa: E402  (tools/ is not a package)

ENGINE_MAGIC = b"standin-engine\n"


# ------------------------------------------------------------------------------------------ stub model
@dataclass
class Member:
    kind: str  # method | property | attribute | constant
    signatures: list[inspect.Signature] = field(default_factory=list)
    settable: bool = False
    value: int = 0  # enum value, for constants


@dataclass
class ClassSpec:
    name: str
    bases: list[str]
    members: dict[str, Member] = field(default_factory=dict)
    nested: dict[str, ClassSpec] = field(default_factory=dict)


def _signature(fn: ast.FunctionDef) -> inspect.Signature:
    a = fn.args
    params: list[inspect.Parameter] = []
    positional = [*a.posonlyargs, *a.args]
    first_default = len(positional) - len(a.defaults)
    for i, arg in enumerate(positional):
        kind = inspect.Parameter.POSITIONAL_ONLY if i < len(a.posonlyargs) else inspect.Parameter.POSITIONAL_OR_KEYWORD
        default = ... if i >= first_default else inspect.Parameter.empty
        params.append(inspect.Parameter(arg.arg, kind, default=default))
    if a.vararg:
        params.append(inspect.Parameter(a.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        params.append(inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY,
                                        default=... if default is not None else inspect.Parameter.empty))
    if a.kwarg:
        params.append(inspect.Parameter(a.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def _decorators(fn: ast.FunctionDef) -> list[str]:
    return [ast.unparse(d) for d in fn.decorator_list]


def _class_spec(node: ast.ClassDef, lines: list[str]) -> ClassSpec:
    spec = ClassSpec(node.name, [ast.unparse(b).split(".")[-1] for b in node.bases])
    for item in node.body:
        if isinstance(item, ast.ClassDef):
            spec.nested[item.name] = _class_spec(item, lines)
        elif isinstance(item, ast.FunctionDef):
            decorators = _decorators(item)
            if "property" in decorators:
                spec.members.setdefault(item.name, Member("property"))
            elif any(d.endswith(".setter") for d in decorators):
                spec.members.setdefault(item.name, Member("property")).settable = True
            else:
                member = spec.members.setdefault(item.name, Member("method"))
                member.signatures.append(_signature(item))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            name = item.target.id
            if "ClassVar" in ast.unparse(item.annotation):
                match = re.search(r"value = <[\w.]+: (-?\d+)>", lines[item.lineno - 1])
                spec.members[name] = Member("constant", value=int(match.group(1)) if match else 0)
            else:
                spec.members[name] = Member("attribute", settable=True)
    return spec


def load_stubs() -> tuple[dict[str, ClassSpec], dict[str, list[inspect.Signature]]]:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tensorrt-stubs are not installed (pip install --no-deps tensorrt-stubs)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tensorrt.pyi"
    lines = [fix_signature(line) for line in path.read_text().splitlines()]
    tree = ast.parse("\n".join(lines))
    classes: dict[str, ClassSpec] = {}
    functions: dict[str, list[inspect.Signature]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = _class_spec(node, lines)
        elif isinstance(node, ast.FunctionDef):
            functions.setdefault(node.name, []).append(_signature(node))
    return classes, functions


_STUBS: tuple[dict[str, ClassSpec], dict[str, list[inspect.Signature]]] | None = None


def stubs() -> tuple[dict[str, ClassSpec], dict[str, list[inspect.Signature]]]:
    global _STUBS
    if _STUBS is None:
        _STUBS = load_stubs()
    return _STUBS


def _bind(signatures: list[inspect.Signature], what: str, args: tuple, kwargs: dict) -> None:
    errors = []
    for sig in signatures:
        try:
            sig.bind(*args, **kwargs)
            return
        except TypeError as exc:
            errors.append(str(exc))
    raise TypeError(f"{what}: arguments {args[1:]!r} {kwargs!r} match no stub signature ({'; '.join(errors)})")


# ------------------------------------------------------------------------------------------ strict surface
@dataclass(frozen=True)
class EnumValue:
    owner: str
    name: str
    value: int

    def __int__(self) -> int:
        return self.value

    def __lt__(self, other: EnumValue) -> bool:
        return self.value < other.value

    def __le__(self, other: EnumValue) -> bool:
        return self.value <= other.value


class _StrictMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        cls._gate(cls._generated()._spec.name, name)  # type: ignore[attr-defined]  (table before stubs)
        owner, member = cls._lookup(name)  # type: ignore[attr-defined]
        cls._gate(owner, name)  # type: ignore[attr-defined]
        nested = cls._nested(name)  # type: ignore[attr-defined]
        if nested is not None:
            return nested
        if member.kind == "constant":
            return EnumValue(owner, name, member.value)
        raise AttributeError(f"tensorrt.{cls.__name__}.{name} is not a class-level attribute in the stubs")


class StrictObject(metaclass=_StrictMeta):
    _spec: ClassSpec
    _module: StrictTensorRT

    # -------------------------------------------------------------- class-level helpers
    @classmethod
    def _generated(cls) -> type[StrictObject]:
        for klass in cls.__mro__:
            if "_spec" in klass.__dict__:
                return klass
        raise AssertionError("not a stand-in class")

    @classmethod
    def _lookup(cls, name: str) -> tuple[str, Member]:
        gen = cls._generated()
        classes, _ = stubs()
        queue = [gen._spec]
        while queue:
            spec = queue.pop(0)
            if name in spec.members:
                return spec.name, spec.members[name]
            if name in spec.nested:
                return spec.name, Member("constant")
            queue += [classes[b] for b in spec.bases if b in classes]
        raise AttributeError(f"tensorrt.{gen._spec.name} has no attribute {name!r} (tensorrt-stubs)")

    @classmethod
    def _nested(cls, name: str) -> type[StrictObject] | None:
        gen = cls._generated()
        classes, _ = stubs()
        queue = [gen._spec]
        while queue:
            spec = queue.pop(0)
            if name in spec.nested:
                return gen._module._class(spec.nested[name], f"{spec.name}.{name}")
            queue += [classes[b] for b in spec.bases if b in classes]
        return None

    @classmethod
    def _gate(cls, owner: str, name: str) -> None:
        version = cls._generated()._module.__version__
        if not api_available(f"{owner}.{name}", version):
            raise AttributeError(f"tensorrt {version} has no {owner}.{name} (segrt.engines.trt_table)")

    # -------------------------------------------------------------- instances
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        gen = type(self)._generated()
        _, member = gen._lookup("__init__")
        _bind(member.signatures, f"tensorrt.{gen._spec.name}()", (self, *args), kwargs)
        factory = gen._module.behaviours.get(gen._spec.name)
        object.__setattr__(self, "_impl", factory(gen._module, *args, **kwargs) if factory else None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_impl":
            raise AttributeError(name)
        gen = type(self)._generated()
        gen._gate(gen._spec.name, name)  # the version table first: it also knows members newer than the stubs
        owner, member = gen._lookup(name)
        gen._gate(owner, name)
        if member.kind == "constant":
            return getattr(gen, name)
        impl = object.__getattribute__(self, "_impl")
        if impl is None or not hasattr(impl, name):
            raise NotImplementedError(f"the stand-in has no behaviour for {gen._spec.name}.{name}")
        if member.kind == "method":
            method = getattr(impl, name)

            def checked(*args: Any, **kwargs: Any) -> Any:
                _bind(member.signatures, f"tensorrt.{gen._spec.name}.{name}", (self, *args), kwargs)
                return method(*args, **kwargs)

            return checked
        return getattr(impl, name)

    def __setattr__(self, name: str, value: Any) -> None:
        gen = type(self)._generated()
        if type(self) is not gen:
            try:
                gen._lookup(name)
            except AttributeError:  # a Python subclass (ILogger, IProgressMonitor) keeping its own state
                object.__setattr__(self, name, value)
                return
        owner, member = gen._lookup(name)
        gen._gate(owner, name)
        if not member.settable:
            raise AttributeError(f"tensorrt.{gen._spec.name}.{name} is read-only in the stubs")
        impl = object.__getattribute__(self, "_impl")
        if impl is None:
            raise NotImplementedError(f"the stand-in has no behaviour for {gen._spec.name}")
        setattr(impl, name, value)


class StrictTensorRT(types.ModuleType):
    """The stand-in module. ``behaviours`` maps stub class names to factories ``(module, *args) -> impl``."""

    def __init__(self, version: str, behaviours: dict[str, Any] | None = None, functions: dict[str, Any] | None = None):
        super().__init__("tensorrt")
        self.__version__ = version
        self.behaviours = {**DEFAULT_BEHAVIOURS, **(behaviours or {})}
        self.functions = {**DEFAULT_FUNCTIONS, **(functions or {})}
        self.classes: dict[str, type] = {}
        self.calls: list[str] = []  # module-level function calls, for assertions
        self.dla_cores = 0  # what Builder.num_DLA_cores reports

    def _class(self, spec: ClassSpec, qualname: str) -> type:
        if qualname not in self.classes:
            base: tuple[type, ...] = (tuple, StrictObject) if spec.name == "Dims" else (StrictObject,)
            namespace: dict[str, Any] = {"_spec": spec, "_module": self}
            if spec.name == "Dims":
                namespace["__new__"] = lambda cls, shape=(): tuple.__new__(cls, [int(d) for d in shape])
                namespace["__init__"] = lambda self, shape=(): None
            self.classes[qualname] = _StrictMeta(spec.name, base, namespace)
        return self.classes[qualname]

    def wrap(self, class_name: str, impl: Any) -> Any:
        """An instance of stub class ``class_name`` backed by ``impl`` (as TensorRT returns objects)."""
        classes, _ = stubs()
        obj = object.__new__(self._class(classes[class_name], class_name))
        object.__setattr__(obj, "_impl", impl)
        return obj

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        classes, functions = stubs()
        if not api_available(name, self.__version__):
            raise AttributeError(f"tensorrt {self.__version__} has no {name} (segrt.engines.trt_table)")
        if name in classes:
            return self._class(classes[name], name)
        if name in functions or name == "nptype":
            impl = self.functions.get(name)
            if impl is None:
                raise NotImplementedError(f"the stand-in has no behaviour for tensorrt.{name}")
            signatures = functions.get(name, [])

            def checked(*args: Any, **kwargs: Any) -> Any:
                if signatures:
                    _bind([_with_self(s) for s in signatures], f"tensorrt.{name}", (None, *args), kwargs)
                self.calls.append(name)
                return impl(self, *args, **kwargs)

            return checked
        raise AttributeError(f"module 'tensorrt' has no attribute {name!r} (tensorrt-stubs)")


def _with_self(sig: inspect.Signature) -> inspect.Signature:
    """Module functions have no self; prepend one so every binding uses the same (self, *args) shape."""
    return sig.replace(parameters=[inspect.Parameter("_self", inspect.Parameter.POSITIONAL_ONLY),
                                   *sig.parameters.values()])


# ------------------------------------------------------------------------------------------ CPU behaviours
_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
           "INT8": np.int8, "UINT8": np.uint8}
_LAYER_TYPES = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "ReduceMean": "REDUCE",
                "ReduceSum": "REDUCE", "Conv": "CONVOLUTION", "MatMul": "MATRIX_MULTIPLY"}


def _nptype(trt: StrictTensorRT, dtype: EnumValue) -> type:
    return _DTYPES[dtype.name]


class _Tensor:
    def __init__(self, trt: StrictTensorRT, name: str, shape: list[int], dtype: str = "FLOAT"):
        self.name, self.shape, self.dtype = name, trt.Dims(shape), getattr(trt.DataType, dtype)


class _Layer:
    def __init__(self, trt: StrictTensorRT, node: onnx.NodeProto):
        self.name = node.name
        self.type = getattr(trt.LayerType, _LAYER_TYPES.get(node.op_type, "ELEMENTWISE"))
        self._inputs = [trt.wrap("ITensor", _Tensor(trt, n, [-1])) for n in node.input[:1]]
        self._outputs = [trt.wrap("ITensor", _Tensor(trt, n, [-1])) for n in node.output]
        self.num_inputs, self.num_outputs = len(self._inputs), len(self._outputs)
        self.precision = trt.DataType.FLOAT
        self.precision_is_set = False
        self.output_types: dict[int, EnumValue] = {}

    def get_input(self, index: int) -> Any:
        return self._inputs[index]

    def get_output(self, index: int) -> Any:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: EnumValue) -> None:
        self.output_types[index] = dtype

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "precision" and hasattr(self, "precision"):
            object.__setattr__(self, "precision_is_set", True)
        object.__setattr__(self, name, value)


class _Network:
    def __init__(self, trt: StrictTensorRT, flags: int):
        self.trt, self.flags = trt, flags
        self.layers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.num_layers = self.num_inputs = self.num_outputs = 0

    def load(self, model: onnx.ModelProto) -> None:
        def dims(value: onnx.ValueInfoProto) -> list[int]:
            return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

        init = {i.name for i in model.graph.initializer}
        self.inputs = [self.trt.wrap("ITensor", _Tensor(self.trt, v.name, dims(v)))
                       for v in model.graph.input if v.name not in init]
        self.outputs = [self.trt.wrap("ITensor", _Tensor(self.trt, v.name, dims(v))) for v in model.graph.output]
        self.layers = [self.trt.wrap("ILayer", _Layer(self.trt, n)) for n in model.graph.node]
        self.num_layers, self.num_inputs, self.num_outputs = len(self.layers), len(self.inputs), len(self.outputs)

    def get_layer(self, index: int) -> Any:
        return self.layers[index]

    def get_input(self, index: int) -> Any:
        return self.inputs[index]

    def get_output(self, index: int) -> Any:
        return self.outputs[index]


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> bytes:
        return self.data or b"standin-timing-cache"


class _Config:
    def __init__(self, trt: StrictTensorRT):
        self.trt = trt
        self.flags: list[str] = []
        self.profiles: list[_Profile] = []
        self.pool_limits: dict[str, int] = {}
        self.builder_optimization_level = 3
        self.default_device_type = trt.DeviceType.GPU
        self.DLA_core = -1
        self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
        self.plugins_to_serialize: list[str] = []
        self.progress_monitor = None
        self._cache: Any = None

    def set_memory_pool_limit(self, pool: EnumValue, size: int) -> None:
        self.pool_limits[pool.name] = size

    def set_flag(self, flag: EnumValue) -> None:
        self.flags.append(flag.name)

    def add_optimization_profile(self, profile: Any) -> int:
        self.profiles.append(profile._impl)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> Any:
        return self.trt.wrap("ITimingCache", _TimingCache(bytes(serialized_timing_cache)))

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True

    def get_timing_cache(self) -> Any:
        return self._cache


class _Builder:
    def __init__(self, trt: StrictTensorRT, logger: Any):
        self.trt = trt
        self.num_DLA_cores = trt.dla_cores
        self.network: _Network | None = None

    def create_network(self, flags: int = 0) -> Any:
        self.network = _Network(self.trt, flags)
        return self.trt.wrap("INetworkDefinition", self.network)

    def create_builder_config(self) -> Any:
        return self.trt.wrap("IBuilderConfig", _Config(self.trt))

    def create_optimization_profile(self) -> Any:
        return self.trt.wrap("IOptimizationProfile", _Profile())

    def build_serialized_network(self, network: Any, config: Any) -> bytes:
        """The stand-in's "engine": what segrt asked the builder for, so runtime and tests can read it back."""
        net, cfg = network._impl, config._impl
        strongly_typed = bool(net.flags & (1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        layers = [layer._impl for layer in net.layers]
        description = {
            "inputs": [{"name": t.name, "shape": list(t.shape)} for t in net.inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape)} for t in net.outputs],
            "profiles": [p.shapes for p in cfg.profiles], "flags": cfg.flags, "strongly_typed": strongly_typed,
            "fp32_layers": [layer.name for layer in layers if layer.precision_is_set],
            "plugins_to_serialize": list(cfg.plugins_to_serialize),
            "version_compatible": "VERSION_COMPATIBLE" in cfg.flags,
            "dla_core": cfg.DLA_core if cfg.default_device_type.name == "DLA" else None,
            "hardware_compatibility": cfg.hardware_compatibility_level.name,
            "progress_monitor": cfg.progress_monitor is not None,
            "tensorrt": self.trt.__version__,
        }
        return ENGINE_MAGIC + json.dumps(description).encode()


class _ParserError:
    def __init__(self, message: str):
        self.message = message

    def node_name(self) -> str:
        return ""

    def node(self) -> int:
        return -1

    def node_operator(self) -> str:
        return ""

    def desc(self) -> str:
        return self.message


class _Parser:
    def __init__(self, trt: StrictTensorRT, network: Any, logger: Any):
        self.trt, self.network = trt, network._impl
        self.flags: list[str] = []
        self.errors: list[Any] = []
        self.num_errors = 0
        self.model: onnx.ModelProto | None = None

    def set_flag(self, flag: EnumValue) -> None:
        self.flags.append(flag.name)

    def parse_from_file(self, model: str) -> bool:
        self.model = onnx.load(model, load_external_data=False)
        self.network.load(self.model)
        return True

    def get_error(self, index: int) -> Any:
        return self.trt.wrap("ParserError", self.errors[index])

    def get_used_vc_plugin_libraries(self) -> list[str]:
        """Graphs with a reducing ScatterElements need TensorRT's plugin library (token-merged models)."""
        nodes = [n for n in self.model.graph.node] if self.model else []
        reducing = any(n.op_type == "ScatterElements" and any(a.name == "reduction" and a.s != b"none"
                                                                for a in n.attribute) for n in nodes)
        return ["libnvinfer_vc_plugin.so.10"] if reducing else []


class _Engine:
    def __init__(self, trt: StrictTensorRT, description: dict):
        self.trt, self.description = trt, description
        self.io = [(t, "INPUT") for t in description["inputs"]] + [(t, "OUTPUT") for t in description["outputs"]]
        self.num_io_tensors = len(self.io)

    def _tensor(self, name: str) -> tuple[dict, str]:
        return next((t, mode) for t, mode in self.io if t["name"] == name)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]["name"]

    def get_tensor_mode(self, name: str) -> EnumValue:
        return getattr(self.trt.TensorIOMode, self._tensor(name)[1])

    def get_tensor_dtype(self, name: str) -> EnumValue:
        return self.trt.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> Any:
        return self.trt.Dims(self._tensor(name)[0]["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        lo, opt, hi = self.description["profiles"][profile_index][name]
        return [self.trt.Dims(lo), self.trt.Dims(opt), self.trt.Dims(hi)]

    def create_execution_context(self) -> Any:
        return self.trt.wrap("IExecutionContext", _Context(self))


class _Context:
    """Runs the stand-in "network": output channel k is input channel 0 times (k + 1), on the CPU memory
    the stand-in cudart hands out, in the stream's order."""

    def __init__(self, engine: _Engine):
        self.engine = engine
        self.shapes = {t["name"]: list(t["shape"]) for t, _ in engine.io}
        self.addresses: dict[str, int] = {}
        self.executions: list[dict] = []

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        profiles = self.engine.description["profiles"]
        if profiles and name in profiles[0]:
            lo, _, hi = profiles[0][name]
            if not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                return False
        elif list(shape) != self.shapes[name]:
            return False
        self.shapes[name] = list(shape)
        out = self.engine.description["outputs"][0]
        n, _, h, w = shape
        self.shapes[out["name"]] = [n, out["shape"][1], h, w]
        return True

    def get_tensor_shape(self, name: str) -> Any:
        return self.engine.trt.Dims(self.shapes[name])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3 takes the stream's integer handle")
        cudart = CURRENT_CUDART[0]
        src, dst = self.engine.description["inputs"][0]["name"], self.engine.description["outputs"][0]["name"]
        in_shape, out_shape = self.shapes[src], self.shapes[dst]
        record = {"device": cudart.current_device(), "shape": list(in_shape), "stream": stream_handle}

        def run() -> None:
            x = _view(self.addresses[src], in_shape)
            y = _view(self.addresses[dst], out_shape)
            for k in range(out_shape[1]):
                y[:, k] = x[:, 0] * (k + 1)
            self.executions.append(record)

        cudart.enqueue(stream_handle, run)
        return True


def _view(address: int, shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape))
    raw = (ctypes.c_float * count).from_address(address)
    return np.ctypeslib.as_array(raw).reshape(shape)


def expected_output(batch: np.ndarray, classes: int) -> np.ndarray:
    """What the stand-in network computes, for assertions."""
    return np.stack([batch[:, 0] * (k + 1) for k in range(classes)], axis=1).astype(np.float32)


class _Runtime:
    def __init__(self, trt: StrictTensorRT, logger: Any):
        self.trt = trt
        self.engine_host_code_allowed = False
        self.DLA_core = -1
        self.deserialised: list[dict] = []

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Any:
        data = bytes(serialized_engine)
        if not data.startswith(ENGINE_MAGIC):
            return None
        description = json.loads(data[len(ENGINE_MAGIC):])
        self.deserialised.append({"dla_core": self.DLA_core, "host_code": self.engine_host_code_allowed})
        # TensorRT refuses a version-compatible engine (it embeds host code) unless allowed, and a DLA
        # engine needs its core set before deserialisation.
        if description["version_compatible"] and not self.engine_host_code_allowed:
            return None
        if description["dla_core"] is not None and self.DLA_core != description["dla_core"]:
            return None
        return self.trt.wrap("ICudaEngine", _Engine(self.trt, description))


class _Logger:
    def __init__(self, trt: StrictTensorRT, min_severity: Any = None):
        self.min_severity = min_severity


def _init_plugins(trt: StrictTensorRT, logger: Any, namespace: str) -> bool:
    return True


DEFAULT_BEHAVIOURS: dict[str, Any] = {"Builder": _Builder, "OnnxParser": _Parser, "Runtime": _Runtime,
                                      "Logger": _Logger}
DEFAULT_FUNCTIONS: dict[str, Any] = {"init_libnvinfer_plugins": _init_plugins, "nptype": _nptype}


# ------------------------------------------------------------------------------------------ cuda.bindings
CURRENT_CUDART: list[Any] = [None]


class CpuCudart:
    """``cuda.bindings.runtime`` on the CPU: pinned and device memory are host buffers, streams queue
    their work until synchronised (or captured into a graph), and the current device is per thread."""

    class cudaError_t:  # noqa: N801  (the cuda.bindings spelling)
        cudaSuccess = 0
        cudaErrorInvalidDevice = 101
        cudaErrorInsufficientDriver = 35

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode:  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking = 1

    def __init__(self, devices: list[tuple[int, int]] | None = None, integrated: bool = True, driver: int = 12060):
        self.devices = [(8, 7)] if devices is None else devices
        self.integrated = integrated
        self.driver = driver  # CUDA version the driver supports; 0: no driver installed
        self._thread = threading.local()
        self.memory: dict[int, Any] = {}
        self.queues: dict[int, list] = {}
        self.capturing: dict[int, list] = {}
        self.graph_launches = 0
        self.set_device_calls: list[tuple[str, int]] = []
        self._next_stream = 0x5000
        CURRENT_CUDART[0] = self

    def current_device(self) -> int:
        return getattr(self._thread, "device", 0)

    def cudaGetErrorName(self, err: int) -> tuple[int, bytes]:  # noqa: N802
        return 0, f"cudaError{err}".encode()

    def cudaGetDeviceCount(self) -> tuple[int, int]:  # noqa: N802
        if not self.driver:
            return self.cudaError_t.cudaErrorInsufficientDriver, 0
        return 0, len(self.devices)

    def cudaDriverGetVersion(self) -> tuple[int, int]:  # noqa: N802
        return 0, self.driver

    def cudaRuntimeGetVersion(self) -> tuple[int, int]:  # noqa: N802
        return 0, 12060

    def cudaSetDevice(self, device: int) -> tuple[int]:  # noqa: N802
        if not 0 <= device < len(self.devices):
            return (self.cudaError_t.cudaErrorInvalidDevice,)
        self._thread.device = device
        self.set_device_calls.append((threading.current_thread().name, device))
        return (0,)

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:  # noqa: N802
        major, minor = self.devices[device]
        return 0, types.SimpleNamespace(major=major, minor=minor, name=b"Stand-in GPU\x00",
                                        totalGlobalMem=8 << 30, integrated=int(self.integrated))

    def _alloc(self, nbytes: int) -> tuple[int, int]:
        buffer = ctypes.create_string_buffer(nbytes)
        address = ctypes.addressof(buffer)
        self.memory[address] = buffer
        return 0, address

    def cudaMallocHost(self, nbytes: int) -> tuple[int, int]:  # noqa: N802
        return self._alloc(nbytes)

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:  # noqa: N802
        return self._alloc(nbytes)

    def cudaFreeHost(self, ptr: int) -> tuple[int]:  # noqa: N802
        self.memory.pop(ptr)
        return (0,)

    cudaFree = cudaFreeHost  # noqa: N815

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[int, Any]:  # noqa: N802
        from cuda.bindings import runtime as real  # a real handle type, so stream_handle() is exercised

        self._next_stream += 1
        self.queues[self._next_stream] = []
        return 0, real.cudaStream_t(self._next_stream)

    @staticmethod
    def _handle(stream: Any) -> int:
        from cuda.bindings.utils import get_cuda_native_handle

        return stream if isinstance(stream, int) else int(get_cuda_native_handle(stream))

    def enqueue(self, stream: Any, work: Any) -> None:
        handle = self._handle(stream)
        (self.capturing[handle] if handle in self.capturing else self.queues[handle]).append(work)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: int, stream: Any) -> tuple[int]:  # noqa: N802
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, count))
        return (0,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[int]:  # noqa: N802
        queue = self.queues[self._handle(stream)]
        while queue:
            queue.pop(0)()
        return (0,)

    def cudaStreamDestroy(self, stream: Any) -> tuple[int]:  # noqa: N802
        self.queues.pop(self._handle(stream))
        return (0,)

    def cudaStreamBeginCapture(self, stream: Any, mode: int) -> tuple[int]:  # noqa: N802
        self.capturing[self._handle(stream)] = []
        return (0,)

    def cudaStreamEndCapture(self, stream: Any) -> tuple[int, list]:  # noqa: N802
        return 0, self.capturing.pop(self._handle(stream))

    def cudaGraphInstantiate(self, graph: list, flags: int) -> tuple[int, list]:  # noqa: N802
        return 0, list(graph)

    def cudaGraphLaunch(self, graph_exec: list, stream: Any) -> tuple[int]:  # noqa: N802
        self.graph_launches += 1
        for work in graph_exec:
            self.enqueue(stream, work)
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec: list) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaGraphDestroy(self, graph: list) -> tuple[int]:  # noqa: N802
        return (0,)
