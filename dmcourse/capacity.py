"""Capacity: each expert takes at most ``C`` assignments of a batch, the rest are dropped.

Chapter 4 ("Routing collapse and load balancing") introduces it.

(GShard, Switch): expert ``i`` processes at most ``C = ceil(cf * T * k / E)``
assignments; the rest are *dropped*. A dropped assignment removes only that expert's term from the
token's output: the token still gets its other experts' outputs (with their weights, not
renormalised), and only a token whose *all* ``k`` assignments drop leaves the layer with nothing
added, carried on by the residual connection alone. ``T`` is the set of tokens counted together:
here whatever one call receives, i.e. the whole (flattened) batch of a forward, so a sequence heavy on
one expert can use slots the other sequences left free; ``transformers``' Switch Transformers router
counts per *sequence* (its cumulative sum runs along each sequence, ``expert_capacity`` slots per
sequence); call :func:`capacity_mask` once per sequence for that. Which assignments drop is an
ordering choice, :data:`CAPACITY_ORDERS`, see :func:`capacity_mask`. DeepSeek-V3 drops no tokens at
all (report §2.1.2), in training or inference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dmcourse.balance import _flat_indices, _token_mask  # the balancing losses' input checks
from dmcourse.checks import check_int, check_shape, one_of, positive_float
from dmcourse.routing import Routing

CAPACITY_ORDERS: tuple[str, ...] = ("position", "choice", "score")


def expert_capacity(n_tokens: int, n_experts: int, top_k: int = 1, capacity_factor: float = 1.0) -> int:
    """Assignments one expert may take: ``ceil(capacity_factor * n_tokens * top_k / n_experts)``.

    ``capacity_factor = 1`` is exactly the balanced share; 1.25 gives 25 % slack (Switch's default
    for training). -> int >= 0 (0 only when there are no tokens).
    """
    check_int("n_tokens", n_tokens, 0)
    check_int("top_k", top_k, maximum=check_int("n_experts", n_experts))
    positive_float("capacity_factor", capacity_factor)
    # round away tiny float noise (1.25 * 96 is 120.00000000000001 in binary) before the ceiling
    return math.ceil(round(capacity_factor * n_tokens * top_k / n_experts, 9))


def capacity_mask(
    indices: torch.Tensor,
    n_experts: int,
    capacity: int,
    *,
    order: str = "position",
    weights: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which assignments an expert with room for ``capacity`` keeps: indices (T, k) -> keep (T, k) bool.

    Each expert takes the assignments that reach it in priority ``order`` until it holds ``capacity``;
    later ones are dropped: the token loses that expert's term but keeps its other kept experts'; a
    row with no ``True`` left is a token that only the residual carries. Capacity is counted over the
    ``T`` rows given (a whole batch, flattened); for per-sequence capacity, as ``transformers``'
    Switch router does, call it on each sequence's rows. Orders (:data:`CAPACITY_ORDERS`):

    * ``"position"`` -- by token position, earlier tokens first (Switch/``transformers``'
      ``SwitchTransformersTop1Router``: a cumulative sum over the sequence; Megatron-LM's
      ``drop_policy="position"``). The choice slot does not matter: an expert appears once per token.
    * ``"choice"`` -- first every token's 1st choice, in position order, then every 2nd choice, ...
      (GShard's top-2 dispatch): a 1st choice is never displaced by an earlier token's 2nd choice.
    * ``"score"`` -- larger routing ``weights`` (T, k) first, ties by position (Megatron-LM's
      ``drop_policy="probs"``; like V-MoE's batch prioritised routing, per expert).

    attention_mask: (T,) or any shape with T entries; padding tokens are never kept and use no capacity.
    Use :func:`expert_capacity` to get ``capacity`` from a capacity factor.
    """
    check_int("capacity", capacity, 0)
    one_of("order", order, CAPACITY_ORDERS)
    check_shape("indices", indices, (None, None), "(tokens, k)")
    idx = _flat_indices(indices, check_int("n_experts", n_experts))
    n_tokens, k = idx.shape
    if k > 1 and bool((idx.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise ValueError("indices must name distinct experts within each token's row")
    device = idx.device
    flat_expert = idx.reshape(-1)
    position = torch.arange(n_tokens, device=device).repeat_interleave(k)  # token of each flat slot
    slot = torch.arange(k, device=device).repeat(n_tokens)
    if order == "score":
        if weights is None:
            raise ValueError(f"order='score' needs weights of shape (T, k)={(n_tokens, k)}, got None")
        check_shape("weights", weights, (n_tokens, k), f"(T, k)={(n_tokens, k)} for order='score'")
        # stable sorts: position, then by descending weight, then group by expert
        perm = torch.argsort(-weights.detach().float().reshape(-1), stable=True)
    elif order == "choice":
        perm = torch.argsort(slot * n_tokens + position, stable=True)
    else:
        perm = torch.arange(n_tokens * k, device=device)
    real = _token_mask(attention_mask, n_tokens, device).bool().repeat_interleave(k)
    # padding goes to a virtual expert E so it never uses capacity
    expert_p = torch.where(real, flat_expert, torch.full_like(flat_expert, n_experts))[perm]
    by_expert = torch.argsort(expert_p, stable=True)
    sorted_expert = expert_p[by_expert]
    counts = torch.bincount(sorted_expert, minlength=n_experts + 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(sorted_expert.numel(), device=device) - starts[sorted_expert]
    keep_sorted = (rank < capacity) & (sorted_expert < n_experts)
    keep = torch.zeros(n_tokens * k, dtype=torch.bool, device=device)
    keep[perm[by_expert]] = keep_sorted
    return keep.view(n_tokens, k)


class CapacityLimitedRouter(nn.Module):
    """Wraps a router so that each expert keeps at most ``ceil(capacity_factor * T * k / E)`` of a
    forward's ``T * k`` assignments, ``T`` = every token of the forward (the batch, not each
    sequence; :func:`capacity_mask` in ``order``); a dropped assignment gets combine weight 0, so the
    token skips that expert but keeps its other experts' terms with their unchanged weights; a token
    whose ``k`` assignments all drop gets 0 from the layer (the residual connection carries it on).

    ``moe.router = CapacityLimitedRouter(moe.router, 1.25)`` turns a dropless
    :class:`dmcourse.moe.MoE` into a capacity-limited one (the dropped rows are still computed
    and multiplied by 0: the output is that of a dropping implementation, the cost is not).
    The ``indices`` of the returned routing are the router's choices, so load statistics still
    describe what the router wanted. After each forward, ``last_keep`` holds the (T, k) mask and
    ``last_drop_rate`` the share dropped. ``bias`` is the wrapped router's selection bias, if any.
    """

    def __init__(self, router: nn.Module, capacity_factor: float, order: str = "position") -> None:
        super().__init__()
        positive_float("capacity_factor", capacity_factor)
        one_of("order", order, CAPACITY_ORDERS)
        self.router, self.capacity_factor, self.order = router, float(capacity_factor), order
        self.last_keep: torch.Tensor | None = None
        self.last_drop_rate: float | None = None

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.router, "bias", None)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> Routing:
        r = self.router(x, *args, **kwargs)
        capacity = expert_capacity(r.n_tokens, r.n_experts, r.top_k, self.capacity_factor)
        keep = capacity_mask(r.indices, r.n_experts, capacity, order=self.order, weights=r.weights)
        self.last_keep = keep
        self.last_drop_rate = drop_rate(keep) if r.n_tokens else 0.0
        return Routing(indices=r.indices, weights=r.weights * keep, logits=r.logits, scores=r.scores)

    def extra_repr(self) -> str:
        return f"capacity_factor={self.capacity_factor}, order={self.order!r}"


def drop_rate(keep: torch.Tensor, attention_mask: torch.Tensor | None = None) -> float:
    """Share of (real) assignments dropped: keep (T, k) bool -> float in [0, 1]."""
    check_shape("keep", keep, (None, None), "(tokens, k) from capacity_mask", dtype="bool")
    mask = _token_mask(attention_mask, keep.shape[0], keep.device)[:, None].expand_as(keep)
    total = float(mask.sum())
    if total == 0:
        raise ValueError("no tokens: the attention mask masks every token")
    return float(((~keep).float() * mask).sum()) / total
