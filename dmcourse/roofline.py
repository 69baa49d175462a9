"""The roofline model: predict how fast a layer can run under a device's two ceilings.

Chapter 5 ("Rooflines on your own device") introduces it. A kernel that performs ``flops``
floating-point operations and moves ``bytes`` to or from memory cannot finish faster than either
ceiling allows::

    time >= max(flops / peak_flops, bytes / bandwidth)

Equivalently, its throughput is bounded by ``min(peak_flops, intensity * bandwidth)`` where the
**arithmetic intensity** is ``flops / bytes`` (FLOP/byte). This module holds

the model: GEMM intensity, the min rule, the ridge point and critical batch size, decode-step
bytes/FLOPs for dense and MoE models, and the experts a batch touches. Measuring a device's
ceilings is :mod:`dmcourse.measure`; records of measured ceilings and the command line that
writes them (``python -m dmcourse.records --out record.json``) are :mod:`dmcourse.records`.

Units: bytes, FLOPs, seconds, bytes/s, FLOP/s; intensities in FLOP/byte.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# the model's bodies below check their arguments under these names
from dmcourse.checks import check_int, nonnegative_float, positive_float, probability

# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def gemm_flops(m: int, k: int, n: int) -> int:
    """FLOPs of ``(m, k) @ (k, n)``: ``2 * m * k * n`` (one multiply and one add per term)."""
    for name, value in (("m", m), ("k", k), ("n", n)):
        check_int(name, value)
    return 2 * m * k * n


def gemm_bytes(m: int, k: int, n: int, bytes_per_element: float) -> float:
    """Bytes a GEMM ``(m, k) @ (k, n) -> (m, n)`` must move at least: every operand once,
    ``bytes_per_element * (m*k + k*n + m*n)`` (A and B read, C written)."""
    for name, value in (("m", m), ("k", k), ("n", n)):
        check_int(name, value)
    bytes_per_element = positive_float("bytes_per_element", bytes_per_element)
    return bytes_per_element * (m * k + k * n + m * n)


def gemm_intensity(m: int, k: int, n: int, bytes_per_element: float) -> float:
    """Arithmetic intensity of ``(m, k) @ (k, n)`` in FLOP/byte: :func:`gemm_flops` / :func:`gemm_bytes`."""
    return gemm_flops(m, k, n) / gemm_bytes(m, k, n, bytes_per_element)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) where the two roofs meet: ``peak_flops / bandwidth``. Below it a
    kernel is memory-bound, above it compute-bound."""
    return positive_float("peak_flops", peak_flops) / positive_float("bandwidth", bandwidth)


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: ``min(peak_flops, intensity * bandwidth)`` in FLOP/s, for ``intensity`` in
    FLOP/byte, ``peak_flops`` in FLOP/s and ``bandwidth`` in bytes/s."""
    intensity = positive_float("intensity", intensity)
    return min(positive_float("peak_flops", peak_flops), intensity * positive_float("bandwidth", bandwidth))


def is_memory_bound(intensity: float, peak_flops: float, bandwidth: float) -> bool:
    """True when ``intensity`` lies below the ridge point (the bandwidth roof is the lower one)."""
    return positive_float("intensity", intensity) < ridge_point(peak_flops, bandwidth)


def roofline_time(flops: float, nbytes: float, peak_flops: float, bandwidth: float) -> float:
    """Least time (s) for work of ``flops`` FLOPs moving ``nbytes`` bytes:
    ``max(flops / peak_flops, nbytes / bandwidth)`` -- the same statement as the min rule,
    ``flops / attainable_flops(flops / nbytes, ...)``."""
    nonnegative_float("flops", flops)
    nbytes = positive_float("nbytes", nbytes)
    return max(flops / positive_float("peak_flops", peak_flops), nbytes / positive_float("bandwidth", bandwidth))


def critical_batch_size(
    peak_flops: float,
    bandwidth: float,
    bytes_per_element: float,
    k: int | None = None,
    n: int | None = None,
) -> float:
    """The token count M from which ``(M, k) @ (k, n)`` becomes compute-bound (intensity >= ridge).

    With ``k`` and ``n`` the GEMM is counted exactly (all three operands):
    ``M = R s k n / (2 k n - R s (k + n))`` with ``R`` the ridge point and ``s`` the bytes per
    element; ``math.inf`` when even M -> infinity stays below the ridge. Without them, only the
    weights are counted (the large-layer limit): ``M = R s / 2``.
    """
    ridge = ridge_point(peak_flops, bandwidth)
    s = positive_float("bytes_per_element", bytes_per_element)
    if k is None and n is None:
        return ridge * s / 2
    if k is None or n is None:
        raise ValueError(f"give both k and n or neither, got k={k!r}, n={n!r}")
    k, n = check_int("k", k), check_int("n", n)
    denominator = 2 * k * n - ridge * s * (k + n)
    return math.inf if denominator <= 0 else ridge * s * k * n / denominator


def expected_experts_touched(n_experts: int, top_k: int, tokens: int) -> float:
    """Expected number of distinct experts that ``tokens`` tokens select, each choosing ``top_k``
    distinct experts out of ``n_experts`` uniformly and independently of the others:
    ``E * (1 - (1 - k/E) ** B)``.

    (One token leaves a given expert out with probability ``1 - k/E``; B independent tokens all
    leave it out with probability ``(1 - k/E) ** B``; sum over the E experts.)
    """
    check_int("top_k", top_k, maximum=check_int("n_experts", n_experts))
    return _touched(n_experts, top_k, check_int("tokens", tokens, 0))


def _touched(n_experts: int, top_k: int, tokens: int) -> float:
    """:func:`expected_experts_touched` for checked arguments."""
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** tokens)


def batch_touching(n_experts: int, top_k: int, fraction: float) -> int:
    """Smallest batch whose tokens touch at least ``fraction`` of the ``n_experts`` experts on average
    (:func:`expected_experts_touched`), in closed form:
    ``E (1 - (1 - k/E)^B) >= f E  <=>  B >= log(1 - f) / log(1 - k/E)``.

    The ceiling is checked against :func:`expected_experts_touched` itself, so a rounding error in
    the logarithms cannot shift the answer by one."""
    check_int("top_k", top_k, maximum=check_int("n_experts", n_experts))
    probability("fraction", fraction, allow_zero=False, allow_one=False)
    if top_k == n_experts:
        return 1
    batch = max(1, math.ceil(math.log(1 - fraction) / math.log(1 - top_k / n_experts)))
    target = fraction * n_experts
    while batch > 1 and _touched(n_experts, top_k, batch - 1) >= target:
        batch -= 1
    while _touched(n_experts, top_k, batch) < target:
        batch += 1
    return batch


def smallest_batch(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Smallest integer ``b`` in ``[lo, hi]`` with ``ok(b)``, for a predicate that is False then True
    on that range (monotone); ``None`` when ``ok(hi)`` is False. A bisection: about
    ``log2(hi - lo)`` calls of ``ok``. The one search the cost model uses (critical batches,
    dense-equivalent crossings)."""
    lo, hi = check_int("lo", lo, 0), check_int("hi", hi, 0)
    if hi < lo:
        raise ValueError(f"hi={hi} is below lo={lo}")
    if not ok(hi):
        return None
    if ok(lo):
        return lo
    while hi - lo > 1:  # ok(lo) is False, ok(hi) is True
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


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


@dataclass(frozen=True)
class DecodeStep(Cost):
    """A :class:`Cost` (``flops``, ``nbytes``; ``intensity``, ``time_s``) for one decode step (one
    new token for each of ``batch`` sequences), with what the step is made of: ``weight_bytes``
    (the weights read, the rest of ``nbytes`` is KV cache) and ``experts_touched`` (per MoE layer,
    on average)."""

    batch: int = 1
    weight_bytes: float = 0.0
    experts_touched: float = 1.0


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
    batch = check_int("batch", batch)
    dense_params = check_int("dense_params", dense_params, 0)
    expert_params = check_int("expert_params", expert_params, 0)
    if dense_params + expert_params == 0:
        raise ValueError("dense_params + expert_params must be positive: a model needs parameters")
    bytes_per_param = positive_float("bytes_per_param", bytes_per_param)
    check_int("top_k", top_k, maximum=check_int("n_experts", n_experts))
    nonnegative_float("kv_bytes_per_seq", kv_bytes_per_seq)
    nonnegative_float("attention_flops_per_seq", attention_flops_per_seq)
    touched = _touched(n_experts, top_k, batch)
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
    peak_flops: float,
    bandwidth: float,
    *,
    max_batch: int = 2**24,
    **model: Any,
) -> float:
    """Smallest batch at which :func:`decode_step` (with the keyword arguments ``model``, without
    ``batch``) is compute-bound; ``math.inf`` if none up to ``max_batch`` is. The step's intensity
    grows with the batch, so :func:`smallest_batch` finds it."""
    if "batch" in model:
        raise ValueError("decode_critical_batch searches the batch: do not pass batch")
    ridge = ridge_point(peak_flops, bandwidth)
    max_batch = check_int("max_batch", max_batch)
    found = smallest_batch(lambda b: decode_step(batch=b, **model).intensity >= ridge, 1, max_batch)
    return math.inf if found is None else float(found)


def swiglu_cost(tokens: int, d_model: int, d_ff: int, bytes_per_element: float) -> Cost:
    """Cost of a SwiGLU FFN on ``tokens`` tokens: its three GEMMs (gate and up ``(T, d_model) @
    (d_model, d_ff)``, down ``(T, d_ff) @ (d_ff, d_model)``), every operand counted once per GEMM,
    plus ``silu(g) * u`` (reads two ``(T, d_ff)`` tensors, writes one; its FLOPs are neglected)."""
    gate = gemm_bytes(tokens, d_model, d_ff, bytes_per_element)
    down = gemm_bytes(tokens, d_ff, d_model, bytes_per_element)
    flops = 2 * gemm_flops(tokens, d_model, d_ff) + gemm_flops(tokens, d_ff, d_model)
    return Cost(float(flops), 2 * gate + down + 3 * bytes_per_element * tokens * d_ff)


def moe_cost(
    tokens: int,
    d_model: int,
    d_ff: int,
    n_experts: int,
    top_k: int,
    bytes_per_element: float,
    experts_touched: float | None = None,
) -> Cost:
    """Expected cost of an MoE layer (SwiGLU experts) on ``tokens`` tokens under uniform routing.

    Router GEMM ``(T, d_model) @ (d_model, E)``; ``R = T * top_k`` routed rows; the weights of the
    experts touched (default :func:`expected_experts_touched`, or pass a counted number), each read
    once; the activations of a SwiGLU on R rows; gathering the rows and combining them back
    (``2 * (T + R) * d_model`` elements). FLOPs: ``2 * R * 3 * d_model * d_ff`` plus the router.
    """
    for name, value in (("tokens", tokens), ("d_model", d_model), ("d_ff", d_ff)):
        check_int(name, value)
    if experts_touched is None:
        experts_touched = expected_experts_touched(n_experts, top_k, tokens)
    elif not 0 < experts_touched <= n_experts:
        raise ValueError(f"experts_touched must be in (0, n_experts={n_experts}], got {experts_touched!r}")
    s = positive_float("bytes_per_element", bytes_per_element)
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


def decode_kwargs(
    config: Any,
    dtype: str = "bf16",
    context: int = 0,
    *,
    kv_dtype: str | None = None,
    mla_form: str = "absorbed",
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :func:`decode_step` (all but ``batch``) for a
    :class:`~dmcourse.configs.ModelConfig`, from :mod:`dmcourse.accounting`: the parameter
    ``counts`` (default :func:`decode_counts`; pass others to cost a variant such as a dense twin)
    in ``dtype``, and each sequence's KV-cache read of ``context`` tokens in ``kv_dtype`` (default
    ``dtype``) with the attention FLOPs over them.

    MLA models are costed in one form (:data:`dmcourse.accounting.MLA_FORMS`): ``"absorbed"``
    (default) reads the compressed latent cache and pays the absorbed attention FLOPs;
    ``"explicit"`` reads the decompressed per-head cache and pays the per-head FLOPs."""
    from dmcourse import accounting

    compressed = accounting.mla_cache_compressed(mla_form)
    kv = dtype if kv_dtype is None else kv_dtype
    return {
        **(decode_counts(config) if counts is None else counts),
        "bytes_per_param": accounting.bytes_per_param(dtype),
        "kv_bytes_per_seq": accounting.kv_cache_bytes(config, context, 1, kv, mla_compressed=compressed)
        if context
        else 0.0,
        "attention_flops_per_seq": float(accounting.attention_flops_per_token(config, context, mla_form))
        if context
        else 0.0,
    }


def decode_step_for_config(
    config: Any,
    batch: int,
    dtype: str = "bf16",
    context: int = 0,
    *,
    kv_dtype: str | None = None,
    mla_form: str = "absorbed",
    counts: dict[str, int] | None = None,
) -> DecodeStep:
    """:func:`decode_step` for a :class:`~dmcourse.configs.ModelConfig` at ``batch`` sequences of
    ``context`` tokens, with the arguments of :func:`decode_kwargs`."""
    return decode_step(
        batch=batch, **decode_kwargs(config, dtype, context, kv_dtype=kv_dtype, mla_form=mla_form, counts=counts)
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
        raise ValueError(
            f"the datasheet table has no {precision!r} peak or bandwidth for {spec.name}; it has {sorted(peaks)}"
        )
    return float(peaks[precision]), float(bandwidth)
