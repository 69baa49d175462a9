"""Drawing rooflines: the ceilings of a device on log-log axes, work placed on them, and an
interactive explorer for live sessions (ipywidgets; static pages show a matplotlib figure instead).

Chapter 5 ("Rooflines on your own device") introduces it.

x: arithmetic intensity (FLOP/byte); y: attainable throughput, in FLOP/s divided by ``scale``
(default 1e12: TFLOP/s). The model itself lives in :mod:`dmcourse.roofline`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from dmcourse import plot
from dmcourse import roofline as rl

UNITS = {1e9: "GFLOP/s", 1e12: "TFLOP/s"}


def draw_roofline(
    ax: plt.Axes,
    peak_flops: float,
    bandwidth: float,
    *,
    label: str,
    color: str | None = None,
    ls: str = "-",
    intensity_range: tuple[float, float] = (1e-2, 1e4),
    scale: float = 1e12,
    mark_ridge: bool = True,
) -> None:
    """Draw ``min(peak, I * bandwidth)`` over ``intensity_range`` (FLOP/byte) on log-log ``ax``,
    with a dot at the ridge point. Datasheet lines should say so in ``label`` and use ``ls="--"``."""
    rl.ridge_point(peak_flops, bandwidth)  # validates both
    lo, hi = intensity_range
    if not 0 < lo < hi:
        raise ValueError(f"intensity_range must be (low, high) with 0 < low < high, got {intensity_range!r}")
    x = np.geomspace(lo, hi, 256)
    y = np.minimum(peak_flops, x * bandwidth) / scale
    (line,) = ax.loglog(x, y, ls=ls, color=color, label=label)
    ridge = peak_flops / bandwidth
    if mark_ridge and lo <= ridge <= hi:
        ax.plot([ridge], [peak_flops / scale], "o", ms=3, color=line.get_color())
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel(f"attainable {UNITS.get(scale, f'FLOP/s / {scale:g}')}")


def roofline_figure(
    roofs: Sequence[Mapping[str, Any]],
    points: Sequence[Mapping[str, Any]] = (),
    *,
    title: str = "",
    scale: float = 1e12,
    intensity_range: tuple[float, float] = (1e-2, 1e4),
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """A roofline chart. ``roofs``: dicts with ``name``, ``peak`` (FLOP/s), ``bandwidth`` (B/s),
    ``kind`` ("measured" or "datasheet": datasheet roofs are dashed and labelled so).
    ``points``: dicts with ``intensity``, ``flops`` (achieved FLOP/s), optional ``label``,
    ``color``, ``marker``, ``annotate`` (text written next to the point). The legend goes to the
    right of the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    shades = iter(["#7a7a7a", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#1f77b4", "#ff7f0e"])
    for roof in roofs:
        kind = roof.get("kind", "measured")
        if kind not in ("measured", "datasheet"):
            raise ValueError(f"roof kind must be 'measured' or 'datasheet', got {kind!r}")
        datasheet = kind == "datasheet"
        label = f"{roof['name']} (datasheet)" if datasheet and "datasheet" not in roof["name"] else roof["name"]
        color = roof.get("color") or (next(shades, plot.COLORS["datasheet"]) if datasheet else plot.COLORS["measured"])
        draw_roofline(
            ax,
            roof["peak"],
            roof["bandwidth"],
            label=label,
            color=color,
            ls="--" if datasheet else "-",
            intensity_range=intensity_range,
            scale=scale,
        )
    for p in points:
        ax.plot(
            [p["intensity"]],
            [p["flops"] / scale],
            p.get("marker", "o"),
            color=p.get("color", plot.COLORS["accent"]),
            label=p.get("label"),
            ms=p.get("ms", 5),
        )
        if p.get("annotate"):
            ax.annotate(
                p["annotate"],
                (p["intensity"], p["flops"] / scale),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def explorer(roofs: Mapping[str, tuple[float, float]], *, default: str | None = None, scale: float = 1e12) -> Any:
    """An ipywidgets roofline explorer for a live notebook: choose a device (``roofs``: name ->
    ``(peak FLOP/s, bandwidth B/s)``), a GEMM ``(M, K) @ (K, N)`` and the bytes per element; it
    draws the roofline with the GEMM on it and prints intensity, bound and predicted time.
    Returns the widget (display it as the cell's last expression)."""
    import ipywidgets as w

    if not roofs:
        raise ValueError("roofs must name at least one device")
    names = list(roofs)
    device = w.Dropdown(options=names, value=default if default in roofs else names[0], description="device")
    m = w.IntSlider(value=1, min=0, max=16, description="log2 M")
    k = w.IntSlider(value=12, min=6, max=15, description="log2 K")
    n = w.IntSlider(value=12, min=6, max=15, description="log2 N")
    dtype = w.Dropdown(
        options=[("fp32 (4 B)", 4), ("bf16/fp16 (2 B)", 2), ("fp8/int8 (1 B)", 1)], value=2, description="dtype"
    )
    out = w.Output()

    def redraw(*_: object) -> None:
        peak, bw = roofs[device.value]
        mm, kk, nn = 2**m.value, 2**k.value, 2**n.value
        intensity = rl.gemm_intensity(mm, kk, nn, dtype.value)
        attain = rl.attainable_flops(intensity, peak, bw)
        flops = rl.gemm_flops(mm, kk, nn)
        t = rl.roofline_time(flops, rl.gemm_bytes(mm, kk, nn, dtype.value), peak, bw)
        bound = "memory-bound" if rl.is_memory_bound(intensity, peak, bw) else "compute-bound"
        out.clear_output(wait=True)
        with out:
            fig, ax = plt.subplots(figsize=(6.4, 3.8))
            draw_roofline(ax, peak, bw, label=device.value, color=plot.COLORS["dense"], scale=scale)
            ax.plot(
                [intensity], [attain / scale], "o", color=plot.COLORS["moe"], label=f"({mm} x {kk}) @ ({kk} x {nn})"
            )
            ax.legend(fontsize=8, loc="lower right")
            plt.show()
            print(
                f"intensity {intensity:.3g} FLOP/byte (ridge {peak / bw:.3g}): {bound}; "
                f"attainable {attain / scale:.3g} {UNITS.get(scale, '')}; predicted time {t * 1e6:.3g} us; "
                f"critical M for this K, N: {rl.critical_batch_size(peak, bw, dtype.value, kk, nn):.4g}"
            )

    for widget in (device, m, k, n, dtype):
        widget.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([device, dtype]), w.HBox([m, k, n]), out])
