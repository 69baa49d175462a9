from __future__ import annotations

import time

import pytest

from dmcourse import time_fn
from dmcourse.timing import Timing


def test_warmup_calls_are_not_timed() -> None:
    calls = []

    def fn():
        calls.append(None)
        if len(calls) <= 2:
            time.sleep(0.05)  # slow first calls, as a cold cache or lazy init would be

    t = time_fn(fn, device="cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and len(t.times_s) == 5
    assert t.median_s < 0.01, "the slow warm-up calls leaked into the timed samples"


def test_measures_sleep_and_reports_median() -> None:
    t = time_fn(lambda: time.sleep(0.002), device="cpu", warmup=1, repeats=5)
    assert 0.0015 < t.median_s < 0.05
    assert t.method == "perf_counter" and t.device == "cpu" and "median" in str(t)


def test_inner_divides_per_call() -> None:
    calls = []
    t = time_fn(lambda: calls.append(time.sleep(0.001)), device="cpu", warmup=0, repeats=3, inner=4)
    assert len(calls) == 12 and 0.0008 < t.median_s < 0.02


def test_statistics() -> None:
    t = Timing(times_s=(1.0, 2.0, 3.0, 100.0), warmup=0, device="cpu", method="perf_counter")
    assert t.median_s == 2.5 and t.min_s == 1.0 and t.mean_s == 26.5
    assert t.iqr_s > 0
    assert Timing((1.0,), 0, "cpu", "x").iqr_s == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup": -1}, "warmup"),
        ({"repeats": 0}, "repeats"),
        ({"inner": 0}, "inner"),
        ({"repeats": 2.5}, "repeats"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        time_fn(lambda: None, device="cpu", **kwargs)


def test_not_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        time_fn(42, device="cpu")  # type: ignore[arg-type]
