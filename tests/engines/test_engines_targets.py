"""Targets registry and TensorRT version handling."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from segrt.engines.targets import TARGETS, get_target
from segrt.engines.trt_table import api_available
from segrt.engines.versions import GpuInfo, TrtVersion, detect_gpu, detect_tensorrt, matches
from segrt.runtime.errors import ConfigError


def test_registry_has_the_issue_targets_with_their_differences():
    orin, nano, jp7, thor = (get_target(n) for n in ("jetson-orin", "jetson-orin-nano", "jetson-orin-jp7",
                                                     "jetson-thor"))
    assert orin.compute_capability == nano.compute_capability == jp7.compute_capability == (8, 7)
    assert thor.compute_capability == (11, 0) and thor.sm == "sm_110"
    assert orin.dla_cores == 2 and nano.dla_cores == 0 and thor.dla_cores == 0
    assert orin.default_tensorrt == TrtVersion(10, 3)
    assert jp7.expects(TrtVersion(10, 16, 1)) and jp7.expects(TrtVersion(11, 4)) and not jp7.expects(TrtVersion(10, 3))
    assert nano.workspace_mb < orin.workspace_mb and nano.memory_budget_mb < orin.memory_budget_mb
    assert get_target("desktop-ampere-plus").hardware_compatibility == "ampere_plus"
    assert all(t.default_precision in ("fp32", "fp16", "int8") for t in TARGETS.values())


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ConfigError, match="jetson-orin"):
        get_target("jetson-xavier")


def test_version_parsing_and_matching():
    assert TrtVersion.parse("10.3.0.30") == TrtVersion(10, 3, 0)
    assert TrtVersion.parse("11") < TrtVersion.parse("11.4") < TrtVersion.parse("11.4.1")
    assert str(TrtVersion.parse("10.16")) == "10.16"
    assert matches("10.3", TrtVersion(10, 3, 2)) and not matches("10.3", TrtVersion(10, 4))
    assert matches("11", TrtVersion(11, 9))
    assert api_available("BuilderFlag.FP16", TrtVersion(10, 16)) and not api_available("BuilderFlag.FP16",
                                                                                       TrtVersion(11, 0))
    with pytest.raises(ConfigError):
        TrtVersion.parse("ten")


def test_gpu_acceptance():
    orin_gpu = GpuInfo(0, "Orin", (8, 7), 30000, integrated=True)
    rtx = GpuInfo(0, "RTX 4090", (8, 9), 24000, integrated=False)
    turing = GpuInfo(0, "T4", (7, 5), 15000, integrated=False)
    assert get_target("jetson-orin").accepts_gpu(orin_gpu) and not get_target("jetson-orin").accepts_gpu(rtx)
    assert not get_target("jetson-thor").accepts_gpu(orin_gpu)
    assert get_target("desktop").accepts_gpu(turing)
    ampere_plus = get_target("desktop-ampere-plus")
    assert ampere_plus.accepts_gpu(rtx) and not ampere_plus.accepts_gpu(turing)


def test_detection_without_tensorrt_or_gpu_is_none_not_an_error():
    # On GPU hosts these return real values; the point is they never raise.
    version, gpu = detect_tensorrt(), detect_gpu()
    assert version is None or version.major >= 8
    assert gpu is None or gpu.compute_capability >= (5, 0)


def test_targets_command_lists_every_target():
    from segrt.cli import app

    result = CliRunner().invoke(app, ["targets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in TARGETS:
        assert name in result.output


def test_tensorrt_11_runs_on_jetson_only_in_its_supported_range():
    """11.0-11.4.0 do not support JetPack, 11.4.1 does, 11.5.0 does not again (NVIDIA's 11.5 Jetson notes):
    a pip-installed 11.5 on a Jetson must not get a plan."""
    from segrt.engines.trt_table import jetson_supported

    assert [jetson_supported(v) for v in ("10.3", "11.0", "11.4.0", "11.4.1", "11.4.9", "11.5.0", "11.6")] == [
        True, False, False, True, True, False, False]
