"""Chapter 6 (Inference economics): what serving a model needs (memory, GPUs) and what a generated
token costs (time, GPU-seconds, dollars), for dense and MoE models on a GPU of the datasheet table.

Built on the lower modules, whose formulas are used, never repeated:

* :mod:`dmcourse.accounting`: parameters, weight bytes by dtype, KV-cache bytes (GQA; DeepSeek's
  compressed MLA latent), attention FLOPs, does-it-fit (:class:`~dmcourse.fit.Fit`);
* :mod:`dmcourse.roofline`: the decode step of a dense model or an MoE (bytes read, FLOPs, experts
  touched ``E * (1 - (1 - k/E) ** B)``, composed for a config by
  :func:`~dmcourse.roofline.decode_kwargs`), the critical batch, the datasheet roof of a GPU;
* :mod:`dmcourse.hardware`: the GPU datasheet table (``dmcourse/data/gpus.json``).

What this module adds:

* :func:`activation_bytes`: an estimate of the live activations at inference;
* :func:`serving_memory`: weights + KV cache + activations on a GPU kind, and the GPUs needed;
* :func:`decode_cost`: roofline time of a decode step on ``n_gpus`` GPUs, seconds and dollars per
  generated token, the bound (memory or compute); ``twin=`` gives the dense model of equal total or
  equal active size, the comparisons the chapter draws;
* :func:`max_batch`: the largest batch whose weights, cache and activations fit ``n_gpus`` GPUs;
  every cost says whether its configuration fits (:attr:`DecodeCost.fits`, :attr:`DecodeCost.fit_message`);
* :func:`regime_batches`: the batches where an MoE's advantages over a dense model appear and vanish.

Next door: the dense-equivalent rules of thumb (:mod:`dmcourse.dense_equivalent`) and the
calculator, one pure function over this module (:mod:`dmcourse.calculator`).

**Prices are inputs.** A GPU-hour price is not a datasheet figure: every function that returns
dollars takes ``usd_per_gpu_hour`` explicitly, and there is no default price in this module.

Modelling choices (stated once, used everywhere):

* the roofline is a lower bound on time: ``max(FLOPs / peak, bytes / bandwidth)`` with datasheet
  figures (dense tensor-core peaks); real kernels reach a fraction of both;
* ``n_gpus`` GPUs are ideal: ``n`` times the bandwidth and the peak, no communication time (the
  chapter quantifies the communication separately). Under this assumption the cost per token does
  not depend on ``n_gpus``; the latency does. What ``n_gpus`` does decide is *capacity*: whether
  weights, cache and activations fit their datasheet memory, which every result reports;
* MLA models (DeepSeek-V3) are costed in one form (:data:`dmcourse.accounting.MLA_FORMS`): by
  default the absorbed form with the compressed latent cache, as DeepSeek serves it;
* weights quantised below 16 bit (fp8, int8, int4) are *weight-only*: they shrink the bytes read,
  the matmuls still run at the 16-bit peak; the KV cache stays 16-bit unless ``kv_dtype`` says
  otherwise;
* ``context``: tokens already in each sequence's KV cache, read once per decode step.

Units: bytes, FLOPs, seconds, dollars; ``GB = 1e9`` bytes (datasheets), ``GiB = 2**30`` bytes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dmcourse import accounting, fit, hardware
from dmcourse import roofline as rl
from dmcourse.checks import check_int, nonnegative_float
from dmcourse.configs import ModelConfig, load_preset
from dmcourse.hardware import GPUSpec

TWINS = ("equal_total", "equal_active")


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def load_model(model: ModelConfig | str) -> ModelConfig:
    """``model`` itself, or the preset of that name (:func:`dmcourse.configs.load_preset`)."""
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str):
        return load_preset(model)
    raise ValueError(f"model must be a ModelConfig or a preset name, got {model!r}")


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
    c = load_model(config)
    widths = []
    if c.n_dense_layers:
        widths.append(c.d_ff)
    if c.n_moe_layers:
        widths.append(c.top_k * c.expert_width + c.n_shared_experts * c.shared_width)
    return max(widths)


def activation_bytes(
    config: ModelConfig | str,
    tokens: int,
    dtype: str = "bf16",
    logits_tokens: int | None = None,
    logits_dtype: str = "fp32",
) -> float:
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
    c = load_model(config)
    tokens = check_int("tokens", tokens, 1)
    logits_tokens = tokens if logits_tokens is None else check_int("logits_tokens", logits_tokens, 0)
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
    mla_form: str = "absorbed",
) -> fit.Fit:
    """What serving ``model`` needs on ``gpu``: all weights in ``dtype`` (every expert is resident),
    the KV cache of ``batch`` sequences of ``context`` tokens (for MLA, the cache of ``mla_form``),
    and :func:`activation_bytes` of ``activation_tokens`` tokens (default ``batch``: a decode step)
    as ``extra_bytes``.

    Returns :class:`dmcourse.fit.Fit`: ``.needed_bytes``, ``.fits`` on ``n_gpus`` GPUs,
    ``.gpus_needed`` (the fewest GPUs whose *datasheet* memory holds it all; a program can allocate
    somewhat less, and deployments round up to a parallel layout).
    """
    c = load_model(model)
    batch = check_int("batch", batch, 1)
    context = check_int("context", context, 0)
    tokens = batch if activation_tokens is None else check_int("activation_tokens", activation_tokens, 1)
    act = activation_bytes(
        c, tokens, dtype if accounting.bytes_per_param(dtype) >= 2 else "bf16", logits_tokens=min(tokens, batch)
    )
    return fit.fits_on_gpu(
        c,
        gpu,
        dtype,
        n_gpus=n_gpus,
        context=context,
        batch=batch,
        kv_dtype=_kv_dtype(dtype, kv_dtype),
        extra_bytes=act,
        mla_form=mla_form,
    )


def gpus_needed(
    model: ModelConfig | str,
    gpu: str | GPUSpec,
    dtype: str = "bf16",
    *,
    batch: int = 1,
    context: int = 0,
    kv_dtype: str | None = None,
    mla_form: str = "absorbed",
) -> int:
    """Fewest GPUs of kind ``gpu`` whose datasheet memory holds :func:`serving_memory`."""
    return serving_memory(
        model, gpu, dtype, batch=batch, context=context, kv_dtype=kv_dtype, mla_form=mla_form
    ).gpus_needed


def max_batch(
    model: ModelConfig | str,
    gpu: str | GPUSpec,
    dtype: str = "bf16",
    *,
    n_gpus: int = 1,
    context: int = 0,
    kv_dtype: str | None = None,
    mla_form: str = "absorbed",
) -> int:
    """Largest batch (decode sequences of ``context`` tokens) whose :func:`serving_memory` fits the
    datasheet memory of ``n_gpus`` x ``gpu``; 0 when not even one sequence fits.

    The memory is linear in the batch, ``needed(B) = fixed + B * per_sequence`` (weights; each
    sequence's KV cache, activations and logits), so ``B = floor((available - fixed) /
    per_sequence)``, checked against :func:`serving_memory` itself so that rounding cannot shift it.
    """
    c = load_model(model)

    def needed(b: int) -> float:
        return serving_memory(
            c, gpu, dtype, batch=b, context=context, kv_dtype=kv_dtype, n_gpus=n_gpus, mla_form=mla_form
        ).needed_bytes

    one = serving_memory(c, gpu, dtype, batch=1, context=context, kv_dtype=kv_dtype, n_gpus=n_gpus, mla_form=mla_form)
    if not one.fits:
        return 0
    per_sequence = needed(2) - one.needed_bytes
    batch = max(1, math.floor((one.available_bytes - (one.needed_bytes - per_sequence)) / per_sequence))
    while batch > 1 and needed(batch) > one.available_bytes:
        batch -= 1
    while needed(batch + 1) <= one.available_bytes:
        batch += 1
    return batch


# --------------------------------------------------------------------------------------------
# Time and cost of a decode step
# --------------------------------------------------------------------------------------------


def twin_counts(config: ModelConfig | str, twin: str | None = None) -> dict[str, int]:
    """The :func:`dmcourse.roofline.decode_step` parameter counts of ``config``
    (:func:`dmcourse.roofline.decode_counts`), or of its dense twin: ``"equal_total"`` (a dense model
    that reads *and* uses every parameter of the MoE for every token) or ``"equal_active"`` (a dense
    model of the MoE's active size). Attention and KV cache are unchanged: the twin differs only in
    its FFNs."""
    counts = rl.decode_counts(load_model(config))
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
    ``memory``: what the configuration needs against the datasheet memory of the ``n_gpus``
    (:func:`serving_memory`); ``usd_per_gpu_hour``: the assumed price (None: no dollar figures);
    ``mla_form``: the MLA form costed (ignored by GQA models).
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
    memory: fit.Fit
    usd_per_gpu_hour: float | None = None
    mla_form: str = "absorbed"

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

    @property
    def fits(self) -> bool:
        """Whether weights, KV cache and activations fit the datasheet memory of the ``n_gpus``."""
        return self.memory.fits

    @property
    def fit_message(self) -> str:
        """One sentence on capacity: that the configuration fits, or by how much it does not and how
        many GPUs it would need (its cost is then that of ideal GPUs it does not have)."""
        m, gb = self.memory, accounting.to_gb
        where = f"{self.n_gpus} x {self.gpu} ({gb(m.available_bytes):,.0f} GB datasheet)"
        if m.fits:
            return f"fits: {gb(m.needed_bytes):,.1f} GB on {where}"
        return (
            f"DOES NOT FIT: {gb(m.needed_bytes):,.1f} GB needed on {where}, short by "
            f"{gb(-m.headroom_bytes):,.1f} GB; needs at least {m.gpus_needed} x {self.gpu} "
            f"(the cost shown assumes ideal GPUs with capacity ignored)"
        )


def roof(gpu: str | GPUSpec, dtype: str) -> tuple[str, float, float]:
    """``(precision, peak_flops, bandwidth)``: the datasheet roof a model stored in ``dtype`` runs
    under on ``gpu`` (:func:`compute_precision`, :func:`dmcourse.roofline.datasheet_roof`)."""
    precision = compute_precision(gpu, dtype)
    peak, bandwidth = rl.datasheet_roof(hardware.gpu(gpu).name, precision)
    return precision, peak, bandwidth


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
    mla_form: str = "absorbed",
) -> DecodeCost:
    """Roofline time and cost of one decode step of ``model`` at ``batch`` sequences, each with
    ``context`` tokens in its KV cache, on ``n_gpus`` x ``gpu`` (default: the fewest that hold
    :func:`serving_memory`), datasheet roof at :func:`compute_precision`. With an ``n_gpus`` too
    small for the memory the cost is still computed (ideal scaling) and ``.fits`` is False.

    ``twin``: cost the dense twin instead (see :func:`twin_counts`). ``usd_per_gpu_hour``: an
    assumed price, needed only for the dollar figure. ``mla_form``: see
    :func:`dmcourse.roofline.decode_kwargs`.
    """
    c = load_model(model)
    spec = hardware.gpu(gpu)
    batch = check_int("batch", batch, 1)
    context = check_int("context", context, 0)
    kv = _kv_dtype(dtype, kv_dtype)
    need = serving_memory(c, spec, dtype, batch=batch, context=context, kv_dtype=kv, mla_form=mla_form)
    n_gpus = need.gpus_needed if n_gpus is None else check_int("n_gpus", n_gpus, 1)
    memory = dataclasses.replace(need, n_gpus=n_gpus)
    price = None if usd_per_gpu_hour is None else nonnegative_float("usd_per_gpu_hour", usd_per_gpu_hour)
    precision, peak, bandwidth = roof(spec, dtype)
    step = rl.decode_step_for_config(
        c, batch, dtype, context, kv_dtype=kv, mla_form=mla_form, counts=twin_counts(c, twin)
    )
    name = c.name if twin is None else f"{c.name} dense twin ({twin.replace('_', ' ')})"
    return DecodeCost(
        model=name,
        gpu=spec.name,
        n_gpus=n_gpus,
        batch=batch,
        context=context,
        dtype=dtype,
        kv_dtype=kv,
        precision=precision,
        step=step,
        peak_flops=peak,
        bandwidth=bandwidth,
        memory=memory,
        usd_per_gpu_hour=price,
        mla_form=mla_form,
    )


def critical_batch(
    model: ModelConfig | str,
    gpu: str | GPUSpec = "H100",
    *,
    context: int = 0,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    twin: str | None = None,
    mla_form: str = "absorbed",
) -> float:
    """Smallest batch at which a decode step of ``model`` (or its ``twin``) is compute-bound on
    ``gpu`` (:func:`dmcourse.roofline.decode_critical_batch`); ``math.inf`` if none is. Capacity
    is not considered: :func:`max_batch` says whether that batch fits."""
    c = load_model(model)
    context = check_int("context", context, 0)
    _, peak, bandwidth = roof(gpu, dtype)
    kwargs = rl.decode_kwargs(
        c, dtype, context, kv_dtype=_kv_dtype(dtype, kv_dtype), mla_form=mla_form, counts=twin_counts(c, twin)
    )
    return rl.decode_critical_batch(peak, bandwidth, **kwargs)


def regime_batches(
    model: ModelConfig | str, gpu: str | GPUSpec = "H100", *, dtype: str = "bf16", touched_fraction: float = 0.9
) -> dict[str, float]:
    """Where an MoE's two advantages over the dense model of equal total size live (context 0:
    weights only), on ``gpu``:

    * ``"experts_touched"``: the smallest batch whose tokens touch at least ``touched_fraction`` of
      the experts of a layer on average (:func:`dmcourse.roofline.batch_touching`): from here the
      MoE reads nearly all its weights every step, and its *memory* advantage is gone;
    * ``"dense_critical"``: the critical batch of the equal-total dense twin: from here the twin is
      compute-bound, its cost per token stops falling, and the MoE's *FLOP* advantage appears;
    * ``"moe_critical"``: the MoE's own critical batch: from here it too is compute-bound and its
      cost per token is the twin's times ``active / total`` -- the FLOP advantage in full.
    """
    c = load_model(model)
    if not c.is_moe:
        raise ValueError(f"{c.name} is dense: regime_batches compares an MoE with its dense twin")
    if not 0 < touched_fraction < 1:
        raise ValueError(f"touched_fraction must be in (0, 1), got {touched_fraction!r}")
    return {
        "experts_touched": float(rl.batch_touching(c.n_experts, c.top_k, touched_fraction)),
        "dense_critical": critical_batch(c, gpu, dtype=dtype, twin="equal_total"),
        "moe_critical": critical_batch(c, gpu, dtype=dtype),
    }
