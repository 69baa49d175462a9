"""Timing that does the right thing on each device.

Chapter 1 ("Your device and how we measure") introduces it. Three rules, explained there:

1. Warm up first: the first calls pay for allocation, kernel selection, caches and lazy init.
2. On a GPU, work is queued asynchronously: time with CUDA events (or synchronise, then read the
   clock). Reading the host clock right after a launch measures the launch, not the work.
3. Repeat and report the median: one run is noise; the mean is dragged by outliers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dmcourse.checks import check_int


@dataclass(frozen=True)
class Timing:
    """Result of :func:`time_fn`. All times in seconds, one entry per repeat (per call of ``fn``)."""

    times_s: tuple[float, ...]
    warmup: int
    device: str
    method: str

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.times_s)

    @property
    def iqr_s(self) -> float:
        """Interquartile range: a spread that ignores the odd outlier (0 for fewer than 2 repeats)."""
        if len(self.times_s) < 2:
            return 0.0
        q = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return q[2] - q[0]

    def __str__(self) -> str:
        return (
            f"median {self.median_s * 1e3:.3f} ms (IQR {self.iqr_s * 1e3:.3f} ms, "
            f"{len(self.times_s)} repeats, {self.warmup} warm-up, {self.method})"
        )


def synchronize(device: torch.device | str) -> None:
    """Wait until all work queued on ``device`` has finished (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    *,
    device: torch.device | str | None = None,
    warmup: int = 3,
    repeats: int = 11,
    inner: int = 1,
) -> Timing:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then ``repeats`` timed samples.

    Each sample times ``inner`` back-to-back calls and divides by ``inner`` (use ``inner > 1``
    for calls so short that the clock's resolution matters). On CUDA the samples are taken with
    CUDA events after a synchronisation; on CPU with ``time.perf_counter``.

    Returns a :class:`Timing` whose ``median_s`` is the number to report.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")
    warmup = check_int("warmup", warmup, 0)
    repeats = check_int("repeats", repeats)
    inner = check_int("inner", inner)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)

    for _ in range(warmup):
        fn()
    synchronize(device)

    times: list[float] = []
    if device.type == "cuda":
        method = "cuda-events"
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            stream = torch.cuda.current_stream(device)  # the stream fn's work goes to on ``device``
            start.record(stream)
            for _ in range(inner):
                fn()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)  # elapsed_time is in ms
    else:
        method = "perf_counter"
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) / inner)
    return Timing(times_s=tuple(times), warmup=warmup, device=str(device), method=method)
