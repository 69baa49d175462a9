"""Measurements of expert parallelism that run on every rank of a launch.

Chapter 8 ("Beyond one device: expert parallelism on torch.distributed") runs them through :func:`dmcourse.launch.run`. Each ``task_*``
takes a :class:`dmcourse.launch.RankContext` (its rank, the world size, its device and dtype) and
returns something JSON can encode; :data:`TASKS` names them for ``python -m dmcourse.launch NAME``
(the launcher finds this table by name, ``"dmcourse.ep_tasks:TASKS"``, and imports this module only
when a task is run). They compare :class:`dmcourse.parallel.ExpertParallelMoE` and
:class:`dmcourse.parallel.TensorParallelSwiGLU` with the single-process layers, time all-to-alls
against all-reduces, show what a skewed router costs (and what balancing wins back), and count
the rows node-limited routing keeps inside a node.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from dmcourse.balance import bias_update, sequence_wise_balance_loss
from dmcourse.checks import check_int, one_of
from dmcourse.comm import allreduce_bytes, cross_node_rows, dtype_bytes, nodes_per_token, offrank_bytes
from dmcourse.ffn import swiglu
from dmcourse.moe import MoE
from dmcourse.parallel import ExpertParallelMoE, TensorParallelSwiGLU
from dmcourse.routing import Router, Routing

if TYPE_CHECKING:
    from dmcourse.launch import RankContext


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
    if len(per_rank) != world_size:
        raise ValueError(f"tokens must be an int or one count per rank ({world_size}), got {tokens!r}")
    return [check_int(f"tokens of rank {rank}", t, 0) for rank, t in enumerate(per_rank)]


def task_check(
    ctx: RankContext,
    tokens: int | list[int] = 16,
    d_model: int = 32,
    d_ff: int = 64,
    n_experts: int = 8,
    k: int = 2,
    seed: int = 0,
    dead_experts: Sequence[int] = (),
    n_shared_experts: int = 0,
    router: str | None = None,
) -> dict:
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

    assert x_ref.grad is not None, "the reference backward gave x no gradient"
    out: dict[str, Any] = {
        "tokens": per_rank[ctx.rank],
        "k": k,
        "output": err(y, y_ref[sl]),
        "x_grad": err(x.grad, x_ref.grad[sl]),
        "router_grad": err(ep.router.weight.grad, moe.router.weight.grad),
        "w_gate_grad": err(ep.w_gate.grad, moe.w_gate.grad[ex] if moe.w_gate.grad is not None else None),
        "w_up_grad": err(ep.w_up.grad, moe.w_up.grad[ex] if moe.w_up.grad is not None else None),
        "w_down_grad": err(ep.w_down.grad, moe.w_down.grad[ex] if moe.w_down.grad is not None else None),
        "scale": float(y_ref.detach().abs().max()),
        "experts": [ex.start, ex.stop],
        "send_splits": ep.last["send_splits"],
        "recv_splits": ep.last["recv_splits"],
    }
    if ep.shared is not None and moe.shared is not None:
        out["shared_grad"] = max(err(a.grad, b.grad) for a, b in zip(ep.shared.parameters(), moe.shared.parameters()))
    return out


def task_check_tp(ctx: RankContext, tokens: int = 16, d_model: int = 32, d_ff: int = 64, seed: int = 0) -> dict:
    """:class:`TensorParallelSwiGLU` vs the dense :func:`dmcourse.ffn.swiglu`: max |difference| of the
    output, the input gradient and this rank's slices of the weight gradients."""
    torch.manual_seed(seed)
    w = [
        torch.randn(d_ff, d_model) * d_model**-0.5,
        torch.randn(d_ff, d_model) * d_model**-0.5,
        torch.randn(d_model, d_ff) * d_ff**-0.5,
    ]
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
    assert x.grad is not None and x_ref.grad is not None, "the backward passes gave x no gradient"
    return {
        "output": float((y - y_ref).abs().max()),
        "x_grad": float((x.grad - x_ref.grad).abs().max()),
        "w_gate_grad": float((tp.w_gate.grad - w[0].grad[sl]).abs().max()),
        "w_down_grad": float((tp.w_down.grad - w[2].grad[:, sl]).abs().max()),
    }


def task_alltoall(
    ctx: RankContext, tokens: Sequence[int] = (64, 256, 1024, 4096), d_model: int = 512, k: int = 2, repeats: int = 7
) -> dict:
    """Time one all-to-all of ``T * k`` rows of ``d_model`` (uniform splits) for each T in ``tokens``,
    and for comparison one all-reduce of ``(T, d_model)`` (what tensor parallelism sends per layer).

    Returns per T: bytes this rank sends to other ranks, median step time (max over ranks) of the
    all-to-all and the all-reduce, in ``ctx.dtype``.
    """
    rows_out: list[dict] = []
    row_bytes = d_model * dtype_bytes(ctx.dtype)
    for t in tokens:
        rows = t * k
        if rows % ctx.world_size:
            raise ValueError(f"tokens * k = {rows} must split evenly over {ctx.world_size} ranks")
        split = [rows // ctx.world_size] * ctx.world_size
        x = torch.randn(rows, d_model, device=ctx.device).to(ctx.dtype)
        out = torch.empty_like(x)
        a2a = _step_times(
            lambda out=out, x=x, split=split: dist.all_to_all_single(out, x, split, split), ctx.device, repeats
        )
        y = torch.randn(t, d_model, device=ctx.device).to(ctx.dtype)
        ar = _step_times(lambda y=y: dist.all_reduce(y), ctx.device, repeats)
        rows_out.append(
            {
                "tokens": t,
                "rows": rows,
                "offrank_bytes": offrank_bytes(split, ctx.rank, row_bytes),
                "alltoall_s": statistics.median(a2a),
                "alltoall_min_s": min(a2a),
                "allreduce_bytes": allreduce_bytes(t * d_model, ctx.world_size, ctx.dtype),
                "allreduce_s": statistics.median(ar),
            }
        )
    return {"d_model": d_model, "k": k, "dtype": str(ctx.dtype).removeprefix("torch."), "sizes": rows_out}


def skew_router_(router: Router, skew: float) -> None:
    """Make ``router`` prefer low expert ids, in place (a router gone lopsided), for tokens whose
    feature 0 is 1: router column 0 becomes ``skew * linspace(1, -1, E)``, so expert e's logit moves
    by ``skew * (1 - 2e / (E - 1))`` for every such token."""
    with torch.no_grad():
        router.weight[:, 0] = skew * torch.linspace(1.0, -1.0, router.n_experts, device=router.weight.device)


def task_imbalance(
    ctx: RankContext,
    tokens: int = 256,
    d_model: int = 256,
    d_ff: int = 512,
    n_experts: int = 8,
    k: int = 2,
    skew: float = 4.0,
    bias_steps: int = 300,
    gamma: float = 0.01,
    aux_steps: int = 100,
    aux_lr: float = 5.0,
    repeats: int = 7,
    seed: int = 0,
) -> dict:
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
            assert layer.last_routing is not None, "the layer has not run a forward yet"
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
        return {
            "received": layer.last["received"],
            "experts_s": statistics.median(own["experts"][-repeats:]),
            "experts_alone_s": min(alone),
            "forward_s": statistics.median(own["forward"][-repeats:]),
            "step_s": statistics.median(steps),
            "global_load": load.tolist(),
        }

    out: dict[str, Any] = {
        "tokens": tokens,
        "d_model": d_model,
        "d_ff": d_ff,
        "n_experts": n_experts,
        "k": k,
        "skew": skew,
        "bias_steps": bias_steps,
        "gamma": gamma,
        "aux_steps": aux_steps,
        "aux_lr": aux_lr,
    }
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
        grad = aux.weight.grad
        assert grad is not None, "the balance loss gave the router no gradient"
        dist.all_reduce(grad)
        grad /= ctx.world_size  # the mean over ranks of the per-rank losses
        opt.step()
    out["aux_loss"] = measure(aux)

    biased = copy.deepcopy(skewed)
    for _ in range(bias_steps):
        with torch.no_grad():
            biased.bias.copy_(bias_update(biased.bias, global_load(biased(batch())), gamma))
    out["bias"] = measure(biased)
    out["bias_values"] = biased.bias.tolist()
    return out


def task_node_limited(
    ctx: RankContext,
    tokens: int = 512,
    d_model: int = 64,
    d_ff: int = 64,
    n_experts: int = 16,
    k: int = 4,
    ranks_per_node: int = 2,
    max_nodes: int = 1,
    seed: int = 0,
) -> dict:
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
    x = x_all[ctx.rank * tokens : (ctx.rank + 1) * tokens].to(ctx.device)
    out: dict[str, Any] = {
        "n_nodes": n_nodes,
        "ranks_per_node": ranks_per_node,
        "max_nodes": max_nodes,
        "k": k,
        "n_experts": n_experts,
        "tokens": tokens,
    }
    for name, groups in (("unlimited", (1, 1)), ("node_limited", (n_nodes, max_nodes))):
        moe = _moe(seed, d_model, d_ff, n_experts, k, router="sigmoid", n_groups=groups[0], topk_groups=groups[1])
        moe = moe.to(ctx.device)
        ep = ExpertParallelMoE.from_moe(moe)
        with torch.no_grad():
            y = ep(x)
            y_ref = moe(x_all.to(ctx.device))[ctx.rank * tokens : (ctx.rank + 1) * tokens]
        assert ep.last_routing is not None
        idx = ep.last_routing.indices
        splits = ep.last["send_splits"]
        same_node = range(home * ranks_per_node, (home + 1) * ranks_per_node)
        out[name] = {
            "max_error": float((y - y_ref).abs().max()),
            "rows": sum(splits),
            "offrank_rows": sum(splits) - splits[ctx.rank],
            "cross_node_rows": sum(s for r, s in enumerate(splits) if r not in same_node),
            "cross_node_rows_dedup": cross_node_rows(idx, home, experts_per_node, dedup=True),
            "mean_nodes_per_token": float(nodes_per_token(idx, experts_per_node).float().mean()),
        }
        assert out[name]["cross_node_rows"] == cross_node_rows(idx, home, experts_per_node, dedup=False)
    return out


def task_crash(ctx: RankContext, rank: int = 1, after_collectives: int = 1, mode: str = "raise") -> dict:
    """Fail on purpose, to show (and test) that one failing rank stops the whole launch.

    Rank ``rank`` takes part in ``after_collectives`` all-reduces, then fails while the others wait
    in the next one: ``mode="raise"`` raises an exception, ``"exit"`` kills its process without one
    (as a crash or an out-of-memory kill would), ``"hang"`` sleeps for an hour (the others' collective
    times out, or the launch's deadline ends it).
    """
    one_of("mode", mode, ("raise", "exit", "hang"))
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
    "noop": task_noop,
    "check": task_check,
    "check_tp": task_check_tp,
    "alltoall": task_alltoall,
    "imbalance": task_imbalance,
    "node_limited": task_node_limited,
    "crash": task_crash,
}
"""Measurements by name, for ``python -m dmcourse.launch NAME ...``."""
