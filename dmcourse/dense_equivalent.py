"""Chapter 6 (Inference economics): the "dense equivalent" of an MoE -- the rules of thumb quoted for
it, with their provenance (:data:`RULES`), and the roofline's own answer, which depends on the
batch (:func:`roofline_dense_equivalent`, :func:`dense_equivalent_batches`).

Parameters are counts (not bytes); the roofline side uses :mod:`dmcourse.economics` (datasheet
roof, weights only, context 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dmcourse import accounting
from dmcourse import economics as ec
from dmcourse import roofline as rl
from dmcourse.checks import check_int, positive_float
from dmcourse.configs import ModelConfig
from dmcourse.hardware import GPUSpec


def geometric_mean_rule(total: float, active: float) -> float:
    """``sqrt(total * active)`` (parameters): the "geometric-mean rule" for the dense model an MoE
    performs like. Folklore; see :data:`RULES` for what is and is not traceable."""
    positive_float("total", total)
    positive_float("active", active)
    if active > total:
        raise ValueError(f"active={active!r} exceeds total={total!r}")
    return math.sqrt(total * active)


def quoted_epoch_rule(total: float, n_experts: int, active_experts: int) -> float:
    """``total / (n_experts ** 0.44 / active_experts ** 0.63)`` (parameters), exactly as the course's
    source text quotes it and attributes it to Epoch AI ("Dense Equivalent ~ Total Params /
    (Experts^0.44 / Active_Experts^0.63)"). See :data:`RULES` for its provenance."""
    positive_float("total", total)
    check_int("n_experts", n_experts)
    check_int("active_experts", active_experts)
    if active_experts > n_experts:
        raise ValueError(f"active_experts={active_experts} exceeds n_experts={n_experts}")
    return total / (n_experts**0.44 / active_experts**0.63)


def half_total_rule(total: float) -> float:
    """``total / 2`` (parameters): the source text's "an 8-way sparse model has inference economics
    roughly equivalent to a dense model half its total size"."""
    positive_float("total", total)
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


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
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
            claims='the dense model with the same inference economics ("fast short-context decoding")',
            provenance="the course's source blog post, which attributes it to Epoch AI without a link",
            traceable="no Epoch AI publication with this formula or these exponents could be found; the "
            "same expression circulates elsewhere with the division turned into a multiplication. "
            "It ignores which parameters are experts (attention, shared experts) and the batch",
            fn=lambda total, active, n_experts, top_k: quoted_epoch_rule(total, n_experts, top_k),
        ),
        Rule(
            name="half the total",
            formula="total / 2 (stated for 8-way sparse models)",
            claims='"inference economics roughly equivalent to a dense model half its total size"',
            provenance="the course's source blog post (its TL;DR), no source given",
            traceable="no source; no batch size or hardware stated",
            fn=lambda total, active, n_experts, top_k: half_total_rule(total),
        ),
    )
}
"""The rules of thumb the chapter tests, by name."""


def roofline_dense_equivalent(
    model: ModelConfig | str, batch: int, gpu: str | GPUSpec = "H100", *, dtype: str = "bf16"
) -> float:
    """The size (parameters) of the dense model whose decode step at the same ``batch`` takes the
    same roofline time on ``gpu`` as ``model``'s (weights only, context 0).

    A dense model of N parameters (all read and all used each step) takes
    ``max(2 N B / peak, N s / bandwidth)``; setting that equal to the MoE's step time gives
    ``N = t_MoE / max(2 B / peak, s / bandwidth)``. It equals the active size at batch 1 (minus the
    experts a single token does not touch) and when both are compute-bound, and approaches the
    total size in between, where the batch touches every expert but the step is still memory-bound.
    """
    c = ec.load_model(model)
    check_int("batch", batch)
    _, peak, bandwidth = ec.roof(gpu, dtype)
    t = ec.decode_cost(c, gpu, batch, dtype=dtype, n_gpus=1).step_time_s
    return t / max(2 * batch / peak, accounting.bytes_per_param(dtype) / bandwidth)


def dense_equivalent_batches(
    model: ModelConfig | str, params: float, gpu: str | GPUSpec = "H100", *, dtype: str = "bf16", max_batch: int = 2**20
) -> tuple[int | None, int | None]:
    """The batches at which :func:`roofline_dense_equivalent` of ``model`` equals a rule's ``params``.

    The roofline equivalent rises with the batch while the dense twin is memory-bound (more experts
    touched), then falls once the dense twin is compute-bound (its time grows with the batch, the
    MoE's does not until it is compute-bound too). Returns ``(rising, falling)``: the smallest batch
    on the rising side whose equivalent is ``>= params``, and the smallest batch on the falling side
    whose equivalent is ``<= params`` again; ``None`` where the equivalent never gets there (a rule
    below the batch-1 value has no rising crossing; one above the peak has neither).
    """
    c = ec.load_model(model)
    positive_float("params", params)
    check_int("max_batch", max_batch, 2)

    def eq(b: int) -> float:
        return roofline_dense_equivalent(c, b, gpu, dtype=dtype)

    peak = min(max_batch, max(1, math.floor(ec.critical_batch(c, gpu, dtype=dtype, twin="equal_total")) - 1))
    rising = rl.smallest_batch(lambda b: eq(b) >= params, 1, peak)
    if rising is None:
        return None, None
    return rising, rl.smallest_batch(lambda b: eq(b) <= params, peak, max_batch)
