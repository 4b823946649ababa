"""A served test model for tests/serving: one Triton server per module, on free loopback ports, always stopped."""

from __future__ import annotations

import socket

import pytest

pytriton = pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install segrt[serve])")
pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install segrt[serve])")


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (held open together, so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def ports():
    return free_ports


@pytest.fixture(scope="module")
def served(tiny_frame_onnx):
    """The frame-form test model (uint8 frames in, masks out, dynamic batch): what the bundled models become."""
    from segrt.serving.server import SegrtServer, _shm_prefix, _stubs

    http, grpc, metrics = free_ports(3)
    server = SegrtServer(tiny_frame_onnx, http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=4,
                         queue_delay_us=20_000, exit_timeout=1)
    try:
        server.start()
        prefix = _shm_prefix(server._triton)
        yield server
    finally:
        server.close()
    assert _stubs(prefix) == [], "a Python backend stub outlived its server"
