"""The course's matplotlib style and the stamp every measured figure carries.

Chapter 1 ("Your device and how we measure") introduces it; every chapter with a measured figure uses it.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import matplotlib.pyplot as plt
from cycler import cycler

COLORS: dict[str, str] = {
    "dense": "#1f5fa8",  # blue: dense models
    "moe": "#d1495b",  # red: Mixture-of-Experts
    "measured": "#2e8540",  # green: measured points
    "datasheet": "#7a7a7a",  # grey: datasheet figures
    "accent": "#edae49",
}

STYLE: dict[str, Any] = {
    "figure.figsize": (6.4, 3.8),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.prop_cycle": cycler(color=list(COLORS.values())),
}


def use_style() -> None:
    """Apply the course style to all following figures."""
    plt.style.use(STYLE)


_CORNERS: dict[str, tuple[float, float, str, str]] = {
    "lower right": (0.99, 0.01, "right", "bottom"),
    "lower left": (0.01, 0.01, "left", "bottom"),
    "upper right": (0.99, 0.99, "right", "top"),
    "upper left": (0.01, 0.99, "left", "top"),
}


def stamp(ax: plt.Axes, device: str, date: _dt.date | None = None, loc: str = "lower right") -> None:
    """Write "measured on <device>, <date>" in a corner of ``ax`` (``loc``: "lower right", "lower
    left", "upper right" or "upper left"): a measured figure names both."""
    if loc not in _CORNERS:
        raise ValueError(f"loc must be one of {sorted(_CORNERS)}, got {loc!r}")
    x, y, ha, va = _CORNERS[loc]
    date = date or _dt.date.today()
    ax.text(
        x,
        y,
        f"measured on {device}, {date.isoformat()}",
        transform=ax.transAxes,
        ha=ha,
        va=va,
        fontsize=7,
        color=COLORS["datasheet"],
    )
