"""Which TensorRT can build a model whose token merging is in plugin form, and what the plan records.

``segrt export --merge-ops plugin`` writes each ``segrt.TokenMerge`` as a TensorRT plugin node (op type
``TokenMerge``, attributes ``plugin_namespace="segrt"``, ``plugin_version="1"``, ``aot=1``) without a
function body; the default function form has a body that every TensorRT inlines. The rules:

- ahead-of-time Python plugins (``tensorrt.plugin.aot_impl``: a compiled kernel embedded in the engine,
  no Python when it runs) exist from TensorRT 10.9 (Quickly Deployable Plugins are 10.6+, experimental
  until 10.9); segrt's plugin is AOT only, so the plugin form needs 10.9;
- before 10.7 the ONNX parser picks a model-local function over a plugin of the same name, which is why
  the plugin form drops the body rather than relying on precedence (:data:`trt_table.PLUGINS_OVER_LOCAL_FUNCTIONS`);
- JetPack 6 ships TensorRT 10.3: no AOT plugins there. A plugin on JetPack 6 means a C++ IPluginV3 built on
  the device against JetPack's headers (not provided by segrt); the function form runs as it is.

Sources: TensorRT Python API ``tensorrt.plugin.aot_impl`` and the quickly_deployable_plugins sample README
(NVIDIA/TensorRT, "stable feature in 10.9"; ONNX nodes: op = plugin name, ``plugin_namespace``, ``aot``).
"""

from __future__ import annotations

from segrt.engines.model_info import ModelInfo
from segrt.engines.targets import Target
from segrt.engines.trt_table import Feature
from segrt.engines.versions import TrtVersion
from segrt.runtime.errors import ConfigError
from segrt.trt_plugins import TOKEN_MERGE, PluginSpec

__all__ = ["AOT_PLUGINS", "PLUGINS", "QUICK_PLUGINS", "TOKEN_MERGE", "PluginSpec", "check_plugin_precision",
           "plan_entries", "plugin_version", "plugins_used"]

QUICK_PLUGINS = Feature("Quickly Deployable Python plugins (tensorrt.plugin)", (10, 6),
                        "TensorRT 10.6 release notes; experimental until 10.9")
AOT_PLUGINS = Feature("ahead-of-time Python plugins (tensorrt.plugin.aot_impl, kernel embedded in the engine)",
                      (10, 9), "TensorRT 10.9 release notes; NVIDIA/TensorRT quickly_deployable_plugins sample")


PLUGINS = {p.name: p for p in (TOKEN_MERGE,)}


def plugins_used(info: ModelInfo) -> list[PluginSpec]:
    """segrt plugins the model calls as plugin nodes: their op type is used and no function defines it."""
    return [p for p in PLUGINS.values() if p.name in info.op_types and f"{p.domain}.{p.name}" not in info.functions]


def _pinned(target: Target, version: TrtVersion, requested: bool) -> bool:
    """The version is a specific minor release (asked for, or the target expects one), not "any 10.x"."""
    specs = [s for s in target.tensorrt if TrtVersion.parse(s).major == version.major]
    return requested or not specs or any("." in s for s in specs)


def plugin_version(info: ModelInfo, target: Target, version: TrtVersion, requested: bool) -> TrtVersion:
    """The TensorRT version to plan a plugin-form model for; refuses versions without AOT plugins.

    A target that expects "any 10.x" (desktop) is planned for 10.9, the first with AOT plugins; a specific
    release without them (JetPack 6's 10.3, or ``--tensorrt 10.8``) is refused saying what to use there."""
    used = plugins_used(info)
    if not used or AOT_PLUGINS.available(version):
        return version
    first = TrtVersion.parse(max(p.min_tensorrt for p in used))
    if not _pinned(target, version, requested) and first.major == version.major:
        return first
    names = ", ".join(p.plugin_id for p in used)
    there = ("JetPack 6 ships TensorRT 10.3: use the function form there, or implement the op as a C++ "
             "IPluginV3 built on the device against JetPack's TensorRT headers" if target.jetson and version.major == 10
             else "use the function form there")
    raise ConfigError(
        f"{info.path.name} calls the TensorRT plugin {names} (exported with --merge-ops plugin), an ahead-of-time "
        f"plugin that needs TensorRT >= {first}; {target.name} builds with TensorRT {version}, which has none "
        f"({AOT_PLUGINS.describe()}). {there}: re-export with `segrt export --merge-ops function` (the default: "
        "every TensorRT inlines it)")


def plan_entries(info: ModelInfo) -> list[dict]:
    """What the build plan and the engine manifest record about the plugins the engine embeds."""
    return [p.to_dict() for p in plugins_used(info)]


def check_plugin_precision(info: ModelInfo, strongly_typed: bool, onnx_variant: str) -> None:
    """The TokenMerge kernel is FP32: a strongly typed FP16 graph would hand it FP16 tensors."""
    used = plugins_used(info)
    if used and strongly_typed and onnx_variant == "fp16":
        raise ConfigError(f"{', '.join(p.plugin_id for p in used)} computes in FP32 only, and a strongly typed FP16 "
                          "build (TensorRT 11) is made from an FP16 ONNX: build --precision fp32, or FP16 with "
                          "--tensorrt 10.x (>= 10.9: weakly typed, TensorRT keeps the plugin in FP32), or use the "
                          "function form (`segrt export --merge-ops function`)")
