"""Copy the installed ``tensorrt-stubs`` into ``.typings/`` with their syntax errors fixed, for mypy.

tensorrt-stubs 10.13 is generated from the pybind11 docstrings and a few signatures are not valid
Python (a parameter named ``in``; a parameter without default after defaulted ones), so mypy refuses
the whole package. The fixes below are mechanical and leave every type as NVIDIA's bindings declare it.

    python tools/trt_typings.py [OUT_DIR]      # default: .typings next to pyproject.toml
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import sys
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")


def _stub_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} stubs are not installed: pip install --no-deps tensorrt-stubs")
    return Path(next(iter(spec.submodule_search_locations)))


def fix_signature(line: str) -> str:
    """Make one ``def`` line valid: rename keyword parameters, give late parameters a default."""
    if not line.lstrip().startswith("def "):
        return line
    line = re.sub(r"(?<=[(,\s])(in|lambda|from|is|not|and|or)(?=\s*:)", r"\1_", line)
    try:
        ast.parse(line.strip() + "\n    ...")
        return line
    except SyntaxError:
        pass
    head, _, rest = line.partition("(")
    params, _, tail = rest.rpartition(")")
    seen_default, fixed = False, []
    for param in _split_params(params):
        if "=" in param:
            seen_default = True
        elif seen_default and param.strip() not in ("*", "/") and not param.strip().startswith("*"):
            param = param + " = ..."
        fixed.append(param)
    return f"{head}({','.join(fixed)}){tail}"


def _split_params(params: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def write_typings(out: Path) -> list[Path]:
    written = []
    for package in PACKAGES:
        src, dst = _stub_dir(package), out / package
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for stub in sorted(src.glob("*.pyi")):
            text = "\n".join(fix_signature(line) for line in stub.read_text().splitlines()) + "\n"
            try:
                ast.parse(text)
            except SyntaxError as exc:
                raise SystemExit(f"{stub}:{exc.lineno}: still not valid Python after fixing: {exc.msg}") from exc
            (dst / stub.name).write_text(text)
            written.append(dst / stub.name)
    # tensorrt-stubs has no tensorrt.plugin: segrt's own typed stub of the part it uses
    plugin = Path(__file__).resolve().parent / "stubs" / "tensorrt_plugin.pyi"
    shutil.copyfile(plugin, out / "tensorrt" / "plugin.pyi")
    written.append(out / "tensorrt" / "plugin.pyi")
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / ".typings"
    files = write_typings(target)
    print(f"wrote {len(files)} TensorRT stub files to {target}")
