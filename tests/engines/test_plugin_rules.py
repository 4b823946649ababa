"""The plugin form of token merging (``segrt export --merge-ops plugin``) at build and load time: which
TensorRT may build it (AOT plugins: 10.9+; JetPack 6's 10.3 is refused saying what to use), what the plan and
the manifest record, and the TensorRT backend's MissingPluginError for an engine whose plugin cannot load."""

# No ``from __future__ import annotations``: the tensorrt.plugin stand-in reads annotations as objects.
import inspect
import json
import re
import sys
import types
import typing

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_trt_paths_cpu import devices, segmentation_onnx  # noqa: F401  (fixture)

from segrt.engines.builder import build_engine, register_plugins
from segrt.engines.manifest import Manifest, TensorSpec, check_versions, manifest_path, sha256_bytes, write_manifest
from segrt.engines.model_info import describe
from segrt.engines.plan import BuildPlan, BuildRequest, PlanFile, make_plan
from segrt.engines.plugin_rules import AOT_PLUGINS, TOKEN_MERGE, plugins_used
from segrt.engines.targets import get_target
from segrt.engines.trt_table import PLUGINS_OVER_LOCAL_FUNCTIONS
from segrt.engines.versions import TrtVersion
from segrt.runtime.backends.engine_manifest import check_plugins, read_manifest
from segrt.runtime.errors import ConfigError, MissingPluginError, ModelLoadError


def merge_model(tmp_path, plugin: bool):
    """A (1, 3, 8, 8) image graph whose 64 tokens go through one segrt TokenMerge, as a plugin node (plugin
    form: plugin attributes, no definition) or as a call of a model-local function (function form)."""
    attrs = {"r": 20}
    if plugin:
        attrs.update(plugin_namespace="segrt", plugin_version="1", aot=1)
    dst = numpy_helper.from_array(np.arange(0, 64, 4, dtype=np.int64), "dst")
    src = numpy_helper.from_array(np.array([i for i in range(64) if i % 4], np.int64), "src")
    shape = numpy_helper.from_array(np.array([1, 3, 64], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["t3"]),
             helper.make_node("Transpose", ["t3"], ["tokens"], perm=[0, 2, 1]),
             helper.make_node("TokenMerge", ["tokens", "tokens", "dst", "src"], ["merged", "slot"], domain="segrt",
                              **attrs)]
    graph = helper.make_graph(nodes, "merge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("merged", TensorProto.FLOAT, [1, 44, 3])],
                              [dst, src, shape])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("segrt", 1)])
    if not plugin:  # the definition's body does not matter to the rules, only that it exists
        body = helper.make_node("Identity", ["x"], ["merged"])
        model.functions.append(helper.make_function("segrt", "TokenMerge", ["x", "metric", "dst_index",
                                                                           "src_index"], ["merged", "slot"],
                                                    [body], [helper.make_opsetid("", 17)], attributes=["r"]))
    path = tmp_path / ("plugin.onnx" if plugin else "function.onnx")
    onnx.save(model, str(path))
    return path


def info_of(path):
    return describe(onnx.load(str(path)), path)


def plan(path, target, version, **request):
    return make_plan(get_target(target), info_of(path), version, BuildRequest(target, **request), stem=path.stem)


def test_the_version_rules_match_the_table():
    assert not AOT_PLUGINS.available("10.3") and not AOT_PLUGINS.available("10.8")
    assert AOT_PLUGINS.available("10.9") and AOT_PLUGINS.available("10.16") and AOT_PLUGINS.available("11.4.1")
    # the parser only prefers a plugin over a same-named local function from 10.7: the plugin form drops the body
    assert PLUGINS_OVER_LOCAL_FUNCTIONS.since == (10, 7)
    assert TrtVersion.parse(TOKEN_MERGE.min_tensorrt) == TrtVersion(*AOT_PLUGINS.since)


def test_only_plugin_nodes_count_as_plugins(tmp_path):
    assert [p.plugin_id for p in plugins_used(info_of(merge_model(tmp_path, plugin=True)))] == ["segrt::TokenMerge"]
    assert plugins_used(info_of(merge_model(tmp_path, plugin=False))) == []


def test_jetpack_6_refuses_the_plugin_form_and_says_what_to_use(tmp_path):
    path = merge_model(tmp_path, plugin=True)
    for target in ("jetson-orin", "jetson-orin-nano"):
        with pytest.raises(ConfigError) as err:
            plan(path, target, "10.3", precision="fp16")
        text = str(err.value)
        assert "segrt::TokenMerge" in text and "10.3" in text and ">= 10.9" in text
        assert "--merge-ops function" in text and "C++ IPluginV3" in text  # the two ways forward on JetPack 6
    # the function form builds there as it always did
    assert plan(merge_model(tmp_path, plugin=False), "jetson-orin", "10.3", precision="fp16").plugins == []


def test_a_pinned_release_without_aot_plugins_is_refused(tmp_path):
    path = merge_model(tmp_path, plugin=True)
    with pytest.raises(ConfigError, match=r"TensorRT 10.8.*>= 10.9|>= 10.9.*TensorRT 10.8"):
        plan(path, "desktop", "10.8", precision="fp32", tensorrt="10.8")


def test_any_10x_is_planned_for_10_9_and_the_plugin_is_recorded(tmp_path):
    path = merge_model(tmp_path, plugin=True)
    p10 = plan(path, "desktop", "10", precision="fp16")
    assert p10.tensorrt == "10.9" and any("10.9" in n and "segrt::TokenMerge" in n for n in p10.notes)
    assert p10.plugins == [TOKEN_MERGE.to_dict()] and p10.plugins[0]["id"] == "segrt::TokenMerge"
    assert "FP16" in p10.builder_flags  # weakly typed: TensorRT reformats around the FP32 plugin
    jp7 = plan(path, "jetson-orin-jp7", "10.16", precision="fp16")
    assert jp7.tensorrt == "10.16" and jp7.plugins and not any("planned for" in n for n in jp7.notes)
    function_form = plan(merge_model(tmp_path, plugin=False), "desktop", "10", precision="fp16")
    assert function_form.tensorrt == "10.0" and function_form.plugins == []
    # the plan file (build bundle) keeps the record
    PlanFile(BuildRequest("desktop"), [p10]).save(tmp_path / "plan.json")
    assert PlanFile.load(tmp_path / "plan.json").plans[0].plugins == p10.plugins


def test_strongly_typed_fp16_is_refused_fp32_is_not(tmp_path):
    path = merge_model(tmp_path, plugin=True)
    with pytest.raises(ConfigError, match="FP32 only"):
        plan(path, "desktop", "11.4.1", precision="fp16")
    p11 = plan(path, "desktop", "11.4.1", precision="fp32")
    assert p11.strongly_typed and p11.plugins


def test_the_builder_refuses_a_plugin_plan_on_an_older_tensorrt(tmp_path, devices):  # noqa: F811
    devices("10.8.0.43")
    path = merge_model(tmp_path, plugin=True)
    p = plan(path, "desktop", "10.9", precision="fp32", tensorrt="10.9")
    with pytest.raises(ConfigError, match=r"segrt::TokenMerge.*>= 10.9.*runs 10.8"):
        build_engine(p, path, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="does not provide"):
        register_plugins(BuildPlan(**{**p.to_dict(), "plugins": [{**p.plugins[0], "id": "other::Op"}]}),
                         TrtVersion(10, 9))


# ------------------------------------------------------------------------------------------ manifest and loading
def manifest(plugins, version="10.9.0.34", engine_sha="0" * 64):
    return Manifest(engine_file="model.engine", engine_sha256=engine_sha, tensorrt_version=version, target="desktop",
                    compute_capability=[8, 6], gpu_name="stand-in", precision="fp32",
                    inputs=[TensorSpec("x", [1, 3, 64, 64], "float32")],
                    outputs=[TensorSpec("logits", [1, 3, 64, 64], "float32")], metadata={}, plugins=plugins)


def test_the_manifest_records_the_plugins_and_old_manifests_read_without(tmp_path):
    m = manifest([TOKEN_MERGE.to_dict()])
    again = Manifest.from_json(m.to_json())
    assert again.plugins == [TOKEN_MERGE.to_dict()]
    raw = json.loads(m.to_json())
    del raw["plugins"]  # a manifest written before plugins existed
    assert Manifest.from_json(json.dumps(raw)).plugins == []


def test_a_tensorrt_without_the_plugin_gets_missing_plugin_error(tmp_path):
    m = manifest([TOKEN_MERGE.to_dict()], version="10.9.0.34")
    m.version_compatible = True
    check_versions(m, "10.9.0.34")
    check_plugins(m, "10.9.0.34")
    with pytest.raises(MissingPluginError, match=r"segrt::TokenMerge \(aot, TensorRT >= 10.9\).*10.8"):
        check_plugins(m, "10.8.0.43")
    check_plugins(manifest([]), "10.3.0.30")  # no plugins: nothing to check


def test_engine_whose_plugin_cannot_load_is_refused_naming_it(tmp_path, devices):  # noqa: F811
    """TensorRT returns no engine when deserialisation fails; with plugins in the manifest the backend says
    which plugin, as MissingPluginError (a plain ModelLoadError without)."""
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    devices("10.9.0.34")
    engine = tmp_path / "model.engine"
    data = b"an engine this TensorRT cannot deserialise"
    engine.write_bytes(data)
    write_manifest(manifest([TOKEN_MERGE.to_dict()], engine_sha=sha256_bytes(data)), engine)
    assert read_manifest(engine).plugins
    with pytest.raises(MissingPluginError, match="segrt::TokenMerge") as err:
        TensorRTBackend(engine)
    assert "--merge-ops function" in str(err.value)
    write_manifest(manifest([], engine_sha=sha256_bytes(data)), engine)
    with pytest.raises(ModelLoadError) as err:
        TensorRTBackend(engine)
    assert not isinstance(err.value, MissingPluginError)
    assert manifest_path(engine).is_file() and "tensorrt" in sys.modules


def test_function_form_builds_unchanged_through_the_standin(tmp_path, devices):  # noqa: F811
    """A model without plugin nodes registers nothing and records no plugins."""
    devices("10.3.0.30")
    onnx_path = segmentation_onnx(tmp_path / "seg.onnx")
    p = make_plan(get_target("desktop"), info_of(onnx_path), "10.3", BuildRequest("desktop", precision="fp32"),
                  stem="seg")
    result = build_engine(p, onnx_path, tmp_path, progress=False)
    assert read_manifest(result.engine).plugins == [] and p.plugins == []


# ------------------------------------------------------------------------------------------ tensorrt.plugin
class QuickPluginStandin(types.ModuleType):
    """``tensorrt.plugin`` as NVIDIA documents it (register, autotune, aot_impl, TensorDesc, ShapeExpr(s),
    SymInt32, SymIntExprs, KernelLaunchParams, AutoTuneCombination), strict about the documented signatures:
    annotations required on register, inputs (TensorDesc) before attributes of a supported type, autotune
    and aot_impl with the registered inputs, a subset of its attributes, ``outputs`` (and ``tactic``), and
    their documented return types. Shapes are concrete ints: the stand-in evaluates, it does not build."""

    ATTR_TYPES = (int, float, str, bool, bytes)

    def __init__(self, trt):
        super().__init__("tensorrt.plugin")
        self.trt, self.plugins = trt, {}
        plugin = self

        class ShapeExpr:
            def __init__(self, value=0):
                self.value = value.value if isinstance(value, ShapeExpr) else int(value)

            def _op(self, other, fn):
                return ShapeExpr(fn(self.value, other.value if isinstance(other, ShapeExpr) else int(other)))

            __add__ = lambda self, o: self._op(o, lambda a, b: a + b)  # noqa: E731
            __radd__ = __add__
            __sub__ = lambda self, o: self._op(o, lambda a, b: a - b)  # noqa: E731
            __rsub__ = lambda self, o: self._op(o, lambda a, b: b - a)  # noqa: E731
            __mul__ = lambda self, o: self._op(o, lambda a, b: a * b)  # noqa: E731
            is_constant = True

            def constant_value(self):
                return self.value

        class ShapeExprs(tuple):
            def numel(self):
                return ShapeExpr(int(np.prod([e.value for e in self])))

        class TensorDesc:
            def __init__(self, shape_expr=None, dtype=None):
                self.shape_expr = ShapeExprs(ShapeExpr(e) for e in (shape_expr or ()))
                self.dtype = dtype

        class SymInt32:
            def __init__(self, value):
                if not isinstance(value, (int, ShapeExpr)):
                    raise TypeError(f"SymInt32 takes an int or a ShapeExpr, not {type(value).__name__}")
                self.value = value.value if isinstance(value, ShapeExpr) else value

        class SymExprs(tuple):
            pass

        class SymIntExprs(SymExprs):
            @classmethod
            def from_tuple(cls, exprs):
                exprs = list(exprs)
                if not all(isinstance(e, SymInt32) for e in exprs):
                    raise TypeError("SymIntExprs.from_tuple takes SymInt32 values")
                return cls(exprs)

        launch_types = (int, SymInt32)

        class KernelLaunchParams:
            FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

            def __init__(self, **kwargs):
                for name in self.FIELDS:
                    setattr(self, name, kwargs.pop(name, 0 if name == "shared_mem" else 1))
                if kwargs:
                    raise TypeError(f"unexpected KernelLaunchParams arguments {sorted(kwargs)}")

            def __setattr__(self, name, value):
                if name not in self.FIELDS:
                    raise AttributeError(f"KernelLaunchParams has no {name}")
                if not isinstance(value, launch_types):  # documented: int, IDimensionExpr or SymInt32
                    raise TypeError(f"KernelLaunchParams.{name} takes int or SymInt32, not {type(value).__name__}")
                object.__setattr__(self, name, value)

        class AutoTuneCombination:
            def __init__(self, io_types=None, layouts=None, tactics=None):
                self.io_types, self.layouts = io_types, layouts
                names = {"FP32", "FP16", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8", "INT4"}
                for group in (io_types or "").split(","):
                    if not set(group.replace("*", "|").strip().split("|")) <= names:
                        raise ValueError(f"bad io_types entry {group!r}")

        for cls in (ShapeExpr, ShapeExprs, TensorDesc, SymInt32, SymExprs, SymIntExprs, KernelLaunchParams,
                    AutoTuneCombination):
            setattr(self, cls.__name__, cls)
        self.from_shape_expr = lambda shape, dtype: TensorDesc(tuple(shape), dtype)

        def register(plugin_id, lazy_register=False):
            if not re.fullmatch(r"[A-Za-z_]\w*::[A-Za-z_]\w*", plugin_id):
                raise ValueError(f"plugin id {plugin_id!r} is not namespace::name")

            def wrap(fn):
                sig = inspect.signature(fn)
                if sig.return_annotation is inspect.Signature.empty or any(
                        p.annotation is inspect.Parameter.empty for p in sig.parameters.values()):
                    raise TypeError("trt.plugin.register needs type hints on every input and the return value")
                if any(isinstance(a, str) for a in [sig.return_annotation, *(p.annotation for p in
                                                                             sig.parameters.values())]):
                    raise TypeError("annotations are strings (from __future__ import annotations?): the plugin "
                                    "module reads them as types")
                inputs, attrs = [], {}
                for p in sig.parameters.values():
                    if p.annotation is TensorDesc:
                        if attrs:
                            raise TypeError(f"input {p.name} declared after attributes")
                        inputs.append(p.name)
                    elif p.annotation in plugin.ATTR_TYPES:
                        attrs[p.name] = p.annotation
                    else:
                        raise TypeError(f"attribute {p.name}: unsupported type {p.annotation}")
                ret = sig.return_annotation
                if ret is not TensorDesc and not (typing.get_origin(ret) is tuple
                                                  and all(a is TensorDesc for a in typing.get_args(ret))):
                    raise TypeError(f"register must return TensorDesc or Tuple[TensorDesc], not {ret}")
                outputs = 1 if ret is TensorDesc else len(typing.get_args(ret))
                plugin.plugins[plugin_id] = {"desc": fn, "inputs": inputs, "attrs": attrs, "outputs": outputs}
                return fn

            return wrap

        def _check_impl(plugin_id, fn, extra, ret):
            spec = plugin.plugins.get(plugin_id)
            if spec is None:
                raise ValueError(f"{plugin_id} is not registered")
            params = list(inspect.signature(fn).parameters.values())
            n = len(spec["inputs"])
            for p in params[:n]:
                if p.annotation not in (inspect.Parameter.empty, TensorDesc):
                    raise TypeError(f"input {p.name} must be a TensorDesc")
            rest = params[n:]
            names = [p.name for p in rest]
            if names[len(names) - len(extra):] != list(extra):
                raise TypeError(f"expected trailing parameters {extra}, got {names}")
            for p in rest[:len(rest) - len(extra)]:
                if p.name not in spec["attrs"] or p.annotation not in (inspect.Parameter.empty, spec["attrs"][p.name]):
                    raise TypeError(f"{p.name} is not a registered attribute of {plugin_id}")
            out = inspect.signature(fn).return_annotation
            if out is not inspect.Signature.empty and out != ret:
                raise TypeError(f"return annotation {out} is not the documented {ret}")
            return spec

        def autotune(plugin_id):
            def wrap(fn):
                _check_impl(plugin_id, fn, ["outputs"], typing.List[AutoTuneCombination])
                plugin.plugins[plugin_id]["autotune"] = fn
                return fn

            return wrap

        def aot_impl(plugin_id):
            def wrap(fn):
                names = list(inspect.signature(fn).parameters)
                extra = ["outputs", "tactic"] if names[-1] == "tactic" else ["outputs"]
                returns = typing.Tuple[typing.Union[str, bytes], typing.Union[str, bytes], KernelLaunchParams,
                                       SymExprs]
                _check_impl(plugin_id, fn, extra, returns)

                def checked(*args, **kwargs):
                    result = fn(*args, **kwargs)
                    if not (isinstance(result, tuple) and len(result) == 4 and isinstance(result[0], (str, bytes))
                            and isinstance(result[1], (str, bytes)) and isinstance(result[2], KernelLaunchParams)
                            and isinstance(result[3], SymExprs)):
                        raise TypeError("aot_impl must return (name, compiled kernel, KernelLaunchParams, SymExprs)")
                    return result

                plugin.plugins[plugin_id]["aot_impl"] = checked
                return fn

            return wrap

        self.register, self.autotune, self.aot_impl = register, autotune, aot_impl


def test_the_plugin_registers_against_the_documented_api_and_compiles_for_orin(devices, monkeypatch):  # noqa: F811
    """The registration through a strict ``tensorrt.plugin`` stand-in, on HQ stage 3 of B0 at 1024x1024, with the
    kernel really compiled by Triton to PTX for sm_87 (Jetson Orin; compiling needs no GPU)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from segrt import token_merge_kernel
    from segrt.engines import token_merge_plugin
    from segrt.export.methods.merging.model import PRESETS, cell_partition, merge_count, merged_size

    trt, _ = devices("10.9.0.34")
    trtp = QuickPluginStandin(trt)
    trt.plugin = trtp
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    compiled = token_merge_plugin.compile_kernel(triton, token_merge_kernel, GPUTarget("cuda", 87, 32))
    token_merge_plugin.define(lambda: compiled)
    spec = trtp.plugins["segrt::TokenMerge"]
    assert spec["inputs"] == ["x", "metric", "dst_index", "src_index"] and spec["attrs"] == {"r": int}
    assert spec["outputs"] == 2 and "autotune" in spec and "aot_impl" in spec

    reduction = PRESETS["hq"].stage(2).queries  # stage 3: 64x64 tokens at 1024x1024, 4x4 cells
    dst, src = cell_partition(64, 64, reduction.cell)
    r = merge_count(64 * 64, len(src), reduction.ratio)
    x = trtp.TensorDesc((1, 4096, 160), trt.DataType.FLOAT)
    args = (x, trtp.TensorDesc((1, 4096, 160), trt.DataType.FLOAT), trtp.TensorDesc((len(dst),), trt.DataType.INT64),
            trtp.TensorDesc((len(src),), trt.DataType.INT64))
    merged, slot = spec["desc"](*args, r)
    assert [e.value for e in merged.shape_expr] == [1, merged_size(64, 64, reduction), 160]
    assert [e.value for e in slot.shape_expr] == [1, 4096] and slot.dtype == trt.DataType.INT64
    assert merged.dtype == trt.DataType.FLOAT
    (combo,) = spec["autotune"](*args, (merged, slot))
    assert len(combo.io_types.split(",")) == 6  # four inputs, two outputs

    name, ptx, params, extra = spec["aot_impl"](*args, r, (merged, slot), 0)
    assert name == b"token_merge_kernel" and b".entry token_merge_kernel" in ptx and b".target sm_87" in ptx
    assert params.grid_x.value == 1 and params.block_x == compiled[2] * 32 and params.shared_mem == compiled[3]
    assert [e.value for e in extra] == [4096, len(dst), len(src), 160, r]  # n, nd, ns, c, r as the kernel takes them
    # inputs, scalars, outputs; this triton appends two scratch pointers that the kernel never uses
    assert token_merge_plugin.check_ptx_parameters(ptx.decode(), types.SimpleNamespace()) >= \
        token_merge_plugin.KERNEL_ARGS
    with pytest.raises(ConfigError, match="FP32"):
        spec["aot_impl"](trtp.TensorDesc((1, 4096, 160), trt.DataType.HALF), *args[1:], r, (merged, slot), 0)


def test_the_quick_plugin_standin_rejects_what_the_documentation_forbids(devices):  # noqa: F811
    trt, _ = devices("10.9.0.34")
    trtp = QuickPluginStandin(trt)

    def no_hints(x, r):
        return x

    def list_attribute(x: trtp.TensorDesc, r: list) -> trtp.TensorDesc:
        return x

    def input_after_attribute(r: int, x: trtp.TensorDesc) -> trtp.TensorDesc:
        return x

    for fn in (no_hints, list_attribute, input_after_attribute):
        with pytest.raises(TypeError):
            trtp.register("segrt::Bad")(fn)
    with pytest.raises(ValueError, match="namespace::name"):
        trtp.register("TokenMerge")(no_hints)

    def good(x: trtp.TensorDesc, r: int) -> trtp.TensorDesc:
        return x

    trtp.register("segrt::Good")(good)

    def unknown_attribute(x, k: int, outputs, tactic):
        return None

    with pytest.raises(TypeError, match="not a registered attribute"):
        trtp.aot_impl("segrt::Good")(unknown_attribute)
    with pytest.raises(TypeError, match="SymInt32"):
        trtp.KernelLaunchParams().grid_x = trtp.ShapeExpr(4)  # a ShapeExpr must be wrapped in SymInt32


# ------------------------------------------------------------------------------------------ the first GPU run
@pytest.mark.gpu
def test_plugin_engine_uses_the_plugin_and_matches_the_function_form(tmp_path, random_b0, camvid_frame):
    """On a GPU with TensorRT >= 10.9 and triton: build the hq model in function and in plugin form; the plugin
    engine must not contain the function body's layers (TopK, ScatterElements) but a layer per TokenMerge node,
    record the plugin in its manifest, and give the masks of the function-form engine."""
    pytest.importorskip("triton")
    import tensorrt as trt

    from segrt.engines.bundle import write_bundle
    from segrt.engines.versions import detect_tensorrt
    from segrt.export.methods.merging.model import apply_merging
    from segrt.export.methods.merging.plugin_form import plugin_nodes, write_plugin_form
    from segrt.export.onnx_export import export_onnx
    from segrt.runtime.engine import Engine

    running = detect_tensorrt()
    if running is None or not AOT_PLUGINS.available(running):
        pytest.skip(f"TensorRT {running} has no AOT plugins")
    engines, names = {}, {}
    for form in ("function", "plugin"):
        path = tmp_path / form / "hq.onnx"
        path.parent.mkdir()
        export_onnx(apply_merging(random_b0.model, "hq"), random_b0.metadata, path, size=(256, 320),
                    verify_images=[camvid_frame])
        if form == "plugin":
            write_plugin_form(path)
            names[form] = [n.name for n in plugin_nodes(onnx.load(str(path)))]
        request = BuildRequest("desktop", precision="fp32", tensorrt=f"{running.major}.{running.minor}")
        bundle = write_bundle(path, path.parent / "bundle", get_target("desktop"), request)
        p = bundle.plan_file.for_version(running)
        engines[form] = build_engine(p, path.parent / "bundle" / p.onnx, path.parent / "bundle", progress=False)
    assert read_manifest(engines["plugin"].engine).plugins[0]["id"] == "segrt::TokenMerge"

    def layers(engine_path):
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
        return [layer if isinstance(layer, str) else layer.get("Name", "") for layer in info["Layers"]]

    function_layers, plugin_layers = layers(engines["function"].engine), layers(engines["plugin"].engine)
    assert any("TopK" in name for name in function_layers)  # the inlined body
    assert not any("TopK" in name or "ScatterElements" in name for name in plugin_layers)
    assert all(any(node in name for name in plugin_layers) for node in names["plugin"])
    masks = {form: Engine(e.engine).infer(camvid_frame) for form, e in engines.items()}
    assert float((masks["plugin"] == masks["function"]).mean()) > 0.999  # near-ties may flip a few pixels
