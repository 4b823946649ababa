"""`segrt serve MODEL`: serve a model on a local Triton Inference Server (PyTriton), until SIGINT or SIGTERM."""

from __future__ import annotations

import typer
from rich.console import Console

from segrt.commands._args import choice, in_range, model_spec
from segrt.runtime.engine import BACKENDS


def serve_command(
    model: str = typer.Argument("camvid-b0", help="ONNX file, engine or bundled name", callback=model_spec),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    http_port: int = typer.Option(8000, help="HTTP/REST port (KServe v2 protocol)", callback=in_range(1, 65535)),
    grpc_port: int = typer.Option(8001, help="gRPC port", callback=in_range(1, 65535)),
    metrics_port: int = typer.Option(8002, help="Prometheus metrics port (/metrics)", callback=in_range(1, 65535)),
    max_batch: int = typer.Option(8, help="most frames Triton's dynamic batcher puts in one run",
                                  callback=in_range(1, 256)),
    instances: int = typer.Option(1, help="model instances running batches side by side", callback=in_range(1, 64)),
    queue_delay_us: int = typer.Option(2000, help="how long a request may wait for others to batch with (µs)",
                                       callback=in_range(0, 1_000_000)),
    backend: str = typer.Option("auto", help=f"Engine backend: {', '.join(BACKENDS)}", callback=choice(*BACKENDS)),
    threads: int = typer.Option(None, help="ONNX Runtime threads per run (default: its own)",
                                callback=in_range(0, 1024)),
) -> None:
    """Serve MODEL on Triton: models NAME (uint8 frames), NAME_encoded (JPEG/PNG bytes) and NAME_info."""
    from segrt.serving.server import SegrtServer

    console = Console(stderr=True)
    server = SegrtServer(model, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                         max_batch=max_batch, instances=instances, queue_delay_us=queue_delay_us, backend=backend,
                         threads=threads)
    try:
        with console.status(f"starting Triton for {server.name}"):
            server.start()
        console.print(f"serving [bold]{server.name}[/] ({server.engine.backend_name}): grpc://{host}:{grpc_port}  "
                      f"http://{host}:{http_port}  metrics http://{host}:{metrics_port}/metrics  "
                      f"ready: http://{host}:{http_port}/v2/health/ready  (Ctrl-C or SIGTERM stops)", soft_wrap=True)
        server.wait()
        console.print("stopped")
    finally:
        server.close()


def register(root: typer.Typer) -> None:
    root.command("serve")(serve_command)
