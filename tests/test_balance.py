"""dmcourse.balance: aux losses equal transformers' own functions, documented values at balance,
capacity dispatch keeps exactly the expected tokens, the bias balancer balances, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from dmcourse.balance import (
    AUX_CONVENTIONS,
    bias_update,
    expert_counts,
    load_balancing_loss,
    load_stats,
    load_stats_from_counts,
    router_z_loss,
    sequence_wise_balance_loss,
    unbiased_topk,
)
from dmcourse.capacity import capacity_mask, drop_rate, expert_capacity
from dmcourse.routing import sigmoid_topk

# ------------------------------------------------------------------------------------------------
# equality with transformers (the reference implementations readers will meet)


def _hf_topk_loss_functions():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as mixtral
    from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func as olmoe
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func as qwen3_moe

    return {"mixtral": mixtral, "qwen3_moe": qwen3_moe, "olmoe": olmoe}


@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_hf_convention_equals_transformers_topk_loss(top_k: int, masked: bool) -> None:
    gen = torch.Generator().manual_seed(10 * top_k + masked)
    batch, seq, n_experts, n_layers = 3, 7, 8, 4
    # per-layer logits as transformers passes them: (batch * seq, E), pooled over the layers
    layers = tuple(2 * torch.randn(batch * seq, n_experts, generator=gen) for _ in range(n_layers))
    mask = None
    if masked:
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, 4:] = 0  # right padding
        mask[2, :3] = 0  # left padding
    ours = load_balancing_loss(layers, top_k, convention="hf", attention_mask=mask)
    for name, fn in _hf_topk_loss_functions().items():
        ref = fn(layers, n_experts, top_k, mask)
        torch.testing.assert_close(ours, ref.float(), rtol=1e-5, atol=1e-6, msg=f"differs from {name}")
    # the other conventions are fixed rescalings of it
    torch.testing.assert_close(
        load_balancing_loss(layers, top_k, convention="divide_by_k", attention_mask=mask), ours / top_k
    )
    if top_k == 1:
        torch.testing.assert_close(load_balancing_loss(layers, 1, convention="switch", attention_mask=mask), ours)


def test_layer_pooling_is_not_the_mean_of_per_layer_losses() -> None:
    # transformers pools f and P over all layers' tokens; that differs from averaging layer losses
    gen = torch.Generator().manual_seed(1)
    layers = (
        torch.randn(16, 4, generator=gen) + torch.tensor([3.0, 0, 0, 0]),
        torch.randn(16, 4, generator=gen) + torch.tensor([0, 0, 0, 3.0]),
    )
    pooled = load_balancing_loss(layers, 1, convention="switch")
    per_layer = torch.stack([load_balancing_loss(lg, 1, convention="switch") for lg in layers]).mean()
    assert pooled < per_layer - 0.1  # each layer is skewed, the pool of two opposite skews much less


def test_single_tensor_with_batch_dims_equals_flat() -> None:
    logits = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        load_balancing_loss(logits, 2, convention="hf"), load_balancing_loss(logits.reshape(10, 6), 2, convention="hf")
    )


def test_switch_transformers_functions() -> None:
    from transformers.models.switch_transformers.modeling_switch_transformers import (
        load_balancing_loss_func,
        router_z_loss_func,
    )

    gen = torch.Generator().manual_seed(3)
    groups, tokens, n_experts = 4, 9, 6
    logits = 3 * torch.randn(groups, tokens, n_experts, generator=gen)
    probs = torch.softmax(logits, dim=-1)
    top1 = probs.argmax(dim=-1)
    # z-loss: mean over all tokens of logsumexp^2
    torch.testing.assert_close(router_z_loss(logits), router_z_loss_func(logits))
    # one group: the paper's top-1 loss
    torch.testing.assert_close(
        load_balancing_loss(logits[0], 1, convention="switch"), load_balancing_loss_func(probs[:1], top1[:1])
    )
    # several groups: transformers balances within each group (sequence) and averages = sequence-wise form
    torch.testing.assert_close(
        sequence_wise_balance_loss(probs, top1[..., None]), load_balancing_loss_func(probs, top1)
    )
    # top-2 indices: transformers' f counts "routed to i" (sums to k), DeepSeek's divides by k
    top2 = probs.topk(2, dim=-1).indices
    torch.testing.assert_close(2 * sequence_wise_balance_loss(probs, top2), load_balancing_loss_func(probs, top2))


def test_switch_router_capacity_equals_position_order() -> None:
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersTop1Router

    torch.manual_seed(4)
    n_experts, capacity, d = 4, 3, 8
    config = SwitchTransformersConfig(
        num_experts=n_experts, expert_capacity=capacity, d_model=d, router_jitter_noise=0.0
    )
    router = SwitchTransformersTop1Router(config).eval()
    with torch.no_grad():
        router.classifier.weight.copy_(torch.randn(n_experts, d) + torch.tensor([[2.0], [0], [0], [0]]))
    hidden = torch.randn(3, 10, d).abs()  # skewed towards expert 0: it overflows
    expert_index, _, logits = router(hidden)
    for b in range(hidden.shape[0]):
        top1 = logits[b].argmax(dim=-1, keepdim=True)
        keep = capacity_mask(top1, n_experts, capacity, order="position")
        assert torch.equal(keep[:, 0], expert_index[b].sum(dim=-1).bool())
    assert not bool(expert_index.sum(dim=-1).bool().all()), "the example should drop some tokens"


def test_z_loss_by_hand_and_mask() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]])
    by_hand = [math.log(2.0) ** 2, math.log(4.0) ** 2, (5.0 + math.log(2.0)) ** 2]
    assert router_z_loss(logits).item() == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    mask = torch.tensor([1, 1, 0])
    assert router_z_loss(logits, mask).item() == pytest.approx(sum(by_hand[:2]) / 2, rel=1e-6)
    # pooled over layers: mean over all tokens
    assert router_z_loss((logits[:1], logits[1:])).item() == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    # softmax probabilities would be blind to a shift: the z-loss is not
    assert router_z_loss(logits + 10) > router_z_loss(logits)


# ------------------------------------------------------------------------------------------------
# documented values


def _balanced_indices(n_tokens: int, n_experts: int, k: int) -> torch.Tensor:
    """Every expert gets the same number of assignments, k distinct experts per token."""
    t = torch.arange(n_tokens)[:, None]
    return (t * k + torch.arange(k)[None, :]) % n_experts


@pytest.mark.parametrize("k", [1, 2, 4])
def test_perfect_balance_gives_the_documented_value(k: int) -> None:
    n_experts, n_tokens = 8, 64
    uniform = torch.zeros(n_tokens, n_experts)
    idx = _balanced_indices(n_tokens, n_experts, k)
    assert torch.equal(expert_counts(idx, n_experts), torch.full((n_experts,), n_tokens * k / n_experts))
    expected = {"switch": 1.0, "hf": float(k), "divide_by_k": 1.0}
    for convention in AUX_CONVENTIONS:
        if convention == "switch" and k != 1:
            continue
        got = load_balancing_loss(uniform, indices=idx, convention=convention)
        assert got.item() == pytest.approx(expected[convention]), convention
    scores = torch.full((4, n_tokens // 4, n_experts), 0.3)  # equal sigmoid affinities
    seq_idx = idx.view(4, n_tokens // 4, k)
    assert sequence_wise_balance_loss(scores, seq_idx).item() == pytest.approx(1.0)
    stats = load_stats(idx, n_experts)
    assert stats.max_over_mean == pytest.approx(1.0)
    assert stats.entropy == pytest.approx(math.log(n_experts))
    assert stats.cv == pytest.approx(0.0, abs=1e-12)
    assert stats.normalized_entropy == pytest.approx(1.0)
    assert stats.dead == 0


def test_collapse_gives_the_maximum() -> None:
    n_experts, n_tokens = 8, 32
    logits = torch.full((n_tokens, n_experts), -30.0)
    logits[:, 0] = 30.0  # all probability on expert 0
    assert load_balancing_loss(logits, 1, convention="switch").item() == pytest.approx(n_experts, rel=1e-5)
    stats = load_stats(torch.zeros(n_tokens, 1, dtype=torch.long), n_experts)
    assert stats.max_over_mean == pytest.approx(n_experts)
    assert stats.entropy == pytest.approx(0.0)
    assert stats.cv == pytest.approx(math.sqrt(n_experts - 1))
    assert stats.dead == n_experts - 1


def test_aux_loss_gradient_moves_probability_off_the_overloaded_expert() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(50, 4, generator=gen) + torch.tensor([2.0, 0, 0, 0])).requires_grad_()
    p0_before = torch.softmax(logits, -1)[:, 0].mean()
    load_balancing_loss(logits, 1, convention="switch").backward()
    with torch.no_grad():
        p0_after = torch.softmax(logits - 1.0 * logits.grad, -1)[:, 0].mean()
    assert p0_after < p0_before


def test_load_stats_on_random_counts() -> None:
    counts = torch.tensor([5.0, 0.0, 3.0, 12.0])
    frac = [c / 20 for c in (5, 0, 3, 12)]
    mean = 0.25
    s = load_stats_from_counts(counts)
    assert s.max_over_mean == pytest.approx(0.6 / mean)
    assert s.entropy == pytest.approx(-sum(p * math.log(p) for p in frac if p > 0))
    assert s.cv == pytest.approx(math.sqrt(sum((p - mean) ** 2 for p in frac) / 4) / mean)
    assert s.dead == 1
    assert set(s.as_dict()) >= {"max_over_mean", "entropy", "cv", "dead"}
    # padding tokens are not counted
    idx = torch.tensor([[0], [1], [1], [1]])
    assert torch.equal(load_stats(idx, 2, torch.tensor([1, 1, 0, 0])).fraction, torch.tensor([0.5, 0.5]))


# ------------------------------------------------------------------------------------------------
# capacity


def test_expert_capacity() -> None:
    assert expert_capacity(96, 8, 1, 1.25) == 15  # 1.25 * 96 / 8 exactly, no float round-up to 16
    assert expert_capacity(100, 8, 2, 1.0) == 25
    assert expert_capacity(10, 4, 1, 1.0) == 3  # ceil(2.5)
    assert expert_capacity(0, 4) == 0


def test_capacity_keeps_exactly_the_expected_tokens() -> None:
    # 6 tokens, top-2 over 3 experts, capacity 2 per expert
    idx = torch.tensor([[1, 0], [0, 2], [2, 0], [0, 1], [1, 2], [0, 2]])
    w = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.8, 0.2], [0.55, 0.45]])
    # position: each expert keeps its first two tokens (expert 0: tokens 0, 1; expert 1: 0, 3;
    # expert 2: 1, 2)
    want_position = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 1], [0, 0], [0, 0]], dtype=torch.bool)
    assert torch.equal(capacity_mask(idx, 3, 2, order="position"), want_position)
    # choice: 1st choices first (expert 0: tokens 1, 3 as first choices beat token 0's 2nd choice;
    # expert 1: 0, 4; expert 2: 2, then 2nd choices 1)
    want_choice = torch.tensor([[1, 0], [1, 1], [1, 0], [1, 0], [1, 0], [0, 0]], dtype=torch.bool)
    assert torch.equal(capacity_mask(idx, 3, 2, order="choice"), want_choice)
    # score: largest weights per expert (expert 0: 0.9, 0.7; expert 1: 0.8, 0.6; expert 2: 0.5, 0.45)
    want_score = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    assert torch.equal(capacity_mask(idx, 3, 2, order="score", weights=w), want_score)
    # no expert holds more than its capacity, and plenty of room keeps everything
    for order in ("position", "choice"):
        keep = capacity_mask(idx, 3, 2, order=order)
        assert expert_counts(idx[keep].view(-1, 1), 3).max() <= 2
    assert bool(capacity_mask(idx, 3, 12, order="position").all())
    assert not bool(capacity_mask(idx, 3, 0).any())
    assert drop_rate(want_position) == pytest.approx(6 / 12)


def test_capacity_position_order_on_random_routing_and_padding() -> None:
    gen = torch.Generator().manual_seed(6)
    n_tokens, n_experts, cap = 40, 5, 6
    idx = torch.randint(0, n_experts, (n_tokens, 1), generator=gen)
    mask = (torch.rand(n_tokens, generator=gen) > 0.2).long()
    keep = capacity_mask(idx, n_experts, cap, attention_mask=mask)
    seen = [0] * n_experts
    for t in range(n_tokens):  # the loop version: an expert takes real tokens until it is full
        e = int(idx[t, 0])
        expected = bool(mask[t]) and seen[e] < cap
        seen[e] += bool(mask[t])
        assert bool(keep[t, 0]) == expected, t
    rate = drop_rate(keep, mask)
    assert rate == pytest.approx(1 - float(keep.sum()) / float(mask.sum()))


# ------------------------------------------------------------------------------------------------
# the bias balancer


def test_bias_update_signs() -> None:
    bias = torch.tensor([0.0, 0.5, -0.5, 0.0])
    load = torch.tensor([10.0, 2.0, 4.0, 4.0])  # mean 5: expert 0 overloaded, 1-3 underloaded
    new = bias_update(bias, load, 0.1)
    torch.testing.assert_close(new, torch.tensor([-0.1, 0.6, -0.4, 0.1]))
    assert torch.equal(bias_update(bias, torch.full((4,), 3.0), 0.1), bias)  # at the mean: unchanged
    assert torch.equal(bias, torch.tensor([0.0, 0.5, -0.5, 0.0])), "bias_update must not modify its input"


def test_bias_balancer_moves_load_towards_the_mean_and_never_touches_the_weights() -> None:
    gen = torch.Generator().manual_seed(7)
    n_tokens, n_experts, k = 512, 8, 2
    skew = torch.linspace(2.0, -2.0, n_experts)  # a router that prefers the first experts
    logits = torch.randn(n_tokens, n_experts, generator=gen) + skew
    bias = torch.zeros(n_experts)
    start = load_stats(sigmoid_topk(logits, k).indices, n_experts)
    for _ in range(300):
        routing = sigmoid_topk(logits, k, bias=bias)
        bias = bias_update(bias, expert_counts(routing.indices, n_experts), 0.01)
    end = load_stats(sigmoid_topk(logits, k, bias=bias).indices, n_experts)
    assert start.max_over_mean > 2.0
    assert end.max_over_mean < 1.25, end
    assert end.cv < start.cv / 3
    assert bias[0] < 0 < bias[-1], "the overloaded expert's bias must go down, the idle one's up"
    # the gating weights are the unbiased scores of the chosen experts, normalised
    routing = sigmoid_topk(logits, k, bias=bias)
    s = torch.sigmoid(logits).gather(1, routing.indices)
    torch.testing.assert_close(routing.weights, s / s.sum(-1, keepdim=True))


# ------------------------------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: load_balancing_loss(torch.randn(4, 3), 1, convention="mixtral"), "convention"),
        (lambda: load_balancing_loss(torch.randn(4, 3), 2, convention="switch"), "top-1"),
        (lambda: load_balancing_loss(torch.randn(4, 3), 4, convention="hf"), "top_k"),
        (lambda: load_balancing_loss(torch.randn(4, 3), 0, convention="hf"), "top_k"),
        (lambda: load_balancing_loss(torch.randn(4, 3), convention="hf"), "top_k"),
        (
            lambda: load_balancing_loss(
                torch.randn(4, 3), 1, convention="hf", indices=torch.tensor([[0], [1], [3], [0]])
            ),
            r"\[0, 2\]",
        ),
        (
            lambda: load_balancing_loss(
                torch.randn(4, 3), 2, convention="hf", indices=torch.zeros(4, 1, dtype=torch.long)
            ),
            "top_k",
        ),
        (
            lambda: load_balancing_loss(torch.randn(4, 3), 1, convention="hf", attention_mask=torch.ones(5)),
            "attention_mask",
        ),
        (
            lambda: load_balancing_loss(torch.randn(4, 3), 1, convention="hf", attention_mask=torch.zeros(4)),
            "masks every",
        ),
        (lambda: load_balancing_loss(torch.randint(0, 3, (4, 3)), 1, convention="hf"), "floating"),
        (lambda: load_balancing_loss((torch.randn(4, 3), torch.randn(4, 5)), 1, convention="hf"), "same number"),
        (lambda: router_z_loss(torch.randn(5)), "floating"),
        (
            lambda: sequence_wise_balance_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, 1, dtype=torch.long)),
            "non-negative",
        ),
        (lambda: sequence_wise_balance_loss(torch.rand(2, 3, 4), torch.zeros(2, 4, 1, dtype=torch.long)), "indices"),
        (lambda: expert_capacity(10, 4, 1, 0.0), "capacity_factor"),
        (lambda: expert_capacity(10, 4, 5, 1.0), "top_k"),
        (lambda: capacity_mask(torch.zeros(3, 1, dtype=torch.long), 2, -1), "capacity"),
        (lambda: capacity_mask(torch.zeros(3, 1, dtype=torch.long), 2, 1, order="random"), "order"),
        (lambda: capacity_mask(torch.zeros(3, 1, dtype=torch.long), 2, 1, order="score"), "weights"),
        (lambda: capacity_mask(torch.tensor([[0, 0]]), 2, 1), "distinct"),
        (lambda: bias_update(torch.zeros(4), torch.zeros(3), 0.1), "shape"),
        (lambda: bias_update(torch.zeros(4), torch.zeros(4), -0.1), "gamma"),
        (lambda: load_stats_from_counts(torch.zeros(4)), "positive total"),
        (lambda: load_stats(torch.tensor([[5]]), 4), r"\[0, 3\]"),
    ],
)
def test_bad_arguments_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_tensors_are_named() -> None:
    """The checks at the boundary say which tensor is wrong and how (shape, dtype, or not a tensor)."""
    with pytest.raises(ValueError, match=r"^indices of layer 0 must have shape \(tokens=4, k=1\), got \(3, 1\)"):
        load_balancing_loss(torch.randn(4, 3), convention="hf", indices=torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="router_logits has no expert column"):
        router_z_loss(torch.randn(4, 0))
    with pytest.raises(ValueError, match=r"^indices must be an integer tensor of shape"):
        expert_counts(torch.zeros(3, 1), 2)
    with pytest.raises(ValueError, match=r"^keep must be a bool tensor"):
        drop_rate(torch.ones(3, 1))
    with pytest.raises(TypeError, match="bias must be a torch.Tensor, got list"):
        bias_update([0.0, 0.0], torch.zeros(2), 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^k must be an int in \[1, 4\], got 5"):
        unbiased_topk(torch.rand(2, 4), 5)


def test_convention_must_be_explicit() -> None:
    with pytest.raises(TypeError):
        load_balancing_loss(torch.randn(4, 3), 1)  # type: ignore[call-arg]
