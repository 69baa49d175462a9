"""A tiny, extensible trainer that knows nothing about MoE.

Chapter 4 ("Routing collapse and load balancing") introduces it; chapter 7 ("Training dense vs MoE, and the middle paths") extends it by
passing other models, batch functions, losses and hooks -- the loop itself stays this one.

:func:`train` takes

* ``model``: any ``nn.Module``;
* ``batch_fn(step, generator) -> batch``: makes the batch of a step (moved to the device with
  :func:`to_device`: tensors, objects with ``.to``, dicts, lists and tuples of them); the toy task
  of :mod:`dmcourse.toy` makes one;
* ``loss_fn(model, batch) -> (loss, metrics)``: the scalar to minimise and a dict of floats or
  0-d tensors to record (:func:`task_loss_fn` for any model; :func:`dmcourse.moe_train.moe_loss_fn`
  adds the balancing losses of :class:`dmcourse.moe_train.Balancing`);
* ``config``: a :class:`TrainConfig` (steps, AdamW settings, warmup + constant/cosine schedule,
  gradient clipping, logging interval, seed, device, mixed precision);
* ``hooks``: callables ``hook(ctx: StepContext) -> dict | None`` run after every optimiser step; the
  dicts they return on logged steps are merged into that step's record (e.g.
  :func:`dmcourse.moe_train.bias_update_hook`, :func:`dmcourse.moe_train.routing_stats_hook`);

and returns a :class:`History` (one record per logged step). :func:`evaluate` averages a loss
function and hooks over held-out batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmcourse.checks import check_int, one_of, positive_float, probability

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
        check_int("steps", self.steps)
        check_int("log_every", self.log_every)
        check_int("warmup_steps", self.warmup_steps, 0)
        positive_float("lr", self.lr)
        one_of("schedule", self.schedule, ("constant", "cosine"))
        probability("min_lr_ratio", self.min_lr_ratio)
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if self.amp_dtype not in (None, torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(
                f"amp_dtype must be None, torch.bfloat16, torch.float16 or torch.float32, got {self.amp_dtype!r}"
            )

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
        mapping: Any = type(batch)  # dict, OrderedDict, a batch class taking a dict
        return mapping({k: to_device(v, device) for k, v in batch.items()})
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
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
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
        ctx = StepContext(
            step=step,
            model=model,
            batch=batch,
            loss=loss.detach(),
            metrics=dict(metrics),
            optimizer=optimizer,
            config=config,
            log=log,
        )
        record: dict[str, Any] = {}
        for hook in hooks:
            out = hook(ctx)
            if log and out:
                record.update(out)
        if log:
            record = {
                "step": step,
                "loss": float(loss.detach()),
                "lr": lr,
                **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                **{k: _scalar(v) for k, v in metrics.items()},
                **record,
            }
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
    bar.close()
    return history


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batch_fn: BatchFn,
    loss_fn: LossFn,
    *,
    n_batches: int = 4,
    seed: int = 12345,
    hooks: Iterable[Hook] = (),
) -> dict[str, float]:
    """Mean loss, metrics and hook outputs over ``n_batches`` held-out batches (model in eval mode,
    no gradients; a generator seeded with ``seed``, so every model sees the same batches)."""
    check_int("n_batches", n_batches)
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
            ctx = StepContext(
                step=i,
                model=model,
                batch=batch,
                loss=loss,
                metrics=dict(metrics),
                optimizer=None,  # type: ignore[arg-type]  # evaluation: no optimiser, no config
                config=None,  # type: ignore[arg-type]
                log=True,
            )
            for hook in hooks:
                values.update(hook(ctx) or {})
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        model.train(was_training)
    return {k: v / n_batches for k, v in sums.items()}


def task_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 (the toy task's targets have unit variance)."""
    return F.mse_loss(pred.float(), target.float())


def task_loss_fn(task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = task_mse) -> LossFn:
    """``loss_fn(model, batch)`` for any model: ``task_loss(model(batch.x), batch.y)``, metric ``task``."""

    def loss_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = task_loss(model(batch.x), batch.y)
        return loss, {"task": loss.detach()}

    return loss_fn


def run_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``config`` with ``changes`` (``dataclasses.replace``)."""
    return dataclasses.replace(config, **changes)


__all__: Sequence[str] = (
    "BatchFn",
    "History",
    "Hook",
    "LossFn",
    "StepContext",
    "TrainConfig",
    "evaluate",
    "progress_default",
    "run_config",
    "task_loss_fn",
    "task_mse",
    "to_device",
    "train",
)
