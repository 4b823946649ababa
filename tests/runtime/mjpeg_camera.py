"""A network camera on localhost for tests: real video frames served as MJPEG over HTTP, the way IP
cameras and many robot camera servers do, read by OpenCV's FFmpeg exactly like a real one.

``script`` says what each successive connection gets: a number n streams the next n frames and then
drops the connection (a camera lost mid-stream); "down" answers 503 (a camera not back yet). Once
the script is used up, every connection gets ``then``. Frames continue where the last connection
stopped, so a test can tell whether anything was lost or repeated across a reconnect.
"""

from __future__ import annotations

import http.server
import threading

import cv2
import numpy as np


class MjpegCamera:
    def __init__(self, frames: list[np.ndarray], script: list[int | str], then: int | str = "down"):
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
        # What a client decodes: the reference for identifying delivered frames.
        self.served = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in self.jpegs]
        self._thumbs = [self._thumb(f) for f in self.served]
        self.script = list(script)
        self.then = then
        self.connections = 0
        self.position = 0
        self._lock = threading.Lock()
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                camera._serve(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def _next_action(self) -> int | str:
        with self._lock:
            self.connections += 1
            return self.script.pop(0) if self.script else self.then

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        action = self._next_action()
        if action == "down":
            handler.send_error(503, "camera not ready")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.end_headers()
        try:
            for _ in range(int(action)):
                with self._lock:
                    if self.position >= len(self.jpegs):
                        break
                    jpg = self.jpegs[self.position]
                    self.position += 1
                handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                                    + jpg + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away first

    @staticmethod
    def _thumb(frame: np.ndarray) -> np.ndarray:
        return cv2.resize(frame, (160, 68), interpolation=cv2.INTER_AREA).astype(np.int16)

    def identify(self, frame: np.ndarray) -> int:
        """Index of the served frame that ``frame`` is (nearest by mean absolute difference)."""
        small = self._thumb(frame)
        return int(np.argmin([np.abs(t - small).mean() for t in self._thumbs]))

    def __enter__(self) -> MjpegCamera:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
