"""Hypothesis properties of invariants the course teaches (issue 15): routing weights, the three
dispatches, and the experts a batch touches. Each holds for any shape the functions accept."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmcourse.moe import dispatch_grouped, dispatch_loop, dispatch_sorted
from dmcourse.roofline import expected_experts_touched
from dmcourse.routing import softmax_topk, topk_softmax

pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def routed(draw, max_tokens: int = 12, max_experts: int = 6):
    """(logits (T, E), k) with 1 <= k <= E, T >= 0, from a drawn seed."""
    n_experts = draw(st.integers(1, max_experts))
    k = draw(st.integers(1, n_experts))
    tokens = draw(st.integers(0, max_tokens))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.randn(tokens, n_experts, generator=gen) * draw(st.sampled_from([0.1, 1.0, 10.0])), k


@settings(max_examples=100, deadline=None)
@given(routed())
def test_mask_before_softmax_weights_sum_to_one(case) -> None:
    logits, k = case
    r = topk_softmax(logits, k)
    assert r.weights.shape == (logits.shape[0], k)
    torch.testing.assert_close(r.weights.sum(-1), torch.ones(logits.shape[0]), rtol=0, atol=1e-5)
    assert bool((r.weights >= 0).all())


@settings(max_examples=100, deadline=None)
@given(routed())
def test_switch_gating_keeps_the_chosen_probabilities(case) -> None:
    """Un-renormalised softmax top-k: the weights are the chosen experts' softmax probabilities, so
    they sum to at most 1 (exactly 1 when k == E), and renormalising gives mask-before-softmax."""
    logits, k = case
    r = softmax_topk(logits, k, renormalize=False)
    probs = torch.softmax(logits.float(), dim=-1)
    torch.testing.assert_close(r.weights, probs.gather(1, r.indices), rtol=0, atol=1e-6)
    assert bool((r.weights.sum(-1) <= 1 + 1e-5).all())
    if k == logits.shape[1]:
        torch.testing.assert_close(r.weights.sum(-1), torch.ones(logits.shape[0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        softmax_topk(logits, k, renormalize=True).weights, topk_softmax(logits, k).weights, rtol=0, atol=1e-5
    )


@settings(max_examples=60, deadline=None)
@given(routed(max_tokens=16, max_experts=5), st.integers(1, 8), st.integers(1, 12))
def test_every_dispatch_computes_the_same_layer(case, d_model: int, d_ff: int) -> None:
    logits, k = case
    n_tokens, n_experts = logits.shape
    gen = torch.Generator().manual_seed(n_tokens * 131 + n_experts * 17 + k)
    x = torch.randn(n_tokens, d_model, generator=gen)
    w_gate, w_up = torch.randn(2, n_experts, d_ff, d_model, generator=gen)
    w_down = torch.randn(n_experts, d_model, d_ff, generator=gen)
    routing = topk_softmax(logits, k)
    with torch.no_grad():
        loop = dispatch_loop(x, routing, w_gate, w_up, w_down)
        for other in (dispatch_sorted, dispatch_grouped):
            torch.testing.assert_close(other(x, routing, w_gate, w_up, w_down), loop, rtol=1e-4, atol=1e-4)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 256), st.data())
def test_experts_touched_is_monotone_and_bounded(n_experts: int, data) -> None:
    """E(1 - (1 - k/E)^B) grows with the batch and lies in [k, min(E, kB)] for B >= 1 (0 at B = 0)."""
    k = data.draw(st.integers(1, n_experts))
    batch = data.draw(st.integers(1, 10_000))
    touched = expected_experts_touched(n_experts, k, batch)
    assert k - 1e-9 <= touched <= min(n_experts, k * batch) + 1e-9
    assert expected_experts_touched(n_experts, k, batch + 1) >= touched - 1e-12
    assert expected_experts_touched(n_experts, k, 0) == 0
