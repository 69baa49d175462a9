"""Every MoE the package builds by default has a router the *task* loss can train (issue 16, error 1).

With top-1 and a rule that normalises over the chosen experts the combine weight is identically 1,
so the task loss sends no gradient to the router. The defaults must avoid that (Switch gating for
top-1), and the constant-weight configurations must be refused unless asked for.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dmcourse
from dmcourse import routing
from dmcourse.ffn import SwiGLU
from dmcourse.lm import ALPHABET, LMConfig, TinyLM, lm_loss
from dmcourse.moe import MoE
from dmcourse.toy import MixtureTask, toy_moe
from dmcourse.train import task_mse
from dmcourse.upcycle import upcycle_ffn, upcycle_lm

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def _router_grads(model: nn.Module, task_loss: torch.Tensor) -> list[float]:
    """Backward through the task loss only -> the gradient norm of every MoE router weight."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    assert layers, "the model has no MoE layer"
    model.zero_grad(set_to_none=True)
    task_loss.backward()
    return [0.0 if m.router.weight.grad is None else float(m.router.weight.grad.norm()) for m in layers]


def _lm_task_loss(model: TinyLM, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(ALPHABET), (4, model.config.seq_len + 1), generator=g)
    return lm_loss(model(ids[:, :-1]), ids[:, 1:])


@pytest.mark.parametrize("top_k", [1, 2])
def test_default_moe_router_gets_task_gradient(top_k: int) -> None:
    torch.manual_seed(top_k)
    moe = dmcourse.MoE(16, 24, 4, top_k)
    x = torch.randn(32, 16)
    target = torch.randn(32, 16)
    (grad,) = _router_grads(moe, task_mse(moe(x), target))
    assert grad > 1e-6
    assert moe.router.method == ("softmax_topk" if top_k == 1 else "softmax")


@pytest.mark.parametrize("top_k", [1, 2])
def test_default_tiny_lm_routers_get_task_gradient(top_k: int) -> None:
    torch.manual_seed(10 + top_k)
    model = TinyLM(LMConfig(d_model=16, n_layers=2, n_heads=2, d_ff=16, n_experts=4, top_k=top_k, seq_len=12))
    grads = _router_grads(model, _lm_task_loss(model))
    assert len(grads) == 2 and min(grads) > 1e-7, grads


def test_default_toy_moe_routers_get_task_gradient() -> None:
    task = MixtureTask(d_in=6, d_out=3, n_clusters=4, clusters_per_seq=2, seed=0)
    batch = task.sample(4, 16, torch.Generator().manual_seed(0))
    for top_k in (1, 2):
        torch.manual_seed(top_k)
        model = toy_moe(task, d_model=8, n_layers=2, n_experts=4, top_k=top_k, d_ff=8)
        grads = _router_grads(model, task_mse(model(batch.x), batch.y))
        assert min(grads) > 1e-7, (top_k, grads)


def test_upcycled_lm_routers_get_task_gradient() -> None:
    torch.manual_seed(3)
    dense = TinyLM(LMConfig(d_model=16, n_layers=2, n_heads=2, d_ff=16, seq_len=12))
    # top-1: Switch gating by default, so the router is in the graph from the first step
    top1 = upcycle_lm(dense, 4, 1)
    assert min(_router_grads(top1, _lm_task_loss(top1))) > 1e-7
    # top-2 with copies that differ (noise): the router is trained at once
    top2 = upcycle_lm(dense, 4, 2, noise=0.1)
    assert min(_router_grads(top2, _lm_task_loss(top2))) > 1e-7


def test_exact_copy_router_gradient_is_zero_only_until_the_experts_differ() -> None:
    """Identical experts, weights summing to 1: y = f(x) whatever the router says, so its gradient is 0
    by symmetry -- not a dead router: one optimiser step on the experts (different tokens per expert)
    breaks the symmetry and the router's gradient appears."""
    torch.manual_seed(4)
    dense = TinyLM(LMConfig(d_model=16, n_layers=2, n_heads=2, d_ff=16, seq_len=12))
    moe = upcycle_lm(dense, 4, 2)
    assert max(_router_grads(moe, _lm_task_loss(moe))) < 1e-6
    with torch.no_grad():
        for p in moe.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    assert min(_router_grads(moe, _lm_task_loss(moe, seed=1))) > 1e-7


@pytest.mark.parametrize("method", routing.CONSTANT_AT_TOP1)
def test_constant_top1_gates_are_refused_with_the_fix_named(method: str) -> None:
    with pytest.raises(ValueError, match="softmax_topk"):
        routing.Router(16, 4, 1, method)
    with pytest.raises(ValueError, match="no gradient"):
        MoE(16, 24, 4, 1, router=method)
    with pytest.raises(ValueError, match="allow_constant_gate"):
        upcycle_ffn(SwiGLU(16, 24), 4, 1, router=method)


@pytest.mark.parametrize("method", routing.CONSTANT_AT_TOP1)
def test_allowed_constant_top1_gate_really_sends_no_gradient(method: str) -> None:
    """What the refusal protects against: the weight is a constant and the router's gradient is 0."""
    torch.manual_seed(5)
    moe = MoE(16, 24, 4, 1, router=method, allow_constant_gate=True)
    x = torch.randn(32, 16)
    (grad,) = _router_grads(moe, task_mse(moe(x), torch.randn(32, 16)))
    w = moe.last_routing.weights.detach()
    assert torch.allclose(w, torch.full_like(w, float(w[0, 0])))
    assert grad < 1e-6  # 0 up to rounding (sigmoid: s / s)


def test_default_router_names() -> None:
    assert routing.default_router(1) == "softmax_topk"
    assert all(routing.default_router(k) == "softmax" for k in (2, 3, 8))
    assert routing.Router(8, 4, 1).method == "softmax_topk"
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="top_k"):
            routing.default_router(bad)  # type: ignore[arg-type]
