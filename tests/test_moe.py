"""The MoE layer: every dispatch strategy against a dense reference written here, edge cases,
gradients, shared experts, parameter counts, and interop with transformers' Mixtral block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmcourse.moe import (
    DISPATCH_FUNCTIONS,
    DISPATCHES,
    MoE,
    dispatch_grouped,
    from_mixtral_block,
    grouped_mm_supported,
    sort_by_expert,
)
from dmcourse.routing import Routing, topk_softmax


def _weights(e: int, d: int, f: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).to(dtype) * 0.2 for s in ((e, f, d), (e, f, d), (e, d, f))]


def _reference(x, indices, weights, w_gate, w_up, w_down):
    """Every expert on every token (float64), mixed with weights put in place by plain loops."""
    x, w_gate, w_up, w_down = (t.double() for t in (x, w_gate, w_up, w_down))
    mix = torch.zeros(x.shape[0], w_gate.shape[0], dtype=torch.float64)
    for t in range(indices.shape[0]):
        for j in range(indices.shape[1]):
            mix[t, int(indices[t, j])] += float(weights[t, j])
    outs = torch.stack([(F.silu(x @ w_gate[e].T) * (x @ w_up[e].T)) @ w_down[e].T for e in range(w_gate.shape[0])], 1)
    return (mix.unsqueeze(-1) * outs).sum(1)


def _routing(indices: torch.Tensor, weights: torch.Tensor, n_experts: int) -> Routing:
    logits = torch.zeros(indices.shape[0], n_experts)
    return Routing(indices=indices, weights=weights, logits=logits, scores=logits.softmax(-1))


@pytest.mark.parametrize("dispatch", DISPATCHES)
@pytest.mark.parametrize("t,e,k", [(37, 8, 2), (1, 8, 2), (16, 4, 1), (9, 4, 4), (1, 1, 1), (50, 16, 6)])
def test_dispatch_matches_dense_reference(dispatch: str, t: int, e: int, k: int) -> None:
    d, f = 12, 20
    x = torch.randn(t, d, generator=torch.Generator().manual_seed(t))
    w = _weights(e, d, f, seed=e + k)
    routing = topk_softmax(torch.randn(t, e, generator=torch.Generator().manual_seed(k)), k)
    got = DISPATCH_FUNCTIONS[dispatch](x, routing, *w)
    want = _reference(x, routing.indices, routing.weights, *w)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_empty_experts_and_unsorted_slots(dispatch: str) -> None:
    """Experts 0, 2 and 5 get no token; slot order differs between tokens; weights not summing to 1."""
    e, d, f = 6, 8, 16
    indices = torch.tensor([[3, 1], [1, 3], [4, 1], [3, 4], [1, 4]])
    weights = torch.tensor([[0.7, 0.2], [0.9, 0.4], [0.5, 0.5], [0.1, 0.3], [1.0, 0.25]])
    x = torch.randn(5, d)
    w = _weights(e, d, f)
    got = DISPATCH_FUNCTIONS[dispatch](x, _routing(indices, weights, e), *w)
    torch.testing.assert_close(got.double(), _reference(x, indices, weights, *w), rtol=1e-5, atol=1e-5)
    # all tokens to one expert
    indices1 = torch.full((5, 1), 2)
    got1 = DISPATCH_FUNCTIONS[dispatch](x, _routing(indices1, torch.ones(5, 1), e), *w)
    torch.testing.assert_close(got1.double(), _reference(x, indices1, torch.ones(5, 1), *w), rtol=1e-5, atol=1e-5)


def test_sort_by_expert_layout() -> None:
    routing = _routing(torch.tensor([[2, 0], [0, 3], [2, 3]]), torch.ones(3, 2), 4)
    order, token, counts = sort_by_expert(routing)
    assert counts.tolist() == [2, 0, 2, 2]
    assert routing.indices.reshape(-1)[order].tolist() == [0, 0, 2, 2, 3, 3]
    assert token.tolist() == [0, 1, 0, 2, 1, 2]


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_gradients_agree_across_dispatches(dispatch: str) -> None:
    torch.manual_seed(0)
    moe = MoE(16, 24, 6, 2, dispatch="loop")
    x = torch.randn(4, 7, 16, requires_grad=True)
    target = torch.randn(4, 7, 16)
    grads = {}
    for name in ("loop", dispatch):
        moe.zero_grad()
        x.grad = None
        moe.dispatch = name
        ((moe(x) - target) ** 2).sum().backward()
        grads[name] = [x.grad.clone()] + [p.grad.clone() for p in moe.parameters()]
    for a, b in zip(grads["loop"], grads[dispatch]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert moe.router.weight.grad.abs().sum() > 0, "the router must get gradients through the weights"


def test_moe_module_shapes_last_routing_and_shared_experts() -> None:
    torch.manual_seed(1)
    moe = MoE(16, 24, 8, 2, n_shared_experts=2, shared_d_ff=10)
    x = torch.randn(3, 5, 16)
    y = moe(x)
    assert y.shape == x.shape
    r = moe.last_routing
    assert r is not None and r.indices.shape == (15, 2) and r.logits.shape == (15, 8)
    flat = x.reshape(15, 16)
    routed = _reference(
        flat, r.indices, r.weights.detach(), moe.w_gate.detach(), moe.w_up.detach(), moe.w_down.detach()
    )
    s = moe.shared
    shared = (F.silu(flat @ s.w_gate.weight.T) * (flat @ s.w_up.weight.T)) @ s.w_down.weight.T
    torch.testing.assert_close(y.reshape(15, 16).double(), routed + shared.double(), rtol=1e-5, atol=1e-5)
    assert s.w_gate.weight.shape == (20, 16)


def test_param_counts_by_hand() -> None:
    d, f, e, k = 16, 24, 8, 2
    expert = 3 * d * f
    moe = MoE(d, f, e, k)
    assert moe.n_params() == e * d + e * expert
    assert moe.n_active_params() == e * d + k * expert
    shared = MoE(d, f, e, k, n_shared_experts=1, shared_d_ff=8)
    assert shared.n_active_params() == e * d + k * expert + 3 * d * 8


@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid", "noisy"])
def test_other_routers_run(router: str) -> None:
    moe = MoE(16, 24, 8, 2, router=router)
    y = moe(torch.randn(9, 16))
    assert y.shape == (9, 16) and torch.isfinite(y).all()


def test_deepseek_style_grouped_sigmoid_router() -> None:
    moe = MoE(16, 8, 16, 4, router="sigmoid", n_groups=4, topk_groups=2, routed_scale=2.5, n_shared_experts=1)
    moe(torch.randn(9, 16))
    torch.testing.assert_close(moe.last_routing.weights.sum(1), torch.full((9,), 2.5))


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_bf16_close_to_float64_reference(dispatch: str) -> None:
    """Same routing, bf16 tensors: output is bf16 and within bf16 rounding of the exact result."""
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(5)).bfloat16()
    w = _weights(8, 32, 64, dtype=torch.bfloat16)
    routing = topk_softmax(torch.randn(20, 8), 2)
    got = DISPATCH_FUNCTIONS[dispatch](x, routing, *w)
    assert got.dtype == torch.bfloat16
    want = _reference(x, routing.indices, routing.weights, *w)
    torch.testing.assert_close(got.double(), want, rtol=3e-2, atol=3e-2 * want.abs().mean().item())


@pytest.mark.parametrize("dispatch", DISPATCHES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_autocast_with_fp32_weights(dispatch: str, x_dtype: torch.dtype) -> None:
    """Mixed precision as the trainer runs it on a GPU (fp32 weights, autocast to bf16; the input
    may already be bf16): every dispatch runs, matches the exact result within bf16 rounding, and
    sends gradients to the fp32 weights."""
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(6)).to(x_dtype)
    w = [t.requires_grad_() for t in _weights(8, 32, 64)]
    routing = topk_softmax(torch.randn(20, 8), 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = DISPATCH_FUNCTIONS[dispatch](x, routing, *w)
    got.float().pow(2).sum().backward()
    want = _reference(x, routing.indices, routing.weights, *w)
    torch.testing.assert_close(got.double(), want.detach(), rtol=3e-2, atol=3e-2 * want.abs().mean().item())
    assert all(t.grad is not None and t.grad.dtype == torch.float32 and t.grad.abs().sum() > 0 for t in w)


def test_grouped_fallback_is_documented_and_correct(monkeypatch) -> None:
    import dmcourse.moe as moe_module

    monkeypatch.setattr(moe_module, "grouped_mm_supported", lambda device, dtype: False)
    x = torch.randn(7, 8)
    w = _weights(4, 8, 12)
    routing = topk_softmax(torch.randn(7, 4), 2)
    torch.testing.assert_close(
        dispatch_grouped(x, routing, *w).double(),
        _reference(x, routing.indices, routing.weights, *w),
        rtol=1e-5,
        atol=1e-5,
    )
    assert isinstance(grouped_mm_supported("cpu", torch.float32), bool)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: MoE(16, 24, 8, 0), r"top_k must be an int in \[1, 8\], got 0"),
        (lambda: MoE(16, 24, 8, 9), r"top_k must be an int in \[1, 8\], got 9"),
        (lambda: MoE(0, 24, 8, 2), r"d_model must be a positive int"),
        (lambda: MoE(16, 24, 8, 2, dispatch="fast"), r"dispatch must be one of"),
        (lambda: MoE(16, 24, 8, 2, router="hash"), r"router must be one of"),
        (lambda: MoE(16, 24, 8, 2, n_shared_experts=-1), r"n_shared_experts must be a non-negative int"),
        (lambda: MoE(16, 24, 8, 2)(torch.randn(3, 15)), r"x must have shape \(\.\.\., d_model=16\)"),
        (lambda: setattr(MoE(16, 24, 8, 2), "dispatch", "gather"), r"dispatch must be one of"),
        (
            lambda: DISPATCH_FUNCTIONS["sorted"](
                torch.randn(3, 8), topk_softmax(torch.randn(3, 4), 2), *_weights(5, 8, 12)
            ),
            r"routing is over 4 experts, the weights hold 5",
        ),
        (
            lambda: DISPATCH_FUNCTIONS["loop"](
                torch.randn(3, 8), topk_softmax(torch.randn(4, 4), 2), *_weights(4, 8, 12)
            ),
            r"routing.indices must have shape \(tokens=3, k\)",
        ),
        (
            lambda: DISPATCH_FUNCTIONS["grouped"](
                torch.randn(3, 9), topk_softmax(torch.randn(3, 4), 2), *_weights(4, 8, 12)
            ),
            r"x must have shape \(tokens, d_model=8\)",
        ),
        (lambda: from_mixtral_block(nn.Linear(3, 3)), r"Mixtral sparse-MoE block"),
    ],
)
def test_bad_arguments_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_dispatch_names_the_bad_weight_or_routing() -> None:
    x, routing = torch.randn(3, 8), topk_softmax(torch.randn(3, 4), 2)
    w_gate, w_up, w_down = _weights(4, 8, 12)
    for dispatch in DISPATCH_FUNCTIONS.values():
        with pytest.raises(ValueError, match=r"^w_up must have shape \(n_experts, d_ff, d_model\)=\(4, 12, 8\)"):
            dispatch(x, routing, w_gate, w_up[:, :11], w_down)
        with pytest.raises(ValueError, match=r"^w_down must have shape \(n_experts, d_model, d_ff\)=\(4, 8, 12\)"):
            dispatch(x, routing, w_gate, w_up, w_down.transpose(1, 2))
        bad = Routing(routing.indices, routing.weights[:, :1], routing.logits, routing.scores)
        with pytest.raises(ValueError, match=r"^routing.weights must have shape \(tokens=3, k=2\)"):
            dispatch(x, bad, w_gate, w_up, w_down)
        with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
            dispatch(x.tolist(), routing, w_gate, w_up, w_down)


# ---- interop with transformers (test-only dependency) ----


def _mixtral_block(d: int, f: int, e: int, k: int, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = transformers.MixtralConfig(hidden_size=d, intermediate_size=f, num_local_experts=e, num_experts_per_tok=k)
    torch.manual_seed(seed)
    block = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        for p in block.parameters():  # transformers leaves them uninitialised (torch.empty)
            p.copy_(torch.randn_like(p) * 0.1)
    return block


@pytest.mark.parametrize("dispatch", DISPATCHES)
@pytest.mark.parametrize("e,k", [(8, 2), (4, 1), (4, 4)])
def test_from_mixtral_block_matches_transformers(dispatch: str, e: int, k: int) -> None:
    block = _mixtral_block(32, 48, e, k)
    moe = from_mixtral_block(block, dispatch=dispatch)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        want, got = block(x), moe(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert moe.w_gate.data_ptr() != block.experts.gate_up_proj.data_ptr(), "a copy, not a view"


def test_from_mixtral_block_transformers4_layout() -> None:
    """transformers 4 kept one nn.Module per expert with nn.Linear w1 (gate), w3 (up), w2 (down)."""
    block = _mixtral_block(16, 24, 4, 2)
    gate_up, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    experts = nn.ModuleList()
    for e in range(4):
        m = nn.Module()
        m.w1, m.w3, m.w2 = nn.Linear(16, 24, bias=False), nn.Linear(16, 24, bias=False), nn.Linear(24, 16, bias=False)
        with torch.no_grad():
            m.w1.weight.copy_(gate_up[e, :24])
            m.w3.weight.copy_(gate_up[e, 24:])
            m.w2.weight.copy_(down[e])
        experts.append(m)
    old = nn.Module()
    old.gate, old.experts, old.top_k = nn.Linear(16, 4, bias=False), experts, 2
    with torch.no_grad():
        old.gate.weight.copy_(block.gate.weight)
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(from_mixtral_block(old)(x), block(x), rtol=1e-5, atol=1e-6)


def test_linear_kernel_matches_f_linear_and_keeps_autograd() -> None:
    from dmcourse.ffn import swiglu
    from dmcourse.moe import expert_swiglu, linear

    x, w = torch.randn(5, 24, dtype=torch.float64), torch.randn(40, 24, dtype=torch.float64)
    for m in (1, 3, 5):
        with torch.no_grad():
            got = linear(x[:m].float(), w.float())
        torch.testing.assert_close(got.double(), x[:m] @ w.T, rtol=1e-5, atol=1e-5)
    wp = w.float().requires_grad_()
    linear(x.float(), wp).sum().backward()  # with autograd: F.linear, gradients flow
    torch.testing.assert_close(wp.grad.double(), x.sum(0).expand(40, 24), rtol=1e-5, atol=1e-5)
    g, u, dn = torch.randn(40, 24), torch.randn(40, 24), torch.randn(24, 40)
    with torch.no_grad():
        torch.testing.assert_close(
            expert_swiglu(x.float(), g, u, dn), swiglu(x.float(), g, u, dn), rtol=1e-4, atol=1e-4
        )
