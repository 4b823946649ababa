#!/usr/bin/env bash
# Check the device install of issue 17, in two steps (about 1-2 minutes with a warm pip cache):
#
# 1. Resolve: pip's resolver (dry run, wheels only) finds a complete install of segrt's dependencies plus
#    each device extra for the platform it is meant for:
#      jetson   JetPack 6.x  (Ubuntu 22.04: aarch64, Python 3.10, glibc 2.35)
#      jetson7  JetPack 7.x  (Ubuntu 24.04: aarch64, Python 3.12, glibc 2.39)
#      desktop  x86_64 Linux (Python 3.10, glibc 2.35)
#    TensorRT is in no extra (JetPack installs it with apt; desktops use NVIDIA's wheels), so nothing here
#    needs NVIDIA's download host.
# 2. Import: a fresh venv without torch gets segrt plus the `jetson` extra (installed for this machine),
#    then imports every module of the device path and runs `segrt doctor` and `segrt targets`.
#
#   tools/check_device_extras.sh            # both steps
#   SKIP_INSTALL=1 tools/check_device_extras.sh   # resolution only (seconds)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Core dependencies + one extra, as a requirements file (segrt itself is a local path, not a wheel).
requirements() {
    "$PYTHON" - "$REPO/pyproject.toml" "$1" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for line in project["dependencies"] + project["optional-dependencies"][sys.argv[2]]:
    print(line)
PY
}

# Every manylinux tag a system with glibc 2.$2 accepts (pip does not expand --platform by itself).
platforms() {
    local arch="$1" glibc_minor="$2" args=""
    for minor in $(seq 17 "$glibc_minor"); do args="$args --platform manylinux_2_${minor}_${arch}"; done
    echo "$args --platform manylinux2014_${arch}"
}

resolve() {
    local extra="$1" arch="$2" glibc_minor="$3" python_version="$4"
    requirements "$extra" > "$WORK/$extra.txt"
    # shellcheck disable=SC2046  # the platform list is meant to split into arguments
    if ! "$PYTHON" -m pip install --dry-run --ignore-installed --quiet --only-binary=:all: \
            $(platforms "$arch" "$glibc_minor") --python-version "$python_version" \
            --target "$WORK/target-$extra" --report "$WORK/$extra.json" -r "$WORK/$extra.txt" \
            2> "$WORK/$extra.err"; then
        grep -v "is ignored" "$WORK/$extra.err" >&2 || true
        echo "FAIL: segrt[$extra] does not resolve for $arch / Python $python_version" >&2
        return 1
    fi
    "$PYTHON" - "$WORK/$extra.json" "$extra" "$arch" "$python_version" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
pins = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
assert "torch" not in pins, "a device extra pulls in torch"
shown = ", ".join(f"{n} {pins[n]}" for n in ("onnx", "polygraphy", "cuda-python", "cuda-bindings") if n in pins)
print(f"ok: segrt[{sys.argv[2]}] resolves for {sys.argv[3]} / Python {sys.argv[4]}: {shown}")
PY
}

status=0
resolve jetson aarch64 35 3.10 || status=1
resolve jetson7 aarch64 39 3.12 || status=1
resolve desktop x86_64 35 3.10 || status=1
[ "$status" -eq 0 ] || exit "$status"
[ "${SKIP_INSTALL:-0}" = 1 ] && exit 0

# Step 2: a torch-free environment with the jetson extra, importing the device path. Run from $WORK: in the
# repository the source folder named segrt/ would shadow the installed package.
cd "$WORK"
"$PYTHON" -m venv "$WORK/venv"
# Install from a copy: setuptools builds in the source tree (build/, *.egg-info), which must stay clean.
mkdir "$WORK/src"
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.egg-info' --exclude=./models \
    --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.hypothesis -cf - . | tar -C "$WORK/src" -xf -
"$WORK/venv/bin/python" -m pip install --quiet "$WORK/src[jetson]" 2> >(grep -v "is ignored" >&2)
"$WORK/venv/bin/python" - <<'PY'
import importlib, importlib.util, pkgutil

assert importlib.util.find_spec("torch") is None, "torch is installed in the device environment"
import segrt.engines, segrt.runtime, segrt.runtime.backends

modules = ["segrt.cli", *(f"segrt.commands.{m}" for m in ("build", "verify", "targets", "doctor", "run"))]
for package in (segrt.engines, segrt.runtime, segrt.runtime.backends):
    modules += [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
for name in modules:
    importlib.import_module(name)
from cuda.bindings import runtime  # noqa: F401  (cuda-python >= 12.6.1 layout)
from polygraphy import comparator
assert hasattr(comparator, "SimpleCompareFunc") or hasattr(comparator.CompareFunc, "simple")
import sys
assert "torch" not in sys.modules
print(f"ok: {len(modules)} device-path modules import without torch")
PY
"$WORK/venv/bin/segrt" doctor > "$WORK/doctor.txt"
"$WORK/venv/bin/segrt" targets > /dev/null
echo "ok: segrt doctor and segrt targets run in the device environment"
