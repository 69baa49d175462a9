"""Tests for dmcourse.upcycle: upcycling reproduces the dense model; top-k switching; router freezing."""

import pytest
import torch

from dmcourse.ffn import SwiGLU
from dmcourse.lm import ALPHABET, LMConfig, TinyLM, expert_choices
from dmcourse.upcycle import freeze_routers, routing_agreement, upcycle_ffn, upcycle_lm, with_top_k

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.mark.parametrize("n_experts,top_k", [(4, 1), (4, 2), (8, 3), (3, 3)])
def test_identical_experts_reproduce_dense_ffn_any_router(n_experts, top_k):
    """Weights summing to 1 (the default router for k >= 2, or Mixtral's rule at k = 1 when allowed):
    the copy is exact. The default top-1 router (Switch gating) gives p(x) * f(x) instead."""
    torch.manual_seed(n_experts * 10 + top_k)
    ffn = SwiGLU(16, 24)
    moe = upcycle_ffn(ffn, n_experts, top_k, router="softmax") if top_k > 1 else upcycle_ffn(ffn, n_experts, top_k)
    exact = top_k > 1
    x = torch.randn(50, 16)
    want = ffn(x)
    for scale in (0.0, 1.0, 30.0):  # any router, including a very peaked one
        with torch.no_grad():
            moe.router.weight.normal_(0, scale)
        got = moe(x)
        w = moe.last_routing.weights.detach()
        if exact:
            assert torch.allclose(w.sum(-1), torch.ones(50), atol=1e-6)
        else:  # Switch: the chosen expert's probability, the largest of n_experts
            assert moe.router.method == "softmax_topk"
            assert bool((w >= 1 / n_experts - 1e-6).all() and (w <= 1 + 1e-6).all())
        torch.testing.assert_close(got, w.sum(-1, keepdim=True) * want, rtol=1e-5, atol=1e-6)
    for e in range(n_experts):
        assert torch.equal(moe.w_gate[e], ffn.w_gate.weight)
        assert torch.equal(moe.w_down[e], ffn.w_down.weight)


def test_noise_and_reinit_make_experts_differ():
    torch.manual_seed(0)
    ffn = SwiGLU(8, 20)
    g = torch.Generator().manual_seed(0)
    moe = upcycle_ffn(ffn, 4, 1, reinit_fraction=0.5, generator=g)
    for e in range(4):
        changed = (moe.w_gate[e] != ffn.w_gate.weight).any(-1)  # rows (hidden units) that changed
        assert int(changed.sum()) == 10
        assert torch.equal(changed, (moe.w_down[e] != ffn.w_down.weight).any(0))
    noisy = upcycle_ffn(ffn, 2, 1, noise=0.1, generator=g)
    rel = (noisy.w_up[0] - ffn.w_up.weight).std() / ffn.w_up.weight.std()
    assert 0.05 < float(rel.detach()) < 0.2
    with pytest.raises(ValueError, match="reinit_fraction"):
        upcycle_ffn(ffn, 2, 1, reinit_fraction=1.5)


def test_upcycled_lm_matches_dense_lm():
    torch.manual_seed(1)
    dense = TinyLM(LMConfig(d_model=32, n_layers=2, n_heads=4, d_ff=40)).eval()
    moe = upcycle_lm(dense, 4, 2).eval()
    assert moe.config.n_experts == 4 and dense.config.n_experts == 0
    ids = torch.randint(0, len(ALPHABET), (3, 20))
    assert torch.allclose(moe(ids), dense(ids), rtol=1e-5, atol=1e-5)


def test_with_top_k_and_freeze():
    torch.manual_seed(2)
    model = TinyLM(LMConfig(d_model=16, n_layers=2, n_heads=2, d_ff=16, n_experts=4, top_k=4))
    ids = torch.randint(0, len(ALPHABET), (2, 8))
    with with_top_k(model, 1):
        choices = expert_choices(model, ids)
        assert all(c.shape == (16, 1) for c in choices)
    assert all(c.shape == (16, 4) for c in expert_choices(model, ids))
    assert routing_agreement(choices, choices) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        with with_top_k(model, 5):
            pass
    n = freeze_routers(model)
    assert n == 2 * 4 * 16
    assert all(not b.ffn.router.weight.requires_grad for b in model.blocks)
    assert all(b.ffn.w_gate.requires_grad for b in model.blocks)


def test_routing_agreement_counts_sets():
    a = [torch.tensor([[0, 1], [2, 3]])]
    b = [torch.tensor([[1, 0], [2, 1]])]
    assert routing_agreement(a, b) == 0.5
