"""Measure a device's two ceilings: memory bandwidth and matmul throughput.

Chapter 5 ("Rooflines on your own device") introduces it; :mod:`dmcourse.roofline` holds the model
these measurements are read against. Memory bandwidth is measured with a large copy (bytes read +
written) and a read-only reduction, matmul throughput per precision with square GEMMs, all timed
with :func:`dmcourse.timing.time_fn` over *rotating buffers* whose total size exceeds the
last-level cache, so that the cache is not what is measured.

Units: bytes, FLOPs, seconds, bytes/s, FLOP/s.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dmcourse.checks import check_int, one_of, positive_float
from dmcourse.device import pick_device
from dmcourse.timing import Timing, synchronize, time_fn

MiB = 2**20

#: Precision name -> the torch dtype the operands are stored in (tf32 stores fp32, computes tf32).
PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


# --------------------------------------------------------------------------------------------
# Helpers: devices, caches, rotating buffers
# --------------------------------------------------------------------------------------------


def _device(device: torch.device | str | None) -> torch.device:
    return pick_device(None if device is None else str(device))


def _cpu_llc_bytes() -> int | None:
    """Size of the largest CPU cache level in bytes (Linux sysfs, then sysconf), or None."""
    best_level, best_size = -1, None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            size = int(text.rstrip("KMG")) * mult
            if level > best_level:
                best_level, best_size = level, size
    except (OSError, ValueError):
        pass
    if best_size:
        return best_size
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError, AttributeError):
            continue
        if size and size > 0:
            return int(size)
    return None


def last_level_cache_bytes(device: torch.device | str | None = None) -> int:
    """The last-level cache of ``device`` in bytes: a GPU's L2, a CPU's L3 (or L2).

    When it cannot be read, a generous guess is returned (64 MiB on CPU, 128 MiB on GPU), so that
    buffers sized from it still overflow the real cache.
    """
    device = _device(device)
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        return int(size) if size else 128 * MiB
    return _cpu_llc_bytes() or 64 * MiB


def rotation_count(bytes_per_set: int, device: torch.device | str | None = None, *, factor: float = 2.0) -> int:
    """How many copies of a working set of ``bytes_per_set`` bytes to cycle through so that together
    they exceed ``factor`` x the last-level cache (at least 2, at most 64).

    Cycling through that many copies means each call finds its operands evicted by the others:
    the time then includes reading them from memory, as it would in a real model whose weights
    do not fit in the cache.
    """
    bytes_per_set = check_int("bytes_per_set", bytes_per_set)
    factor = positive_float("factor", factor)
    llc = last_level_cache_bytes(device)
    return int(min(64, max(2, math.ceil(factor * llc / bytes_per_set))))


def time_rotating(
    fn: Callable[..., object],
    arg_sets: Sequence[tuple],
    *,
    device: torch.device | str | None = None,
    warmup: int = 2,
    repeats: int = 7,
    inner: int = 1,
) -> Timing:
    """Time ``fn(*arg_sets[i])`` with ``i`` cycling through ``arg_sets`` call after call.

    Uses :func:`dmcourse.time_fn` (CUDA events or perf_counter, warm-up, median); the warm-up
    runs at least once over every set, so first-touch page faults are not timed.
    Returns the :class:`~dmcourse.timing.Timing` of one call.
    """
    device = _device(device)
    step = rotating(fn, arg_sets)
    for _ in range(len(arg_sets)):  # touch every buffer once before timing
        step()
    synchronize(device)
    return time_fn(step, device=device, warmup=warmup, repeats=repeats, inner=inner)


def rotating(fn: Callable[..., object], arg_sets: Sequence[tuple]) -> Callable[[], object]:
    """A call of no arguments that runs ``fn(*arg_sets[i])`` with ``i`` cycling through ``arg_sets``
    call after call (what :func:`time_rotating` times)."""
    if not arg_sets:
        raise ValueError("arg_sets must hold at least one tuple of arguments, got an empty sequence")
    state = {"i": 0}

    def step() -> object:
        args = arg_sets[state["i"] % len(arg_sets)]
        state["i"] += 1
        return fn(*args)

    return step


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One measured ceiling.

    ``value`` is in ``unit`` (``"B/s"`` or ``"FLOP/s"``): ``work`` (bytes or FLOPs per call)
    divided by ``timing.median_s``. ``settings`` records how it was measured.
    """

    what: str
    value: float
    unit: str
    work: float
    timing: Timing
    settings: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        scale = 1e9 if self.unit == "B/s" else 1e12
        prefix = "GB/s" if self.unit == "B/s" else "TFLOP/s"
        return f"{self.what}: {self.value / scale:.3g} {prefix} (median of {len(self.timing.times_s)}, {self.timing.method})"


def default_buffer_bytes(device: torch.device | str | None = None) -> int:
    """Buffer size for bandwidth measurements: 2x the last-level cache, at least 16 MiB on CPU and
    256 MiB on GPU (a copy then takes milliseconds on a CPU, ~0.1 ms on a data-centre GPU)."""
    device = _device(device)
    llc = last_level_cache_bytes(device)
    floor = 256 * MiB if device.type == "cuda" else 16 * MiB
    return max(2 * llc, floor)


def measure_bandwidth(
    device: torch.device | str | None = None,
    *,
    kind: str = "copy",
    buffer_bytes: int | None = None,
    warmup: int = 2,
    repeats: int = 7,
) -> Measurement:
    """Memory bandwidth of ``device`` in bytes/s.

    ``kind="copy"``: ``dst.copy_(src)`` of ``buffer_bytes`` bytes counts the bytes read plus the
    bytes written (``2 * buffer_bytes`` per call, as STREAM's copy does). ``kind="read"``: a
    read-only reduction ``src.sum()`` counts ``buffer_bytes``. ``kind="read_kernel"`` (CPU only):
    the same bytes read by :func:`dmcourse.stream.read_sum`, a loop of the kind the decode kernel
    runs (torch's sum is not built to saturate memory). Buffers are fp32, rotated so that
    together they exceed twice the last-level cache. ``buffer_bytes`` defaults to
    :func:`default_buffer_bytes`; it must be at least 1 MiB.
    """
    device = _device(device)
    one_of("kind", kind, ("copy", "read", "read_kernel"))
    if kind == "read_kernel":
        from dmcourse import stream

        if device.type != "cpu":
            raise ValueError(f"kind='read_kernel' measures a CPU, got device {device}")
        if not stream.available():
            raise RuntimeError(f"kind='read_kernel' needs the dmcourse.stream kernel, which is {stream.status()}")
    if buffer_bytes is None:
        buffer_bytes = default_buffer_bytes(device)
    buffer_bytes = check_int("buffer_bytes", buffer_bytes, MiB)
    numel = buffer_bytes // 4
    nbytes = numel * 4
    per_set = 2 * nbytes if kind == "copy" else nbytes
    sets = rotation_count(per_set, device)
    if kind == "copy":
        arg_sets: list[tuple[torch.Tensor, ...]] = [
            (torch.empty(numel, device=device), torch.ones(numel, device=device)) for _ in range(sets)
        ]
        timing = time_rotating(lambda dst, src: dst.copy_(src), arg_sets, device=device, warmup=warmup, repeats=repeats)
        work = 2 * nbytes
    else:
        arg_sets = [(torch.ones(numel, device=device),) for _ in range(sets)]
        reader: Callable[[torch.Tensor], object] = torch.sum
        if kind == "read_kernel":
            from dmcourse.stream import read_sum

            reader = read_sum
        timing = time_rotating(reader, arg_sets, device=device, warmup=warmup, repeats=repeats)
        work = nbytes
    del arg_sets
    return Measurement(
        what=f"{kind} bandwidth",
        value=work / timing.median_s,
        unit="B/s",
        work=float(work),
        timing=timing,
        settings={"kind": kind, "buffer_bytes": nbytes, "rotating_sets": sets, "counted_bytes_per_call": work},
    )


def available_precisions(device: torch.device | str | None = None) -> tuple[str, ...]:
    """Matmul precisions this device runs natively (keys of :data:`PRECISIONS`).

    CPU: fp32, plus bf16 when oneDNN reports native bf16 support (AVX512-BF16/AMX); fp16 is left
    out (CPUs mostly emulate it, very slowly). CUDA: fp32 and fp16 everywhere, tf32 and bf16 from
    compute capability 8.0 (a T4, 7.5, has neither in hardware).
    """
    device = _device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return ("fp32", "tf32", "bf16", "fp16") if (major, minor) >= (8, 0) else ("fp32", "fp16")
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    return ("fp32", "bf16") if bf16 else ("fp32",)


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[torch.dtype]:
    """Context manager: set the TF32 switch for ``precision`` and yield the operand dtype.

    ``"tf32"`` allows TF32 tensor cores for fp32 matmuls, ``"fp32"`` forbids them (true fp32);
    the previous setting is restored on exit.
    """
    one_of("precision", precision, sorted(PRECISIONS))
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield PRECISIONS[precision]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _gemm_operands(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, sets: int) -> list[tuple]:
    gen = torch.Generator(device=device).manual_seed(0)
    return [
        (
            torch.randn(m, k, device=device, dtype=dtype, generator=gen),
            torch.randn(k, n, device=device, dtype=dtype, generator=gen),
            torch.empty(m, n, device=device, dtype=dtype),
        )
        for _ in range(sets)
    ]


def time_gemm(
    m: int,
    k: int,
    n: int,
    *,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    warmup: int = 2,
    repeats: int = 7,
    inner: int = 1,
    matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Timing:
    """Time ``(m, k) @ (k, n) -> (m, n)`` with ``torch.matmul(..., out=c)``, rotating operand sets
    so that together they overflow the last-level cache (the weights ``(k, n)`` come from memory
    each call, as they would in a model). Returns the Timing of one GEMM.

    ``matmul``: another kernel to time instead, called as ``matmul(a, b)`` with ``a (m, k)`` and
    ``b (k, n)`` (e.g. ``dmcourse.moe.linear``, which computes ``a @ b.T``: for square operands the
    same FLOPs and bytes).
    """
    for name, value in (("m", m), ("k", k), ("n", n)):
        check_int(name, value)
    device = _device(device)
    if precision not in available_precisions(device):
        raise ValueError(
            f"precision {precision!r} is not available on {device}: expected one of {available_precisions(device)}"
        )
    with matmul_precision(precision) as dtype:
        size = torch.tensor([], dtype=dtype).element_size()
        sets = rotation_count(size * (m * k + k * n + m * n), device)
        operands = _gemm_operands(m, k, n, dtype, device, sets)
        fn = (lambda a, b, c: torch.matmul(a, b, out=c)) if matmul is None else (lambda a, b, c: matmul(a, b))
        return time_rotating(fn, operands, device=device, warmup=warmup, repeats=repeats, inner=inner)


def measure_matmul(
    device: torch.device | str | None = None,
    *,
    precision: str = "fp32",
    size: int | None = None,
    target_s: float = 0.03,
    max_size: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Measurement:
    """Matmul throughput of ``device`` in FLOP/s: square ``size x size`` GEMMs in ``precision``,
    counting ``2 * size**3`` FLOPs per call (a multiply and an add per term). ``matmul``: time that
    kernel instead of ``torch.matmul`` (see :func:`time_gemm`).

    ``size=None`` picks the size adaptively: starting at 256, it doubles until one GEMM takes at
    least ``target_s`` seconds or ``max_size`` is reached (default 2048 on CPU, 8192 on GPU), so
    the measurement is fast on a small CPU and still fills a large GPU.
    """
    device = _device(device)
    if precision not in available_precisions(device):
        raise ValueError(
            f"precision {precision!r} is not available on {device}: expected one of {available_precisions(device)}"
        )
    target_s = positive_float("target_s", target_s)
    if max_size is None:
        max_size = 8192 if device.type == "cuda" else 2048
    max_size = check_int("max_size", max_size, 16)
    if size is None:
        size = min(256, max_size)
        with matmul_precision(precision) as dtype:
            while size * 2 <= max_size:
                a = torch.randn(size, size, device=device, dtype=dtype)
                probe = time_fn(functools.partial(torch.matmul, a, a), device=device, warmup=1, repeats=2)
                if probe.min_s >= target_s:
                    break
                size *= 2
    size = check_int("size", size, 16)
    timing = time_gemm(
        size, size, size, device=device, precision=precision, warmup=warmup, repeats=repeats, matmul=matmul
    )
    flops = 2.0 * size**3
    return Measurement(
        what=f"matmul {precision}",
        value=flops / timing.median_s,
        unit="FLOP/s",
        work=flops,
        timing=timing,
        settings={
            "precision": precision,
            "size": size,
            "kernel": "torch.matmul" if matmul is None else f"{matmul.__module__}.{matmul.__qualname__}",
        },
    )
