"""The toy task and models (dmcourse.toy), the trainer (dmcourse.train: history, hooks,
reproducibility) and the MoE loss function / hooks (dmcourse.moe_train)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmcourse.balance import load_balancing_loss
from dmcourse.capacity import CapacityLimitedRouter, expert_capacity
from dmcourse.moe import MoE
from dmcourse.moe_train import (
    Balancing,
    bias_update_hook,
    capacity_limited,
    moe_layers,
    moe_loss_fn,
    routing_stats_hook,
)
from dmcourse.toy import MixtureTask, TaskBatch, toy_dense, toy_moe
from dmcourse.train import History, StepContext, TrainConfig, evaluate, to_device, train

# ------------------------------------------------------------------------------------------------
# the task


def test_task_is_deterministic_and_shaped() -> None:
    task = MixtureTask(d_in=6, d_out=3, n_clusters=5, clusters_per_seq=2, seed=3)
    a = task.sample(4, 10, torch.Generator().manual_seed(1))
    b = MixtureTask(d_in=6, d_out=3, n_clusters=5, clusters_per_seq=2, seed=3).sample(
        4, 10, torch.Generator().manual_seed(1)
    )
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.cluster, b.cluster)
    assert a.x.shape == (4, 10, 6) and a.y.shape == (4, 10, 3) and a.cluster.shape == (4, 10)
    assert all(len(set(row.tolist())) <= 2 for row in a.cluster), "a sequence uses at most clusters_per_seq clusters"
    assert int(a.cluster.min()) >= 0 and int(a.cluster.max()) < 5


def test_task_targets_follow_the_documented_formula() -> None:
    task = MixtureTask(d_in=4, d_out=2, n_clusters=3, teacher_width=5, spread=0.7, shared=0.5, seed=0)
    batch = task.sample(2, 3, torch.Generator().manual_seed(0))
    t, c = (0, 1), int(batch.cluster[0, 1])
    x = batch.x[t]
    u = (x - task.centers[c]) / 0.7

    def teacher(i: int) -> torch.Tensor:
        return task.w_out[i] @ torch.tanh(task.w_in[i] @ u)

    expected = (teacher(c + 1) + 0.5 * teacher(0)) / task.target_scale
    torch.testing.assert_close(batch.y[t], expected, rtol=1e-5, atol=1e-6)
    big = task.sample(64, 64, torch.Generator().manual_seed(9))
    assert 0.85 < float(big.y.std()) < 1.15, "targets are scaled to unit variance"


@pytest.mark.parametrize(
    "kwargs", [{"n_clusters": 0}, {"clusters_per_seq": 9}, {"spread": 0.0}, {"common": -1.0}, {"shared": float("nan")}]
)
def test_task_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        MixtureTask(**kwargs)


# ------------------------------------------------------------------------------------------------
# the models


def test_toy_models() -> None:
    task = MixtureTask(d_in=6, d_out=3)
    moe = toy_moe(task, d_model=8, n_layers=3, n_experts=4, top_k=2, d_ff=5, router="sigmoid")
    dense = toy_dense(task, d_model=8, n_layers=3, d_ff=10)
    x = torch.randn(2, 7, 6)
    assert moe(x).shape == (2, 7, 3) and dense(x).shape == (2, 7, 3)
    layers = moe_layers(moe)
    assert len(layers) == 3 and all(isinstance(m, MoE) and m.router.method == "sigmoid" for m in layers)
    assert moe_layers(dense) == []
    # same active FFN size: k * d_ff = 10 = dense d_ff
    assert all(m.n_active_params() - m.router.weight.numel() == 3 * 8 * 10 for m in layers)


# ------------------------------------------------------------------------------------------------
# the trainer


def _regression():
    w_true = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))

    def batch_fn(step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        x = torch.randn(32, 5, generator=g)
        return {"x": x, "y": x @ w_true}

    def loss_fn(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        err = model(batch["x"]) - batch["y"]
        return err.pow(2).mean(), {"mae": err.abs().mean()}

    return batch_fn, loss_fn


def test_train_learns_records_and_is_reproducible() -> None:
    batch_fn, loss_fn = _regression()
    calls: list[tuple[int, bool]] = []

    def hook(ctx: StepContext) -> dict:
        calls.append((ctx.step, ctx.log))
        return {"seen": ctx.step}

    def run() -> History:
        torch.manual_seed(0)
        model = nn.Linear(5, 2)
        return train(
            model, batch_fn, loss_fn, TrainConfig(steps=60, lr=0.05, log_every=25), hooks=[hook], progress=False
        )

    h = run()
    assert h.steps() == [0, 25, 50, 59], "every log_every-th step and the last"
    assert h["loss"][-1] < 0.1 * h["loss"][0]
    assert set(h.keys()) >= {"step", "loss", "lr", "grad_norm", "mae", "seen"}
    assert h["seen"] == [0, 25, 50, 59]
    assert len(calls) == 60 and [s for s, log in calls if log] == [0, 25, 50, 59], "hooks run every step"
    assert isinstance(h.last("mae"), float)
    assert h.tail_mean("loss", 2) == pytest.approx((h["loss"][-1] + h["loss"][-2]) / 2)
    h2 = run()
    assert h2.records == [{k: v for k, v in r.items()} for r in h.records], "same seed, same history"
    with pytest.raises(KeyError):
        h["nothing"]


def test_lr_schedule() -> None:
    c = TrainConfig(steps=11, lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert [c.lr_at(0), c.lr_at(1)] == [0.5, 1.0]
    assert c.lr_at(2) == pytest.approx(1.0)
    assert c.lr_at(10) == pytest.approx(0.1)
    assert c.lr_at(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert TrainConfig(lr=0.3).lr_at(100) == 0.3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"lr": 0.0},
        {"schedule": "linear"},
        {"grad_clip": 0.0},
        {"log_every": 0},
        {"amp_dtype": torch.int8},
        {"warmup_steps": -1},
    ],
)
def test_train_config_bad_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_evaluate_is_repeatable_and_restores_mode() -> None:
    batch_fn, loss_fn = _regression()
    model = nn.Linear(5, 2).train()
    a = evaluate(model, batch_fn, loss_fn, n_batches=3)
    b = evaluate(model, batch_fn, loss_fn, n_batches=3)
    assert a == b and set(a) == {"loss", "mae"}
    assert model.training


def test_to_device_nested() -> None:
    batch = {
        "a": torch.zeros(2),
        "b": [torch.ones(1), (torch.ones(1), 3)],
        "c": TaskBatch(torch.zeros(1), torch.zeros(1), torch.zeros(1)),
    }
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved["b"][1], tuple) and moved["b"][1][1] == 3 and isinstance(moved["c"], TaskBatch)


# ------------------------------------------------------------------------------------------------
# MoE losses and hooks


def test_moe_loss_fn_composes_the_terms() -> None:
    torch.manual_seed(0)
    task = MixtureTask()
    model = toy_moe(task, d_model=16, n_experts=4, top_k=2, d_ff=8)
    batch = task.sample(3, 5, torch.Generator().manual_seed(0))
    bal = Balancing(aux_alpha=0.3, aux_convention="hf", z_coef=0.2, seq_alpha=0.1)
    loss, m = moe_loss_fn(bal)(model, batch)
    assert set(m) == {"task", "aux", "z", "seq"}
    torch.testing.assert_close(loss, m["task"] + 0.3 * m["aux"] + 0.2 * m["z"] + 0.1 * m["seq"])
    routings = [layer.last_routing for layer in moe_layers(model)]
    torch.testing.assert_close(m["aux"], load_balancing_loss(tuple(r.logits for r in routings), 2, convention="hf"))
    loss.backward()
    assert all(layer.router.weight.grad is not None for layer in moe_layers(model))


def test_balancing_bad_arguments() -> None:
    with pytest.raises(ValueError, match="aux_convention"):
        Balancing(aux_convention="mixtral")
    with pytest.raises(ValueError, match="bias_gamma"):
        Balancing(bias_gamma=-1.0)
    assert Balancing().hooks() == [] and len(Balancing(bias_gamma=0.1).hooks()) == 1


def test_bias_hook_balances_a_skewed_router_without_training_it() -> None:
    torch.manual_seed(0)
    task = MixtureTask(common=5.0, spread=2.0, clusters_per_seq=8)  # tokens look alike: a fresh router is skewed
    model = toy_moe(task, d_model=16, n_experts=8, top_k=2, d_ff=8, router="sigmoid")
    with torch.no_grad():
        for layer in moe_layers(model):
            layer.router.weight.add_(torch.linspace(-1, 1, 8)[:, None] * 0.3)
    weights_before = [layer.router.weight.clone() for layer in moe_layers(model)]
    stats = routing_stats_hook(per_expert=False)
    start = train(
        model, task.batch_fn(32, 16), moe_loss_fn(), TrainConfig(steps=5, lr=1e-12), hooks=[stats], progress=False
    )
    # the weights barely move (lr 1e-12): only the bias acts
    h = train(
        model,
        task.batch_fn(32, 16),
        moe_loss_fn(),
        TrainConfig(steps=150, lr=1e-12, log_every=10),
        hooks=[bias_update_hook(0.02), stats],
        progress=False,
    )
    assert start.tail_mean("max_over_mean", 5) > 2.0
    assert h.tail_mean("max_over_mean", 5) < min(1.6, 0.6 * start.tail_mean("max_over_mean", 5))
    for layer, before in zip(moe_layers(model), weights_before):
        torch.testing.assert_close(layer.router.weight, before)
        assert layer.router.bias.abs().max() > 0
    with pytest.raises(ValueError, match="sigmoid"):
        softmax_model = toy_moe(task, d_model=16, n_experts=4, top_k=2, d_ff=8)
        train(
            softmax_model,
            task.batch_fn(2, 4),
            moe_loss_fn(),
            TrainConfig(steps=1),
            hooks=[bias_update_hook(0.1)],
            progress=False,
        )
    with pytest.raises(ValueError, match="gamma"):
        bias_update_hook(0.0)


def test_routing_stats_hook_and_capacity_limited() -> None:
    torch.manual_seed(1)
    task = MixtureTask()
    model = toy_moe(task, d_model=16, n_layers=2, n_experts=4, top_k=2, d_ff=8)
    batch = task.sample(4, 8, torch.Generator().manual_seed(0))
    hook = routing_stats_hook()
    ctx = StepContext(
        step=0,
        model=model,
        batch=batch,
        loss=torch.zeros(()),
        metrics={},
        optimizer=None,  # type: ignore[arg-type]
        config=TrainConfig(),
        log=True,
    )
    model(batch.x)
    out = hook(ctx)
    assert set(out) >= {
        "max_over_mean",
        "entropy",
        "cv",
        "dead",
        "logit_rms",
        "logit_max",
        "load/0",
        "load/1",
        "max_over_mean/1",
    }
    assert sum(out["load/0"]) == pytest.approx(1.0) and "drop_rate" not in out
    assert hook(StepContext(**{**ctx.__dict__, "log": False})) is None
    original = [m.router for m in moe_layers(model)]
    with capacity_limited(model, 1.0) as wrappers:
        y = model(batch.x)
        for m, w in zip(moe_layers(model), wrappers):
            assert isinstance(m.router, CapacityLimitedRouter)
            r = m.last_routing
            cap = expert_capacity(32, 4, 2, 1.0)
            assert torch.equal(r.weights == 0, ~w.last_keep)
            kept = torch.bincount(r.indices[w.last_keep], minlength=4)
            assert int(kept.max()) <= cap
        assert "drop_rate" in hook(ctx)
    assert [m.router for m in moe_layers(model)] == original
    assert y.shape == (4, 8, task.d_out)


def test_progress_bar_default_follows_the_environment(monkeypatch) -> None:
    from dmcourse.train import progress_default

    monkeypatch.delenv("DMCOURSE_PROGRESS", raising=False)
    assert progress_default() is True
    for off in ("0", "false", "OFF"):
        monkeypatch.setenv("DMCOURSE_PROGRESS", off)
        assert progress_default() is False
    monkeypatch.setenv("DMCOURSE_PROGRESS", "1")
    assert progress_default() is True
