"""Routers: each rule against a reference written independently here (sorting, brute force)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dmcourse.routing import (
    ROUTERS,
    Router,
    Routing,
    noisy_topk,
    router_logits,
    sigmoid_topk,
    softmax_topk,
    topk_softmax,
)


def _logits(t: int = 13, e: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(t, e, generator=torch.Generator().manual_seed(seed)) * 2


def _ref_topk(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values per row, by a full descending sort."""
    return torch.sort(values, dim=-1, descending=True).indices[:, :k]


@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_mask_before_softmax_equals_softmax_topk_renormalised(k: int) -> None:
    logits = _logits()
    r = topk_softmax(logits, k)
    idx = _ref_topk(logits, k)
    assert torch.equal(r.indices, idx) and r.indices.dtype == torch.int64
    # by hand: exp of the kept logits over their sum
    kept = logits.gather(1, idx).double().exp()
    torch.testing.assert_close(r.weights.double(), kept / kept.sum(1, keepdim=True), rtol=1e-6, atol=1e-7)
    renorm = softmax_topk(logits, k, renormalize=True)
    assert torch.equal(renorm.indices, r.indices)
    torch.testing.assert_close(renorm.weights, r.weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(r.weights.sum(1), torch.ones(13))
    torch.testing.assert_close(r.scores.sum(1), torch.ones(13))


def test_softmax_topk_without_renormalisation_is_different() -> None:
    logits = _logits()
    plain, masked = softmax_topk(logits, 2), topk_softmax(logits, 2)
    probs = logits.double().exp() / logits.double().exp().sum(1, keepdim=True)
    torch.testing.assert_close(plain.weights.double(), probs.gather(1, plain.indices), rtol=1e-6, atol=1e-7)
    assert (plain.weights.sum(1) < 1).all()
    assert (masked.weights - plain.weights).abs().max() > 0.05
    # k = E: nothing is dropped, so no renormalisation is needed
    torch.testing.assert_close(softmax_topk(logits, 8).weights.sum(1), torch.ones(13))


def test_sigmoid_weights_normalised_over_selected_and_scaled() -> None:
    logits = _logits(e=16)
    r = sigmoid_topk(logits, 4, scale=2.5)
    s = 1 / (1 + torch.exp(-logits.double()))
    idx = _ref_topk(s, 4)
    assert torch.equal(r.indices, idx)
    chosen = s.gather(1, idx)
    torch.testing.assert_close(r.weights.double(), 2.5 * chosen / chosen.sum(1, keepdim=True), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(r.scores.double(), s, rtol=1e-6, atol=1e-7)
    raw = sigmoid_topk(logits, 4, normalize=False)
    torch.testing.assert_close(raw.weights.double(), chosen, rtol=1e-6, atol=1e-7)


def test_sigmoid_bias_changes_selection_not_weights() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 10.0])  # pushes expert 3 into the top-2
    r = sigmoid_topk(logits, 2, bias=bias)
    assert r.indices.tolist() == [[3, 0]]
    s = torch.sigmoid(torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(r.weights[0], s / s.sum())


def test_sigmoid_group_limited_matches_brute_force() -> None:
    e, groups, keep, k = 16, 4, 2, 4
    logits = _logits(t=20, e=e, seed=3)
    r = sigmoid_topk(logits, k, n_groups=groups, topk_groups=keep)
    s = torch.sigmoid(logits)
    per = e // groups
    for t in range(logits.shape[0]):
        gscore = [sorted(s[t, g * per : (g + 1) * per].tolist())[-2:] for g in range(groups)]
        best = max(itertools.combinations(range(groups), keep), key=lambda c: sum(sum(gscore[g]) for g in c))
        allowed = [i for g in best for i in range(g * per, (g + 1) * per)]
        want = sorted(allowed, key=lambda i: -s[t, i].item())[:k]
        assert sorted(r.indices[t].tolist()) == sorted(want)


def test_noisy_topk() -> None:
    logits = _logits()
    clean = topk_softmax(logits, 2)
    zero = noisy_topk(logits, 2, 0.0)
    assert torch.equal(zero.indices, clean.indices)
    torch.testing.assert_close(zero.weights, clean.weights)
    a = noisy_topk(logits, 2, torch.ones(13, 8), generator=torch.Generator().manual_seed(1))
    b = noisy_topk(logits, 2, torch.ones(13, 8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.indices, b.indices)
    loud = noisy_topk(logits, 2, 100.0, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(loud.indices, clean.indices)
    assert torch.equal(loud.indices, _ref_topk(loud.logits, 2))  # selection on the noisy logits


def test_routing_helpers() -> None:
    r = topk_softmax(_logits(t=50), 3)
    counts = r.tokens_per_expert()
    assert counts.shape == (8,) and counts.sum() == 150
    for e in range(8):
        assert counts[e] == (r.indices == e).sum()
    dense = r.combine_matrix()
    torch.testing.assert_close(dense.sum(1), r.weights.sum(1))
    assert ((dense > 0).sum(1) == 3).all()
    assert (r.n_tokens, r.top_k, r.n_experts) == (50, 3, 8)


@pytest.mark.parametrize("method", ROUTERS)
def test_router_module(method: str) -> None:
    torch.manual_seed(0)
    router = Router(16, 8, 2, method)
    x = torch.randn(10, 16)
    r = router(x)
    assert isinstance(r, Routing) and r.indices.shape == (10, 2) and r.logits.shape == (10, 8)
    assert abs(router.weight.abs().max().item()) <= 1 / math.sqrt(16)  # nn.Linear init bound
    router.eval()
    torch.testing.assert_close(router(x).logits, x @ router.weight.T)
    assert r.logits.requires_grad and r.weights.requires_grad


def test_router_sigmoid_bias_is_a_buffer_and_noise_only_in_training() -> None:
    router = Router(16, 8, 2, "sigmoid")
    assert "bias" in dict(router.named_buffers()) and "bias" not in dict(router.named_parameters())
    noisy = Router(16, 8, 2, "noisy")
    x = torch.randn(30, 16)
    noisy.eval()
    torch.testing.assert_close(noisy(x).logits.float(), router_logits(x, noisy.weight))
    noisy.train()
    assert not torch.allclose(noisy(x).logits.float(), router_logits(x, noisy.weight))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: topk_softmax(torch.randn(4, 8), 0), r"k must be an int in \[1, 8\], got 0"),
        (lambda: topk_softmax(torch.randn(4, 8), 9), r"k must be an int in \[1, 8\], got 9"),
        (lambda: topk_softmax(torch.randn(8), 2), r"logits must be a floating tensor"),
        (lambda: topk_softmax(torch.ones(4, 8, dtype=torch.int64), 2), r"logits must be a floating tensor"),
        (lambda: softmax_topk(torch.randn(4, 8), 2.0), r"k must be an int in \[1, 8\], got 2.0"),
        (lambda: sigmoid_topk(torch.randn(4, 8), 2, bias=torch.zeros(7)), r"bias must have shape"),
        (lambda: sigmoid_topk(torch.randn(4, 8), 2, n_groups=3), r"must divide"),
        (lambda: sigmoid_topk(torch.randn(4, 8), 4, n_groups=4, topk_groups=1), r"topk_groups must be"),
        (lambda: noisy_topk(torch.randn(4, 8), 2, -1.0), r"noise_std must be a finite number >= 0"),
        (lambda: noisy_topk(torch.randn(4, 8), 2, torch.ones(3, 8)), r"does not broadcast"),
        (lambda: Router(16, 8, 2, "switch"), r"router method must be one of"),
        (lambda: Router(16, 8, 0), r"top_k must be an int in \[1, 8\], got 0"),
        (lambda: Router(16, 8, 2, "softmax", n_groups=2), r"apply to the 'sigmoid' router only"),
        (
            lambda: Router(16, 8, 2)(torch.randn(3, 15)),
            r"router input must have shape \(tokens, d_model=16\), got \(3, 15\)",
        ),
    ],
)
def test_bad_arguments_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_noisy_topk_cpu_generator_with_cuda_logits() -> None:
    """A CPU generator (the trainer's) with CUDA logits: same noise, hence same choice, as on CPU."""
    logits = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    cpu = noisy_topk(logits, 2, 1.0, generator=torch.Generator().manual_seed(0))
    gpu = noisy_topk(logits.cuda(), 2, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gpu.indices.cpu(), cpu.indices)


def test_noisy_router_noise_std_depends_on_the_token() -> None:
    """Shazeer et al. (2017), eq. 4: the std is softplus(x @ W_noise.T), per token *and* expert."""
    torch.manual_seed(0)
    router = Router(16, 8, 2, "noisy").train()
    with torch.no_grad():
        router.noise_weight.normal_(0, 0.5)
    x = torch.randn(40, 16)
    r = router(x, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(40, 8, generator=torch.Generator().manual_seed(7))
    std = ((r.logits - router_logits(x, router.weight).float()) / noise).detach()
    want = torch.nn.functional.softplus(x @ router.noise_weight.T).detach()
    torch.testing.assert_close(std, want, rtol=1e-4, atol=1e-5)
    assert float(want.std(dim=0).min()) > 0.05, "the std must vary across tokens for each expert"
    router.eval()
    torch.testing.assert_close(router(x).logits, router_logits(x, router.weight))  # no noise at inference
