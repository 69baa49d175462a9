"""MoE training glue for :func:`dmcourse.train.train`: balancing losses, the bias balancer, routing
statistics and capacity limits, as a loss function, hooks and a context manager.

Chapter 4 ("Routing collapse and load balancing") introduces it; chapter 7 uses it again. The trainer knows nothing about
MoE: this module finds a model's :class:`dmcourse.moe.MoE` layers (:func:`moe_layers`), reads the
routing of their last forward pass, and turns :mod:`dmcourse.balance` into what the trainer takes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmcourse.balance import (
    AUX_CONVENTIONS,
    bias_update,
    expert_counts,
    load_balancing_loss,
    load_stats,
    router_z_loss,
    sequence_wise_balance_loss,
)
from dmcourse.capacity import CapacityLimitedRouter
from dmcourse.checks import nonnegative_float, one_of, positive_float
from dmcourse.moe import MoE
from dmcourse.train import Hook, LossFn, StepContext, task_mse


def moe_layers(model: nn.Module) -> list[MoE]:
    """The :class:`dmcourse.moe.MoE` layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


# ------------------------------------------------------------------------------------------------
# MoE: balancing losses, the bias balancer and routing statistics as loss function and hooks


@dataclass(frozen=True)
class Balancing:
    """Which load-balancing terms :func:`moe_loss_fn` adds to the task loss.

    aux_alpha: coefficient of :func:`dmcourse.balance.load_balancing_loss` (layers pooled) under
        ``aux_convention``; z_coef: coefficient of the router z-loss; seq_alpha: coefficient of
        DeepSeek-V3's sequence-wise loss (mean over layers). bias_gamma is not a loss: pass
        :func:`bias_update_hook` to :func:`dmcourse.train.train` (``Balancing.hooks()`` does).
    """

    aux_alpha: float = 0.0
    aux_convention: str = "divide_by_k"
    z_coef: float = 0.0
    seq_alpha: float = 0.0
    bias_gamma: float = 0.0

    def __post_init__(self) -> None:
        for f in ("aux_alpha", "z_coef", "seq_alpha", "bias_gamma"):
            nonnegative_float(f, getattr(self, f))
        one_of("aux_convention", self.aux_convention, AUX_CONVENTIONS)

    def hooks(self) -> list[Hook]:
        """The hooks this balancing needs (the bias balancer when ``bias_gamma > 0``)."""
        return [bias_update_hook(self.bias_gamma)] if self.bias_gamma > 0 else []


def _routings(model: nn.Module):
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no dmcourse.moe.MoE layer")
    routings = [m.last_routing for m in layers]
    if any(r is None for r in routings):
        raise ValueError("an MoE layer has no routing yet: run a forward pass first")
    return layers, routings


def moe_loss_fn(
    balancing: Balancing = Balancing(), task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = task_mse
) -> LossFn:
    """``loss_fn(model, batch)`` for :func:`dmcourse.train.train`: ``task + aux_alpha * aux + z_coef * z + seq_alpha * seq``.

    ``batch`` has ``x`` (B, S, d_in) and ``y``. The metrics always include ``task``, ``aux`` (the
    chosen convention, computed on the experts actually selected, e.g. with a selection bias),
    ``z`` and ``seq``, whatever their coefficients, so runs can be compared.
    """

    def loss_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = model(batch.x)
        task = task_loss(pred, batch.y)
        _, routings = _routings(model)
        logits = tuple(r.logits for r in routings)
        aux = load_balancing_loss(
            logits, convention=balancing.aux_convention, indices=tuple(r.indices for r in routings)
        )
        z = router_z_loss(logits)
        b, s = batch.x.shape[0], batch.x.shape[1]
        seq = torch.stack(
            [sequence_wise_balance_loss(r.scores.view(b, s, -1), r.indices.view(b, s, -1)) for r in routings]
        ).mean()
        loss = task + balancing.aux_alpha * aux + balancing.z_coef * z + balancing.seq_alpha * seq
        return loss, {"task": task.detach(), "aux": aux.detach(), "z": z.detach(), "seq": seq.detach()}

    return loss_fn


def bias_update_hook(gamma: float) -> Hook:
    """After each step, DeepSeek-V3's bias update on every MoE layer from the step's loads:
    ``router.bias += gamma * sign(mean load - load)`` (:func:`dmcourse.balance.bias_update`).
    The layers need ``router="sigmoid"`` (whose selection bias does not enter the gating weights).
    Records ``bias_abs_mean`` and, on logged steps, each layer's bias as ``"bias/<layer>"``."""
    positive_float("gamma", gamma)

    @torch.no_grad()
    def hook(ctx: StepContext) -> dict[str, float]:
        layers, routings = _routings(ctx.model)
        for moe, routing in zip(layers, routings):
            bias = getattr(moe.router, "bias", None)
            if not isinstance(bias, torch.Tensor):
                raise ValueError("the bias balancer needs MoE(router='sigmoid'), whose router has a selection bias")
            bias.copy_(bias_update(bias, expert_counts(routing.indices, moe.n_experts), gamma))
        out: dict[str, Any] = {"bias_abs_mean": float(torch.stack([m.router.bias.abs().mean() for m in layers]).mean())}
        if ctx.log:
            out.update({f"bias/{i}": m.router.bias.tolist() for i, m in enumerate(layers)})
        return out

    return hook


def routing_stats_hook(per_expert: bool = True) -> Hook:
    """Load statistics of the step's routing, per layer and averaged over layers.

    Returns ``max_over_mean``, ``entropy`` (nats), ``cv``, ``dead`` (means over layers), the same
    per layer as ``"<name>/<layer>"``, ``logit_rms`` (root-mean-square router logit) and
    ``logit_max`` (mean over tokens of the largest logit), and with ``per_expert`` each layer's
    share of assignments per expert as ``"load/<layer>"`` (a list of E floats); ``drop_rate`` when
    the routers are capacity-limited (:func:`capacity_limited`). Computed only on logged steps.
    """

    @torch.no_grad()
    def hook(ctx: StepContext) -> dict[str, Any] | None:
        if not ctx.log:
            return None
        layers, routings = _routings(ctx.model)
        out: dict[str, Any] = {}
        totals: dict[str, float] = {}
        for i, (moe, r) in enumerate(zip(layers, routings)):
            stats = load_stats(r.indices, moe.n_experts)
            for k in ("max_over_mean", "entropy", "cv", "dead"):
                value = stats.as_dict()[k]
                out[f"{k}/{i}"] = value
                totals[k] = totals.get(k, 0.0) + value / len(layers)
            if per_expert:
                out[f"load/{i}"] = stats.fraction.tolist()
            if isinstance(moe.router, CapacityLimitedRouter) and moe.router.last_drop_rate is not None:
                totals["drop_rate"] = totals.get("drop_rate", 0.0) + moe.router.last_drop_rate / len(layers)
            logits = r.logits.detach().float()
            totals["logit_rms"] = totals.get("logit_rms", 0.0) + float(logits.pow(2).mean().sqrt()) / len(layers)
            totals["logit_max"] = totals.get("logit_max", 0.0) + float(logits.max(-1).values.mean()) / len(layers)
        return {**totals, **out}

    return hook


@contextlib.contextmanager
def capacity_limited(
    model: nn.Module, capacity_factor: float, order: str = "position"
) -> Iterator[list[CapacityLimitedRouter]]:
    """Inside the ``with`` block every MoE layer of ``model`` drops the assignments beyond
    ``ceil(capacity_factor * T * k / E)`` per expert (:class:`dmcourse.capacity.CapacityLimitedRouter`,
    priority ``order``); the original routers come back afterwards. Yields the wrappers
    (``last_keep``, ``last_drop_rate`` after each forward)."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no dmcourse.moe.MoE layer")
    originals = [m.router for m in layers]
    wrappers = [CapacityLimitedRouter(r, capacity_factor, order) for r in originals]
    try:
        for m, w in zip(layers, wrappers):
            m.router = w  # type: ignore[assignment]  # the wrapper stands in for the Router it wraps
        yield wrappers
    finally:
        for m, r in zip(layers, originals):
            m.router = r


__all__: Sequence[str] = (
    "Balancing",
    "bias_update_hook",
    "capacity_limited",
    "moe_layers",
    "moe_loss_fn",
    "routing_stats_hook",
)
