"""Serving an MoE through the experts-touched decode model (chapter "Serving an MoE",
``book/09_serving.ipynb``).

Chapter 9 ("Serving an MoE", placed after the economics chapter) introduces it.

The roofline's decode step (:func:`dmcourse.roofline.decode_step`) reads the weights of the experts
a batch touches, ``E * (1 - (1 - k/E) ** B)`` per MoE layer. This module applies it to four serving
techniques, calling the roofline, accounting and communication formulas rather than restating them:

* **speculative decoding / multi-token prediction**: verifying ``g`` draft tokens of ``B``
  sequences is one step of ``B (g + 1)`` tokens (:func:`verify_step`); with i.i.d. acceptance
  ``alpha`` a step yields ``(1 - alpha ** (g + 1)) / (1 - alpha)`` tokens (:func:`expected_accepted`),
  so the speed-up is that over the cost of verifying (:func:`speculative_speedup`);
* **quantised weights**: bytes per parameter with the group scales counted (:class:`QuantFormat`),
  experts and the rest quantised separately (:func:`mixed_decode_cost`), and the weight-only int8
  matmul torch ships for CPUs (:func:`int8_linear`);
* **offloaded experts**: experts not resident in device memory come over the host link;
  time per step as a function of the miss rate and the link bandwidth (:func:`offload_step`),
  how many experts fit (:func:`resident_experts`), host-to-device copy bandwidth (:func:`measure_h2d`);
* **hot experts**: skewed popularity (recorded from the toy router of the balancing chapter,
  :func:`load_popularity`), the experts a skewed batch touches (:func:`experts_touched_skewed`), the
  hit rate of caching the top-N experts (:func:`cache_hit_rate`), and the busiest GPU of an expert-
  parallel layout with replicated hot experts (:func:`replicated_max_load`).

Units: bytes, FLOPs, seconds, bytes/s, FLOP/s. Parameters are counted by :mod:`dmcourse.accounting`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from dmcourse import accounting, comm
from dmcourse import roofline as rl
from dmcourse.checks import check_int, nonnegative_float, positive_float, probability
from dmcourse.configs import ModelConfig
from dmcourse.timing import time_fn

# --------------------------------------------------------------------------------------------
# Speculative decoding and multi-token prediction
# --------------------------------------------------------------------------------------------


def expected_accepted(alpha: float, draft: int) -> float:
    """Expected tokens one verification step yields when each of ``draft`` (g) draft tokens is
    accepted with probability ``alpha``, independently, until the first rejection, plus the one
    token the target model always adds: ``sum_{i=0..g} alpha**i = (1 - alpha**(g+1)) / (1 - alpha)``
    (``g + 1`` at ``alpha = 1``; 1 at ``alpha = 0`` or ``g = 0``)."""
    alpha = probability("alpha", alpha)
    draft = check_int("draft", draft, 0)
    if alpha == 1.0:
        return float(draft + 1)
    return (1.0 - alpha ** (draft + 1)) / (1.0 - alpha)


def verify_step(*, batch: int, draft: int, kv_bytes_per_seq: float = 0.0, **model: Any) -> rl.DecodeStep:
    """The decode step that verifies ``draft`` tokens for each of ``batch`` sequences:
    :func:`dmcourse.roofline.decode_step` of ``batch * (draft + 1)`` tokens (experts touched
    ``E_t(B (g + 1))``), each *sequence* still reading its KV cache once (``kv_bytes_per_seq``).
    ``model``: the other keyword arguments of ``decode_step`` (``dense_params``, ``bytes_per_param``,
    ``expert_params``, ``n_experts``, ``top_k``, ``attention_flops_per_seq``). ``draft=0`` is a
    plain decode step."""
    batch, draft = check_int("batch", batch, 1), check_int("draft", draft, 0)
    tokens = batch * (draft + 1)
    kv = nonnegative_float("kv_bytes_per_seq", kv_bytes_per_seq)
    return rl.decode_step(batch=tokens, kv_bytes_per_seq=kv * batch / tokens, **model)


def verify_cost_ratio(*, batch: int, draft: int, peak_flops: float, bandwidth: float, **model: Any) -> float:
    """Roofline time of :func:`verify_step` over that of a plain decode step of the same batch
    (>= 1): what verifying ``draft`` extra tokens per sequence costs. 1 for a memory-bound dense
    model; for an MoE, the extra experts the extra tokens touch."""
    plain = verify_step(batch=batch, draft=0, **model).time_s(peak_flops, bandwidth)
    return verify_step(batch=batch, draft=draft, **model).time_s(peak_flops, bandwidth) / plain


def speculative_speedup(alpha: float, draft: int, verify_ratio: float, draft_cost: float = 0.0) -> float:
    """Tokens per second with speculative decoding over plain decoding:
    ``expected_accepted(alpha, g) / (verify_ratio + g * draft_cost)``.

    ``verify_ratio``: verification step time / plain step time (:func:`verify_cost_ratio`, or
    measured); ``draft_cost``: time to propose one draft token / plain step time (0 for a free
    drafter; a small draft model or an MTP module costs a few %). With ``verify_ratio = 1`` this is
    Leviathan et al.'s (2023) speed-up ``(1 - alpha**(g+1)) / ((1 - alpha)(g c + 1))``."""
    verify_ratio = positive_float("verify_ratio", verify_ratio)
    draft_cost = nonnegative_float("draft_cost", draft_cost)
    return expected_accepted(alpha, draft) / (verify_ratio + draft * draft_cost)


def speculative_speedup_for(
    alpha: float, draft: int, *, batch: int, peak_flops: float, bandwidth: float, draft_cost: float = 0.0, **model: Any
) -> float:
    """:func:`speculative_speedup` with the roofline's :func:`verify_cost_ratio` for ``model``
    (keyword arguments of :func:`dmcourse.roofline.decode_step`) on a device of ``peak_flops``
    FLOP/s and ``bandwidth`` bytes/s."""
    ratio = verify_cost_ratio(batch=batch, draft=draft, peak_flops=peak_flops, bandwidth=bandwidth, **model)
    return speculative_speedup(alpha, draft, ratio, draft_cost)


# --------------------------------------------------------------------------------------------
# Quantised weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantFormat:
    """A weight format: ``bits`` per weight, plus per group of ``group_size`` weights a scale of
    ``scale_bytes`` and a zero point of ``zero_bytes`` (``group_size=None``: no scales, e.g. bf16)."""

    name: str
    bits: int
    group_size: int | None = None
    scale_bytes: float = 2.0
    zero_bytes: float = 0.0

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 1)
        if self.group_size is not None:
            check_int("group_size", self.group_size, 1)
        nonnegative_float("scale_bytes", self.scale_bytes)
        nonnegative_float("zero_bytes", self.zero_bytes)

    @property
    def bytes_per_param(self) -> float:
        """``bits / 8 + (scale_bytes + zero_bytes) / group_size`` (bytes per weight)."""
        extra = 0.0 if self.group_size is None else (self.scale_bytes + self.zero_bytes) / self.group_size
        return self.bits / 8 + extra


#: The formats the chapter compares. Group-wise int8 and int4 with one bf16 scale per 128 weights
#: (symmetric); "int4 g128 +zero" adds a bf16 zero point per group (asymmetric, as GPTQ/AWQ store).
FORMATS: dict[str, QuantFormat] = {
    f.name: f
    for f in (
        QuantFormat("fp32", 32),
        QuantFormat("bf16", 16),
        QuantFormat("int8 g128", 8, 128),
        QuantFormat("int4 g128", 4, 128),
        QuantFormat("int4 g128 +zero", 4, 128, zero_bytes=2.0),
    )
}


def quant_format(fmt: str | QuantFormat) -> QuantFormat:
    """``fmt`` itself, or the :data:`FORMATS` entry of that name."""
    if isinstance(fmt, QuantFormat):
        return fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected a QuantFormat or one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def split_counts(config: ModelConfig) -> tuple[dict[str, int], dict[str, int]]:
    """:func:`dmcourse.roofline.decode_counts` of ``config`` split into two ``decode_step`` models:
    the routed experts alone and everything else (attention, dense FFNs, shared experts, routers,
    head), so that each can be stored in its own format."""
    c = rl.decode_counts(config)
    experts = {"dense_params": 0, "expert_params": c["expert_params"], "n_experts": c["n_experts"], "top_k": c["top_k"]}
    return experts, {"dense_params": c["dense_params"]}


def quantised_weight_bytes(
    config: ModelConfig, experts: str | QuantFormat = "bf16", other: str | QuantFormat = "bf16"
) -> float:
    """Bytes of all weights (``accounting.count_params(config).total``) with the routed experts in
    format ``experts`` and every other weight in ``other`` (scales counted)."""
    p = accounting.count_params(config)
    return (
        p.experts * quant_format(experts).bytes_per_param + (p.total - p.experts) * quant_format(other).bytes_per_param
    )


def mixed_decode_cost(
    config: ModelConfig, batch: int, experts: str | QuantFormat = "bf16", other: str | QuantFormat = "bf16"
) -> rl.Cost:
    """FLOPs and bytes of one decode step of ``batch`` tokens (weights only) with the routed experts
    in ``experts`` and the other weights in ``other``: the sum of two
    :func:`dmcourse.roofline.decode_step` calls (:func:`split_counts`). Weight-only quantisation: the
    FLOPs do not change, the bytes do."""
    e_counts, o_counts = split_counts(config)
    cost = rl.Cost(0.0, 0.0)
    for counts, fmt in ((o_counts, other), (e_counts, experts)):
        if counts["dense_params"] or counts.get("expert_params"):
            step = rl.decode_step(batch=batch, bytes_per_param=quant_format(fmt).bytes_per_param, **counts)
            cost = cost + rl.Cost(step.flops, step.nbytes)
    return cost


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``w (N, K)`` float -> ``(w_int8 (N, K), scales (N,))`` with
    ``w ~= w_int8 * scales[:, None]``; one float scale per row (bytes/param ``1 + 4 / K``)."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"w must be a 2-d floating-point tensor (N, K), got {getattr(w, 'shape', w)!r}")
    scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8), scales


def int8_linear(x: torch.Tensor, w_int8: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x @ (w_int8 * scales[:, None]).T`` with the weight-only int8 kernel torch ships for CPUs,
    ``torch.ops.aten._weight_int8pack_mm``: x (M, K) bf16/fp32, w_int8 (N, K) int8, scales (N,) in
    x's dtype -> (M, N). Raises RuntimeError where the kernel is missing. On CPUs (torch 2.13) it
    is fast with bf16 activations and takes a slow path with fp32 ones (the chapter measures both)."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no aten._weight_int8pack_mm")
    if w_int8.dtype != torch.int8 or w_int8.dim() != 2 or x.dim() != 2 or x.shape[1] != w_int8.shape[1]:
        raise ValueError(
            f"need x (M, K) and w_int8 (N, K) int8, got {tuple(x.shape)} and {tuple(w_int8.shape)} {w_int8.dtype}"
        )
    return torch.ops.aten._weight_int8pack_mm(x, w_int8, scales.to(x.dtype))


# --------------------------------------------------------------------------------------------
# Offloaded experts
# --------------------------------------------------------------------------------------------

#: Host links (datasheet, per direction, from ``dmcourse/data/links.json``). The GPU datasheets
#: print the sum of both directions.
LINKS: dict[str, comm.Link] = {
    "PCIe 3.0 x16 (T4)": comm.LINKS["PCIe 3.0 x16 (T4)"],
    "PCIe 4.0 x16 (A100)": comm.LINKS["PCIe 4.0 x16 (A100)"],
    "PCIe 5.0 x16 (H100)": comm.LINKS["PCIe 5.0 x16"],
}


@dataclass(frozen=True)
class OffloadStep:
    """One decode step with offloaded experts: ``device_s`` (roofline time with every weight in
    device memory), ``fetched_bytes`` over the host link in ``transfer_s``, and ``time_s``: their
    sum, or their maximum when the copy overlaps the compute (``overlap``)."""

    device_s: float
    fetched_bytes: float
    transfer_s: float
    overlap: bool

    @property
    def time_s(self) -> float:
        return max(self.device_s, self.transfer_s) if self.overlap else self.device_s + self.transfer_s


def offload_step(
    config: ModelConfig,
    batch: int,
    miss_rate: float,
    link_bytes_per_s: float,
    *,
    peak_flops: float,
    bandwidth: float,
    experts: str | QuantFormat = "bf16",
    other: str | QuantFormat = "bf16",
    overlap: bool = False,
) -> OffloadStep:
    """A decode step of ``batch`` tokens when a fraction ``miss_rate`` of the expert weights the
    step touches is not resident and comes over a link of ``link_bytes_per_s``
    (:func:`dmcourse.comm.comm_time_s`). Touched expert bytes: the experts part of
    :func:`mixed_decode_cost` (``E_t(B)`` experts per layer). ``miss_rate = 0``: no transfer."""
    miss_rate = probability("miss_rate", miss_rate)
    cost = mixed_decode_cost(config, batch, experts, other)
    e_counts, _ = split_counts(config)
    touched = rl.decode_step(batch=batch, bytes_per_param=quant_format(experts).bytes_per_param, **e_counts).nbytes
    fetched = miss_rate * touched
    return OffloadStep(
        cost.time_s(peak_flops, bandwidth),
        fetched,
        comm.comm_time_s(fetched, positive_float("link_bytes_per_s", link_bytes_per_s)),
        overlap,
    )


def expert_bytes(config: ModelConfig, fmt: str | QuantFormat = "bf16") -> float:
    """Bytes of one routed expert of one layer in ``fmt``."""
    n = config.n_moe_layers * config.n_experts
    if n == 0:
        raise ValueError(f"{config.name} has no routed experts")
    return accounting.count_params(config).experts / n * quant_format(fmt).bytes_per_param


def resident_experts(
    config: ModelConfig,
    usable_bytes: float,
    experts: str | QuantFormat = "bf16",
    other: str | QuantFormat = "bf16",
    reserved_bytes: float = 0.0,
) -> int:
    """How many routed experts per MoE layer fit in ``usable_bytes`` of device memory once every
    other weight (in ``other``) and ``reserved_bytes`` (KV cache, activations, workspace) are in:
    between 0 and ``n_experts``; -1 when not even the other weights fit."""
    usable = nonnegative_float("usable_bytes", usable_bytes)
    p = accounting.count_params(config)
    free = (
        usable
        - nonnegative_float("reserved_bytes", reserved_bytes)
        - (p.total - p.experts) * quant_format(other).bytes_per_param
    )
    if free < 0:
        return -1
    return min(config.n_experts, int(free // (config.n_moe_layers * expert_bytes(config, experts))))


def measure_h2d(nbytes: int, *, pinned: bool, device: torch.device | str = "cuda", repeats: int = 7) -> float:
    """Host-to-device copy bandwidth (bytes/s) of a ``nbytes`` buffer from pinned (page-locked) or
    pageable host memory, timed with :func:`dmcourse.time_fn`. CUDA devices only (ValueError else)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(
            f"measure_h2d measures a host-to-GPU link: device must be an available CUDA device, got {device}"
        )
    nbytes = check_int("nbytes", nbytes, 2**20)
    host = torch.ones(nbytes, dtype=torch.uint8, pin_memory=pinned)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    t = time_fn(lambda: dst.copy_(host, non_blocking=pinned), device=device, warmup=2, repeats=repeats)
    return nbytes / t.median_s


# --------------------------------------------------------------------------------------------
# Hot experts
# --------------------------------------------------------------------------------------------


def _counts(counts: object) -> torch.Tensor:
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1 or counts.numel() < 1:
        raise ValueError(f"counts must be a non-empty (n_experts,) tensor, got {getattr(counts, 'shape', counts)!r}")
    c = counts.detach().double().cpu()
    if bool((c < 0).any()) or float(c.sum()) <= 0:
        raise ValueError(f"counts must be non-negative with a positive total, got {counts.tolist()}")
    return c


def cache_hit_rate(counts: torch.Tensor, n_cached: int) -> float:
    """Share of token-to-expert assignments that land on the ``n_cached`` most popular experts:
    the hit rate of a cache that keeps those experts resident. counts: (E,) assignments per expert."""
    c = _counts(counts)
    n_cached = check_int("n_cached", n_cached, 0)
    if n_cached > c.numel():
        raise ValueError(f"n_cached={n_cached} exceeds n_experts={c.numel()}")
    return float(c.sort(descending=True).values[:n_cached].sum() / c.sum())


def experts_touched_skewed(counts: torch.Tensor, top_k: int, tokens: int) -> float:
    """Expected distinct experts ``tokens`` independent tokens touch when expert ``e`` is picked by
    a token with probability ``p_e = top_k * counts_e / sum(counts)``: ``sum_e 1 - (1 - p_e)**B``.
    Uniform counts give :func:`dmcourse.roofline.expected_experts_touched`; skew touches fewer."""
    c = _counts(counts)
    top_k = check_int("top_k", top_k, 1)
    tokens = check_int("tokens", tokens, 0)
    p = top_k * c / c.sum()
    if float(p.max()) > 1 + 1e-9:
        raise ValueError(
            f"counts imply an expert chosen by more than every token (p = {float(p.max()):.3f} > 1) "
            f"with top_k={top_k}: counts must be of top-{top_k} assignments"
        )
    return float((1 - (1 - p.clamp(max=1.0)) ** tokens).sum())


def _greedy_max_load(c: torch.Tensor, n_gpus: int, n_redundant: int) -> float:
    replicas = torch.ones_like(c)
    for _ in range(n_redundant):
        replicas[int((c / replicas).argmax())] += 1
    pieces = sorted(
        (float(c[e] / replicas[e]) for e in range(c.numel()) for _ in range(int(replicas[e]))), reverse=True
    )
    slots = math.ceil(len(pieces) / n_gpus)
    load, held = [0.0] * n_gpus, [0] * n_gpus
    for w in pieces:
        g = min((i for i in range(n_gpus) if held[i] < slots), key=lambda i: load[i])
        load[g] += w
        held[g] += 1
    return max(load)


def replicated_max_load(counts: torch.Tensor, n_gpus: int, n_redundant: int = 0) -> float:
    """Load of the busiest of ``n_gpus`` GPUs over the mean (1 = balanced) in expert parallelism
    when up to ``n_redundant`` extra expert replicas may be added (DeepSeek-V3's redundant experts).

    For each ``r`` in ``0..n_redundant``: give ``r`` replicas, one by one, to the expert of highest
    load per copy (its tokens split evenly over its copies); place the copies heaviest first on the
    least-loaded GPU that holds fewer than ``ceil(copies / n_gpus)``. Returns the best of these
    greedy layouts (a heuristic, not the optimum). counts: (E,) assignments per expert."""
    c = _counts(counts)
    n_gpus, n_redundant = check_int("n_gpus", n_gpus, 1), check_int("n_redundant", n_redundant, 0)
    best = min(_greedy_max_load(c, n_gpus, r) for r in range(n_redundant + 1))
    return best / (float(c.sum()) / n_gpus)


def load_popularity() -> dict[str, Any]:
    """The recorded expert choices of trained toy routers shipped in
    ``dmcourse/data/expert_popularity.json`` (made by ``tools/expert_popularity.py``): per
    configuration, ``arch``, ``balancing`` and ``indices`` as a list over MoE layers of int64
    tensors (sequences, tokens, top_k); plus the record's ``command``, ``date`` and ``versions``."""
    doc = json.loads((resources.files("dmcourse") / "data" / "expert_popularity.json").read_text())
    for entry in doc["configs"].values():
        entry["indices"] = [torch.tensor(layer, dtype=torch.int64) for layer in entry["indices"]]
    return doc
