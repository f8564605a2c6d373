"""Shared look and output folder for benchmark plots (matplotlib, Agg, no display needed).

matplotlib is the optional ``bench`` extra (``pip install -e '.[bench]'``), not a runtime or
``dev`` dependency: import this module only from code that draws, never from what the unit
tests call, so the tests run without it.

Figures are built from ``matplotlib.figure.Figure`` with an Agg canvas attached, not through
``pyplot``: no global figure registry to leak between plots, and no backend selection that
depends on the environment (``MPLBACKEND``, a display) of whoever runs the benchmark.
"""

from __future__ import annotations

from pathlib import Path

# Only this module imports matplotlib. The CI venv has no ``bench`` extra, so mypy there
# cannot find it; the ignore is scoped to that one error (and is silent where it is installed).
from matplotlib.axes import Axes  # type: ignore[import-not-found, unused-ignore]
from matplotlib.backends.backend_agg import (  # type: ignore[import-not-found, unused-ignore]
    FigureCanvasAgg,
)
from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

PLOTS_DIR = Path(__file__).resolve().parent / "plots"
PANEL_SIZE_IN = (6.0, 4.0)
"""Width and height of one panel: a figure of n panels in a row is n times as wide."""
DPI = 110


def figure(panels: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes side by side, in the shared size, on an Agg canvas."""
    if panels < 1:
        raise ValueError(f"panels must be >= 1, got {panels}")
    width_in, height_in = PANEL_SIZE_IN
    fig = Figure(figsize=(width_in * panels, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, index + 1) for index in range(panels)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def save(fig: Figure, name: str) -> Path:
    """Write ``fig`` as ``bench/plots/NAME.png`` (``name`` without extension); return the path."""
    if not name or "/" in name or name.endswith(".png"):
        raise ValueError(f"name must be a bare file stem like 'buckets', got {name!r}")
    PLOTS_DIR.mkdir(exist_ok=True)
    path = PLOTS_DIR / f"{name}.png"
    # A fixed Software tag, no timestamp: re-running a bench changes the PNG only if the plot does.
    fig.savefig(path, dpi=DPI, metadata={"Software": "conveyor bench"})
    return path
