#!/usr/bin/env bash
# Architecture contracts (.importlinter) on an installed copy of segrt: the source tree maps several folders
# (runtime/, export/, engines/, measure/, segrt/) into one package, which import-linter cannot walk in place.
# The check runs with `python -S` so the venv's editable-install hook does not shadow that copy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
"$PY" -m pip install -q --no-deps --no-build-isolation --target "$tree" . >/dev/null 2>&1
cp .importlinter "$tree/"
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PY=$(realpath "$PY")
# from the copy's folder: import-linter puts the working directory first on sys.path
cd "$tree"
"$PY" -S - "$tree" "$site" <<'PY'
import sys
sys.path[:0] = sys.argv[1:3]
from importlinter.cli import lint_imports  # noqa: E402

sys.exit(lint_imports(config_filename=".importlinter", no_cache=True))
PY
