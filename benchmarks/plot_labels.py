"""Point labels for the benchmark scatter plots that do not run into each other."""

from __future__ import annotations


def annotate_points(ax, points, x_ratio: float = 3.0, dy: float = 0.15, fontsize: int = 8) -> None:
    """Label ``points`` ((text, x, y), x on a log axis, y in data units): a label goes below its point when an
    earlier point within ``x_ratio`` times its x and ``dy`` of its y has its label above, or sits above it."""
    placed: list[tuple[float, float, bool]] = []
    for text, x, y in points:
        near = [(py, up) for px, py, up in placed if abs(y - py) < dy and max(x, px) / min(x, px) < x_ratio]
        # below when a neighbour's label is above us, or when we sit under a neighbour whose label hangs below it
        above = not any(up or y < py for py, up in near)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 3 if above else -11), fontsize=fontsize)
        placed.append((x, y, above))
