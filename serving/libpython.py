"""The environment of the Python backend stub that PyTriton's ``tritonserver`` spawns, fixed in code.

PyTriton runs each bound function in this process; ``tritonserver`` talks to it through a Python backend
*stub*, a small binary that embeds libpython and finds its ``site-packages`` from the first ``python3`` on
``PATH`` (PyTriton puts this interpreter's ``bin/`` there). Two things break that stub on machines like CI's:

1. The stub links ``libpython3.X.so`` by name. Where the system has its own libpython of the same minor
   version (Debian's 3.11) but ``python3`` is another build (pyenv, a virtualenv over it), the stub loads
   the system library with the other build's stdlib and model load fails with ``'_thread.RLock' object has
   no attribute '_recursion_count'``. Fix: ``LD_LIBRARY_PATH`` starts with this interpreter's own LIBDIR
   (:func:`server_environment`).
2. The stub's pybind11 reads numpy's C structs with the numpy 1.x layout. Under numpy 2 every output tensor
   arrives at the server with 0 bytes ("output tensor shape does not match size of output"). Fix: where this
   interpreter has numpy >= 2, the stub runs in a side environment (:func:`stub_environment`): a venv over
   the same base interpreter with numpy < 2 in its own site-packages and a ``.pth`` line that appends this
   environment's site-packages (pytriton, pyzmq, ...) after it. PyTriton's own process keeps numpy 2.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from segrt.runtime.errors import BackendUnavailableError

STUB_NUMPY = "numpy>=1.21,<2"
STUB_ENV_VARIABLE = "SEGRT_TRITON_STUB_ENV"  # a ready stub environment (or where to make one)
INSTALL_TIMEOUT = 300.0  # seconds for `pip install numpy<2` into the side environment


def libpython_dir() -> str | None:
    """The folder holding this interpreter's shared libpython, or None for a static build."""
    libdir = sysconfig.get_config_var("LIBDIR")
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not name or not (Path(libdir) / name).exists():
        return None
    return str(libdir)


def library_path(current: str | None) -> str:
    """``LD_LIBRARY_PATH`` with this interpreter's LIBDIR first (kept once), then what was there."""
    first = libpython_dir()
    rest = [p for p in (current or "").split(os.pathsep) if p and p != first]
    return os.pathsep.join(([first] if first else []) + rest)


def needs_side_environment() -> bool:
    return int(np.__version__.split(".")[0]) >= 2


def _site_packages() -> list[str]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(p for p in paths if Path(p).is_dir())


def _default_location() -> Path:
    # One side environment per (interpreter, environment): a different venv gets its own.
    key = hashlib.sha256(f"{sys.base_prefix}|{sys.prefix}|{sys.version}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "segrt" / f"triton-stub-py{sys.version_info[0]}.{sys.version_info[1]}-{key}"


def _stub_numpy_major(env: Path) -> int | None:
    python = env / "bin" / "python3"
    if not python.exists():
        return None
    try:
        out = subprocess.run([str(python), "-c", "import numpy, zmq; print(numpy.__version__)"], capture_output=True,
                             text=True, timeout=60, check=False, env={**os.environ,
                                                                     "LD_LIBRARY_PATH": library_path(None)})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return int(out.stdout.split(".")[0]) if out.returncode == 0 and out.stdout.strip() else None


def stub_environment(location: Path | None = None) -> Path:
    """A Python environment whose ``bin/python3`` the stub can embed (see the module docstring, point 2).

    This interpreter's own prefix under numpy 1.x; otherwise the side environment, made once (a venv without
    pip, ``pip install --target`` of numpy < 2 from this interpreter's pip) and reused.
    """
    if not needs_side_environment():
        return Path(sys.exec_prefix)
    env = Path(location or os.environ.get(STUB_ENV_VARIABLE) or _default_location())
    if _stub_numpy_major(env) == 1:
        return env
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f".{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two servers starting at once make it once
        if _stub_numpy_major(env) == 1:
            return env
        _make(env)
    return env


def _make(env: Path) -> None:
    base = getattr(sys, "_base_executable", None) or sys.executable
    target = env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    try:
        subprocess.run([base, "-m", "venv", "--without-pip", "--clear", str(env)], check=True, capture_output=True,
                       timeout=120)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--target", str(target), STUB_NUMPY], check=True, capture_output=True,
                       timeout=INSTALL_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise BackendUnavailableError(
            f"cannot prepare the Triton Python backend environment at {env} ({type(exc).__name__}: "
            f"{detail.decode(errors='replace').strip()[-300:] or exc}); the stub needs {STUB_NUMPY} there. "
            f"Make one by hand and point {STUB_ENV_VARIABLE} at it") from exc
    # Appended after the side environment's own site-packages: its numpy 1.x wins, the rest comes from here.
    (target / "segrt-serving.pth").write_text("\n".join(_site_packages()) + "\n")
    if _stub_numpy_major(env) != 1:
        raise BackendUnavailableError(f"the Triton Python backend environment at {env} does not import numpy 1.x "
                                      f"and pyzmq; remove it to have it made again")


@contextlib.contextmanager
def server_environment(stub_env: Path) -> Iterator[None]:
    """While PyTriton starts ``tritonserver``: LD_LIBRARY_PATH (point 1) and the stub's environment (point 2).

    PyTriton copies ``os.environ`` and asks ``get_triton_python_backend_python_env()`` when it spawns the
    server, so both are set around that call and restored afterwards.
    """
    from pytriton.server import triton_server  # lazy: the serve extra

    saved_path = os.environ.get("LD_LIBRARY_PATH")
    saved_env = triton_server.get_triton_python_backend_python_env
    os.environ["LD_LIBRARY_PATH"] = library_path(saved_path)
    triton_server.get_triton_python_backend_python_env = lambda: stub_env  # type: ignore[assignment]
    try:
        yield
    finally:
        triton_server.get_triton_python_backend_python_env = saved_env  # type: ignore[assignment]
        if saved_path is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = saved_path
