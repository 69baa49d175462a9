"""Inference economics: what serving a model needs (memory, GPUs) and what a generated token costs
(time, GPU-seconds, dollars), for dense and MoE models on a GPU of the datasheet table.

Built on the lower modules, whose formulas are used, never repeated:

* :mod:`dmcourse.accounting`: parameters, weight bytes by dtype, KV-cache bytes (GQA; DeepSeek's
  compressed MLA latent), attention FLOPs, does-it-fit (:class:`~dmcourse.accounting.Fit`);
* :mod:`dmcourse.roofline`: the decode step of a dense model or an MoE (bytes read, FLOPs, experts
  touched ``E * (1 - (1 - k/E) ** B)``), the critical batch, the datasheet roof of a GPU;
* :mod:`dmcourse.hardware`: the GPU datasheet table (``dmcourse/data/gpus.json``).

What this module adds:

* :func:`activation_bytes`: an estimate of the live activations at inference;
* :func:`serving_memory`: weights + KV cache + activations on a GPU kind, and the GPUs needed;
* :func:`decode_cost`: roofline time of a decode step on ``n_gpus`` GPUs, seconds and dollars per
  generated token, the bound (memory or compute); ``twin=`` gives the dense model of equal total or
  equal active size, the comparisons the chapter draws;
* :func:`regime_batches`: the batches where an MoE's advantages over a dense model appear and vanish;
* dense-equivalent rules of thumb with their provenance (:data:`RULES`) and the roofline's own
  dense equivalent (:func:`roofline_dense_equivalent`);
* :func:`estimate`: everything the calculator shows, one pure function (the widget in
  :mod:`dmcourse.widgets` only displays it).

**Prices are inputs.** A GPU-hour price is not a datasheet figure: every function that returns
dollars takes ``usd_per_gpu_hour`` explicitly, and there is no default price in this module.

Modelling choices (stated once, used everywhere):

* the roofline is a lower bound on time: ``max(FLOPs / peak, bytes / bandwidth)`` with datasheet
  figures (dense tensor-core peaks); real kernels reach a fraction of both;
* ``n_gpus`` GPUs are ideal: ``n`` times the bandwidth and the peak, no communication time (the
  chapter quantifies the communication separately). Under this assumption the cost per token does
  not depend on ``n_gpus``; the latency does;
* weights quantised below 16 bit (fp8, int8, int4) are *weight-only*: they shrink the bytes read,
  the matmuls still run at the 16-bit peak; the KV cache stays 16-bit unless ``kv_dtype`` says
  otherwise;
* ``context``: tokens already in each sequence's KV cache, read once per decode step.

Units: bytes, FLOPs, seconds, dollars; ``GB = 1e9`` bytes (datasheets), ``GiB = 2**30`` bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dmcourse import accounting, hardware
from dmcourse import roofline as rl
from dmcourse.configs import ModelConfig, load_preset
from dmcourse.hardware import GPUSpec

TWINS = ("equal_total", "equal_active")


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

def _model(model: ModelConfig | str) -> ModelConfig:
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str):
        return load_preset(model)
    raise ValueError(f"model must be a ModelConfig or a preset name, got {model!r}")


def _int(name: str, value: object, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _price(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"usd_per_gpu_hour must be a finite number >= 0 (an assumed price), got {value!r}")
    return float(value)


def _kv_dtype(dtype: str, kv_dtype: str | None) -> str:
    """The KV cache's dtype: ``kv_dtype`` if given; else ``dtype`` when it has >= 2 bytes, else bf16
    (weight-only quantisation keeps a 16-bit cache)."""
    if kv_dtype is not None:
        accounting.bytes_per_param(kv_dtype)  # validates
        return kv_dtype
    return dtype if accounting.bytes_per_param(dtype) >= 2 else "bf16"


def compute_precision(gpu: str | GPUSpec, dtype: str) -> str:
    """The datasheet peak a model stored in ``dtype`` computes at on ``gpu``: ``"fp32"`` for fp32
    weights; otherwise the 16-bit tensor-core peak (``"bf16"``, or ``"fp16"`` on a GPU without bf16
    such as the T4) -- weights below 16 bit are dequantised to 16 bit for the matmul."""
    spec = hardware.gpu(gpu)
    if accounting.bytes_per_param(dtype) >= 4:
        return "fp32"
    peaks = spec.get("peak_flops") or {}
    for precision in ("bf16", "fp16"):
        if precision in peaks:
            return precision
    raise ValueError(f"the datasheet table has no 16-bit peak for {spec.name}; it has {sorted(peaks)}")


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------

def ffn_width_per_token(config: ModelConfig) -> int:
    """Hidden width one token's FFN uses in its widest layer: ``d_ff`` in a dense layer,
    ``top_k * d_ff_expert + n_shared_experts * d_ff_shared`` in an MoE layer."""
    c = _model(config)
    widths = []
    if c.n_dense_layers:
        widths.append(c.d_ff)
    if c.n_moe_layers:
        widths.append(c.top_k * c.expert_width + c.n_shared_experts * c.shared_width)
    return max(widths)


def activation_bytes(config: ModelConfig | str, tokens: int, dtype: str = "bf16",
                     logits_tokens: int | None = None, logits_dtype: str = "fp32") -> float:
    """Estimated peak of live activations when ``tokens`` tokens go through the model at once (bytes).

    Inference keeps no activations for a backward pass, so only one layer's are alive at a time:
    per token, the residual stream and its normalised copy (``2 * d_model``) plus the larger of
    the attention block (queries ``n_heads * d_qk``, the new keys and values, the attention output
    ``n_heads * d_v``) and the FFN (gate, up and their product: ``3 * ffn_width_per_token``). The
    attention is assumed fused (FlashAttention / PyTorch SDPA): no ``context x context`` score
    matrix is stored. Plus the logits of ``logits_tokens`` tokens (default ``tokens``; a prefill
    needs only the last token of each sequence) in ``logits_dtype``. At decode ``tokens`` is the
    batch size; at prefill, the prompt tokens processed together.
    """
    c = _model(config)
    tokens = _int("tokens", tokens, 1)
    logits_tokens = tokens if logits_tokens is None else _int("logits_tokens", logits_tokens, 0)
    b = accounting.bytes_per_param(dtype)
    new_kv = accounting.kv_cache_bytes_per_token(c, dtype) / c.n_layers  # one layer's new keys and values
    attention = (c.n_heads * c.qk_head_dim + c.n_heads * c.v_head_size) * b + new_kv
    ffn = 3 * ffn_width_per_token(c) * b
    per_token = 2 * c.d_model * b + max(attention, ffn)
    return tokens * per_token + logits_tokens * c.vocab_size * accounting.bytes_per_param(logits_dtype)


def serving_memory(
    model: ModelConfig | str,
    gpu: str | GPUSpec,
    dtype: str = "bf16",
    *,
    batch: int = 1,
    context: int = 0,
    kv_dtype: str | None = None,
    activation_tokens: int | None = None,
    n_gpus: int = 1,
) -> accounting.Fit:
    """What serving ``model`` needs on ``gpu``: all weights in ``dtype`` (every expert is resident),
    the KV cache of ``batch`` sequences of ``context`` tokens, and :func:`activation_bytes` of
    ``activation_tokens`` tokens (default ``batch``: a decode step) as ``extra_bytes``.

    Returns :class:`dmcourse.accounting.Fit`: ``.needed_bytes``, ``.fits`` on ``n_gpus`` GPUs,
    ``.gpus_needed`` (the fewest GPUs whose *datasheet* memory holds it all; a program can allocate
    somewhat less, and deployments round up to a parallel layout).
    """
    c = _model(model)
    batch = _int("batch", batch, 1)
    context = _int("context", context, 0)
    tokens = batch if activation_tokens is None else _int("activation_tokens", activation_tokens, 1)
    act = activation_bytes(c, tokens, dtype if accounting.bytes_per_param(dtype) >= 2 else "bf16",
                           logits_tokens=min(tokens, batch))
    return accounting.fits_on_gpu(c, gpu, dtype, n_gpus=n_gpus, context=context, batch=batch,
                                  kv_dtype=_kv_dtype(dtype, kv_dtype), extra_bytes=act)


def gpus_needed(model: ModelConfig | str, gpu: str | GPUSpec, dtype: str = "bf16", *, batch: int = 1,
                context: int = 0, kv_dtype: str | None = None) -> int:
    """Fewest GPUs of kind ``gpu`` whose datasheet memory holds :func:`serving_memory`."""
    return serving_memory(model, gpu, dtype, batch=batch, context=context, kv_dtype=kv_dtype).gpus_needed


# --------------------------------------------------------------------------------------------
# Time and cost of a decode step
# --------------------------------------------------------------------------------------------

def twin_counts(config: ModelConfig | str, twin: str | None = None) -> dict[str, int]:
    """The :func:`dmcourse.roofline.decode_step` parameter counts of ``config``
    (:func:`dmcourse.roofline.decode_counts`), or of its dense twin: ``"equal_total"`` (a dense model
    that reads *and* uses every parameter of the MoE for every token) or ``"equal_active"`` (a dense
    model of the MoE's active size). Attention and KV cache are unchanged: the twin differs only in
    its FFNs."""
    counts = rl.decode_counts(_model(config))
    if twin is None:
        return counts
    if twin not in TWINS:
        raise ValueError(f"twin must be None or one of {TWINS}, got {twin!r}")
    share = 1.0 if twin == "equal_total" else counts["top_k"] / counts["n_experts"]
    dense = counts["dense_params"] + round(counts["expert_params"] * share)
    return {"dense_params": dense, "expert_params": 0, "n_experts": 1, "top_k": 1}


@dataclass(frozen=True)
class DecodeCost:
    """One decode step (one new token for each of ``batch`` sequences) on ``n_gpus`` x ``gpu``.

    ``step``: the roofline's FLOPs and bytes (:class:`dmcourse.roofline.DecodeStep`);
    ``peak_flops`` and ``bandwidth``: *one* GPU's datasheet figures (FLOP/s, bytes/s);
    ``usd_per_gpu_hour``: the assumed price (None: no dollar figures).
    """

    model: str
    gpu: str
    n_gpus: int
    batch: int
    context: int
    dtype: str
    kv_dtype: str
    precision: str
    step: rl.DecodeStep
    peak_flops: float
    bandwidth: float
    usd_per_gpu_hour: float | None = None

    @property
    def step_time_s(self) -> float:
        """Roofline time of one step (s) on all ``n_gpus`` (ideal: n x bandwidth, n x peak). This is
        also the time between two tokens of one sequence (inter-token latency)."""
        return self.step.time_s(self.n_gpus * self.peak_flops, self.n_gpus * self.bandwidth)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second, all sequences together: ``batch / step_time_s``."""
        return self.batch / self.step_time_s

    @property
    def gpu_seconds_per_token(self) -> float:
        """GPU-seconds one generated token costs: ``n_gpus * step_time_s / batch`` (the step is
        shared by the ``batch`` sequences, each getting one token)."""
        return self.n_gpus * self.step_time_s / self.batch

    @property
    def usd_per_million_tokens(self) -> float | None:
        """Dollars per million generated tokens at the assumed price (None without a price)."""
        if self.usd_per_gpu_hour is None:
            return None
        return self.gpu_seconds_per_token * 1e6 * self.usd_per_gpu_hour / 3600

    @property
    def ridge(self) -> float:
        """The GPU's ridge point (FLOP/byte); the same for one GPU or n ideal ones."""
        return rl.ridge_point(self.peak_flops, self.bandwidth)

    @property
    def bound(self) -> str:
        """``"memory"`` when the step's intensity is below the ridge, else ``"compute"``."""
        return "memory" if self.step.intensity < self.ridge else "compute"


def _roof(gpu: str | GPUSpec, dtype: str) -> tuple[str, float, float]:
    precision = compute_precision(gpu, dtype)
    peak, bandwidth = rl.datasheet_roof(hardware.gpu(gpu).name, precision)
    return precision, peak, bandwidth


def _step_kwargs(c: ModelConfig, dtype: str, kv_dtype: str, context: int, twin: str | None) -> dict:
    """Keyword arguments of :func:`dmcourse.roofline.decode_step` (all but ``batch``): the same
    composition as :func:`dmcourse.roofline.decode_step_for_config`, with a KV dtype of its own."""
    return dict(
        **twin_counts(c, twin),
        bytes_per_param=accounting.bytes_per_param(dtype),
        kv_bytes_per_seq=accounting.kv_cache_bytes(c, context, 1, kv_dtype) if context else 0.0,
        attention_flops_per_seq=float(accounting.attention_flops_per_token(c, context)) if context else 0.0,
    )


def decode_cost(
    model: ModelConfig | str,
    gpu: str | GPUSpec = "H100",
    batch: int = 1,
    *,
    context: int = 0,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    n_gpus: int | None = None,
    usd_per_gpu_hour: float | None = None,
    twin: str | None = None,
) -> DecodeCost:
    """Roofline time and cost of one decode step of ``model`` at ``batch`` sequences, each with
    ``context`` tokens in its KV cache, on ``n_gpus`` x ``gpu`` (default: the fewest that hold
    :func:`serving_memory`), datasheet roof at :func:`compute_precision`.

    ``twin``: cost the dense twin instead (see :func:`twin_counts`). ``usd_per_gpu_hour``: an
    assumed price, needed only for the dollar figure.
    """
    c = _model(model)
    spec = hardware.gpu(gpu)
    batch = _int("batch", batch, 1)
    context = _int("context", context, 0)
    kv = _kv_dtype(dtype, kv_dtype)
    if n_gpus is None:
        n_gpus = serving_memory(c, spec, dtype, batch=batch, context=context, kv_dtype=kv).gpus_needed
    n_gpus = _int("n_gpus", n_gpus, 1)
    price = None if usd_per_gpu_hour is None else _price(usd_per_gpu_hour)
    precision, peak, bandwidth = _roof(spec, dtype)
    step = rl.decode_step(batch=batch, **_step_kwargs(c, dtype, kv, context, twin))
    name = c.name if twin is None else f"{c.name} dense twin ({twin.replace('_', ' ')})"
    return DecodeCost(model=name, gpu=spec.name, n_gpus=n_gpus, batch=batch, context=context, dtype=dtype,
                      kv_dtype=kv, precision=precision, step=step, peak_flops=peak, bandwidth=bandwidth,
                      usd_per_gpu_hour=price)


def critical_batch(model: ModelConfig | str, gpu: str | GPUSpec = "H100", *, context: int = 0,
                   dtype: str = "bf16", kv_dtype: str | None = None, twin: str | None = None) -> float:
    """Smallest batch at which a decode step of ``model`` (or its ``twin``) is compute-bound on
    ``gpu`` (:func:`dmcourse.roofline.decode_critical_batch`); ``math.inf`` if none is."""
    c = _model(model)
    context = _int("context", context, 0)
    _, peak, bandwidth = _roof(gpu, dtype)
    return rl.decode_critical_batch(peak, bandwidth, **_step_kwargs(c, dtype, _kv_dtype(dtype, kv_dtype), context, twin))


def regime_batches(model: ModelConfig | str, gpu: str | GPUSpec = "H100", *, dtype: str = "bf16",
                   touched_fraction: float = 0.9) -> dict[str, float]:
    """Where an MoE's two advantages over the dense model of equal total size live (context 0:
    weights only), on ``gpu``:

    * ``"experts_touched"``: the smallest batch whose tokens touch at least ``touched_fraction`` of
      the experts of a layer on average (:func:`dmcourse.roofline.expected_experts_touched`): from
      here the MoE reads nearly all its weights every step, and its *memory* advantage is gone;
    * ``"dense_critical"``: the critical batch of the equal-total dense twin: from here the twin is
      compute-bound, its cost per token stops falling, and the MoE's *FLOP* advantage appears;
    * ``"moe_critical"``: the MoE's own critical batch: from here it too is compute-bound and its
      cost per token is the twin's times ``active / total`` -- the FLOP advantage in full.
    """
    c = _model(model)
    if not c.is_moe:
        raise ValueError(f"{c.name} is dense: regime_batches compares an MoE with its dense twin")
    if not 0 < touched_fraction < 1:
        raise ValueError(f"touched_fraction must be in (0, 1), got {touched_fraction!r}")
    # E (1 - (1 - k/E)^B) >= f E  <=>  B >= log(1 - f) / log(1 - k/E)
    batch = 1
    while rl.expected_experts_touched(c.n_experts, c.top_k, batch) < touched_fraction * c.n_experts:
        batch *= 2
    low = batch // 2
    while batch - low > 1:  # bisection: touched(low) < f E <= touched(batch)
        mid = (low + batch) // 2
        if rl.expected_experts_touched(c.n_experts, c.top_k, mid) >= touched_fraction * c.n_experts:
            batch = mid
        else:
            low = mid
    return {
        "experts_touched": float(batch),
        "dense_critical": critical_batch(c, gpu, dtype=dtype, twin="equal_total"),
        "moe_critical": critical_batch(c, gpu, dtype=dtype),
    }


# --------------------------------------------------------------------------------------------
# Dense-equivalent rules of thumb
# --------------------------------------------------------------------------------------------

def geometric_mean_rule(total: float, active: float) -> float:
    """``sqrt(total * active)`` (parameters): the "geometric-mean rule" for the dense model an MoE
    performs like. Folklore; see :data:`RULES` for what is and is not traceable."""
    for name, value in (("total", total), ("active", active)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number of parameters, got {value!r}")
    if active > total:
        raise ValueError(f"active={active!r} exceeds total={total!r}")
    return math.sqrt(total * active)


def quoted_epoch_rule(total: float, n_experts: int, active_experts: int) -> float:
    """``total / (n_experts ** 0.44 / active_experts ** 0.63)`` (parameters), exactly as the course's
    source text quotes it and attributes it to Epoch AI ("Dense Equivalent ~ Total Params /
    (Experts^0.44 / Active_Experts^0.63)"). See :data:`RULES` for its provenance."""
    if isinstance(total, bool) or not isinstance(total, (int, float)) or not total > 0:
        raise ValueError(f"total must be a positive number of parameters, got {total!r}")
    n_experts = _int("n_experts", n_experts, 1)
    active_experts = _int("active_experts", active_experts, 1)
    if active_experts > n_experts:
        raise ValueError(f"active_experts={active_experts} exceeds n_experts={n_experts}")
    return total / (n_experts**0.44 / active_experts**0.63)


def half_total_rule(total: float) -> float:
    """``total / 2`` (parameters): the source text's "an 8-way sparse model has inference economics
    roughly equivalent to a dense model half its total size"."""
    if isinstance(total, bool) or not isinstance(total, (int, float)) or not total > 0:
        raise ValueError(f"total must be a positive number of parameters, got {total!r}")
    return total / 2


@dataclass(frozen=True)
class Rule:
    """A dense-equivalent rule of thumb: its formula, what it claims to predict, and its provenance.

    ``fn(total, active, n_experts, top_k) -> parameters``; ``traceable``: what of its origin can be
    checked, and what cannot."""

    name: str
    formula: str
    claims: str
    provenance: str
    traceable: str
    fn: Callable[[float, float, int, int], float]


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule(
        name="geometric mean",
        formula="sqrt(total x active)",
        claims="the size of the dense model an MoE matches in *quality*",
        provenance="folklore of 2024 forums and posts, attributed to a talk by Mistral AI at Stanford "
                   "(CS25, on Mixtral)",
        traceable="no paper, report or slide with the formula could be found; the attribution to the talk "
                  "is second-hand. Not a cost rule: it says nothing about batch, memory or hardware",
        fn=lambda total, active, n_experts, top_k: geometric_mean_rule(total, active),
    ),
    Rule(
        name="quoted Epoch AI formula",
        formula="total / (experts^0.44 / active_experts^0.63)",
        claims="the dense model with the same inference economics (\"fast short-context decoding\")",
        provenance="the course's source blog post, which attributes it to Epoch AI without a link",
        traceable="no Epoch AI publication with this formula or these exponents could be found; the "
                  "same expression circulates elsewhere with the division turned into a multiplication. "
                  "It ignores which parameters are experts (attention, shared experts) and the batch",
        fn=lambda total, active, n_experts, top_k: quoted_epoch_rule(total, n_experts, top_k),
    ),
    Rule(
        name="half the total",
        formula="total / 2 (stated for 8-way sparse models)",
        claims="\"inference economics roughly equivalent to a dense model half its total size\"",
        provenance="the course's source blog post (its TL;DR), no source given",
        traceable="no source; no batch size or hardware stated",
        fn=lambda total, active, n_experts, top_k: half_total_rule(total),
    ),
)}
"""The rules of thumb the chapter tests, by name."""


def roofline_dense_equivalent(model: ModelConfig | str, batch: int, gpu: str | GPUSpec = "H100", *,
                              dtype: str = "bf16") -> float:
    """The size (parameters) of the dense model whose decode step at the same ``batch`` takes the
    same roofline time on ``gpu`` as ``model``'s (weights only, context 0).

    A dense model of N parameters (all read and all used each step) takes
    ``max(2 N B / peak, N s / bandwidth)``; setting that equal to the MoE's step time gives
    ``N = t_MoE / max(2 B / peak, s / bandwidth)``. It equals the active size at batch 1 (minus the
    experts a single token does not touch) and when both are compute-bound, and approaches the
    total size in between, where the batch touches every expert but the step is still memory-bound.
    """
    c = _model(model)
    batch = _int("batch", batch, 1)
    _, peak, bandwidth = _roof(gpu, dtype)
    t = decode_cost(c, gpu, batch, dtype=dtype, n_gpus=1).step_time_s
    return t / max(2 * batch / peak, accounting.bytes_per_param(dtype) / bandwidth)


def dense_equivalent_batches(model: ModelConfig | str, params: float, gpu: str | GPUSpec = "H100", *,
                             dtype: str = "bf16", max_batch: int = 2**20) -> tuple[int | None, int | None]:
    """The batches at which :func:`roofline_dense_equivalent` of ``model`` equals a rule's ``params``.

    The roofline equivalent rises with the batch while the dense twin is memory-bound (more experts
    touched), then falls once the dense twin is compute-bound (its time grows with the batch, the
    MoE's does not until it is compute-bound too). Returns ``(rising, falling)``: the smallest batch
    on the rising side whose equivalent is ``>= params``, and the smallest batch on the falling side
    whose equivalent is ``<= params`` again; ``None`` where the equivalent never gets there (a rule
    below the batch-1 value has no rising crossing; one above the peak has neither).
    """
    c = _model(model)
    if isinstance(params, bool) or not isinstance(params, (int, float)) or not params > 0:
        raise ValueError(f"params must be a positive number of parameters, got {params!r}")
    max_batch = _int("max_batch", max_batch, 2)

    def eq(b: int) -> float:
        return roofline_dense_equivalent(c, b, gpu, dtype=dtype)

    def first(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
        """Smallest b in [lo, hi] with ok(b), for ok monotone False...True on [lo, hi]."""
        if not ok(hi):
            return None
        if ok(lo):
            return lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi

    peak = min(max_batch, max(1, math.floor(critical_batch(c, gpu, dtype=dtype, twin="equal_total")) - 1))
    rising = first(1, peak, lambda b: eq(b) >= params)
    if rising is None:
        return None, None
    return rising, first(peak, max_batch, lambda b: eq(b) <= params)


# --------------------------------------------------------------------------------------------
# The calculator
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """What the calculator shows for one setting. Bytes, seconds, dollars; see :func:`estimate`."""

    model: str
    gpu: str
    dtype: str
    kv_dtype: str
    batch: int
    context: int
    params_total: int
    params_active: int
    memory: accounting.Fit
    cost: DecodeCost

    @property
    def n_gpus(self) -> int:
        return self.cost.n_gpus

    @property
    def bound(self) -> str:
        return self.cost.bound

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, formatted for display (GB = 1e9 bytes, GiB = 2**30 bytes)."""
        m, k = self.memory, self.cost
        gb = accounting.to_gb
        price = k.usd_per_gpu_hour
        rows = [
            ("model", f"{self.model}: {self.params_total / 1e9:.1f}B parameters, {self.params_active / 1e9:.1f}B active"),
            ("weights", f"{gb(m.weight_bytes):,.1f} GB ({self.dtype}"
                        f"{'; every expert resident' if self.params_active < self.params_total else ''})"),
            ("KV cache", f"{gb(m.kv_cache_bytes):,.2f} GB ({self.batch} x {self.context} tokens, {self.kv_dtype})"),
            ("activations (estimate)", f"{m.extra_bytes / 1e6:,.1f} MB"),
            ("total memory", f"{gb(m.needed_bytes):,.1f} GB = {accounting.to_gib(m.needed_bytes):,.1f} GiB"),
            ("GPUs needed", f"{m.gpus_needed} x {self.gpu} ({m.memory_bytes / 1e9:.0f} GB each, datasheet)"),
            ("GPUs costed", f"{k.n_gpus}"),
            ("time per step (= per token of one sequence)", f"{k.step_time_s * 1e3:,.2f} ms"),
            ("throughput", f"{k.tokens_per_s:,.0f} tokens/s"),
            ("GPU-seconds per token", f"{k.gpu_seconds_per_token:.3g}"),
            ("cost per million tokens",
             "no price given" if price is None else f"${k.usd_per_million_tokens:,.2f} at an assumed ${price:g}/GPU-hour"),
            ("bound", f"{k.bound} (intensity {k.step.intensity:,.1f} FLOP/byte, ridge {k.ridge:,.0f})"),
        ]
        return rows


def estimate(
    model: ModelConfig | str,
    gpu: str | GPUSpec = "H100",
    *,
    dtype: str = "bf16",
    batch: int = 1,
    context: int = 0,
    usd_per_gpu_hour: float | None = None,
    kv_dtype: str | None = None,
    n_gpus: int | None = None,
) -> Estimate:
    """The calculator: memory (:func:`serving_memory`), GPUs needed, and the roofline time, cost and
    bound of a decode step (:func:`decode_cost`) for ``model`` on ``gpu`` at ``batch`` sequences of
    ``context`` tokens. ``n_gpus`` defaults to the GPUs needed. A pure function: no widgets, no I/O."""
    c = _model(model)
    spec = hardware.gpu(gpu)
    kv = _kv_dtype(dtype, kv_dtype)
    memory = serving_memory(c, spec, dtype, batch=batch, context=context, kv_dtype=kv)
    cost = decode_cost(c, spec, batch, context=context, dtype=dtype, kv_dtype=kv,
                       n_gpus=memory.gpus_needed if n_gpus is None else n_gpus, usd_per_gpu_hour=usd_per_gpu_hour)
    p = accounting.count_params(c)
    return Estimate(model=c.name, gpu=spec.name, dtype=dtype, kv_dtype=kv, batch=batch, context=context,
                    params_total=p.total, params_active=p.active, memory=memory, cost=cost)
