"""Real-time segmentation of a camera or video: the few lines to copy into a robot's code.

    python examples/realtime_demo.py                          # bundled street video -> out/realtime_demo.mp4
    python examples/realtime_demo.py 0                        # first USB camera (window if OpenCV has a GUI)
    python examples/realtime_demo.py "csi://0?width=1280&height=720&fps=30"   # Jetson CSI camera
    python examples/realtime_demo.py rtsp://192.168.1.20/stream --model model.engine

Capture, inference and drawing run in parallel threads; a camera always gets its newest frame
processed (stale ones are dropped and counted), a video file is processed frame by frame.
"""

import argparse
from pathlib import Path

from segrt.runtime.engine import Engine
from segrt.runtime.hud import OverlayRenderer
from segrt.runtime.sinks import VideoSink, Window, gui_available

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("source", nargs="?", default=str(Path(__file__).parent / "media" / "bikes.mp4"))
parser.add_argument("--model", default="camvid-b0", help="bundled name, .onnx or TensorRT .engine")
parser.add_argument("--output", default="out/realtime_demo.mp4", help="video written when there is no window")
args = parser.parse_args()

engine = Engine(args.model)
draw = OverlayRenderer.for_engine(engine, alpha=0.5)  # mask overlay + class legend + FPS/latency HUD

with engine.stream(args.source, render=draw) as stream:
    if gui_available():
        with Window("segrt") as window:
            for result in stream:  # result.frame, result.mask (class per pixel), result.timing, result.image
                if not window.show(result.image):  # q or Esc quits
                    break
    else:
        with VideoSink(args.output, fps=stream.source.fps or 25) as video:
            for result in stream:
                video.write(result.image)
        if video.completed is not None:  # close() checked the file: it holds every frame written
            print(f"wrote {video.completed} ({video.frames} frames)")

print(stream.stats.summary())  # FPS, latency p50/p95, dropped frames
