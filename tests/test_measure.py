"""dmcourse.measure: bandwidth and matmul measurements on the CPU, rotating buffers, precisions."""

from __future__ import annotations

import math

import pytest
import torch

from dmcourse import measure as ms


@pytest.mark.parametrize("kind", ["copy", "read"])
def test_bandwidth_on_cpu_is_positive_and_finite(kind: str) -> None:
    m = ms.measure_bandwidth("cpu", kind=kind, buffer_bytes=2 * ms.MiB, warmup=1, repeats=3)
    assert m.unit == "B/s" and math.isfinite(m.value) and m.value > 0
    per_call = 2 * 2 * ms.MiB if kind == "copy" else 2 * ms.MiB  # copy counts read + write
    assert m.work == per_call and m.settings["counted_bytes_per_call"] == per_call
    assert m.value == pytest.approx(m.work / m.timing.median_s)
    # the rotating sets together overflow the last-level cache
    assert m.settings["rotating_sets"] * per_call >= min(2 * ms.last_level_cache_bytes("cpu"), 64 * per_call)


def test_matmul_on_cpu_is_positive_and_finite() -> None:
    m = ms.measure_matmul("cpu", precision="fp32", size=128, warmup=1, repeats=3)
    assert m.unit == "FLOP/s" and m.work == 2 * 128**3
    assert math.isfinite(m.value) and m.value > 0
    adaptive = ms.measure_matmul("cpu", max_size=256, target_s=1e-6, warmup=0, repeats=1)
    assert adaptive.settings["size"] <= 256 and adaptive.value > 0


def test_matmul_with_another_kernel_times_that_kernel() -> None:
    seen = []

    def kernel(a, b):
        seen.append((tuple(a.shape), tuple(b.shape), a.dtype))
        return a @ b.T

    m = ms.measure_matmul("cpu", precision="fp32", size=64, warmup=1, repeats=2, matmul=kernel)
    assert math.isfinite(m.value) and m.value > 0 and m.work == 2 * 64**3
    assert seen and all(s == ((64, 64), (64, 64), torch.float32) for s in seen) and len(seen) >= 3
    assert m.settings["kernel"].endswith("kernel")
    assert ms.measure_matmul("cpu", size=64, warmup=0, repeats=1).settings["kernel"] == "torch.matmul"


def test_time_gemm_and_rotation() -> None:
    t = ms.time_gemm(4, 64, 32, device="cpu", warmup=1, repeats=3)
    assert len(t.times_s) == 3 and t.median_s > 0
    assert ms.rotation_count(10**12, "cpu") == 2
    assert ms.rotation_count(1, "cpu") == 64
    calls = []
    ms.time_rotating(lambda x: calls.append(x), [(0,), (1,), (2,)], device="cpu", warmup=0, repeats=3)
    assert calls == [0, 1, 2, 0, 1, 2], "every set is touched once before timing, then the sets rotate"


def test_precisions() -> None:
    assert ms.available_precisions("cpu")[0] == "fp32"
    assert "fp16" not in ms.available_precisions("cpu")
    before = torch.backends.cuda.matmul.allow_tf32
    with ms.matmul_precision("tf32") as dtype:
        assert dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ms.measure_bandwidth("cpu", kind="write"), "kind"),
        (lambda: ms.measure_bandwidth("cpu", buffer_bytes=1000), "buffer_bytes"),
        (lambda: ms.measure_bandwidth("cpu", buffer_bytes=-5), "buffer_bytes"),
        (lambda: ms.measure_bandwidth("cpu", buffer_bytes=2 * ms.MiB, repeats=0), "repeats"),
        (lambda: ms.measure_matmul("cpu", precision="fp8"), "precision"),
        (lambda: ms.measure_matmul("cpu", precision="fp16"), "fp16"),
        (lambda: ms.measure_matmul("cpu", size=0), "size"),
        (lambda: ms.measure_matmul("cpu", target_s=-1.0), "target_s"),
        (lambda: ms.measure_matmul("cpu", target_s=float("nan")), "target_s"),
        (lambda: ms.time_gemm(0, 4, 4, device="cpu"), "m"),
        (lambda: ms.time_gemm(4, 4, 2.5, device="cpu"), "n"),
        (lambda: ms.time_rotating(print, [], device="cpu"), "arg_sets"),
        (lambda: ms.rotation_count(0), "bytes_per_set"),
        (lambda: ms.measure_bandwidth("tpu"), "tpu"),
    ],
)
def test_measurements_refuse_nonsense(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
