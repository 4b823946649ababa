"""`segrt serve` as a person runs it: ready, serving, then SIGTERM stops it cleanly and clients get a typed error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from segrt.runtime.errors import ServerUnavailableError
from segrt.runtime.remote import RemoteEngine


def test_serve_until_sigterm_then_clients_get_server_unavailable(tiny_onnx, camvid_frame, ports):
    http, grpc, metrics = ports(3)
    proc = subprocess.Popen([sys.executable, "-m", "segrt.cli", "serve", str(tiny_onnx), "--http-port", str(http),
                             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--max-batch", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        remote = RemoteEngine(f"http://127.0.0.1:{http}", model="segformer-tiny", retries=12, backoff=0.5, timeout=10)
        from segrt.runtime.engine import Engine

        assert np.array_equal(remote.infer(camvid_frame), Engine(tiny_onnx).infer(camvid_frame))
        remote.close()  # an idle client's open connection would hold the shutdown for its exit timeout
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        assert code == 0, err[-2000:]
        assert "stopped" in err
        remote.retries, remote.backoff = 1, 0.05
        with pytest.raises(ServerUnavailableError, match="unreachable"):
            remote.infer(camvid_frame)
        remote.close()
        # tritonserver and PyTriton's helper processes go with it (within a few seconds).
        deadline, leftover = time.monotonic() + 15, ["?"]
        while leftover and time.monotonic() < deadline:
            leftover = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
            time.sleep(0.2)
        assert leftover == [], leftover
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
