"""The Mixture-of-Experts layer: a router picks ``k`` of ``E`` SwiGLU experts per token.

Chapter 3 ("The Mixture-of-Experts layer") introduces it.

Weight layout (shared by every MoE module of the course): router ``weight (E, d_model)`` (in
:class:`dmcourse.routing.Router`), stacked experts ``w_gate (E, d_ff, d_model)``, ``w_up (E, d_ff,
d_model)``, ``w_down (E, d_model, d_ff)`` (``nn.Linear``'s out x in). Expert ``e`` computes
``swiglu(x, w_gate[e], w_up[e], w_down[e])`` and token ``t`` gets
``y_t = sum_j routing.weights[t, j] * expert_{routing.indices[t, j]}(x_t)`` (+ shared experts).

Dispatch and combine, three ways, each a function ``(x, routing, w_gate, w_up, w_down) -> y``
(x: (T, d_model), y: (T, d_model)) so they can be checked against each other:

* :func:`dispatch_loop` -- for each expert, find its tokens (``torch.where``), run it, scatter-add.
  The textbook version (and what ``transformers``' eager Mixtral block does).
* :func:`dispatch_sorted` -- sort the ``T * k`` (token, expert) pairs by expert so each expert's
  tokens are one contiguous block (offsets from ``bincount``/``cumsum``), gather once, run each
  non-empty expert on its block, copy its output rows straight back to their (token, slot) places
  (while they are still in the cache) and sum the ``k`` weighted rows of each token (:func:`mix`).
  One host sync (the group sizes) per forward.
* :func:`dispatch_grouped` -- the same sorted layout, but all experts in one grouped GEMM per
  projection (``torch.nn.functional.grouped_mm``, torch >= 2.10; ``torch._grouped_mm`` before). No
  host sync and no Python loop over experts. Where grouped GEMM is unavailable for the device and
  dtype (probed once by :func:`grouped_mm_supported`: e.g. CUDA GPUs below compute capability 8.0,
  or an old torch) it falls back to :func:`dispatch_sorted`, which computes the same thing.

The expert matmuls go through one seam, :func:`dmcourse.matmul.linear` (``x @ w.T``, i.e.
``F.linear``; re-exported here as :func:`linear`), and every dispatch takes a ``linear=`` argument to
swap it. Which of torch's kernels computes it on a CPU is measured on the machine the course runs on
(:mod:`dmcourse.matmul`), not written into the dispatch code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmcourse.checks import check_int, check_shape, one_of
from dmcourse.ffn import SwiGLU
from dmcourse.matmul import gated, linear
from dmcourse.routing import ROUTERS, Router, Routing, default_router

DISPATCHES: tuple[str, ...] = ("sorted", "loop", "grouped")


def expert_swiglu(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = linear,
) -> torch.Tensor:
    """One expert: :func:`dmcourse.ffn.swiglu` (``down(silu(gate(x)) * up(x))``) with the matmuls
    done by ``linear``. x (M, d_model), w_gate/w_up (d_ff, d_model), w_down (d_model, d_ff).
    The hidden state ``silu(gate(x)) * up(x)`` is :func:`dmcourse.matmul.gated`."""
    return linear(gated(x, w_gate, w_up, linear), w_down)


def _check_inputs(
    x: torch.Tensor, routing: Routing, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
) -> tuple[int, int, int]:
    """The dispatch functions' boundary check -> (tokens, k, n_experts)."""
    n_experts, d_ff, d_model = check_shape("w_gate", w_gate, (None, None, None), "(n_experts, d_ff, d_model)").shape
    check_shape("w_up", w_up, (n_experts, d_ff, d_model), f"(n_experts, d_ff, d_model)={(n_experts, d_ff, d_model)}")
    check_shape(
        "w_down", w_down, (n_experts, d_model, d_ff), f"(n_experts, d_model, d_ff)={(n_experts, d_model, d_ff)}"
    )
    n_tokens = check_shape("x", x, (None, d_model), f"(tokens, d_model={d_model})").shape[0]
    k = check_shape("routing.indices", routing.indices, (n_tokens, None), f"(tokens={n_tokens}, k)").shape[1]
    check_shape("routing.weights", routing.weights, (n_tokens, k), f"(tokens={n_tokens}, k={k}) like its indices")
    if routing.n_experts != n_experts:
        raise ValueError(f"routing is over {routing.n_experts} experts, the weights hold {n_experts}")
    return n_tokens, k, n_experts


def dispatch_loop(
    x: torch.Tensor,
    routing: Routing,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    linear: Callable[..., torch.Tensor] = linear,
) -> torch.Tensor:
    """Loop over experts: x (T, d_model) -> (T, d_model). Experts without tokens are skipped.
    ``linear`` does the matmuls (default :func:`dmcourse.matmul.linear`)."""
    _, _, n_experts = _check_inputs(x, routing, w_gate, w_up, w_down)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(n_experts):
        token, slot = torch.where(routing.indices == e)  # which tokens chose e, in which of their k slots
        if token.numel() == 0:
            continue
        y = expert_swiglu(x[token], w_gate[e], w_up[e], w_down[e], linear)
        out.index_add_(0, token, y.float() * routing.weights[token, slot, None])
    return out.to(x.dtype)


def sort_by_expert(routing: Routing) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sorted layout: ``(order, token, counts)``.

    order: (T*k,) int64 -- permutation of the flattened ``(token, slot)`` pairs that sorts them by
           expert (stable, so within an expert tokens keep their order); row ``i`` of the sorted
           layout is pair ``order[i]``, i.e. token ``order[i] // k``.
    token: (T*k,) int64 -- ``order // k``, the token each sorted row reads.
    counts: (E,) int64 -- rows per expert; expert ``e`` owns rows ``offsets[e-1]:offsets[e]`` with
           ``offsets = counts.cumsum(0)``.
    """
    flat = routing.indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return order, order // routing.top_k, torch.bincount(flat, minlength=routing.n_experts)


def mix(unsorted: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Sum each token's k expert outputs with its routing weights: unsorted (T*k, d), row ``t*k + j``
    = expert ``indices[t, j]``'s output for token ``t`` -> (T, d) float32 (no atomics, so
    deterministic on GPUs too)."""
    n_tokens, k = routing.indices.shape
    rows = unsorted.view(n_tokens, k, unsorted.shape[-1])
    if k == 1:
        return rows[:, 0].float() * routing.weights
    return torch.bmm(routing.weights.unsqueeze(1), rows.float()).squeeze(1)


def combine(rows: torch.Tensor, order: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Undo the sort and mix: rows (T*k, d) in sorted order -> (T, d) float32.

    Gathering the rows with the inverse permutation (``inverse[order] = arange``) puts them back in
    (token, slot) order, then :func:`mix` sums each token's k rows with their routing weights.
    """
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)  # sorted row of each (token, slot) pair
    return mix(rows.index_select(0, inverse), routing)


def dispatch_sorted(
    x: torch.Tensor,
    routing: Routing,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    linear: Callable[..., torch.Tensor] = linear,
) -> torch.Tensor:
    """Sort (token, expert) pairs by expert, run each expert on its contiguous block, combine.

    x (T, d_model) -> (T, d_model). Only experts that received tokens are touched. ``linear`` does
    the matmuls (default :func:`dmcourse.matmul.linear`).
    """
    n_tokens, _, _ = _check_inputs(x, routing, w_gate, w_up, w_down)
    if n_tokens == 0:
        return torch.zeros_like(x)
    order, token, counts = sort_by_expert(routing)
    xs = x.index_select(0, token)  # (T*k, d_model), grouped by expert
    unsorted = torch.empty_like(xs)  # row t*k + j: the output of token t's j-th expert
    start = 0
    for e, count in enumerate(counts.tolist()):  # one host sync: the group sizes
        if count:
            y = expert_swiglu(xs[start : start + count], w_gate[e], w_up[e], w_down[e], linear)
            unsorted.index_copy_(
                0, order[start : start + count], y.to(unsorted.dtype)
            )  # rows to their (token, slot) places
            start += count
    return mix(unsorted, routing).to(x.dtype)


def _grouped_mm_fn() -> Callable[..., torch.Tensor] | None:
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@functools.cache
def _probe_grouped_mm(device: str, dtype: torch.dtype) -> bool:
    fn = _grouped_mm_fn()
    if fn is None:
        return False
    try:
        # uneven groups and an empty one, as real routing produces
        a = torch.randn(37, 16, device=device).to(dtype)
        b = torch.randn(3, 16, 16, device=device).to(dtype)
        offs = torch.tensor([5, 5, 37], dtype=torch.int32, device=device)
        got = fn(a, b.transpose(1, 2), offs=offs).float()
        want = torch.cat([a[:5] @ b[0].T, a[5:] @ b[2].T]).float()
        return bool(torch.allclose(got, want, rtol=5e-2, atol=5e-2))
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def grouped_mm_supported(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether this torch has a working grouped GEMM for ``device`` and ``dtype`` (probed once,
    cached). torch 2.13's CPU build has one for fp32 and bf16; CUDA needs compute capability >= 8.0
    (bf16)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return False
    return _probe_grouped_mm(str(device), dtype)


def dispatch_grouped(
    x: torch.Tensor, routing: Routing, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
) -> torch.Tensor:
    """Sorted layout + one grouped GEMM per projection over all experts; x (T, d_model) -> (T, d_model).

    Falls back to :func:`dispatch_sorted` where :func:`grouped_mm_supported` says no, and for sizes
    whose rows are not a multiple of 16 bytes (grouped GEMM's alignment rule; found by a Hypothesis
    property in tests/test_properties.py).
    """
    n_tokens, _, _ = _check_inputs(x, routing, w_gate, w_up, w_down)
    if n_tokens == 0:
        return torch.zeros_like(x)
    # grouped_mm has no autocast rule: under autocast, compute in autocast's dtype as F.linear would
    autocast = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    # grouped_mm needs rows of 16-byte multiples (d_model and d_ff of 4 floats, 8 halves): else sorted
    row_ok = all(n * torch.empty((), dtype=dtype).element_size() % 16 == 0 for n in w_gate.shape[1:])
    if not row_ok or not grouped_mm_supported(x.device, dtype):
        return dispatch_sorted(x, routing, w_gate, w_up, w_down)
    if autocast:
        w_gate, w_up, w_down = (w.to(dtype) for w in (w_gate, w_up, w_down))
    gmm = _grouped_mm_fn()
    assert gmm is not None, "grouped_mm_supported() said yes, so torch has a grouped GEMM"
    order, token, counts = sort_by_expert(routing)
    offs = counts.cumsum(0).to(torch.int32)  # end row of each expert's group, stays on the device
    xs = x.index_select(0, token).to(dtype)
    h = F.silu(gmm(xs, w_gate.transpose(1, 2), offs=offs)) * gmm(xs, w_up.transpose(1, 2), offs=offs)
    rows = gmm(h, w_down.transpose(1, 2), offs=offs)
    return combine(rows, order, routing).to(x.dtype)


DISPATCH_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "sorted": dispatch_sorted,
    "loop": dispatch_loop,
    "grouped": dispatch_grouped,
}


class MoE(nn.Module):
    """Mixture-of-Experts SwiGLU layer.

    forward: x (..., d_model) -> (..., d_model). After each forward, :attr:`last_routing` holds the
    :class:`~dmcourse.routing.Routing` of that call (indices, weights, logits and scores of the
    flattened tokens, with their autograd graph) for load-balancing losses and statistics.

    Args:
        d_model, d_ff: model and per-expert hidden size.
        n_experts, top_k: E routed experts, k of them per token (1 <= k <= E).
        n_shared_experts: experts every token goes through (DeepSeek-MoE / DeepSeek-V3), stored as
            one :class:`~dmcourse.ffn.SwiGLU` ``shared`` of hidden size ``n_shared_experts * shared_d_ff``
            (the same thing as that many experts summed). ``shared_d_ff`` defaults to ``d_ff``.
        dispatch: one of :data:`DISPATCHES`; can be changed later (``moe.dispatch = "grouped"``).
        router: one of :data:`~dmcourse.routing.ROUTERS`, or ``None`` (the default) for
            :func:`~dmcourse.routing.default_router`: Switch gating (``"softmax_topk"``, the chosen
            expert's softmax probability) for ``top_k = 1``, Mixtral's ``"softmax"`` for ``top_k >= 2``.
            With ``top_k = 1`` the rules that normalise over the chosen experts give a constant weight
            and no task-loss gradient to the router, so they are refused unless
            ``allow_constant_gate=True`` (see :func:`~dmcourse.routing.check_router_learns`).
            ``n_groups``, ``topk_groups`` and ``routed_scale`` are passed to the sigmoid router.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        n_experts: int,
        top_k: int,
        *,
        n_shared_experts: int = 0,
        shared_d_ff: int | None = None,
        dispatch: str = "sorted",
        router: str | None = None,
        n_groups: int = 1,
        topk_groups: int = 1,
        routed_scale: float = 1.0,
        allow_constant_gate: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_int("d_ff", d_ff)
        check_int("top_k", top_k, maximum=check_int("n_experts", n_experts))
        check_int("n_shared_experts", n_shared_experts, 0)
        shared_d_ff = check_int("shared_d_ff", d_ff if shared_d_ff is None else shared_d_ff)
        router = one_of("router", default_router(top_k) if router is None else router, ROUTERS)
        self.d_model, self.d_ff, self.n_experts, self.top_k = d_model, d_ff, n_experts, top_k
        self.n_shared_experts, self.shared_d_ff = n_shared_experts, shared_d_ff
        self.dispatch = dispatch
        kw: dict[str, Any] = {"dtype": dtype, "device": device}
        router_kw: dict[str, Any] = (
            {"n_groups": n_groups, "topk_groups": topk_groups, "scale": routed_scale} if router == "sigmoid" else {}
        )
        self.router = Router(
            d_model, n_experts, top_k, router, allow_constant_gate=allow_constant_gate, **router_kw, **kw
        )
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_ff, d_model, **kw))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_ff, d_model, **kw))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_ff, **kw))
        self.shared = SwiGLU(d_model, n_shared_experts * shared_d_ff, **kw) if n_shared_experts else None
        self.last_routing: Routing | None = None
        self.reset_parameters()

    @property
    def dispatch(self) -> str:
        return self._dispatch

    @dispatch.setter
    def dispatch(self, value: str) -> None:
        self._dispatch = one_of("dispatch", value, DISPATCHES)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Experts initialised like ``nn.Linear``: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for w in (self.w_gate, self.w_up, self.w_down):
            bound = w.shape[-1] ** -0.5
            w.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape("x", x, (..., self.d_model), f"(..., d_model={self.d_model})")
        flat = x.reshape(-1, self.d_model)
        routing = self.router(flat)
        self.last_routing = routing
        y = DISPATCH_FUNCTIONS[self.dispatch](flat, routing, self.w_gate, self.w_up, self.w_down)
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.view(x.shape)

    def n_params(self) -> int:
        """All parameters: router + E experts (+ shared)."""
        return sum(p.numel() for p in self.parameters())

    def n_active_params(self) -> int:
        """Parameters one token uses: router + k of the E experts (+ shared; + noise weight if any)."""
        per_expert = (self.w_gate.numel() + self.w_up.numel() + self.w_down.numel()) // self.n_experts
        other = self.n_params() - per_expert * self.n_experts
        return other + self.top_k * per_expert

    def extra_repr(self) -> str:
        shared = (
            f", n_shared_experts={self.n_shared_experts}, shared_d_ff={self.shared_d_ff}"
            if self.n_shared_experts
            else ""
        )
        return (
            f"d_model={self.d_model}, d_ff={self.d_ff}, n_experts={self.n_experts}, top_k={self.top_k}"
            f"{shared}, dispatch={self.dispatch!r}"
        )


def from_mixtral_block(block: nn.Module, dispatch: str = "sorted") -> MoE:
    """A course :class:`MoE` with the weights of a ``transformers`` Mixtral sparse-MoE block.

    ``block`` is a ``MixtralSparseMoeBlock`` (e.g. ``model.model.layers[i].mlp``). transformers 5
    stores its experts stacked: ``experts.gate_up_proj (E, 2 * d_ff, d_model)`` (gate rows first,
    then up) and ``experts.down_proj (E, d_model, d_ff)``; transformers 4 had a ``ModuleList`` of
    experts with ``nn.Linear`` ``w1`` (gate), ``w3`` (up), ``w2`` (down). Both are read; the router is
    ``block.gate.weight (E, d_model)``. Mixtral routes with softmax -> top-k -> renormalise, which is
    the course's ``"softmax"`` router. The block's training-time ``router_jitter_noise`` is not
    copied (it is off at inference). The copy has the block's dtype and device; transformers is not
    imported.
    """
    gate = getattr(block, "gate", None)
    experts = getattr(block, "experts", None)
    router_weight = getattr(gate, "weight", None)
    if not isinstance(router_weight, torch.Tensor) or experts is None:
        raise ValueError(
            f"expected a Mixtral sparse-MoE block with .gate.weight and .experts, got {type(block).__name__}"
        )
    with torch.no_grad():
        if hasattr(experts, "gate_up_proj"):
            gate_up, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
            if getattr(experts, "is_transposed", False):  # (E, d_model, 2 d_ff) layout
                gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
            w_gate, w_up = gate_up.chunk(2, dim=1)
        elif isinstance(experts, nn.ModuleList) and all(hasattr(m, "w1") for m in experts):
            mods: list[Any] = list(experts)  # Mixtral's MixtralBlockSparseTop2MLP modules (w1, w3, w2)
            w_gate = torch.stack([m.w1.weight for m in mods])
            w_up = torch.stack([m.w3.weight for m in mods])
            down = torch.stack([m.w2.weight for m in mods])
        else:
            raise ValueError(f"unrecognised Mixtral experts layout: {type(experts).__name__}")
        n_experts, d_ff, d_model = w_gate.shape
        top_k = getattr(block, "top_k", None) or getattr(gate, "top_k", None)
        if top_k is None:
            raise ValueError(
                f"the Mixtral block names no top_k (block {type(block).__name__}, gate {type(gate).__name__})"
            )
        if router_weight.shape != (n_experts, d_model) or tuple(down.shape) != (n_experts, d_model, d_ff):
            raise ValueError(
                f"inconsistent Mixtral block: router {tuple(router_weight.shape)}, experts gate "
                f"{tuple(w_gate.shape)}, down {tuple(down.shape)}"
            )
        # a faithful copy: Mixtral's rule even at top_k=1, where its weight is the constant 1
        moe = MoE(
            d_model,
            d_ff,
            n_experts,
            int(top_k),
            dispatch=dispatch,
            router="softmax",
            allow_constant_gate=True,
            dtype=router_weight.dtype,
            device=router_weight.device,
        )
        moe.router.weight.copy_(router_weight)
        moe.w_gate.copy_(w_gate)
        moe.w_up.copy_(w_up)
        moe.w_down.copy_(down)
    return moe
