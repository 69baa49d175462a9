"""A toy task on which experts can specialise, and a small model to learn it.

Chapter 4 ("Routing collapse and load balancing") introduces it; chapter 7 trains on it too.

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

Train it with :func:`dmcourse.train.train` (the trainer) and, for an MoE,
:mod:`dmcourse.moe_train` (balancing losses and routing statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmcourse.checks import check_int, nonnegative_float
from dmcourse.ffn import SwiGLU
from dmcourse.moe import MoE

# ------------------------------------------------------------------------------------------------
# the toy task


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

    def __init__(
        self,
        d_in: int = 16,
        d_out: int = 8,
        n_clusters: int = 8,
        *,
        teacher_width: int = 16,
        spread: float = 0.3,
        common: float = 5.0,
        gain: float = 1.5,
        shared: float = 0.0,
        clusters_per_seq: int = 2,
        seed: int = 0,
    ) -> None:
        for name, value in (
            ("d_in", d_in),
            ("d_out", d_out),
            ("n_clusters", n_clusters),
            ("teacher_width", teacher_width),
            ("clusters_per_seq", clusters_per_seq),
        ):
            check_int(name, value)
        if clusters_per_seq > n_clusters:
            raise ValueError(f"clusters_per_seq={clusters_per_seq} exceeds n_clusters={n_clusters}")
        for name, number in (("spread", spread), ("common", common), ("gain", gain), ("shared", shared)):
            nonnegative_float(name, number)
        if spread == 0:
            raise ValueError("spread must be positive: the teachers read the offset from the centre")
        self.d_in, self.d_out, self.n_clusters, self.teacher_width = d_in, d_out, n_clusters, teacher_width
        self.spread, self.common, self.gain, self.shared = float(spread), float(common), float(gain), float(shared)
        self.clusters_per_seq, self.seed = clusters_per_seq, seed
        g = torch.Generator().manual_seed(seed)
        direction = torch.randn(d_in, generator=g)
        self.centers = torch.randn(n_clusters, d_in, generator=g) + common * direction  # (C, d_in)
        # teacher 0 is the shared one, teacher c + 1 belongs to cluster c
        self.w_in = torch.randn(n_clusters + 1, teacher_width, d_in, generator=g) * gain / d_in**0.5
        self.w_out = torch.randn(n_clusters + 1, d_out, teacher_width, generator=g) / teacher_width**0.5
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
        check_int("batch_size", batch_size)
        check_int("seq_len", seq_len)
        g = generator
        pick = torch.rand(batch_size, self.n_clusters, generator=g).argsort(dim=1)[:, : self.clusters_per_seq]
        which = torch.randint(0, self.clusters_per_seq, (batch_size, seq_len), generator=g)
        cluster = pick.gather(1, which)  # (B, S)
        x = self.centers[cluster] + self.spread * torch.randn(batch_size, seq_len, self.d_in, generator=g)
        return TaskBatch(x=x, y=self.teacher(x, cluster), cluster=cluster)

    def batch_fn(self, batch_size: int, seq_len: int) -> Callable[[int, torch.Generator], TaskBatch]:
        """``batch_fn(step, generator)`` for :func:`dmcourse.train.train`: a fresh sample every step."""
        return lambda step, generator: self.sample(batch_size, seq_len, generator)

    def __repr__(self) -> str:
        return (
            f"MixtureTask(d_in={self.d_in}, d_out={self.d_out}, n_clusters={self.n_clusters}, "
            f"teacher_width={self.teacher_width}, spread={self.spread}, common={self.common}, gain={self.gain}, "
            f"shared={self.shared}, clusters_per_seq={self.clusters_per_seq}, seed={self.seed})"
        )


# ------------------------------------------------------------------------------------------------
# the model


class ToyModel(nn.Module):
    """``Linear -> n_layers x (h + ffn(RMSNorm(h))) -> RMSNorm -> Linear``; x (..., d_in) -> (..., d_out).

    ``ffn(layer_index)`` builds each block's FFN, a module (..., d_model) -> (..., d_model).
    """

    def __init__(self, d_in: int, d_out: int, d_model: int, n_layers: int, ffn: Callable[[int], nn.Module]) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_out", d_out), ("d_model", d_model), ("n_layers", n_layers)):
            check_int(name, value)
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


def toy_moe(
    task: MixtureTask,
    *,
    d_model: int = 32,
    n_layers: int = 2,
    n_experts: int = 8,
    top_k: int = 2,
    d_ff: int = 32,
    **moe_kwargs: Any,
) -> ToyModel:
    """A :class:`ToyModel` whose FFNs are :class:`dmcourse.moe.MoE` layers.

    ``moe_kwargs`` go to ``MoE`` (``router="sigmoid"`` for the bias balancer, ``n_shared_experts``,
    ``shared_d_ff``, ``dispatch``, ...).
    """
    return ToyModel(
        task.d_in, task.d_out, d_model, n_layers, lambda i: MoE(d_model, d_ff, n_experts, top_k, **moe_kwargs)
    )


def toy_dense(task: MixtureTask, *, d_model: int = 32, n_layers: int = 2, d_ff: int = 64) -> ToyModel:
    """A :class:`ToyModel` with dense SwiGLU FFNs (``d_ff = top_k * expert d_ff`` matches an MoE's active size)."""
    return ToyModel(task.d_in, task.d_out, d_model, n_layers, lambda i: SwiGLU(d_model, d_ff))
