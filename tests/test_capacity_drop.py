"""What a dropped assignment does (issue 16, error 5): a token loses only the dropped expert's term;
only a token with all k assignments dropped gets nothing from the layer. And the paper's experts
for DeepSeek-V3's sequence-wise loss (unbiased top-k)."""

from __future__ import annotations

import pytest
import torch

from dmcourse.balance import sequence_wise_balance_loss, unbiased_topk
from dmcourse.capacity import CapacityLimitedRouter, capacity_mask
from dmcourse.moe import MoE

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def _expert(moe: MoE, e: int, x: torch.Tensor) -> torch.Tensor:
    h = torch.nn.functional.silu(x @ moe.w_gate[e].T) * (x @ moe.w_up[e].T)
    return h @ moe.w_down[e].T


def test_dropped_assignment_removes_only_its_own_term() -> None:
    torch.manual_seed(0)
    moe = MoE(8, 12, 4, 2)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # expert 0 first for tokens with a positive x[:, 0]
    x = torch.randn(40, 8)
    full = moe(x).detach()
    plain = moe.last_routing
    moe.router = CapacityLimitedRouter(moe.router, 0.5)  # capacity ceil(0.5 * 40 * 2 / 4) = 10
    with torch.no_grad():
        y = moe(x)
    keep = moe.router.last_keep
    some, none = keep.any(-1) & ~keep.all(-1), ~keep.any(-1)
    assert bool(some.any()) and bool(none.any()), "the example should drop one, and both, assignments of some tokens"
    for t in range(40):
        want = sum(
            (
                plain.weights[t, j] * _expert(moe, int(plain.indices[t, j]), x[t : t + 1])[0]
                for j in range(2)
                if keep[t, j]
            ),
            torch.zeros(8),
        )
        torch.testing.assert_close(y[t], want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y[keep.all(-1)], full[keep.all(-1)], rtol=1e-5, atol=1e-6)
    assert bool((y[some] != 0).any(-1).all()), "one dropped of two: the other expert still contributes"
    assert bool((y[none] == 0).all()), "all dropped: the layer adds nothing, only the residual carries it"


def test_capacity_counted_per_call_not_per_sequence() -> None:
    """Per batch (one call on all rows) vs per sequence (one call per sequence) differ when one
    sequence is heavy on an expert that other sequences leave free."""
    heavy = torch.zeros(8, 1, dtype=torch.long)  # sequence 0: every token to expert 0
    light = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2]).view(8, 1)  # sequence 1: experts 1-3 only
    batch = torch.cat([heavy, light])
    per_batch = capacity_mask(batch, 4, 6)  # 16 tokens, 6 slots per expert for the whole batch
    per_seq = torch.cat([capacity_mask(heavy, 4, 3), capacity_mask(light, 4, 3)])  # 3 per sequence
    assert int(per_batch[:8].sum()) == 6 and int(per_seq[:8].sum()) == 3


def test_unbiased_topk_is_what_the_paper_counts() -> None:
    scores = torch.sigmoid(torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1)))
    bias = torch.tensor([0.5, 0, 0, 0, 0, 0, 0, 0])
    biased = (scores + bias).topk(2, dim=-1).indices
    paper = unbiased_topk(scores, 2)
    assert torch.equal(paper, scores.topk(2, dim=-1).indices)
    assert not torch.equal(biased, paper), "the bias should change some choices in this example"
    # the loss counts what it is given
    assert float(sequence_wise_balance_loss(scores, biased)) != float(sequence_wise_balance_loss(scores, paper))
    with pytest.raises(ValueError, match="k must be"):
        unbiased_topk(scores, 9)
