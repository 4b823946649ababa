"""The one report writer of segrt's benchmarks: JSON (every number), Markdown (the table a README quotes) and,
where matplotlib is installed, a plot. ``segrt bench`` and every script in ``benchmarks/`` write through here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from segrt.runtime import sinks


def fmt(value, spec: str = ".1f", none: str = "-") -> str:
    """``value`` formatted with ``spec``; ``none`` for a missing number (a skipped row, an unmeasured column)."""
    return none if value is None else format(value, spec)


def table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines; ``align`` has one letter per column: ``l`` left, ``r`` right."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]


def portable(value, root: Path):
    """``value`` with every absolute path under ``root`` (a string or Path anywhere inside it) made relative to
    ``root``: a committed report must not name the folders of the machine that wrote it."""
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    if isinstance(value, (str, Path)) and str(value).startswith(str(root) + "/"):
        return str(Path(value).relative_to(root))
    return value


def write_json(path: Path, data: dict) -> Path:
    """Atomically, creating its folder; a failure is an OutputError naming the file. Absolute paths under the
    working directory (the repository, for `make bench`) are written relative to it."""
    root = Path.cwd().resolve()
    return sinks.write_text(path, json.dumps(portable(data, root), indent=2, default=str) + "\n", "report")


def write_text(path: Path, text: str) -> Path:
    return sinks.write_text(path, text if text.endswith("\n") else text + "\n", "report")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None where matplotlib is not installed (a robot
    running ``segrt bench`` needs no plotting library)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(out: Path, stem: str, data: dict, markdown: str,
                 plot: Callable[[dict, Path], None] | None = None) -> list[Path]:
    """``out/stem.json``, ``out/stem.md`` and, given ``plot`` and matplotlib, ``out/stem.png``."""
    written = [write_json(out / f"{stem}.json", data), write_text(out / f"{stem}.md", markdown)]
    if plot is not None and pyplot() is not None:
        png = out / f"{stem}.png"
        with sinks.writing(png, "plot"):  # matplotlib writes the file itself
            plot(data, png)
        written.append(png)
    return written


def save_figure(fig, path: Path) -> None:
    """Every benchmark plot is saved the same way, and closed so that long runs do not hold figures."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def annotate_points(ax, points, x_ratio: float = 3.0, dy: float = 0.15, fontsize: int = 8) -> None:
    """Label ``points`` ((text, x, y), x on a log axis, y in data units) so that labels do not run into each
    other: a label goes below its point when an earlier point within ``x_ratio`` times its x and ``dy`` of its
    y has its label above, or sits above it."""
    placed: list[tuple[float, float, bool]] = []
    for text, x, y in points:
        near = [(py, up) for px, py, up in placed if abs(y - py) < dy and max(x, px) / min(x, px) < x_ratio]
        # below when a neighbour's label is above us, or when we sit under a neighbour whose label hangs below it
        above = not any(up or y < py for py, up in near)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 3 if above else -11), fontsize=fontsize)
        placed.append((x, y, above))


# ----------------------------------------------------------------------------- segrt bench's size groups


def markdown_table(group: dict) -> str:
    """One ``benchmark_size`` group as a Markdown table (the README / benchmarks/results format)."""
    h, w = group["size"]
    runs = group["results"][0]["runs"] if group["results"] else 0
    peaks = group.get("peaks_gmacs_per_s")
    title = (f"**{h}x{w}**, batch 1, network latency over {runs} interleaved runs"
             + (f"; peak {', '.join(f'{k} {v:.0f} GMAC/s' for k, v in peaks.items())}" if peaks else ""))
    header = ["model", "runtime", "precision", "p50 ms", "p95 ms", "end-to-end p50 ms", "FPS", "speedup", "GMAC",
              "GMAC/s", "% of peak", "peak MB"]
    rows = [[r["name"], str(r["info"].get("backend", r["kind"])), r["precision"], f"{r['latency_ms']['p50']:.1f}",
             f"{r['latency_ms']['p95']:.1f}", f"{r['end_to_end_ms']['p50']:.1f}", f"{r['throughput_fps']:.1f}",
             f"{r['speedup_vs_first']:.2f}x", fmt(r["gmacs"], ".2f"), fmt(r["gmacs_per_s"]), fmt(r["pct_of_peak"]),
             fmt(r["memory_mb"]["peak"], ".0f")] for r in group["results"]]
    lines = [title, "", *table(header, "lllrrrrrrrrr", rows)]
    lines += [f"| {s['name']} | skipped: {s['reason']} | | | | | | | | | | |" for s in group.get("skipped", [])]
    return "\n".join(lines)
