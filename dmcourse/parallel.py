"""Expert parallelism on ``torch.distributed``: experts sharded over ranks, tokens sent to them.

Chapter 8 ("Beyond one device: expert parallelism on torch.distributed") introduces it.

Each of ``world_size`` ranks holds the whole (small) router and ``E_local = n_experts / world_size``
experts: rank ``r`` owns experts ``r * E_local ... (r + 1) * E_local - 1``. One forward pass of
:class:`ExpertParallelMoE` on a rank's own tokens ``x: (T, d_model)``:

1. route: the single-process layer's router (:class:`dmcourse.routing.Router`), unchanged;
2. sort the ``T * k`` (token, expert) rows by expert (:func:`dmcourse.moe.sort_by_expert`): experts
   are contiguous per rank, so the rows for each rank are contiguous too;
3. exchange the counts (``all_to_all_single`` on a small integer tensor): each rank learns how many
   rows it will receive from every rank for each of its experts -- split sizes differ per rank
   and per step, and may be 0;
4. dispatch: an all-to-all with those uneven splits sends every row to the rank of its expert;
5. each rank runs its local experts on what it received (an ordinary MoE dispatch with k = 1);
6. combine: a second all-to-all sends the results back (splits reversed), and each rank sums its
   tokens' k results with their routing weights (:func:`dmcourse.moe.combine`).

Both all-to-alls are ``torch.distributed._functional_collectives.all_to_all_single_autograd``: its
backward is the reverse all-to-all, so a loss on each rank's output reaches the experts wherever
they live. Outputs and gradients equal the single-process :class:`dmcourse.moe.MoE` on the
concatenated tokens (``tests/test_parallel.py``, 2 and 4 ranks).

Dense tensor parallelism is here for comparison (:class:`TensorParallelSwiGLU`): every rank holds a
slice of ``d_ff`` and one all-reduce of the ``(T, d_model)`` output per layer joins them.

What travels, in bytes, and how long it takes on a link: :mod:`dmcourse.comm` (plain functions,
usable without a process group). The measurements that run these layers on every rank of a
launch: :mod:`dmcourse.ep_tasks` (started by :mod:`dmcourse.launch`).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dmcourse.checks import check_int, check_shape, one_of
from dmcourse.ffn import swiglu
from dmcourse.moe import DISPATCH_FUNCTIONS, MoE, combine, sort_by_expert
from dmcourse.routing import Router, Routing

# ----------------------------------------------------------------------------------------------
# Who owns which expert (plain functions, no process group needed)


def experts_per_rank(n_experts: int, world_size: int) -> int:
    """Experts each rank holds: ``n_experts / world_size`` (must divide evenly)."""
    check_int("n_experts", n_experts)
    check_int("world_size", world_size)
    if n_experts % world_size:
        raise ValueError(
            f"n_experts={n_experts} must be a multiple of world_size={world_size} "
            "(every rank holds the same number of experts)"
        )
    return n_experts // world_size


def send_splits(counts: torch.Tensor, world_size: int) -> list[int]:
    """Rows a rank sends to each rank: counts (E,) rows per expert -> ``world_size`` sums of
    ``E_local`` consecutive experts (experts are contiguous per rank)."""
    e_local = experts_per_rank(int(counts.numel()), world_size)
    return counts.view(world_size, e_local).sum(1).tolist()


# ----------------------------------------------------------------------------------------------
# The expert-parallel layer


class ExpertParallelMoE(nn.Module):
    """The MoE layer with its experts sharded over the ranks of ``group``.

    Holds a copy of the router (replicated on every rank), this rank's experts
    ``w_gate, w_up (E_local, d_ff, d_model)``, ``w_down (E_local, d_model, d_ff)`` and the shared
    experts if any (dense, replicated). forward: x (T, d_model) -- this rank's tokens; T may differ
    per rank and be 0 -> (T, d_model). Build it from a single-process layer with :meth:`from_moe`.

    Gradients: each expert gets the gradient of every token (from any rank) routed to it; the
    router and shared experts get this rank's tokens' part -- sum it over ranks, as data
    parallelism would (:meth:`allreduce_replicated_grads`).

    After a forward, :attr:`last` holds what moved (``send_splits``, ``recv_splits``, ``received``)
    and, with ``profile=True``, the seconds of each phase (``route``, ``counts``, ``dispatch``,
    ``experts``, ``combine``; the device is synchronised around each phase, so only for measuring).
    """

    def __init__(
        self,
        router: Router,
        w_gate: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        shared: nn.Module | None = None,
        group: dist.ProcessGroup | None = None,
        dispatch: str = "sorted",
    ) -> None:
        super().__init__()
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.n_experts = router.n_experts
        self.e_local = experts_per_rank(self.n_experts, self.world_size)
        for name, w in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
            if w.dim() != 3 or w.shape[0] != self.e_local:
                raise ValueError(
                    f"{name} must hold this rank's {self.e_local} experts (E_local, ., .), got {tuple(w.shape)}"
                )
        one_of("dispatch", dispatch, tuple(DISPATCH_FUNCTIONS))
        self.router = router
        self.w_gate = nn.Parameter(w_gate.detach().clone())
        self.w_up = nn.Parameter(w_up.detach().clone())
        self.w_down = nn.Parameter(w_down.detach().clone())
        self.shared = shared
        self.dispatch = dispatch
        self.profile = False
        self.last: dict[str, Any] = {}
        self.last_routing: Routing | None = None

    @classmethod
    def from_moe(cls, moe: MoE, group: dist.ProcessGroup | None = None) -> ExpertParallelMoE:
        """This rank's shard of a single-process :class:`dmcourse.moe.MoE` (copies of its weights)."""
        e_local = experts_per_rank(moe.n_experts, dist.get_world_size(group))
        first = dist.get_rank(group) * e_local
        sl = slice(first, first + e_local)
        shared = copy.deepcopy(moe.shared) if moe.shared is not None else None
        return cls(copy.deepcopy(moe.router), moe.w_gate[sl], moe.w_up[sl], moe.w_down[sl], shared, group, moe.dispatch)

    @property
    def first_expert(self) -> int:
        """Global id of this rank's first expert."""
        return self.rank * self.e_local

    def _group(self) -> dist.ProcessGroup:
        group = dist.group.WORLD if self.group is None else self.group
        assert group is not None, "torch.distributed is not initialised (no WORLD group)"
        return group

    def _all_to_all(self, rows: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        """Differentiable all-to-all of rows (R, d): ``in_splits`` rows to each rank, ``out_splits`` back."""
        from torch.distributed._functional_collectives import all_to_all_single_autograd, wait_tensor

        out = all_to_all_single_autograd(rows.contiguous(), out_splits, in_splits, self._group())
        return wait_tensor(out)

    def _tick(self, name: str, t0: float, device: torch.device) -> float:
        if not self.profile:
            return t0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        self.last[name] = now - t0
        return now

    def forward(self, x: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        """x: (T, d_model) -> (T, d_model). ``routing``: a precomputed :class:`Routing` for x, else the router's."""
        check_shape("x", x, (None, self.router.d_model), f"(tokens, d_model={self.router.d_model})")
        self.last = {}
        t = self._tick("start", time.perf_counter(), x.device)
        routing = self.router(x) if routing is None else routing
        self.last_routing = routing
        order, token, counts = sort_by_expert(routing)
        splits = send_splits(counts, self.world_size)
        t = self._tick("route", t, x.device)
        # counts[r * E_local + e] rows go to expert e of rank r; receive the same layout from every rank
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.group)
        recv_counts = recv_counts.view(self.world_size, self.e_local)  # [source rank, local expert]
        recv_splits = recv_counts.sum(1).tolist()
        t = self._tick("counts", t, x.device)
        rows = x.index_select(0, token)
        if torch.is_grad_enabled() and not rows.requires_grad:
            # backward runs the two all-to-alls in reverse; every rank must take part in both, so
            # the graph must reach them on every rank (whatever x requires, however few rows it has)
            rows = rows.detach().requires_grad_(True)
        received = self._all_to_all(rows, recv_splits, splits)
        t = self._tick("dispatch", t, x.device)
        out = self.run_local_experts(received, recv_counts)
        t = self._tick("experts", t, x.device)
        back = self._all_to_all(out, splits, recv_splits)  # (T*k, d_model), in the sorted order
        y = combine(back, order, routing).to(x.dtype)
        if self.shared is not None:
            y = y + self.shared(x)
        self._tick("combine", t, x.device)
        self.last.update(
            send_splits=splits,
            recv_splits=recv_splits,
            received=int(sum(recv_splits)),
            recv_counts=recv_counts.tolist(),
        )
        return y

    def run_local_experts(self, received: torch.Tensor, recv_counts: torch.Tensor) -> torch.Tensor:
        """This rank's experts on the rows it received: received (R, d_model) -> (R, d_model).

        recv_counts: (world_size, E_local) rows from each source rank for each local expert; the
        rows arrive grouped by source rank, then by local expert, and run as a top-1 MoE with
        weight 1 (the routing weights are applied by the sender, in the combine).
        """
        local = torch.arange(self.e_local, device=received.device).repeat(self.world_size)
        local = local.repeat_interleave(recv_counts.reshape(-1))
        n = local.numel()
        if n != received.shape[0]:
            raise ValueError(f"recv_counts add up to {n} rows, received has {received.shape[0]}")
        if n == 0:  # nothing for this rank's experts: an empty result that stays in the autograd graph
            return received * 0
        local_routing = Routing(
            indices=local.unsqueeze(1),
            weights=torch.ones(n, 1, device=received.device),
            logits=torch.zeros(n, self.e_local, device=received.device),
            scores=torch.zeros(n, self.e_local, device=received.device),
        )
        return DISPATCH_FUNCTIONS[self.dispatch](received, local_routing, self.w_gate, self.w_up, self.w_down)

    def allreduce_replicated_grads(self) -> None:
        """Sum the gradients of the replicated parts (router, shared experts) over the ranks."""
        replicated = list(self.router.parameters()) + (list(self.shared.parameters()) if self.shared else [])
        for p in replicated:
            if p.grad is not None:
                dist.all_reduce(p.grad, group=self.group)


# ----------------------------------------------------------------------------------------------
# Dense tensor parallelism, for comparison (Megatron-LM's column/row split of the FFN)


class _CopyToRanks(torch.autograd.Function):
    """Identity forward; all-reduce (sum) of the gradient backward (Megatron-LM's ``f``)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward (Megatron-LM's ``g``)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class TensorParallelSwiGLU(nn.Module):
    """A dense SwiGLU FFN split over ranks along ``d_ff``: one all-reduce per layer.

    Rank r holds rows ``r d_ff/p ... (r+1) d_ff/p`` of ``w_gate, w_up (d_ff, d_model)`` and those
    columns of ``w_down (d_model, d_ff)``. Every rank gets the same x (T, d_model), computes a partial
    output with its slice, and an all-reduce sums the partials -> (T, d_model), the same on every rank.
    """

    def __init__(
        self, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, group: dist.ProcessGroup | None = None
    ) -> None:
        super().__init__()
        self.group = group
        p, r = dist.get_world_size(group), dist.get_rank(group)
        d_ff = w_gate.shape[0]
        if d_ff % p:
            raise ValueError(f"d_ff={d_ff} must be a multiple of world_size={p}")
        sl = slice(r * d_ff // p, (r + 1) * d_ff // p)
        self.w_gate = nn.Parameter(w_gate[sl].detach().clone())
        self.w_up = nn.Parameter(w_up[sl].detach().clone())
        self.w_down = nn.Parameter(w_down[:, sl].detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _CopyToRanks.apply(x, self.group)
        return _SumOverRanks.apply(swiglu(x, self.w_gate, self.w_up, self.w_down), self.group)
