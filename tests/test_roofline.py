"""dmcourse.roofline: the roofline model's arithmetic, the experts formula, CPU measurements, the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from dmcourse import roofline as rl

# ---------------------------------------------------------------------------------- measurements


@pytest.mark.parametrize("kind", ["copy", "read"])
def test_bandwidth_on_cpu_is_positive_and_finite(kind: str) -> None:
    m = rl.measure_bandwidth("cpu", kind=kind, buffer_bytes=2 * rl.MiB, warmup=1, repeats=3)
    assert m.unit == "B/s" and math.isfinite(m.value) and m.value > 0
    per_call = 2 * 2 * rl.MiB if kind == "copy" else 2 * rl.MiB  # copy counts read + write
    assert m.work == per_call and m.settings["counted_bytes_per_call"] == per_call
    assert m.value == pytest.approx(m.work / m.timing.median_s)
    # the rotating sets together overflow the last-level cache
    assert m.settings["rotating_sets"] * per_call >= min(2 * rl.last_level_cache_bytes("cpu"), 64 * per_call)


def test_matmul_on_cpu_is_positive_and_finite() -> None:
    m = rl.measure_matmul("cpu", precision="fp32", size=128, warmup=1, repeats=3)
    assert m.unit == "FLOP/s" and m.work == 2 * 128**3
    assert math.isfinite(m.value) and m.value > 0
    adaptive = rl.measure_matmul("cpu", max_size=256, target_s=1e-6, warmup=0, repeats=1)
    assert adaptive.settings["size"] <= 256 and adaptive.value > 0


def test_time_gemm_and_rotation() -> None:
    t = rl.time_gemm(4, 64, 32, device="cpu", warmup=1, repeats=3)
    assert len(t.times_s) == 3 and t.median_s > 0
    assert rl.rotation_count(10**12, "cpu") == 2
    assert rl.rotation_count(1, "cpu") == 64
    calls = []
    rl.time_rotating(lambda x: calls.append(x), [(0,), (1,), (2,)], device="cpu", warmup=0, repeats=3)
    assert calls == [0, 1, 2, 0, 1, 2], "every set is touched once before timing, then the sets rotate"


def test_precisions() -> None:
    assert rl.available_precisions("cpu")[0] == "fp32"
    assert "fp16" not in rl.available_precisions("cpu")
    before = torch.backends.cuda.matmul.allow_tf32
    with rl.matmul_precision("tf32") as dtype:
        assert dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.mark.parametrize(("call", "match"), [
    (lambda: rl.measure_bandwidth("cpu", kind="write"), "kind"),
    (lambda: rl.measure_bandwidth("cpu", buffer_bytes=1000), "buffer_bytes"),
    (lambda: rl.measure_bandwidth("cpu", buffer_bytes=-5), "buffer_bytes"),
    (lambda: rl.measure_bandwidth("cpu", buffer_bytes=2 * rl.MiB, repeats=0), "repeats"),
    (lambda: rl.measure_matmul("cpu", precision="fp8"), "precision"),
    (lambda: rl.measure_matmul("cpu", precision="fp16"), "fp16"),
    (lambda: rl.measure_matmul("cpu", size=0), "size"),
    (lambda: rl.measure_matmul("cpu", target_s=-1.0), "target_s"),
    (lambda: rl.measure_matmul("cpu", target_s=float("nan")), "target_s"),
    (lambda: rl.time_gemm(0, 4, 4, device="cpu"), "m"),
    (lambda: rl.time_gemm(4, 4, 2.5, device="cpu"), "n"),
    (lambda: rl.time_rotating(print, [], device="cpu"), "arg_sets"),
    (lambda: rl.rotation_count(0), "bytes_per_set"),
    (lambda: rl.measure_bandwidth("tpu"), "tpu"),
])
def test_measurements_refuse_nonsense(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
