"""dmcourse.dense_equivalent: the rules of thumb (by hand) and the roofline's dense equivalent.

Reference values are derived here by hand from Mixtral-8x7B's and Llama-3-8B's config.json values
and the H100 datasheet figures, not from the functions under test.
"""

from __future__ import annotations

import math

import pytest

from dmcourse import dense_equivalent as deq

H100_PEAK_BF16, H100_BW = 989.5e12, 3.35e12  # datasheet, dense (gpus.json)
# Mixtral-8x7B by hand (config.json): d=4096, 32 layers, 32 heads, 8 KV heads of 128, 8 experts
# of width 14336, top-2, vocab 32000, untied head.
D, L, V, DFF, E, K = 4096, 32, 32000, 14336, 8, 2
MX_EXPERT = 3 * D * DFF
MX_NON_EXPERT = L * (2 * D * D + 2 * D * 8 * 128 + 2 * D + E * D) + D + 2 * V * D
MX_TOTAL = MX_NON_EXPERT + L * E * MX_EXPERT
# Llama-3-8B: d=4096, 32 layers, 32 heads, 8 KV heads of 128, d_ff=14336, vocab 128256.
LLAMA8_TOTAL = 32 * (4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096 + 2 * 128256 * 4096


def test_rules_by_hand() -> None:
    assert deq.geometric_mean_rule(46.7e9, 12.9e9) == pytest.approx(math.sqrt(46.7e9 * 12.9e9))
    assert deq.quoted_epoch_rule(141e9, 8, 2) == pytest.approx(141e9 * 2**0.63 / 8**0.44)
    assert 85e9 < deq.quoted_epoch_rule(141e9, 8, 2) < 90e9, "the source's ~90B for Mixtral-8x22B follows"
    assert deq.quoted_epoch_rule(1.76e12, 8, 2) > 1.05e12, "the source's ~950B for GPT-4 does not"
    assert deq.half_total_rule(141e9) == 70.5e9
    for rule in deq.RULES.values():
        assert rule.provenance and rule.traceable and rule.formula
        assert rule.fn(100.0, 25.0, 8, 2) > 0


def test_roofline_dense_equivalent() -> None:
    # a dense model is its own dense equivalent (minus the embedding it only looks up) at any batch
    for batch in (1, 64, 4096):
        assert deq.roofline_dense_equivalent("Llama-3-8B", batch) == pytest.approx(LLAMA8_TOTAL - 128256 * 4096)
    # Mixtral: batch 1 reads 2 experts per layer; batch 64 (memory-bound) reads all; 16384 is compute-bound
    assert deq.roofline_dense_equivalent("Mixtral-8x7B", 1) == pytest.approx(MX_NON_EXPERT - V * D + L * 2 * MX_EXPERT)
    mid = deq.roofline_dense_equivalent("Mixtral-8x7B", 64)
    assert mid == pytest.approx(MX_NON_EXPERT - V * D + L * E * (1 - 0.75**64) * MX_EXPERT)
    assert deq.roofline_dense_equivalent("Mixtral-8x7B", 16384) == pytest.approx(
        MX_NON_EXPERT - V * D + L * 2 * MX_EXPERT
    )


def test_dense_equivalent_batches_by_hand() -> None:
    ridge = H100_PEAK_BF16 / H100_BW
    base = MX_NON_EXPERT - V * D

    def memory_bound_equivalent(b: int) -> float:  # parameters read by a memory-bound step
        return base + L * E * (1 - (1 - K / E) ** b) * MX_EXPERT

    target = MX_TOTAL / 2
    rising = next(b for b in range(1, 300) if memory_bound_equivalent(b) >= target)
    # past the twin's critical batch: equivalent = read parameters x ridge / B (twin compute-bound)
    falling = next(b for b in range(296, 5000) if memory_bound_equivalent(b) * ridge / b <= target)
    assert deq.dense_equivalent_batches("Mixtral-8x7B", target) == (rising, falling)
    assert deq.dense_equivalent_batches("Mixtral-8x7B", 1e9) == (1, None), "below the active size: never again"
    assert deq.dense_equivalent_batches("Mixtral-8x7B", 1e12) == (None, None), "above the total: never"
    with pytest.raises(ValueError, match="params"):
        deq.dense_equivalent_batches("Mixtral-8x7B", 0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: deq.geometric_mean_rule(10, 20), "exceeds"),
        (lambda: deq.geometric_mean_rule(0, 0), "total"),
        (lambda: deq.quoted_epoch_rule(1e9, 2, 8), "exceeds"),
        (lambda: deq.quoted_epoch_rule(-1e9, 8, 2), "total"),
        (lambda: deq.half_total_rule(None), "total"),
        (lambda: deq.roofline_dense_equivalent("Mixtral-8x7B", 0), "batch"),
        (lambda: deq.dense_equivalent_batches("Mixtral-8x7B", 1e9, max_batch=1), "max_batch"),
    ],
)
def test_invalid_inputs_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
