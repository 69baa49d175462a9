"""A toy task on which experts can specialise, a small MoE model, and a tiny, extensible trainer.

**The task** (:class:`MixtureTask`): regression on a mixture of ``n_clusters`` sub-tasks. Each token
``x`` (``d_in``) is drawn around one of ``n_clusters`` random centres, and its target ``y`` (``d_out``)
is that cluster's own random teacher function ``tanh(x @ A_c.T) @ B_c.T`` (targets scaled to unit
variance, so predicting 0 scores a loss of about 1). A router can learn which cluster a token belongs
to, and an expert can learn one teacher: the task rewards specialisation. Each sequence draws its
tokens from only ``clusters_per_seq`` clusters, so a sequence is unbalanced even when the batch is
not (what DeepSeek-V3's sequence-wise loss looks at).

**The model** (:class:`ToyModel`): ``Linear(d_in, d_model)``, ``n_layers`` residual blocks
``h = h + ffn(RMSNorm(h))``, ``RMSNorm``, ``Linear(d_model, d_out)``. The FFN of each block comes from
a factory, :func:`toy_moe` makes it a :class:`dmcourse.moe.MoE` and :func:`toy_dense` a
:class:`dmcourse.ffn.SwiGLU`; there is no attention: tokens are independent.

**The trainer** (:func:`train`) knows nothing about MoE. It takes

* ``model``: any ``nn.Module``;
* ``batch_fn(step, generator) -> batch``: makes the batch of a step (moved to the device with
  :func:`to_device`: tensors, objects with ``.to``, dicts, lists and tuples of them);
* ``loss_fn(model, batch) -> (loss, metrics)``: the scalar to minimise and a dict of floats or
  0-d tensors to record (:func:`task_loss_fn` for any model, :func:`moe_loss_fn` adds the
  balancing losses of :class:`Balancing`);
* ``config``: a :class:`TrainConfig` (steps, AdamW settings, warmup + constant/cosine schedule,
  gradient clipping, logging interval, seed, device, mixed precision);
* ``hooks``: callables ``hook(ctx: StepContext) -> dict | None`` run after every optimiser step; the
  dicts they return on logged steps are merged into that step's record (:func:`bias_update_hook`,
  :func:`routing_stats_hook`);

and returns a :class:`History` (one record per logged step). :func:`evaluate` averages a loss
function and hooks over held-out batches; :func:`capacity_limited` makes a model's MoE layers drop
assignments beyond a capacity factor inside a ``with`` block. Later chapters extend the trainer by
passing other models, batch functions, losses and hooks -- the loop itself stays this one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmcourse.balance import (
    AUX_CONVENTIONS,
    CapacityLimitedRouter,
    bias_update,
    expert_counts,
    load_balancing_loss,
    load_stats,
    router_z_loss,
    sequence_wise_balance_loss,
)
from dmcourse.ffn import SwiGLU
from dmcourse.moe import MoE

# ------------------------------------------------------------------------------------------------
# the toy task


def _pos_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass
class TaskBatch:
    """One batch of the toy task: x (B, S, d_in), y (B, S, d_out) float32, cluster (B, S) int64."""

    x: torch.Tensor
    y: torch.Tensor
    cluster: torch.Tensor

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(self.x.to(device), self.y.to(device), self.cluster.to(device))


class MixtureTask:
    """Regression on ``n_clusters`` sub-tasks, each with its own teacher (see the module docstring).

    Token ``x = centre_c + spread * noise`` for its cluster ``c``; its target is
    ``(teacher_c(u) + shared * teacher_0(u)) / scale`` with ``u = (x - centre_c) / spread`` the offset
    from the centre, ``teacher(u) = tanh(u @ A.T) @ B.T`` (``A``: (teacher_width, d_in) with entries
    of std ``gain / sqrt(d_in)``, ``B``: (d_out, teacher_width)), ``teacher_0`` one teacher common to all
    clusters, and ``scale`` making the targets unit-variance.

    Args:
        d_in, d_out: input and target sizes.
        n_clusters: number of sub-tasks.
        teacher_width: hidden size of each teacher.
        spread: std of the inputs around their centre.
        common: every centre also gets ``common * v`` for one random vector ``v`` (entries N(0, 1),
            the centres' own part too): a direction all tokens share, like the common component of
            real hidden states. It makes all tokens look alike to a fresh router.
        gain: how nonlinear the teachers are (tanh saturates more for larger gain).
        shared: weight of the teacher common to all clusters (0: none) -- what a shared expert can learn once.
        clusters_per_seq: how many clusters one sequence draws its tokens from (uniformly).
        seed: the task's own seed (centres and teachers); batches use the generator given to :meth:`sample`.
    """

    def __init__(self, d_in: int = 16, d_out: int = 8, n_clusters: int = 8, *, teacher_width: int = 16,
                 spread: float = 0.3, common: float = 5.0, gain: float = 1.5, shared: float = 0.0,
                 clusters_per_seq: int = 2, seed: int = 0) -> None:
        for name, value in (("d_in", d_in), ("d_out", d_out), ("n_clusters", n_clusters),
                            ("teacher_width", teacher_width), ("clusters_per_seq", clusters_per_seq)):
            _pos_int(name, value)
        if clusters_per_seq > n_clusters:
            raise ValueError(f"clusters_per_seq={clusters_per_seq} exceeds n_clusters={n_clusters}")
        for name, value in (("spread", spread), ("common", common), ("gain", gain), ("shared", shared)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if spread == 0:
            raise ValueError("spread must be positive: the teachers read the offset from the centre")
        self.d_in, self.d_out, self.n_clusters, self.teacher_width = d_in, d_out, n_clusters, teacher_width
        self.spread, self.common, self.gain, self.shared = float(spread), float(common), float(gain), float(shared)
        self.clusters_per_seq, self.seed = clusters_per_seq, seed
        g = torch.Generator().manual_seed(seed)
        direction = torch.randn(d_in, generator=g)
        self.centers = torch.randn(n_clusters, d_in, generator=g) + common * direction  # (C, d_in)
        # teacher 0 is the shared one, teacher c + 1 belongs to cluster c
        self.w_in = torch.randn(n_clusters + 1, teacher_width, d_in, generator=g) * gain / d_in ** 0.5
        self.w_out = torch.randn(n_clusters + 1, d_out, teacher_width, generator=g) / teacher_width ** 0.5
        self.target_scale = 1.0
        probe = self.sample(64, 64, torch.Generator().manual_seed(seed + 1))
        self.target_scale = float(probe.y.std())  # targets of unit variance

    def teacher(self, x: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        """Targets of x (..., d_in) for their clusters (...,) int64 -> (..., d_out)."""
        u = (x - self.centers[cluster]) / self.spread

        def net(which: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(torch.einsum("...d,...hd->...h", u, self.w_in[which]))
            return torch.einsum("...h,...oh->...o", h, self.w_out[which])

        y = net(cluster + 1)
        if self.shared:
            y = y + self.shared * net(torch.zeros_like(cluster))
        return y / self.target_scale

    def sample(self, batch_size: int, seq_len: int, generator: torch.Generator | None = None) -> TaskBatch:
        """A fresh batch on the CPU: each sequence picks ``clusters_per_seq`` clusters, each token one of them."""
        _pos_int("batch_size", batch_size)
        _pos_int("seq_len", seq_len)
        g = generator
        pick = torch.rand(batch_size, self.n_clusters, generator=g).argsort(dim=1)[:, : self.clusters_per_seq]
        which = torch.randint(0, self.clusters_per_seq, (batch_size, seq_len), generator=g)
        cluster = pick.gather(1, which)  # (B, S)
        x = self.centers[cluster] + self.spread * torch.randn(batch_size, seq_len, self.d_in, generator=g)
        return TaskBatch(x=x, y=self.teacher(x, cluster), cluster=cluster)

    def batch_fn(self, batch_size: int, seq_len: int) -> Callable[[int, torch.Generator], TaskBatch]:
        """``batch_fn(step, generator)`` for :func:`train`: a fresh sample every step."""
        return lambda step, generator: self.sample(batch_size, seq_len, generator)

    def __repr__(self) -> str:
        return (f"MixtureTask(d_in={self.d_in}, d_out={self.d_out}, n_clusters={self.n_clusters}, "
                f"teacher_width={self.teacher_width}, spread={self.spread}, common={self.common}, gain={self.gain}, "
                f"shared={self.shared}, clusters_per_seq={self.clusters_per_seq}, seed={self.seed})")


# ------------------------------------------------------------------------------------------------
# the model


class ToyModel(nn.Module):
    """``Linear -> n_layers x (h + ffn(RMSNorm(h))) -> RMSNorm -> Linear``; x (..., d_in) -> (..., d_out).

    ``ffn(layer_index)`` builds each block's FFN, a module (..., d_model) -> (..., d_model).
    """

    def __init__(self, d_in: int, d_out: int, d_model: int, n_layers: int,
                 ffn: Callable[[int], nn.Module]) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_out", d_out), ("d_model", d_model), ("n_layers", n_layers)):
            _pos_int(name, value)
        self.embed = nn.Linear(d_in, d_model)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(n_layers))
        self.ffns = nn.ModuleList(ffn(i) for i in range(n_layers))
        self.norm_out = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for norm, ffn in zip(self.norms, self.ffns):
            h = h + ffn(norm(h))
        return self.head(self.norm_out(h))


def toy_moe(task: MixtureTask, *, d_model: int = 32, n_layers: int = 2, n_experts: int = 8, top_k: int = 2,
            d_ff: int = 32, **moe_kwargs: Any) -> ToyModel:
    """A :class:`ToyModel` whose FFNs are :class:`dmcourse.moe.MoE` layers.

    ``moe_kwargs`` go to ``MoE`` (``router="sigmoid"`` for the bias balancer, ``n_shared_experts``,
    ``shared_d_ff``, ``dispatch``, ...).
    """
    return ToyModel(task.d_in, task.d_out, d_model, n_layers,
                    lambda i: MoE(d_model, d_ff, n_experts, top_k, **moe_kwargs))


def toy_dense(task: MixtureTask, *, d_model: int = 32, n_layers: int = 2, d_ff: int = 64) -> ToyModel:
    """A :class:`ToyModel` with dense SwiGLU FFNs (``d_ff = top_k * expert d_ff`` matches an MoE's active size)."""
    return ToyModel(task.d_in, task.d_out, d_model, n_layers, lambda i: SwiGLU(d_model, d_ff))


def moe_layers(model: nn.Module) -> list[MoE]:
    """The :class:`dmcourse.moe.MoE` layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


# ------------------------------------------------------------------------------------------------
# the trainer


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`train` needs besides the model, data and loss.

    steps: optimiser steps. lr, betas, weight_decay, eps: AdamW. warmup_steps: linear warmup from 0;
    schedule: ``"constant"`` or ``"cosine"`` (to ``min_lr_ratio * lr`` at the last step).
    grad_clip: max global gradient norm (None: no clipping). log_every: record every n-th step
    (and the last). seed: seeds the batch generator passed to ``batch_fn``. device: default the
    model's. amp_dtype: autocast dtype on CUDA (``torch.bfloat16``/``torch.float16``; fp16 adds a
    gradient scaler); ignored on the CPU.
    """

    steps: int = 200
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    log_every: int = 1
    seed: int = 0
    device: str | None = None
    amp_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        _pos_int("steps", self.steps)
        _pos_int("log_every", self.log_every)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if self.amp_dtype not in (None, torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"amp_dtype must be None, torch.bfloat16, torch.float16 or torch.float32, got {self.amp_dtype!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(self.steps - self.warmup_steps - 1, 1)
        t = min((step - self.warmup_steps) / span, 1.0)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class StepContext:
    """What a hook sees after an optimiser step: ``step`` (0-based), the ``model``, the ``batch``,
    the ``loss`` (detached), the loss function's ``metrics``, the ``optimizer``, the ``config``,
    and ``log``: whether this step is recorded (a hook can skip costly statistics otherwise)."""

    step: int
    model: nn.Module
    batch: Any
    loss: torch.Tensor
    metrics: dict[str, Any]
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    log: bool


Hook = Callable[[StepContext], "Mapping[str, Any] | None"]
LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, Mapping[str, Any]]"]
BatchFn = Callable[[int, torch.Generator], Any]


@dataclass
class History:
    """The records of a run, one dict per logged step (``"step"``, ``"loss"``, ``"lr"``, metrics,
    hook outputs). ``history["loss"]`` is the list of a key's values, ``history.steps("loss")`` the
    steps they were logged at."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def append(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.update(dict.fromkeys(r))
        return list(seen)

    def __getitem__(self, key: str) -> list[Any]:
        values = [r[key] for r in self.records if key in r]
        if not values:
            raise KeyError(f"no record has {key!r}; keys: {self.keys()}")
        return values

    def steps(self, key: str = "loss") -> list[int]:
        return [r["step"] for r in self.records if key in r]

    def last(self, key: str) -> Any:
        return self[key][-1]

    def tail_mean(self, key: str, n: int = 10) -> float:
        """Mean of a numeric key over its last ``n`` records (a less noisy 'final' value)."""
        values = self[key][-n:]
        return float(sum(values) / len(values))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch: tensors, objects with ``.to(device)``, and dicts/lists/tuples of them."""
    if isinstance(batch, torch.Tensor) or hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    return value


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def progress_default() -> bool:
    """Whether :func:`train` shows a progress bar when not told: yes, unless ``DMCOURSE_PROGRESS=0``."""
    return os.environ.get("DMCOURSE_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def train(
    model: nn.Module,
    batch_fn: BatchFn,
    loss_fn: LossFn,
    config: TrainConfig = TrainConfig(),
    *,
    hooks: Iterable[Hook] = (),
    progress: bool | None = None,
    desc: str | None = None,
) -> History:
    """Train ``model`` for ``config.steps`` AdamW steps; -> :class:`History`.

    Each step: ``batch = to_device(batch_fn(step, generator))``, ``loss, metrics = loss_fn(model,
    batch)`` (under autocast on CUDA when ``config.amp_dtype`` is set), backward, gradient clipping,
    optimiser step, then every hook with a :class:`StepContext`. A ``tqdm.auto`` bar shows the loss;
    ``progress=None`` (default) shows it unless the environment sets ``DMCOURSE_PROGRESS=0`` (the
    book build does: a static page cannot show a live bar, it would only leave an empty widget).
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    hooks = list(hooks)
    device = torch.device(config.device) if config.device else _model_device(model)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                  weight_decay=config.weight_decay)
    use_amp = device.type == "cuda" and config.amp_dtype in (torch.bfloat16, torch.float16)
    scaler = torch.amp.GradScaler("cuda") if use_amp and config.amp_dtype == torch.float16 else None
    generator = torch.Generator().manual_seed(config.seed)
    history = History()
    if progress is None:
        progress = progress_default()
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        model.train()
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = to_device(batch_fn(step, generator), device)
        with torch.autocast(device.type, dtype=config.amp_dtype, enabled=use_amp):
            loss, metrics = loss_fn(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return (scalar tensor, metrics), got {type(loss).__name__}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = None
        if config.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        log = step % config.log_every == 0 or step == config.steps - 1
        ctx = StepContext(step=step, model=model, batch=batch, loss=loss.detach(), metrics=dict(metrics),
                          optimizer=optimizer, config=config, log=log)
        record: dict[str, Any] = {}
        for hook in hooks:
            out = hook(ctx)
            if log and out:
                record.update(out)
        if log:
            record = {"step": step, "loss": float(loss.detach()), "lr": lr,
                      **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                      **{k: _scalar(v) for k, v in metrics.items()}, **record}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
    bar.close()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, batch_fn: BatchFn, loss_fn: LossFn, *, n_batches: int = 4, seed: int = 12345,
             hooks: Iterable[Hook] = ()) -> dict[str, float]:
    """Mean loss, metrics and hook outputs over ``n_batches`` held-out batches (model in eval mode,
    no gradients; a generator seeded with ``seed``, so every model sees the same batches)."""
    _pos_int("n_batches", n_batches)
    hooks = list(hooks)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    try:
        for i in range(n_batches):
            batch = to_device(batch_fn(i, generator), device)
            loss, metrics = loss_fn(model, batch)
            values = {"loss": float(loss), **{k: _scalar(v) for k, v in metrics.items()}}
            ctx = StepContext(step=i, model=model, batch=batch, loss=loss, metrics=dict(metrics),
                              optimizer=None, config=None, log=True)  # type: ignore[arg-type]
            for hook in hooks:
                values.update(hook(ctx) or {})
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        model.train(was_training)
    return {k: v / n_batches for k, v in sums.items()}


# ------------------------------------------------------------------------------------------------
# MoE: balancing losses, the bias balancer and routing statistics as loss function and hooks


@dataclass(frozen=True)
class Balancing:
    """Which load-balancing terms :func:`moe_loss_fn` adds to the task loss.

    aux_alpha: coefficient of :func:`dmcourse.balance.load_balancing_loss` (layers pooled) under
        ``aux_convention``; z_coef: coefficient of the router z-loss; seq_alpha: coefficient of
        DeepSeek-V3's sequence-wise loss (mean over layers). bias_gamma is not a loss: pass
        :func:`bias_update_hook` to :func:`train` (``Balancing.hooks()`` does).
    """

    aux_alpha: float = 0.0
    aux_convention: str = "divide_by_k"
    z_coef: float = 0.0
    seq_alpha: float = 0.0
    bias_gamma: float = 0.0

    def __post_init__(self) -> None:
        for f in ("aux_alpha", "z_coef", "seq_alpha", "bias_gamma"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{f} must be a number >= 0, got {value!r}")
        if self.aux_convention not in AUX_CONVENTIONS:
            raise ValueError(f"aux_convention must be one of {AUX_CONVENTIONS}, got {self.aux_convention!r}")

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


def task_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 (the toy task's targets have unit variance)."""
    return F.mse_loss(pred.float(), target.float())


def task_loss_fn(task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = task_mse) -> LossFn:
    """``loss_fn(model, batch)`` for any model: ``task_loss(model(batch.x), batch.y)``, metric ``task``."""

    def loss_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = task_loss(model(batch.x), batch.y)
        return loss, {"task": loss.detach()}

    return loss_fn


def moe_loss_fn(balancing: Balancing = Balancing(),
                task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = task_mse) -> LossFn:
    """``loss_fn(model, batch)`` for :func:`train`: ``task + aux_alpha * aux + z_coef * z + seq_alpha * seq``.

    ``batch`` has ``x`` (B, S, d_in) and ``y``. The metrics always include ``task``, ``aux`` (the
    chosen convention, computed on the experts actually selected, e.g. with a selection bias),
    ``z`` and ``seq``, whatever their coefficients, so runs can be compared.
    """

    def loss_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = model(batch.x)
        task = task_loss(pred, batch.y)
        _, routings = _routings(model)
        logits = tuple(r.logits for r in routings)
        aux = load_balancing_loss(logits, convention=balancing.aux_convention,
                                  indices=tuple(r.indices for r in routings))
        z = router_z_loss(logits)
        b, s = batch.x.shape[0], batch.x.shape[1]
        seq = torch.stack([
            sequence_wise_balance_loss(r.scores.view(b, s, -1), r.indices.view(b, s, -1)) for r in routings
        ]).mean()
        loss = task + balancing.aux_alpha * aux + balancing.z_coef * z + balancing.seq_alpha * seq
        return loss, {"task": task.detach(), "aux": aux.detach(), "z": z.detach(), "seq": seq.detach()}

    return loss_fn


def bias_update_hook(gamma: float) -> Hook:
    """After each step, DeepSeek-V3's bias update on every MoE layer from the step's loads:
    ``router.bias += gamma * sign(mean load - load)`` (:func:`dmcourse.balance.bias_update`).
    The layers need ``router="sigmoid"`` (whose selection bias does not enter the gating weights).
    Records ``bias_abs_mean`` and, on logged steps, each layer's bias as ``"bias/<layer>"``."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")

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
def capacity_limited(model: nn.Module, capacity_factor: float, order: str = "position") -> Iterator[list[CapacityLimitedRouter]]:
    """Inside the ``with`` block every MoE layer of ``model`` drops the assignments beyond
    ``ceil(capacity_factor * T * k / E)`` per expert (:class:`dmcourse.balance.CapacityLimitedRouter`,
    priority ``order``); the original routers come back afterwards. Yields the wrappers
    (``last_keep``, ``last_drop_rate`` after each forward)."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no dmcourse.moe.MoE layer")
    originals = [m.router for m in layers]
    wrappers = [CapacityLimitedRouter(r, capacity_factor, order) for r in originals]
    try:
        for m, w in zip(layers, wrappers):
            m.router = w
        yield wrappers
    finally:
        for m, r in zip(layers, originals):
            m.router = r


def run_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with ``changes`` (``dataclasses.replace``)."""
    return dataclasses.replace(config, **changes)


__all__: Sequence[str] = (
    "Balancing", "History", "MixtureTask", "StepContext", "TaskBatch", "ToyModel", "TrainConfig",
    "bias_update_hook", "capacity_limited", "evaluate", "moe_layers", "moe_loss_fn", "routing_stats_hook", "run_config",
    "task_loss_fn", "task_mse", "to_device", "toy_dense", "toy_moe", "train",
)
