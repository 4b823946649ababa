"""Load test of `segrt serve` on loopback: concurrent RemoteEngine clients streaming the bundled video's frames.

    python benchmarks/serve_load.py                          # camvid-b0; 1, 4 and 16 clients
    python benchmarks/serve_load.py --model tests/fixtures/segformer-tiny.onnx --frames 12

The server is `segrt serve` in its own process (so that it can be killed), on free 127.0.0.1 ports; every
request loop is bounded in requests and time (``--time-limit``). Per client count it reports throughput,
p50/p99 request latency and the batch sizes Triton formed (Triton's own statistics, per batch size), and
checks every reply against the local Engine's mask for that frame (lost or wrong replies are counted).

Goal (4 clients): throughput >= 0.9x local ``Engine.infer_batch`` at the batch sizes Triton formed. The two are
timed interleaved (``segrt.measure.harness.run_interleaved``: remote pass, local pass, per round) and the
ratio is the median of the per-round ratios. Then the server is killed (SIGKILL) mid-run: clients must get
ServerUnavailableError (not a hang, not a wrong mask), and after a restart the same clients are served again.

Writes benchmarks/results/serve_load.json and .md (``--out STEM`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from segrt.measure.harness import load_average, run_interleaved
from segrt.measure.report import fmt, table, write_report
from segrt.runtime.engine import Engine
from segrt.runtime.errors import ServerUnavailableError
from segrt.runtime.remote import RemoteEngine
from segrt.serving.server import model_name

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GOAL = 0.9


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def video_frames(path: str, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


class Server:
    """`segrt serve` in a process of its own session (killed with everything it started)."""

    def __init__(self, model: str, max_batch: int, threads: int | None):
        self.model, self.max_batch, self.threads = model, max_batch, threads
        self.http, self.grpc, self.metrics = free_ports(3)
        self.proc: subprocess.Popen | None = None
        self.shm_before = shm_names()  # what /dev/shm held before this server first started

    def start(self) -> None:
        cmd = [sys.executable, "-m", "segrt.cli", "serve", self.model, "--http-port", str(self.http), "--grpc-port",
               str(self.grpc), "--metrics-port", str(self.metrics), "--max-batch", str(self.max_batch)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def client(self, retries: int = 40, backoff: float = 0.5) -> RemoteEngine:
        return RemoteEngine(f"grpc://127.0.0.1:{self.grpc}", model=model_name(self.model), retries=retries,
                            backoff=backoff, timeout=60)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def remove_leaked_shm(before: set[str]) -> int:
    """A SIGKILLed server cannot unlink its shared memory: remove what appeared since ``before`` and nobody maps."""
    mapped = ""
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped += maps.read_text()
        except OSError:
            continue
    removed = 0
    for name in shm_names() - before:
        if name.startswith(("psm_", "pytrtion")) and f"/dev/shm/{name}" not in mapped:
            Path("/dev/shm", name).unlink(missing_ok=True)
            removed += 1
    return removed


def batch_counts(remote: RemoteEngine) -> dict[int, int]:
    """Executions per batch size so far, from Triton's statistics of the frame model; key 0: compute ns in all."""
    client = remote._client()
    stats = client.get_inference_statistics(remote.model, as_json=True)
    counts = {0: 0}
    for b in stats["model_stats"][0].get("batch_stats", []):
        counts[int(b["batch_size"])] = int(b["compute_infer"]["count"])
        counts[0] += int(b["compute_infer"]["ns"])
    return counts


def delta(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0) > 0}


def remote_pass(server: Server, clients: list[RemoteEngine], frames, want, deadline: float) -> dict:
    """Every client streams every frame once, in order; latencies, wrong and lost replies, batch sizes."""
    latencies: list[float] = []
    wrong = lost = 0
    lock = threading.Lock()
    before = batch_counts(clients[0])

    def run(remote: RemoteEngine) -> None:
        nonlocal wrong, lost
        for frame, mask in zip(frames, want):
            if time.monotonic() > deadline:
                with lock:
                    lost += 1
                continue
            start = time.perf_counter()
            try:
                got = remote.infer(frame)
            except Exception:  # noqa: BLE001 - counted: a lost reply
                with lock:
                    lost += 1
                continue
            ms = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(ms)
                wrong += int(not np.array_equal(got, mask))

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    batches = delta(batch_counts(clients[0]), before)
    compute_s = batches.pop(0, 0) / 1e9  # the server's Engine.infer_batch calls, summed
    return {"clients": len(clients), "frames": len(clients) * len(frames), "seconds": seconds,
            "fps": len(latencies) / seconds, "server_compute_fps": len(latencies) / compute_s if compute_s else None,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else None, "wrong": wrong, "lost": lost,
            "batches": batches}


def mean_batch(batches: dict[int, int]) -> float:
    runs = sum(batches.values())
    return sum(k * v for k, v in batches.items()) / runs if runs else 1.0


def local_pass(engine: Engine, frames: list[np.ndarray], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        engine.infer_batch(frames[i : i + batch])
    return len(frames) / (time.perf_counter() - start)


def kill_and_restart(server: Server, frames, want, deadline: float) -> dict:
    """Clients streaming; the server is killed; each client must raise ServerUnavailableError; then restart."""
    clients = [server.client(retries=1, backoff=0.1) for _ in range(4)]
    errors: list[str] = []
    served_before = [0] * len(clients)

    def run(k: int) -> None:
        for i in range(10_000):
            if time.monotonic() > deadline:
                errors.append("deadline")
                return
            try:
                got = clients[k].infer(frames[i % len(frames)])
            except ServerUnavailableError:
                errors.append("ServerUnavailableError")
                return
            except Exception as exc:  # noqa: BLE001 - reported: the wrong kind of error
                errors.append(type(exc).__name__)
                return
            served_before[k] += int(np.array_equal(got, want[i % len(frames)]))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(clients))]
    for t in threads:
        t.start()
    while sum(served_before) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = time.perf_counter()
    server.kill()
    for t in threads:
        t.join()
    detect_s = time.perf_counter() - killed_at
    leaked = remove_leaked_shm(server.shm_before)
    start = time.perf_counter()
    server.start()
    after = [c for c in clients]
    for c in after:
        c.retries, c.backoff = 40, 0.5  # waiting for the restarted server: retried with backoff
    ok_after = sum(int(np.array_equal(c.infer(frames[0]), want[0])) for c in after)
    restart_s = time.perf_counter() - start
    for c in clients:
        c.close()
    return {"served_before_kill": sum(served_before), "client_errors": errors, "error_detect_s": detect_s,
            "correct_after_restart": ok_after, "clients": len(clients), "restart_to_first_reply_s": restart_s,
            "shared_memory_removed_after_kill": leaked}


def markdown(data: dict) -> str:
    rows = [[str(r["clients"]), str(r["frames"]), fmt(r["fps"], ".2f"), fmt(r["server_compute_fps"], ".2f"),
             fmt(r["p50_ms"], ".0f"), fmt(r["p99_ms"], ".0f"), " ".join(f"{k}x{v}" for k, v in r["batches"].items()),
             str(r["wrong"]), str(r["lost"])] for r in data["passes"]]
    g = data["goal"]
    k = data["kill"]
    lines = [f"# segrt serve load test ({data['model']}, loopback, CPU)", "",
             f"Load average {data['load_start']} -> {data['load_end']} on {os.cpu_count()} CPUs: the machine was "
             "shared with other jobs, so absolute numbers are low and noisy; the ratio is interleaved.", "",
             *table(["clients", "frames", "frames/s", "server compute frames/s", "p50 ms", "p99 ms",
                     "batch sizes (size x runs)", "wrong", "lost"], "rrrrrrlrr", rows), "",
             "frames/s: replies per second of wall time at the clients. Server compute frames/s: the same frames "
             "over the time the server's Engine.infer_batch calls took (Triton's compute_infer statistics); "
             "their ratio is the serving overhead (protocol, copies, waiting to batch).", "",
             f"Goal, 4 clients vs local `Engine.infer_batch` at batch {g['batch']} (the mean batch Triton formed, "
             f"rounded): {fmt(g['ratio'], '.2f')}x (median of {len(g['ratios'])} interleaved rounds: "
             f"{', '.join(fmt(r, '.2f') for r in g['ratios'])}; goal >= {GOAL}) -> "
             f"{'met' if g['met'] else 'NOT met'}. The server process's own compute rate in those passes was "
             f"{fmt(g['server_compute_fps'], '.2f')} frames/s against {fmt(float(np.median(g['local_fps'])), '.2f')} "
             "for the same Engine in the benchmark's process: where the two differ, the machine's load treated the "
             "two processes differently, and the overhead ratio in the table is the fairer measure of serving.", "",
             f"Server killed (SIGKILL) while 4 clients streamed ({k['served_before_kill']} correct replies before): "
             f"client errors {sorted(set(k['client_errors']))} after {fmt(k['error_detect_s'], '.1f')} s; restarted, "
             f"{k['correct_after_restart']}/{k['clients']} clients served correctly again "
             f"{fmt(k['restart_to_first_reply_s'], '.1f')} s after the restart began."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="camvid-b0")
    parser.add_argument("--source", default=str(REPO / "examples" / "media" / "bikes.mp4"))
    parser.add_argument("--frames", type=int, default=6, help="frames each client streams per pass")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of 4 clients vs local")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds; requests after it count as lost")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.time_limit
    frames = video_frames(args.source, args.frames)
    engine = Engine(args.model, threads=args.threads)
    want = [engine.infer(f) for f in frames]  # the local Engine's mask for each frame
    load_start = load_average()
    server = Server(args.model, args.max_batch, args.threads)
    server.start()
    try:
        pool = [server.client() for _ in range(max(args.clients + [4]))]
        pool[0].infer(frames[0])  # warm: the first request loads nothing more
        passes = [remote_pass(server, pool[:c], frames, want, deadline) for c in args.clients]
        four = next((p for p in passes if p["clients"] == 4), None) or remote_pass(server, pool[:4], frames, want,
                                                                                   deadline)
        batch = max(1, round(mean_batch(four["batches"])))
        many = frames * 4
        fps: dict[int, list[float]] = {0: [], 1: []}

        goal_passes: list[dict] = []

        def timed(i: int, r: int) -> None:
            if i == 0:
                goal_passes.append(remote_pass(server, pool[:4], frames, want, deadline))
                fps[0].append(goal_passes[-1]["fps"])
            else:
                fps[1].append(local_pass(engine, many, batch))

        run_interleaved(2, lambda i, r: None, timed, rounds=args.rounds, threads=args.threads, label="4 clients")
        ratios = [a / b for a, b in zip(fps[0], fps[1])]
        server_compute = [p["server_compute_fps"] for p in goal_passes if p["server_compute_fps"]]
        kill = kill_and_restart(server, frames, want, deadline)
        for c in pool:
            c.close()
    finally:
        server.kill(signal.SIGTERM)
    ratio = float(np.median(ratios))
    checked = passes + goal_passes
    goal = {"batch": batch, "remote_fps": fps[0], "local_fps": fps[1], "ratios": ratios, "ratio": ratio,
            "server_compute_fps": float(np.median(server_compute)) if server_compute else None,
            "wrong": sum(p["wrong"] for p in checked), "lost": sum(p["lost"] for p in checked)}
    goal["met"] = ratio >= GOAL and goal["wrong"] == 0 and goal["lost"] == 0
    data = {"model": args.model, "frames_per_client": len(frames), "frame_size": list(frames[0].shape[:2]),
            "passes": passes, "goal": goal, "kill": kill, "load_start": load_start, "load_end": load_average(),
            "cpus": os.cpu_count()}
    for path in write_report(args.out.parent, args.out.name, data, markdown(data)):
        print(f"wrote {path}")
    print(markdown(data))
    return data


if __name__ == "__main__":
    main()
