"""The roofline: measure a device's two ceilings, and predict how fast a layer can run under them.

A kernel that performs ``flops`` floating-point operations and moves ``bytes`` to or from memory
cannot finish faster than either ceiling allows::

    time >= max(flops / peak_flops, bytes / bandwidth)

Equivalently, its throughput is bounded by ``min(peak_flops, intensity * bandwidth)`` where the
**arithmetic intensity** is ``flops / bytes`` (FLOP/byte). This module holds

* the measurements (chapter "Rooflines on your own device"): memory bandwidth with a large copy
  (bytes read + written) and a read-only reduction, and matmul throughput per precision, all timed
  with :func:`dmcourse.time_fn` over *rotating buffers* whose total size exceeds the last-level
  cache, so that the cache is not what is measured;
* the model: GEMM intensity, the min rule, the ridge point and critical batch size, decode-step
  bytes/FLOPs for dense and MoE models, and the experts a batch touches;
* a command line that measures the current device and writes a JSON record::

      python -m dmcourse.roofline --out record.json          # full measurement
      python -m dmcourse.roofline --quick --out record.json  # small sizes, seconds

Units: bytes, FLOPs, seconds, bytes/s, FLOP/s; intensities in FLOP/byte.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

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


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


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
    bytes_per_set = _check_positive_int("bytes_per_set", bytes_per_set)
    factor = _check_positive("factor", factor)
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
    if kind not in ("copy", "read", "read_kernel"):
        raise ValueError(f"kind must be 'copy', 'read' or 'read_kernel', got {kind!r}")
    if kind == "read_kernel":
        from dmcourse import stream

        if device.type != "cpu":
            raise ValueError(f"kind='read_kernel' measures a CPU, got device {device}")
        if not stream.available():
            raise RuntimeError(f"kind='read_kernel' needs the dmcourse.stream kernel, which is {stream.status()}")
    if buffer_bytes is None:
        buffer_bytes = default_buffer_bytes(device)
    buffer_bytes = _check_positive_int("buffer_bytes", buffer_bytes, MiB)
    numel = buffer_bytes // 4
    nbytes = numel * 4
    per_set = 2 * nbytes if kind == "copy" else nbytes
    sets = rotation_count(per_set, device)
    if kind == "copy":
        arg_sets = [(torch.empty(numel, device=device), torch.ones(numel, device=device)) for _ in range(sets)]
        timing = time_rotating(lambda dst, src: dst.copy_(src), arg_sets, device=device, warmup=warmup, repeats=repeats)
        work = 2 * nbytes
    else:
        arg_sets = [(torch.ones(numel, device=device),) for _ in range(sets)]
        reader = torch.sum
        if kind == "read_kernel":
            from dmcourse.stream import read_sum as reader
        timing = time_rotating(reader, arg_sets, device=device, warmup=warmup, repeats=repeats)
        work = nbytes
    del arg_sets
    return Measurement(
        what=f"{kind} bandwidth", value=work / timing.median_s, unit="B/s", work=float(work), timing=timing,
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
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield PRECISIONS[precision]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _gemm_operands(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, sets: int) -> list[tuple]:
    gen = torch.Generator(device=device).manual_seed(0)
    return [
        (torch.randn(m, k, device=device, dtype=dtype, generator=gen),
         torch.randn(k, n, device=device, dtype=dtype, generator=gen),
         torch.empty(m, n, device=device, dtype=dtype))
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
        _check_positive_int(name, value)
    device = _device(device)
    if precision not in available_precisions(device):
        raise ValueError(f"precision {precision!r} is not available on {device}: expected one of {available_precisions(device)}")
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
        raise ValueError(f"precision {precision!r} is not available on {device}: expected one of {available_precisions(device)}")
    target_s = _check_positive("target_s", target_s)
    if max_size is None:
        max_size = 8192 if device.type == "cuda" else 2048
    max_size = _check_positive_int("max_size", max_size, 16)
    if size is None:
        size = min(256, max_size)
        with matmul_precision(precision) as dtype:
            while size * 2 <= max_size:
                a = torch.randn(size, size, device=device, dtype=dtype)
                probe = time_fn(lambda: a @ a, device=device, warmup=1, repeats=2)
                if probe.min_s >= target_s:
                    break
                size *= 2
    size = _check_positive_int("size", size, 16)
    timing = time_gemm(size, size, size, device=device, precision=precision, warmup=warmup, repeats=repeats,
                       matmul=matmul)
    flops = 2.0 * size**3
    return Measurement(
        what=f"matmul {precision}", value=flops / timing.median_s, unit="FLOP/s", work=flops, timing=timing,
        settings={"precision": precision, "size": size,
                  "kernel": "torch.matmul" if matmul is None else f"{matmul.__module__}.{matmul.__qualname__}"},
    )


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

def gemm_flops(m: int, k: int, n: int) -> int:
    """FLOPs of ``(m, k) @ (k, n)``: ``2 * m * k * n`` (one multiply and one add per term)."""
    for name, value in (("m", m), ("k", k), ("n", n)):
        _check_positive_int(name, value)
    return 2 * m * k * n


def gemm_bytes(m: int, k: int, n: int, bytes_per_element: float) -> float:
    """Bytes a GEMM ``(m, k) @ (k, n) -> (m, n)`` must move at least: every operand once,
    ``bytes_per_element * (m*k + k*n + m*n)`` (A and B read, C written)."""
    for name, value in (("m", m), ("k", k), ("n", n)):
        _check_positive_int(name, value)
    bytes_per_element = _check_positive("bytes_per_element", bytes_per_element)
    return bytes_per_element * (m * k + k * n + m * n)


def gemm_intensity(m: int, k: int, n: int, bytes_per_element: float) -> float:
    """Arithmetic intensity of ``(m, k) @ (k, n)`` in FLOP/byte: :func:`gemm_flops` / :func:`gemm_bytes`."""
    return gemm_flops(m, k, n) / gemm_bytes(m, k, n, bytes_per_element)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) where the two roofs meet: ``peak_flops / bandwidth``. Below it a
    kernel is memory-bound, above it compute-bound."""
    return _check_positive("peak_flops", peak_flops) / _check_positive("bandwidth", bandwidth)


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: ``min(peak_flops, intensity * bandwidth)`` in FLOP/s, for ``intensity`` in
    FLOP/byte, ``peak_flops`` in FLOP/s and ``bandwidth`` in bytes/s."""
    intensity = _check_positive("intensity", intensity)
    return min(_check_positive("peak_flops", peak_flops), intensity * _check_positive("bandwidth", bandwidth))


def is_memory_bound(intensity: float, peak_flops: float, bandwidth: float) -> bool:
    """True when ``intensity`` lies below the ridge point (the bandwidth roof is the lower one)."""
    return _check_positive("intensity", intensity) < ridge_point(peak_flops, bandwidth)


def roofline_time(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> float:
    """Least time (s) for work of ``flops`` FLOPs moving ``nbytes`` bytes:
    ``max(flops / peak_flops, nbytes / bandwidth)`` -- the same statement as the min rule,
    ``flops / attainable_flops(flops / nbytes, ...)``."""
    if isinstance(flops, bool) or not isinstance(flops, (int, float)) or not math.isfinite(flops) or flops < 0:
        raise ValueError(f"flops must be a finite number >= 0, got {flops!r}")
    nbytes = _check_positive("nbytes", nbytes)
    return max(flops / _check_positive("peak_flops", peak_flops), nbytes / _check_positive("bandwidth", bandwidth))


def critical_batch_size(
    peak_flops: float, bandwidth: float, bytes_per_element: float, k: int | None = None, n: int | None = None,
) -> float:
    """The token count M from which ``(M, k) @ (k, n)`` becomes compute-bound (intensity >= ridge).

    With ``k`` and ``n`` the GEMM is counted exactly (all three operands):
    ``M = R s k n / (2 k n - R s (k + n))`` with ``R`` the ridge point and ``s`` the bytes per
    element; ``math.inf`` when even M -> infinity stays below the ridge. Without them, only the
    weights are counted (the large-layer limit): ``M = R s / 2``.
    """
    ridge = ridge_point(peak_flops, bandwidth)
    s = _check_positive("bytes_per_element", bytes_per_element)
    if k is None and n is None:
        return ridge * s / 2
    if k is None or n is None:
        raise ValueError(f"give both k and n or neither, got k={k!r}, n={n!r}")
    k, n = _check_positive_int("k", k), _check_positive_int("n", n)
    denominator = 2 * k * n - ridge * s * (k + n)
    return math.inf if denominator <= 0 else ridge * s * k * n / denominator


def expected_experts_touched(n_experts: int, top_k: int, tokens: int) -> float:
    """Expected number of distinct experts that ``tokens`` tokens select, each choosing ``top_k``
    distinct experts out of ``n_experts`` uniformly and independently of the others:
    ``E * (1 - (1 - k/E) ** B)``.

    (One token leaves a given expert out with probability ``1 - k/E``; B independent tokens all
    leave it out with probability ``(1 - k/E) ** B``; sum over the E experts.)
    """
    n_experts = _check_positive_int("n_experts", n_experts)
    top_k = _check_positive_int("top_k", top_k)
    if top_k > n_experts:
        raise ValueError(f"top_k={top_k} exceeds n_experts={n_experts}")
    tokens = _check_positive_int("tokens", tokens, 0)
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** tokens)


@dataclass(frozen=True)
class DecodeStep:
    """FLOPs and bytes of one decode step (one new token for each of ``batch`` sequences)."""

    batch: int
    flops: float
    nbytes: float
    weight_bytes: float
    experts_touched: float

    @property
    def intensity(self) -> float:
        """FLOP/byte of the whole step."""
        return self.flops / self.nbytes

    def time_s(self, peak_flops: float, bandwidth: float) -> float:
        """Roofline time of the step (s): ``max(flops / peak, bytes / bandwidth)``."""
        return roofline_time(self.flops, self.nbytes, peak_flops, bandwidth)


def decode_step(
    *,
    batch: int,
    dense_params: int,
    bytes_per_param: float,
    expert_params: int = 0,
    n_experts: int = 1,
    top_k: int = 1,
    kv_bytes_per_seq: float = 0.0,
    attention_flops_per_seq: float = 0.0,
) -> DecodeStep:
    """The roofline's view of one decode step of a dense model or an MoE.

    * ``dense_params``: parameters every token uses and that are read once per step (attention,
      dense FFNs, shared experts, routers, the output head);
    * ``expert_params``: parameters of the routed experts, all layers and all ``n_experts`` of
      them; each token uses ``top_k`` experts per layer. A dense model has ``expert_params=0``;
    * ``kv_bytes_per_seq``: bytes of KV cache each sequence reads this step (grows with its
      context); ``attention_flops_per_seq``: FLOPs of its attention scores and mix.

    FLOPs: ``batch * (2 * active_params + attention_flops_per_seq)`` with
    ``active_params = dense_params + expert_params * top_k / n_experts``.
    Bytes: each weight read once per step -- ``dense_params`` plus the experts the batch touches,
    ``expert_params * expected_experts_touched(n_experts, top_k, batch) / n_experts`` (routing
    assumed uniform; a real router that favours some experts touches fewer) -- times
    ``bytes_per_param``, plus ``batch * kv_bytes_per_seq``. Activations are ignored (small at decode).
    """
    batch = _check_positive_int("batch", batch)
    dense_params = _check_positive_int("dense_params", dense_params, 0)
    expert_params = _check_positive_int("expert_params", expert_params, 0)
    if dense_params + expert_params == 0:
        raise ValueError("dense_params + expert_params must be positive: a model needs parameters")
    bytes_per_param = _check_positive("bytes_per_param", bytes_per_param)
    for name, value in (("kv_bytes_per_seq", kv_bytes_per_seq), ("attention_flops_per_seq", attention_flops_per_seq)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    touched = expected_experts_touched(n_experts, top_k, batch)
    active = dense_params + expert_params * top_k / n_experts
    weight_bytes = bytes_per_param * (dense_params + expert_params * touched / n_experts)
    return DecodeStep(
        batch=batch,
        flops=batch * (2.0 * active + attention_flops_per_seq),
        nbytes=weight_bytes + batch * kv_bytes_per_seq,
        weight_bytes=weight_bytes,
        experts_touched=touched,
    )


def decode_critical_batch(
    peak_flops: float, bandwidth: float, *, max_batch: int = 2**24, **model: Any,
) -> float:
    """Smallest batch at which :func:`decode_step` (with the keyword arguments ``model``, without
    ``batch``) is compute-bound; ``math.inf`` if none up to ``max_batch`` is. The step's intensity
    grows with the batch, so a bisection finds it."""
    if "batch" in model:
        raise ValueError("decode_critical_batch searches the batch: do not pass batch")
    ridge = ridge_point(peak_flops, bandwidth)
    max_batch = _check_positive_int("max_batch", max_batch)

    def bound(b: int) -> bool:
        return decode_step(batch=b, **model).intensity >= ridge

    if not bound(max_batch):
        return math.inf
    lo, hi = 0, max_batch  # bound(lo) is False (or lo == 0), bound(hi) is True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if bound(mid) else (mid, hi)
    return float(hi)


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of some work (a layer call, a step): the two numbers the roofline needs."""

    flops: float
    nbytes: float

    @property
    def intensity(self) -> float:
        """FLOP/byte."""
        return self.flops / self.nbytes

    def time_s(self, peak_flops: float, bandwidth: float) -> float:
        """Roofline time (s): ``max(flops / peak, bytes / bandwidth)``."""
        return roofline_time(self.flops, self.nbytes, peak_flops, bandwidth)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.nbytes + other.nbytes)


def swiglu_cost(tokens: int, d_model: int, d_ff: int, bytes_per_element: float) -> Cost:
    """Cost of a SwiGLU FFN on ``tokens`` tokens: its three GEMMs (gate and up ``(T, d_model) @
    (d_model, d_ff)``, down ``(T, d_ff) @ (d_ff, d_model)``), every operand counted once per GEMM,
    plus ``silu(g) * u`` (reads two ``(T, d_ff)`` tensors, writes one; its FLOPs are neglected)."""
    gate = gemm_bytes(tokens, d_model, d_ff, bytes_per_element)
    down = gemm_bytes(tokens, d_ff, d_model, bytes_per_element)
    flops = 2 * gemm_flops(tokens, d_model, d_ff) + gemm_flops(tokens, d_ff, d_model)
    return Cost(float(flops), 2 * gate + down + 3 * bytes_per_element * tokens * d_ff)


def moe_cost(tokens: int, d_model: int, d_ff: int, n_experts: int, top_k: int, bytes_per_element: float,
             experts_touched: float | None = None) -> Cost:
    """Expected cost of an MoE layer (SwiGLU experts) on ``tokens`` tokens under uniform routing.

    Router GEMM ``(T, d_model) @ (d_model, E)``; ``R = T * top_k`` routed rows; the weights of the
    experts touched (default :func:`expected_experts_touched`, or pass a counted number), each read
    once; the activations of a SwiGLU on R rows; gathering the rows and combining them back
    (``2 * (T + R) * d_model`` elements). FLOPs: ``2 * R * 3 * d_model * d_ff`` plus the router.
    """
    for name, value in (("tokens", tokens), ("d_model", d_model), ("d_ff", d_ff)):
        _check_positive_int(name, value)
    if experts_touched is None:
        experts_touched = expected_experts_touched(n_experts, top_k, tokens)
    elif not 0 < experts_touched <= n_experts:
        raise ValueError(f"experts_touched must be in (0, n_experts={n_experts}], got {experts_touched!r}")
    s = _check_positive("bytes_per_element", bytes_per_element)
    rows = tokens * top_k
    router = Cost(float(gemm_flops(tokens, d_model, n_experts)), gemm_bytes(tokens, d_model, n_experts, s))
    acts = swiglu_cost(rows, d_model, d_ff, s)
    weights_in_acts = 3 * d_model * d_ff * s  # swiglu_cost counted one expert's weights once
    experts = Cost(acts.flops, acts.nbytes - weights_in_acts + experts_touched * 3 * d_model * d_ff * s)
    moves = Cost(0.0, 2 * (tokens + rows) * d_model * s)
    return router + experts + moves


def decode_counts(config: Any) -> dict[str, int]:
    """What one decode step of a :class:`~dmcourse.configs.ModelConfig` reads, from
    :mod:`dmcourse.accounting`, as keyword arguments for :func:`decode_step`:

    ``dense_params``: every weight except the routed experts and the input embedding (a decode
    step looks up only ``batch`` rows of it; a *tied* embedding is also the output head and is
    read whole, so it stays in); ``expert_params``, ``n_experts``, ``top_k``: the routed experts
    (0, 1, 1 for a dense model)."""
    from dmcourse import accounting

    p = accounting.count_params(config)
    moe = config.n_experts > 0 and p.experts > 0
    return {
        "dense_params": p.total - p.experts - (0 if config.tied_embeddings else p.embedding),
        "expert_params": p.experts if moe else 0,
        "n_experts": config.n_experts if moe else 1,
        "top_k": config.top_k if moe else 1,
    }


def decode_step_for_config(config: Any, batch: int, dtype: str = "bf16", context: int = 0) -> DecodeStep:
    """:func:`decode_step` for a :class:`~dmcourse.configs.ModelConfig` with the counts of
    :func:`decode_counts`, in ``dtype``; each sequence also reads its KV cache of ``context``
    tokens and pays the attention FLOPs over them (:mod:`dmcourse.accounting`)."""
    from dmcourse import accounting

    return decode_step(
        batch=batch,
        **decode_counts(config),
        bytes_per_param=accounting.bytes_per_param(dtype),
        kv_bytes_per_seq=accounting.kv_cache_bytes(config, context, 1, dtype) if context else 0.0,
        attention_flops_per_seq=accounting.attention_flops_per_token(config, context) if context else 0.0,
    )


def datasheet_roof(gpu: str, precision: str = "bf16") -> tuple[float, float]:
    """``(peak_flops, bandwidth)`` of a GPU from the datasheet table (:mod:`dmcourse.hardware`),
    dense tensor-core figures. Raises ValueError when the datasheet has no figure for
    ``precision`` on that GPU (a T4 has no bf16 or tf32)."""
    from dmcourse import hardware

    spec = hardware.gpu(gpu)
    peaks = spec.get("peak_flops") or {}
    bandwidth = spec.get("memory_bandwidth_bytes_per_s")
    if precision not in peaks or not bandwidth:
        raise ValueError(f"the datasheet table has no {precision!r} peak or bandwidth for {spec.name}; "
                         f"it has {sorted(peaks)}")
    return float(peaks[precision]), float(bandwidth)


# --------------------------------------------------------------------------------------------
# Records and the command line live in dmcourse.records (read with importlib.resources)
# --------------------------------------------------------------------------------------------

if __name__ == "__main__":  # python -m dmcourse.roofline: measure this device, write a JSON record
    from dmcourse.records import main

    raise SystemExit(main())
