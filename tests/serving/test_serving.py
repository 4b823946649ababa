"""segrt serve + RemoteEngine on a real Triton server (PyTriton's tritonserver, CPU), against the local Engine."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from segrt.runtime.errors import InputError, ServerUnavailableError
from segrt.runtime.remote import RemoteEngine
from segrt.serving.libpython import libpython_dir, library_path, stub_environment


def _frames(camvid_root, n: int) -> list[np.ndarray]:
    paths = sorted((camvid_root / "val").glob("*.png"))[:n]
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


def test_stub_gets_this_interpreters_libpython_and_numpy_1(monkeypatch):
    first = libpython_dir()
    assert first is not None
    assert library_path("/a:/b").split(":") == [first, "/a", "/b"]
    assert library_path(f"{first}:/a").split(":") == [first, "/a"]  # not twice
    env = stub_environment()
    import subprocess

    out = subprocess.run([str(env / "bin" / "python3"), "-c", "import numpy, zmq, pytriton; print(numpy.__version__)"],
                         capture_output=True, text=True, env={"LD_LIBRARY_PATH": library_path(None)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1."), out.stdout  # the stub's pybind11 reads numpy 1.x structs


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_remote_masks_equal_local_engine(served, camvid_root, scheme):
    frames = _frames(camvid_root, 3)
    frames.append(cv2.resize(frames[0], (200, 150)))  # another size: its own request
    port = served.grpc_port if scheme == "grpc" else served.http_port
    with RemoteEngine(f"{scheme}://127.0.0.1:{port}", model=served.name) as remote:
        assert remote.classes == served.engine.classes
        assert remote.palette == served.engine.palette
        assert remote.mask_dtype == served.engine.mask_dtype
        masks = remote.infer_batch(frames)
        local = served.engine.infer_batch(frames)
        assert [m.shape for m in masks] == [f.shape[:2] for f in frames]
        for got, want in zip(masks, local):
            assert got.dtype == want.dtype and np.array_equal(got, want)
        assert np.array_equal(remote.infer(frames[1]), local[1])


def test_encoded_images_decoded_on_the_server(served, camvid_root, tmp_path):
    frame = _frames(camvid_root, 1)[0]
    with RemoteEngine(f"grpc://127.0.0.1:{served.grpc_port}", model=served.name) as remote:
        ok, png = cv2.imencode(".png", frame)
        assert np.array_equal(remote.infer_encoded(png.tobytes()), served.engine.infer(frame))
        with pytest.raises(InputError, match="server: image 0 .*could not be decoded"):
            remote.infer_encoded(png.tobytes()[:40] + b"\0" * 200)  # header intact, pixels gone
        with pytest.raises(InputError, match="not a JPEG, PNG"):
            remote.infer_encoded(b"not an image")
        huge = bytearray(png.tobytes()[:33])
        huge[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR declares 20000x20000: refused from the header
        with pytest.raises(InputError, match="20000x20000"):
            remote.infer_encoded(bytes(huge))


def test_bad_frames_are_typed_errors_before_or_from_the_server(served):
    with RemoteEngine(f"grpc://127.0.0.1:{served.grpc_port}", model=served.name) as remote:
        with pytest.raises(InputError, match="dtype"):
            remote.infer(np.zeros((8, 8, 3), np.float32))
        with pytest.raises(InputError, match="frames is a single array"):
            remote.infer_batch(np.zeros((8, 8, 3), np.uint8))


def test_concurrent_clients_are_batched_and_every_reply_is_right(served, camvid_root):
    frames = _frames(camvid_root, 4)
    want = served.engine.infer_batch(frames)
    before = sum(n * c for n, c in served.batches.snapshot().items())
    wrong: list[int] = []

    def client(k: int) -> None:
        with RemoteEngine(f"grpc://127.0.0.1:{served.grpc_port}", model=served.name) as remote:
            for _ in range(3):
                if not np.array_equal(remote.infer(frames[k]), want[k]):
                    wrong.append(k)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not wrong
    sizes = served.batches.snapshot()
    assert sum(n * c for n, c in sizes.items()) - before == 12  # every frame ran once, none lost
    assert max(sizes) > 1, sizes  # 4 clients within a 20 ms queue delay: Triton formed real batches


def test_stream_through_a_remote_engine(served, camvid_root):
    video = Path(__file__).parents[2] / "examples" / "media" / "bikes.mp4"
    with RemoteEngine(f"grpc://127.0.0.1:{served.grpc_port}", model=served.name) as remote:
        results = list(remote.stream(str(video), max_frames=3))
    assert [r.index for r in results] == [0, 1, 2]
    for r in results:
        assert np.array_equal(r.mask, served.engine.infer(r.frame))


def test_health_and_metrics_endpoints(served, camvid_root):
    base = f"http://127.0.0.1:{served.http_port}"
    assert urllib.request.urlopen(f"{base}/v2/health/ready", timeout=10).status == 200
    config = json.load(urllib.request.urlopen(f"{base}/v2/models/{served.name}/config", timeout=10))
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    text = urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10).read().decode()
    assert f'nv_inference_request_success{{model="{served.name}"' in text


def test_unreachable_server_is_a_typed_error_after_retries(ports):
    (port,) = ports(1)
    with pytest.raises(ServerUnavailableError, match="unreachable .* after 2 attempt"):
        RemoteEngine(f"grpc://127.0.0.1:{port}", model="x", retries=1, backoff=0.01, timeout=2)
