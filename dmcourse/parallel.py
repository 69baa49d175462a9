"""Expert parallelism on ``torch.distributed``: experts sharded over ranks, tokens sent to them.

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

Functions named ``task_*`` are measurements that run on every rank of a launch (:mod:`dmcourse.launch`
starts the processes; :data:`TASKS` names them); each takes a :class:`dmcourse.launch.RankContext`
and returns something JSON can encode. Byte counts and the communication model (:func:`comm_time_s`,
:data:`LINKS`, :func:`fit_link`) are plain functions, usable without a process group.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from dmcourse.ffn import swiglu
from dmcourse.moe import DISPATCH_FUNCTIONS, MoE, combine, sort_by_expert
from dmcourse.routing import Router, Routing

if TYPE_CHECKING:
    from dmcourse.launch import RankContext


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _dtype_bytes(dtype: torch.dtype) -> int:
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------------------------
# Who owns which expert, and what travels (plain functions, no process group needed)


def experts_per_rank(n_experts: int, world_size: int) -> int:
    """Experts each rank holds: ``n_experts / world_size`` (must divide evenly)."""
    _positive_int("n_experts", n_experts)
    _positive_int("world_size", world_size)
    if n_experts % world_size:
        raise ValueError(f"n_experts={n_experts} must be a multiple of world_size={world_size} "
                         "(every rank holds the same number of experts)")
    return n_experts // world_size


def send_splits(counts: torch.Tensor, world_size: int) -> list[int]:
    """Rows a rank sends to each rank: counts (E,) rows per expert -> ``world_size`` sums of
    ``E_local`` consecutive experts (experts are contiguous per rank)."""
    e_local = experts_per_rank(int(counts.numel()), world_size)
    return counts.view(world_size, e_local).sum(1).tolist()


def bytes_per_token(k: int, d_model: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes one token puts on the wire in one expert-parallel MoE layer (forward): there and back.

    ``2 * k * d_model * dtype size`` -> bytes: k copies of the hidden vector go out (dispatch), k
    results come back (combine). Copies whose expert lives on the sending rank stay local: with
    uniform routing over ``p`` ranks a fraction ``(p - 1) / p`` travels. The backward pass moves the
    same amount again (the gradients take the reverse all-to-alls).
    """
    return 2 * _positive_int("k", k) * _positive_int("d_model", d_model) * _dtype_bytes(dtype)


def offrank_bytes(splits: list[int], rank: int, row_bytes: int) -> int:
    """Bytes rank ``rank`` sends to *other* ranks in one all-to-all: (all rows - its own) x row_bytes."""
    if not 0 <= rank < len(splits):
        raise ValueError(f"rank {rank} outside the {len(splits)} splits")
    return (sum(splits) - splits[rank]) * row_bytes


def allreduce_bytes(numel: int, world_size: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes each rank sends in a ring all-reduce of ``numel`` elements: ``2 (p-1)/p x numel x size``.

    (A reduce-scatter then an all-gather, each sending ``(p-1)/p`` of the tensor: the ring
    algorithm's cost, e.g. NCCL's for large tensors.)
    """
    _positive_int("world_size", world_size)
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be an int >= 0, got {numel!r}")
    return 2 * (world_size - 1) * numel * _dtype_bytes(dtype) // world_size


def nodes_per_token(indices: torch.Tensor, experts_per_node: int) -> torch.Tensor:
    """Distinct nodes each token's experts live on: indices (T, k) -> (T,) int64."""
    _positive_int("experts_per_node", experts_per_node)
    node = torch.div(indices, experts_per_node, rounding_mode="floor").sort(dim=-1).values
    return 1 + (node[:, 1:] != node[:, :-1]).sum(-1)


def cross_node_rows(indices: torch.Tensor, home_node: int, experts_per_node: int, dedup: bool) -> int:
    """Hidden vectors that leave node ``home_node`` in one dispatch of these tokens' routing.

    indices: (T, k) expert ids. ``dedup=False``: one row per (token, expert on another node) --
    what :class:`ExpertParallelMoE` sends. ``dedup=True``: one row per (token, other node), to be
    forwarded inside that node over its fast link -- DeepSeek-V3's dispatch (report sec. 3.2.2).
    The combine sends as many rows back.
    """
    _positive_int("experts_per_node", experts_per_node)
    node = torch.div(indices, experts_per_node, rounding_mode="floor")
    remote = node != home_node
    if not dedup:
        return int(remote.sum())
    s = torch.where(remote, node, -1).sort(dim=-1).values
    first = (s[:, :1] >= 0).sum(-1)
    new = ((s[:, 1:] != s[:, :-1]) & (s[:, 1:] >= 0)).sum(-1)
    return int((first + new).sum())


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

    def __init__(self, router: Router, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                 shared: nn.Module | None = None, group: dist.ProcessGroup | None = None,
                 dispatch: str = "sorted") -> None:
        super().__init__()
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.n_experts = router.n_experts
        self.e_local = experts_per_rank(self.n_experts, self.world_size)
        for name, w in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
            if w.dim() != 3 or w.shape[0] != self.e_local:
                raise ValueError(f"{name} must hold this rank's {self.e_local} experts (E_local, ., .), "
                                 f"got {tuple(w.shape)}")
        if dispatch not in DISPATCH_FUNCTIONS:
            raise ValueError(f"dispatch must be one of {tuple(DISPATCH_FUNCTIONS)}, got {dispatch!r}")
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
        return cls(copy.deepcopy(moe.router), moe.w_gate[sl], moe.w_up[sl], moe.w_down[sl], shared, group,
                   moe.dispatch)

    @property
    def first_expert(self) -> int:
        """Global id of this rank's first expert."""
        return self.rank * self.e_local

    def _group(self) -> dist.ProcessGroup:
        return dist.group.WORLD if self.group is None else self.group

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
        if x.dim() != 2 or x.shape[1] != self.router.d_model:
            raise ValueError(f"x must be (tokens, d_model={self.router.d_model}), got {tuple(x.shape)}")
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
        self.last.update(send_splits=splits, recv_splits=recv_splits, received=int(sum(recv_splits)),
                         recv_counts=recv_counts.tolist())
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
        local_routing = Routing(indices=local.unsqueeze(1), weights=torch.ones(n, 1, device=received.device),
                                logits=torch.zeros(n, self.e_local, device=received.device),
                                scores=torch.zeros(n, self.e_local, device=received.device))
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
    def forward(ctx, x, group):  # type: ignore[override]
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward (Megatron-LM's ``g``)."""

    @staticmethod
    def forward(ctx, x, group):  # type: ignore[override]
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None


class TensorParallelSwiGLU(nn.Module):
    """A dense SwiGLU FFN split over ranks along ``d_ff``: one all-reduce per layer.

    Rank r holds rows ``r d_ff/p ... (r+1) d_ff/p`` of ``w_gate, w_up (d_ff, d_model)`` and those
    columns of ``w_down (d_model, d_ff)``. Every rank gets the same x (T, d_model), computes a partial
    output with its slice, and an all-reduce sums the partials -> (T, d_model), the same on every rank.
    """

    def __init__(self, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                 group: dist.ProcessGroup | None = None) -> None:
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


# ----------------------------------------------------------------------------------------------
# A communication model: time = latency + bytes / bandwidth


@dataclass(frozen=True)
class Link:
    """A link's datasheet figure: ``bytes_per_s`` is per direction, per GPU (what one rank can send
    while it also receives as much)."""

    name: str
    bytes_per_s: float
    datasheet: str
    source: str


LINKS: dict[str, Link] = {link.name: link for link in (
    Link("NVLink 4 (H100 SXM)", 450e9,
         "datasheet: NVLink 900 GB/s per GPU, 'bidirectional' (NVIDIA's Hopper architecture page); "
         "450 GB/s each way",
         "https://www.nvidia.com/en-us/data-center/h100/"),
    Link("PCIe 5.0 x16", 64e9,
         "datasheet: PCIe Gen5 128 GB/s, counting both directions; 64 GB/s each way",
         "https://www.nvidia.com/en-us/data-center/h100/"),
    Link("InfiniBand NDR (1 port)", 50e9,
         "datasheet: NDR 400 Gb/s per port (ConnectX-7), each way; 400/8 = 50 GB/s",
         "https://docs.nvidia.com/networking/display/ConnectX7VPI/Introduction"),
)}
"""Datasheet link figures (per GPU, per direction). DGX H100 pairs each GPU with one 400 Gb/s port."""


def comm_time_s(n_bytes: float, bytes_per_s: float, latency_s: float = 0.0) -> float:
    """Modelled time of a transfer: ``latency_s + n_bytes / bytes_per_s`` -> seconds."""
    if n_bytes < 0 or bytes_per_s <= 0 or latency_s < 0:
        raise ValueError(f"need n_bytes >= 0, bytes_per_s > 0, latency_s >= 0; "
                         f"got {n_bytes}, {bytes_per_s}, {latency_s}")
    return latency_s + n_bytes / bytes_per_s


def fit_link(n_bytes: list[float], seconds: list[float]) -> tuple[float, float]:
    """Fit ``seconds = latency + n_bytes / bandwidth`` -> (latency s, bandwidth B/s).

    Least squares on the *relative* error, so small and large transfers count alike (measurements
    span decades); the latency is kept >= 0 (refit through the origin when it would be negative).
    """
    if len(n_bytes) != len(seconds) or len(n_bytes) < 2:
        raise ValueError(f"need >= 2 (bytes, seconds) pairs of equal length, got {len(n_bytes)} and {len(seconds)}")
    b = torch.tensor(n_bytes, dtype=torch.float64)
    t = torch.tensor(seconds, dtype=torch.float64)
    if bool((t <= 0).any()) or bool((b < 0).any()):
        raise ValueError(f"need bytes >= 0 and seconds > 0, got {n_bytes} and {seconds}")
    a = torch.stack([torch.ones_like(b), b], 1) / t.unsqueeze(1)
    latency, slope = torch.linalg.lstsq(a, torch.ones_like(t).unsqueeze(1)).solution.squeeze(1).tolist()
    if latency < 0:
        latency, slope = 0.0, float((b / t).sum() / (b**2 / t**2).sum())
    if slope <= 0:
        raise ValueError("time does not grow with bytes in these measurements: no bandwidth to fit")
    return latency, 1.0 / slope


# ----------------------------------------------------------------------------------------------
# Measurements that run on every rank of a launch (see dmcourse.launch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_times(fn, device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    """Seconds of ``fn()`` per repeat, each repeat starting together (barrier) and counted until the
    *last* rank finishes (max over ranks): the time a synchronous step takes."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return _max_over_ranks(times, device)


def _max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _moe(seed: int, d_model: int, d_ff: int, n_experts: int, k: int, **kw: Any) -> MoE:
    """The same single-process MoE on every rank (same seed -> same weights)."""
    torch.manual_seed(seed)
    return MoE(d_model, d_ff, n_experts, k, **kw)


def _per_rank(tokens: int | list[int], world_size: int) -> list[int]:
    per_rank = [tokens] * world_size if isinstance(tokens, int) else list(tokens)
    if len(per_rank) != world_size or any(not isinstance(t, int) or t < 0 for t in per_rank):
        raise ValueError(f"tokens must be an int or one count >= 0 per rank ({world_size}), got {tokens!r}")
    return per_rank


def task_check(ctx: RankContext, tokens: int | list[int] = 16, d_model: int = 32, d_ff: int = 64,
               n_experts: int = 8, k: int = 2, seed: int = 0, dead_experts: list[int] = (),
               n_shared_experts: int = 0, router: str = "softmax") -> dict:
    """Outputs and gradients of :class:`ExpertParallelMoE` vs the single-process :class:`MoE`.

    ``tokens``: tokens per rank (one int, or one per rank: uneven, 0 allowed). ``dead_experts``:
    experts the router never picks (no rank sends them anything). Every rank builds the same layer
    and global batch, runs the single-process layer on all of it and the expert-parallel layer on
    its own slice, backpropagates ``sum(y * g)`` for a fixed random g, and returns the max |difference|
    of the output, the input gradient, its experts' weight gradients and the (summed over ranks)
    router gradient -- plus what it sent and received. Computed in float32 on ``ctx.device``.
    """
    per_rank = _per_rank(tokens, ctx.world_size)
    moe = _moe(seed, d_model, d_ff, n_experts, k, n_shared_experts=n_shared_experts, router=router)
    g = torch.Generator().manual_seed(seed + 1)
    x_all = torch.randn(sum(per_rank), d_model, generator=g)
    grad_out = torch.randn(sum(per_rank), d_model, generator=g)
    if dead_experts:  # a constant feature that the dead experts' router rows punish: never chosen
        x_all[:, 0] = 1.0
        with torch.no_grad():
            moe.router.weight[list(dead_experts), 0] = -1e4
    moe = moe.to(ctx.device)
    x_ref = x_all.to(ctx.device).clone().requires_grad_(True)
    y_ref = moe(x_ref)
    (y_ref * grad_out.to(ctx.device)).sum().backward()

    lo = sum(per_rank[: ctx.rank])
    sl = slice(lo, lo + per_rank[ctx.rank])
    ep = ExpertParallelMoE.from_moe(moe)
    ep.zero_grad(set_to_none=True)
    x = x_all[sl].to(ctx.device).clone().requires_grad_(True)
    y = ep(x)
    (y * grad_out[sl].to(ctx.device)).sum().backward()
    ep.allreduce_replicated_grads()
    ex = slice(ep.first_expert, ep.first_expert + ep.e_local)

    def err(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
        a = torch.zeros(()) if a is None else a.detach().float().cpu()  # None: no token reached it
        b = torch.zeros(()) if b is None else b.detach().float().cpu()
        return float((a - b).abs().max()) if a.numel() and b.numel() else 0.0

    out = {"tokens": per_rank[ctx.rank], "k": k, "output": err(y, y_ref[sl]), "x_grad": err(x.grad, x_ref.grad[sl]),
           "router_grad": err(ep.router.weight.grad, moe.router.weight.grad),
           "w_gate_grad": err(ep.w_gate.grad, moe.w_gate.grad[ex] if moe.w_gate.grad is not None else None),
           "w_up_grad": err(ep.w_up.grad, moe.w_up.grad[ex] if moe.w_up.grad is not None else None),
           "w_down_grad": err(ep.w_down.grad, moe.w_down.grad[ex] if moe.w_down.grad is not None else None),
           "scale": float(y_ref.detach().abs().max()), "experts": [ex.start, ex.stop],
           "send_splits": ep.last["send_splits"], "recv_splits": ep.last["recv_splits"]}
    if ep.shared is not None:
        out["shared_grad"] = max(err(a.grad, b.grad) for a, b in zip(ep.shared.parameters(), moe.shared.parameters()))
    return out


def task_check_tp(ctx: RankContext, tokens: int = 16, d_model: int = 32, d_ff: int = 64, seed: int = 0) -> dict:
    """:class:`TensorParallelSwiGLU` vs the dense :func:`dmcourse.ffn.swiglu`: max |difference| of the
    output, the input gradient and this rank's slices of the weight gradients."""
    torch.manual_seed(seed)
    w = [torch.randn(d_ff, d_model) * d_model ** -0.5, torch.randn(d_ff, d_model) * d_model ** -0.5,
         torch.randn(d_model, d_ff) * d_ff ** -0.5]
    w = [t.to(ctx.device).requires_grad_(True) for t in w]
    x_ref = torch.randn(tokens, d_model, device=ctx.device, requires_grad=True)
    g = torch.randn(tokens, d_model, device=ctx.device)
    y_ref = swiglu(x_ref, *w)
    (y_ref * g).sum().backward()
    tp = TensorParallelSwiGLU(*[t.detach() for t in w])
    x = x_ref.detach().clone().requires_grad_(True)
    y = tp(x)
    (y * g).sum().backward()
    sl = slice(ctx.rank * d_ff // ctx.world_size, (ctx.rank + 1) * d_ff // ctx.world_size)
    y, y_ref = y.detach(), y_ref.detach()
    return {"output": float((y - y_ref).abs().max()), "x_grad": float((x.grad - x_ref.grad).abs().max()),
            "w_gate_grad": float((tp.w_gate.grad - w[0].grad[sl]).abs().max()),
            "w_down_grad": float((tp.w_down.grad - w[2].grad[:, sl]).abs().max())}


def task_alltoall(ctx: RankContext, tokens: list[int] = (64, 256, 1024, 4096), d_model: int = 512, k: int = 2,
                  repeats: int = 7) -> dict:
    """Time one all-to-all of ``T * k`` rows of ``d_model`` (uniform splits) for each T in ``tokens``,
    and for comparison one all-reduce of ``(T, d_model)`` (what tensor parallelism sends per layer).

    Returns per T: bytes this rank sends to other ranks, median step time (max over ranks) of the
    all-to-all and the all-reduce, in ``ctx.dtype``.
    """
    rows_out: list[dict] = []
    row_bytes = d_model * _dtype_bytes(ctx.dtype)
    for t in tokens:
        rows = t * k
        if rows % ctx.world_size:
            raise ValueError(f"tokens * k = {rows} must split evenly over {ctx.world_size} ranks")
        split = [rows // ctx.world_size] * ctx.world_size
        x = torch.randn(rows, d_model, device=ctx.device).to(ctx.dtype)
        out = torch.empty_like(x)
        a2a = _step_times(lambda: dist.all_to_all_single(out, x, split, split), ctx.device, repeats)
        y = torch.randn(t, d_model, device=ctx.device).to(ctx.dtype)
        ar = _step_times(lambda: dist.all_reduce(y), ctx.device, repeats)
        rows_out.append({"tokens": t, "rows": rows, "offrank_bytes": offrank_bytes(split, ctx.rank, row_bytes),
                         "alltoall_s": statistics.median(a2a), "alltoall_min_s": min(a2a),
                         "allreduce_bytes": allreduce_bytes(t * d_model, ctx.world_size, ctx.dtype),
                         "allreduce_s": statistics.median(ar)})
    return {"d_model": d_model, "k": k, "dtype": str(ctx.dtype).removeprefix("torch."), "sizes": rows_out}


def skew_router_(router: Router, skew: float) -> None:
    """Make ``router`` prefer low expert ids, in place (a router gone lopsided), for tokens whose
    feature 0 is 1: router column 0 becomes ``skew * linspace(1, -1, E)``, so expert e's logit moves
    by ``skew * (1 - 2e / (E - 1))`` for every such token."""
    with torch.no_grad():
        router.weight[:, 0] = skew * torch.linspace(1.0, -1.0, router.n_experts, device=router.weight.device)


def task_imbalance(ctx: RankContext, tokens: int = 256, d_model: int = 256, d_ff: int = 512, n_experts: int = 8,
                   k: int = 2, skew: float = 4.0, bias_steps: int = 300, gamma: float = 0.01, aux_steps: int = 100,
                   aux_lr: float = 5.0, repeats: int = 7, seed: int = 0) -> dict:
    """Step time of the expert-parallel forward with a skewed router, without and with balancing.

    The layer uses the sigmoid router (DeepSeek-V3), whose selection bias the bias balancer needs.
    Four routers, measured in turn on this rank's tokens (``tokens`` per rank, feature 0 set to 1):

    * ``uniform``: the random router (roughly balanced);
    * ``skewed``: :func:`skew_router_` with ``skew`` (most tokens go to the first experts, i.e. rank 0);
    * ``aux_loss``: the skewed router after ``aux_steps`` SGD steps (``aux_lr``) on DeepSeek-V3's
      sequence-wise balance loss alone (:func:`dmcourse.balance.sequence_wise_balance_loss`), the
      router gradient summed over ranks -- only to show the effect; real training adds it, with a
      small coefficient, to the language-model loss;
    * ``bias``: the skewed router after ``bias_steps`` auxiliary-loss-free updates
      (:func:`dmcourse.balance.bias_update` with ``gamma`` on the global load, all-reduced).

    Per router and rank: rows received (its experts' load), median seconds in its experts and in the
    whole forward (its own clock, waiting included), the step time (median over repeats of the
    slowest rank) -- the most loaded rank sets it -- and ``experts_alone_s``: its experts' time when
    the ranks take turns (the others wait at a barrier), i.e. with the machine to itself, which is
    what one device per rank gives when ranks on a CPU outnumber its free cores (the minimum over
    repeats: the run least disturbed by other programs).
    """
    from dmcourse.balance import bias_update, sequence_wise_balance_loss

    moe = _moe(seed, d_model, d_ff, n_experts, k, router="sigmoid")
    base = ExpertParallelMoE.from_moe(moe).to(ctx.device)
    g = torch.Generator().manual_seed(seed + 100 + ctx.rank)  # each rank its own tokens

    def batch() -> torch.Tensor:
        x = torch.randn(tokens, d_model, generator=g)
        x[:, 0] = 1.0
        return x.to(ctx.device)

    def global_load(routing: Routing) -> torch.Tensor:
        load = torch.bincount(routing.indices.reshape(-1), minlength=n_experts).float()
        dist.all_reduce(load)
        return load

    def measure(router: Router) -> dict:
        # in the compute dtype of this device (bf16 on recent GPUs); the selection bias stays float32
        layer = ExpertParallelMoE(copy.deepcopy(router), base.w_gate, base.w_up, base.w_down).to(ctx.dtype)
        layer.router.bias = router.bias.detach().clone()
        layer.profile = True
        x = batch().to(ctx.dtype)
        own: dict[str, list[float]] = {"experts": [], "forward": []}

        def step() -> None:
            t0 = time.perf_counter()
            layer(x)
            _sync(ctx.device)
            own["forward"].append(time.perf_counter() - t0)
            own["experts"].append(layer.last["experts"])

        with torch.no_grad():
            steps = _step_times(step, ctx.device, repeats)
            load = global_load(layer.last_routing)
            # the same expert work again, one rank at a time while the others wait at a barrier:
            # what each rank's experts take with a device to themselves (ranks on a CPU share cores)
            counts = torch.tensor(layer.last["recv_counts"], device=ctx.device)
            rows = torch.randn(int(counts.sum()), d_model, device=ctx.device).to(ctx.dtype)
            alone = []
            for i in range(repeats + 1):
                for r in range(ctx.world_size):
                    dist.barrier()
                    if r == ctx.rank:
                        t0 = time.perf_counter()
                        layer.run_local_experts(rows, counts)
                        _sync(ctx.device)
                        if i:  # the first round warms up
                            alone.append(time.perf_counter() - t0)
            dist.barrier()
        return {"received": layer.last["received"], "experts_s": statistics.median(own["experts"][-repeats:]),
                "experts_alone_s": min(alone), "forward_s": statistics.median(own["forward"][-repeats:]),
                "step_s": statistics.median(steps), "global_load": load.tolist()}

    out = {"tokens": tokens, "d_model": d_model, "d_ff": d_ff, "n_experts": n_experts, "k": k, "skew": skew,
           "bias_steps": bias_steps, "gamma": gamma, "aux_steps": aux_steps, "aux_lr": aux_lr}
    out["uniform"] = measure(base.router)
    skewed = copy.deepcopy(base.router)
    skew_router_(skewed, skew)
    out["skewed"] = measure(skewed)

    aux = copy.deepcopy(skewed)
    opt = torch.optim.SGD([aux.weight], lr=aux_lr)
    for _ in range(aux_steps):
        routing = aux(batch())
        loss = sequence_wise_balance_loss(routing.scores.unsqueeze(0), routing.indices.unsqueeze(0))
        opt.zero_grad()
        loss.backward()
        dist.all_reduce(aux.weight.grad)
        aux.weight.grad /= ctx.world_size  # the mean over ranks of the per-rank losses
        opt.step()
    out["aux_loss"] = measure(aux)

    biased = copy.deepcopy(skewed)
    for _ in range(bias_steps):
        with torch.no_grad():
            biased.bias.copy_(bias_update(biased.bias, global_load(biased(batch())), gamma))
    out["bias"] = measure(biased)
    out["bias_values"] = biased.bias.tolist()
    return out


def task_node_limited(ctx: RankContext, tokens: int = 512, d_model: int = 64, d_ff: int = 64, n_experts: int = 16,
                      k: int = 4, ranks_per_node: int = 2, max_nodes: int = 1, seed: int = 0) -> dict:
    """Rows that cross node boundaries, with and without DeepSeek's node-limited routing.

    Ranks are grouped into simulated nodes of ``ranks_per_node`` consecutive ranks. Two layers with
    the same weights and the sigmoid router: unrestricted, and with at most ``max_nodes`` nodes per
    token (``n_groups`` = nodes, ``topk_groups = max_nodes`` in :func:`dmcourse.routing.sigmoid_topk`).
    Each runs the expert-parallel forward on this rank's tokens (checked against the single-process
    layer) and counts rows sent to ranks on other nodes: as sent (one per token and expert) and as
    DeepSeek sends them (one per token and node, :func:`cross_node_rows` with ``dedup``).
    """
    if ctx.world_size % ranks_per_node:
        raise ValueError(f"world_size={ctx.world_size} must be a multiple of ranks_per_node={ranks_per_node}")
    n_nodes = ctx.world_size // ranks_per_node
    experts_per_node = n_experts // n_nodes
    home = ctx.rank // ranks_per_node
    g = torch.Generator().manual_seed(seed + 1)
    x_all = torch.randn(tokens * ctx.world_size, d_model, generator=g)
    x = x_all[ctx.rank * tokens:(ctx.rank + 1) * tokens].to(ctx.device)
    out = {"n_nodes": n_nodes, "ranks_per_node": ranks_per_node, "max_nodes": max_nodes, "k": k,
           "n_experts": n_experts, "tokens": tokens}
    for name, groups in (("unlimited", (1, 1)), ("node_limited", (n_nodes, max_nodes))):
        moe = _moe(seed, d_model, d_ff, n_experts, k, router="sigmoid", n_groups=groups[0], topk_groups=groups[1])
        moe = moe.to(ctx.device)
        ep = ExpertParallelMoE.from_moe(moe)
        with torch.no_grad():
            y = ep(x)
            y_ref = moe(x_all.to(ctx.device))[ctx.rank * tokens:(ctx.rank + 1) * tokens]
        idx = ep.last_routing.indices
        splits = ep.last["send_splits"]
        same_node = range(home * ranks_per_node, (home + 1) * ranks_per_node)
        out[name] = {"max_error": float((y - y_ref).abs().max()),
                     "rows": sum(splits), "offrank_rows": sum(splits) - splits[ctx.rank],
                     "cross_node_rows": sum(s for r, s in enumerate(splits) if r not in same_node),
                     "cross_node_rows_dedup": cross_node_rows(idx, home, experts_per_node, dedup=True),
                     "mean_nodes_per_token": float(nodes_per_token(idx, experts_per_node).float().mean())}
        assert out[name]["cross_node_rows"] == cross_node_rows(idx, home, experts_per_node, dedup=False)
    return out


def task_crash(ctx: RankContext, rank: int = 1, after_collectives: int = 1, mode: str = "raise") -> dict:
    """Fail on purpose, to show (and test) that one failing rank stops the whole launch.

    Rank ``rank`` takes part in ``after_collectives`` all-reduces, then fails while the others wait
    in the next one: ``mode="raise"`` raises an exception, ``"exit"`` kills its process without one
    (as a crash or an out-of-memory kill would), ``"hang"`` sleeps for an hour (the others' collective
    times out, or the launch's deadline ends it).
    """
    modes = ("raise", "exit", "hang")
    if mode not in modes:
        raise ValueError(f"mode must be one of {modes}, got {mode!r}")
    t = torch.ones(1, device=ctx.device)
    for step in range(after_collectives + 1):
        if ctx.rank == rank and step == after_collectives:
            if mode == "raise":
                raise RuntimeError(f"rank {rank} fails on purpose at step {step}")
            if mode == "exit":
                import os

                os._exit(3)
            time.sleep(3600)
        dist.all_reduce(t)
    return {"value": float(t)}


def task_noop(ctx: RankContext) -> dict:
    """Nothing: a launch of only this measures process start-up and teardown."""
    return {"rank": ctx.rank}


TASKS: dict[str, Any] = {
    "noop": task_noop, "check": task_check, "check_tp": task_check_tp, "alltoall": task_alltoall,
    "imbalance": task_imbalance, "node_limited": task_node_limited, "crash": task_crash,
}
"""Measurements by name, for ``python -m dmcourse.launch NAME ...``."""
