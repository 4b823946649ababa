"""The device install: every third-party module the TensorRT device path imports is provided by the core
dependencies or by each device extra of pyproject.toml (issue 17 defects 1 and 3), and `segrt verify`
uses the polygraphy API of every release the extras allow (defect 2)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DEVICE_EXTRAS = ("jetson", "jetson7", "desktop")
# The modules a device runs: `segrt build --from-plan/--adopt`, `segrt verify`, `segrt doctor`, Engine.
DEVICE_MODULES = [*sorted((REPO / "engines").glob("*.py")), *sorted((REPO / "runtime").rglob("*.py")),
                  *(REPO / "segrt" / "commands" / f"{m}.py" for m in ("build", "verify", "targets", "doctor"))]
# Import name -> distribution. tensorrt is absent on purpose: JetPack installs it with apt.
DISTRIBUTIONS = {"onnx": "onnx", "polygraphy": "polygraphy", "cuda": "cuda-python", "numpy": "numpy",
                 "cv2": "opencv-python-headless", "onnxruntime": "onnxruntime", "rich": "rich", "typer": "typer"}
SYSTEM_PROVIDED = {"tensorrt"}
# Lazily imported modules of features a device may go without, each provided by its own extra instead.
OPTIONAL_FEATURES = {"tritonclient": "remote", "triton": "plugins"}


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of every import in ``path``, including function-level (lazy) ones."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("segrt", "__future__")}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(extra: str) -> dict[str, Requirement]:
    meta = project()
    reqs = [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"][extra]]
    return {r.name: r for r in reqs}


@pytest.mark.parametrize("extra", DEVICE_EXTRAS)
def test_device_extras_provide_every_module_the_device_path_imports(extra):
    provided = requirements(extra)
    missing = {}
    for path in DEVICE_MODULES:
        for name in third_party_imports(path) - SYSTEM_PROVIDED - set(OPTIONAL_FEATURES):
            dist = DISTRIBUTIONS.get(name)
            if dist is None or dist not in provided:
                missing.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    assert not missing, f"segrt[{extra}] lacks what these modules import: {missing}"
    assert "tensorrt" not in provided and "torch" not in provided  # apt/NVIDIA wheels; never torch on a robot


@pytest.mark.parametrize("module", sorted(OPTIONAL_FEATURES))
def test_optional_features_have_an_extra_that_provides_them(module):
    extra = OPTIONAL_FEATURES[module]
    assert any(Requirement(r).name == module for r in project()["optional-dependencies"][extra]), \
        f"segrt[{extra}] does not provide {module}"


def test_cuda_python_ranges_match_the_platforms():
    """cuda.bindings exists from 12.6.1; cuda-python 13 needs CUDA 13 (JetPack 6 has CUDA 12.6)."""
    jp6, jp7 = requirements("jetson")["cuda-python"].specifier, requirements("jetson7")["cuda-python"].specifier
    assert Version("12.6.1") in jp6 and Version("12.9.4") in jp6
    assert Version("12.6.0") not in jp6 and Version("13.0.0") not in jp6
    assert Version("13.0.0") in jp7 and Version("12.9.4") not in jp7
    for extra in DEVICE_EXTRAS:
        polygraphy = requirements(extra)["polygraphy"].specifier
        assert Version("0.49.0") in polygraphy and Version("0.54.0") not in polygraphy


def test_verify_uses_the_polygraphy_0_49_api(monkeypatch, tiny_onnx, camvid_frame):
    """polygraphy 0.49.x has CompareFunc.simple and no SimpleCompareFunc: verify must run without it."""
    import polygraphy.comparator as comparator

    from segrt.engines.verify import verify

    monkeypatch.delattr(comparator, "SimpleCompareFunc", raising=False)
    report = verify(tiny_onnx, tiny_onnx, [camvid_frame])
    assert report.passed and report.label_agreement == 1.0
