"""What each TensorRT release can do, in one table: ONNX operators, operator inputs/attributes and Python
API members that appeared (or went away) after TensorRT 10.0, each with its source.

The static compatibility check (:mod:`segrt.engines.compat`), the planner and the builder ask this table
instead of comparing version numbers themselves, and the strict ``tensorrt`` stand-in of the tests gates
API members by it. An entry says "from ``since`` on, until (not including) ``until``". Everything not
listed is in every 10.x and 11.x release that segrt plans for (10.3 is the oldest: JetPack 6).

Sources (abbreviated in the entries):
- "parser changelog": onnx-tensorrt ``docs/Changelog.md`` (one section per TensorRT release);
- "operators.md": onnx-tensorrt ``docs/operators.md`` of that release;
- "TRT 8.6 API": the TensorRT 8.6 Python API (version-compatible engines, lean runtime);
- "TRT 11 notes": TensorRT 11 release notes / migration guide (strongly typed only, implicit INT8 removed);
- "stubs 10.13": tensorrt-stubs 10.13, the signatures ``make typecheck`` checks against.
"""

from __future__ import annotations

from dataclasses import dataclass

from segrt.engines.versions import TrtVersion


@dataclass(frozen=True)
class Feature:
    name: str
    since: tuple[int, int]  # first (major, minor) that has it
    source: str
    until: tuple[int, int] | None = None  # first (major, minor) that no longer has it

    def available(self, version: TrtVersion | str) -> bool:
        v = TrtVersion.parse(version)
        at = (v.major, v.minor)
        return at >= self.since and (self.until is None or at < self.until)

    def describe(self) -> str:
        span = f"TensorRT {self.since[0]}.{self.since[1]}"
        span += f" to {self.until[0]}.{self.until[1]} (exclusive)" if self.until else " on"
        return f"{self.name}: {span} ({self.source})"


def _table(*features: Feature) -> dict[str, Feature]:
    return {f.name: f for f in features}


# ONNX operators first parsed after 10.0 (the rest of compat.SUPPORTED_OPS parse in every 10.x).
OPERATORS = _table(
    Feature("BlackmanWindow", (10, 4), "parser changelog 10.4"),
    Feature("HammingWindow", (10, 4), "parser changelog 10.4"),
    Feature("HannWindow", (10, 4), "parser changelog 10.4"),
    Feature("STFT", (10, 5), "parser changelog 10.5 (real-valued STFT)"),
    Feature("Attention", (10, 14), "TensorRT OSS changelog 10.14 (parsers: Attention operator)"),
    Feature("RMSNormalization", (10, 15), "parser changelog 10.15"),
    Feature("RotaryEmbedding", (10, 15), "parser changelog 10.15"),
    Feature("TensorScatter", (10, 15), "parser changelog 10.15"),
)

# Operator inputs that may be computed tensors (not initializers/constants) only from some release on.
# Key: (op_type, input index).
TENSOR_INPUTS = {
    ("Slice", 3): Feature("Slice axes as a tensor", (10, 3), "parser changelog 10.3"),
    ("Pad", 3): Feature("Pad axes as a tensor", (10, 4), "parser changelog 10.4"),
    ("Squeeze", 1): Feature("Squeeze axes as a tensor", (10, 7), "parser changelog 10.7 (dynamic axes)"),
    ("Unsqueeze", 1): Feature("Unsqueeze axes as a tensor", (10, 7), "parser changelog 10.7 (dynamic axes)"),
    ("CumSum", 1): Feature("CumSum axis as a tensor", (10, 8), "parser changelog 10.8"),
}

EINSUM_EXTENDED = Feature("Einsum with ellipsis, diagonal or broadcasting", (10, 12), "parser changelog 10.12")

# Parser behaviour that changed between releases.
PLUGINS_OVER_LOCAL_FUNCTIONS = Feature(
    "a registered plugin wins over a model-local function of the same op name", (10, 7), "parser changelog 10.7")
PLUGIN_NAMESPACE_FROM_DOMAIN = Feature("plugin namespace read from the node's domain", (10, 10), "operators.md 10.10")
LOCAL_FUNCTIONS = Feature("model-local functions are inlined", (9, 0), "parser changelog 9.0 EA")

# Python API members segrt calls, named "Class.member" as in the bindings (and the stubs).
API = _table(
    Feature("BuilderFlag.FP16", (8, 0), "TRT 11 notes: precision flags removed, networks strongly typed", (11, 0)),
    Feature("BuilderFlag.INT8", (8, 0), "TRT 11 notes: precision flags removed, networks strongly typed", (11, 0)),
    Feature("BuilderFlag.PREFER_PRECISION_CONSTRAINTS", (8, 2), "TRT 11 notes: weak typing removed", (11, 0)),
    Feature("BuilderFlag.VERSION_COMPATIBLE", (8, 6), "TRT 8.6 API"),
    Feature("IBuilderConfig.plugins_to_serialize", (8, 6), "TRT 8.6 API; trtexec --versionCompatible sets it"),
    Feature("OnnxParser.get_used_vc_plugin_libraries", (8, 6), "TRT 8.6 API; trtexec --versionCompatible calls it"),
    Feature("Runtime.engine_host_code_allowed", (8, 6), "TRT 8.6 API: needed to load version-compatible engines"),
    Feature("IBuilderConfig.hardware_compatibility_level", (8, 6), "TRT 8.6 API"),
    Feature("OnnxParserFlag.NATIVE_INSTANCENORM", (8, 6), "parser changelog 8.6 GA"),
    Feature("OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE", (10, 15), "parser changelog 10.15 (kENABLE_PLUGIN_OVERRIDE)"),
    Feature("IBuilderConfig.progress_monitor", (10, 0), "stubs 10.13; IProgressMonitor is a 10.0 API"),
    Feature("IProgressMonitor", (10, 0), "stubs 10.13; IProgressMonitor is a 10.0 API"),
    Feature("IInt8Calibrator", (7, 0), "TRT 11 notes: implicit INT8 calibration removed (deprecated in 10.1)", (11, 0)),
)

# Highest default-domain opset each release documents: 10.0 reads opsets 9-20 (operators.md 10.0);
# releases with the opset 23/24 operators (10.15) read up to 24.
MAX_OPSET = ((TrtVersion(10, 15), 24), (TrtVersion(0, 0), 20))


def max_opset(version: TrtVersion | str) -> int:
    v = TrtVersion.parse(version)
    return next(opset for since, opset in MAX_OPSET if v >= since)


# TensorRT 11 on Jetson: 11.0-11.4.0 do not support JetPack; 11.4.1 supports JetPack 7.2.2+ on AGX Orin and
# Thor (TensorRT 11.4.1 release notes / support matrix); 11.5.0 does not support JetPack again ("Jetson
# deployments remain on TensorRT 11.4.1", TensorRT 11.5.0 Jetson migration notes). Orin on JetPack 6 stays
# on 10.3. Per major: the [first, end) ranges that run on Jetson; a release after the last known one is not
# assumed to.
JETSON_RANGES_BY_MAJOR = {11: ((TrtVersion(11, 4, 1), TrtVersion(11, 5, 0)),)}


def jetson_supported(version: TrtVersion | str) -> bool:
    v = TrtVersion.parse(version)
    ranges = JETSON_RANGES_BY_MAJOR.get(v.major)
    return ranges is None or any(first <= v < end for first, end in ranges)


def api_available(member: str, version: TrtVersion | str) -> bool:
    """``member`` ("Class.attr" or "Class") exists in TensorRT ``version``; unlisted members always do."""
    feature = API.get(member)
    return feature is None or feature.available(version)
