"""Routers: which experts each token goes to, and with what weight.

A router is a linear map from a token to one score per expert, ``logits = x @ weight.T`` with
``weight: (n_experts, d_model)``, followed by a *scoring and selection rule*. Every rule here returns
a :class:`Routing`: the ``k`` chosen experts per token, the weights used to combine their outputs,
and the full ``(tokens, n_experts)`` logits and scores that load-balancing losses need.

The rules (all computed in float32, whatever the dtype of the logits):

* :func:`topk_softmax` -- keep the top-k logits, softmax over those k only (mask *before* softmax).
  Numerically the same as softmax over all experts, top-k, renormalise to sum 1 (Mixtral, OLMoE,
  Qwen3-MoE with ``norm_topk_prob=True``).
* :func:`softmax_topk` -- softmax over all experts, then top-k, *without* renormalising by default
  (Switch Transformer, Qwen1.5/2-MoE with ``norm_topk_prob=False``): the weights sum to less than 1.
* :func:`sigmoid_topk` -- DeepSeek-V3: an independent sigmoid affinity per expert; the top-k (after
  an optional per-expert *selection bias*, which does not enter the weights, and optional
  group-limited routing) are normalised over the selected experts, then scaled.
* :func:`noisy_topk` -- Shazeer et al. (2017): Gaussian noise with a per-token, per-expert std is
  added to the logits, then top-k + softmax over the kept ones.

:class:`Router` is the ``nn.Module`` holding the weight (and the selection bias / noise weight the
rules need) and picking a rule by name (:data:`ROUTERS`).

**Top-1 needs Switch gating** (chapter 3). With ``k = 1``, every rule that normalises over the
chosen experts (``"softmax"``, ``"noisy"``, ``"sigmoid"``) gives each token the weight 1 (times a
constant): the weight does not depend on the router's weight, so the task loss sends it *no*
gradient and only a balancing loss moves it. Switch Transformer's gating, the un-renormalised
softmax probability of the chosen expert (:func:`softmax_topk`), keeps the router in the graph.
So :func:`default_router` picks ``"softmax_topk"`` for ``k = 1`` and ``"softmax"`` otherwise, and
:class:`Router` refuses a top-1 rule with a constant weight unless told that this is meant
(``allow_constant_gate=True``, e.g. a faithful copy of a trained model for inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dmcourse.checks import check_int, check_shape, nonnegative_float, one_of

ROUTERS: tuple[str, ...] = ("softmax", "softmax_topk", "sigmoid", "noisy")
"""Names accepted by :class:`Router` (and ``MoE(router=...)``):
``"softmax"`` -> :func:`topk_softmax`, ``"softmax_topk"`` -> :func:`softmax_topk` (no renormalisation),
``"sigmoid"`` -> :func:`sigmoid_topk`, ``"noisy"`` -> :func:`noisy_topk`."""

CONSTANT_AT_TOP1: tuple[str, ...] = ("softmax", "sigmoid", "noisy")
"""The rules whose combine weight is a constant (1, or ``scale`` for ``"sigmoid"``) when ``k = 1``:
they normalise over the chosen experts, so with one chosen expert the task loss cannot reach the
router. ``"softmax_topk"`` (Switch gating) is the top-1 rule whose weight depends on the router."""


def default_router(top_k: int) -> str:
    """The rule :class:`Router` and :class:`dmcourse.moe.MoE` use when none is named: ``"softmax_topk"``
    (Switch Transformer gating, the chosen expert's softmax probability) for ``top_k == 1``, so that
    the task loss trains the router; ``"softmax"`` (Mixtral's mask-before-softmax) for ``top_k >= 2``."""
    return "softmax_topk" if check_int("top_k", top_k) == 1 else "softmax"


def check_router_learns(method: str, top_k: int) -> None:
    """Raise ``ValueError`` if a router with rule ``method`` and ``top_k`` would get no gradient from
    the task loss (a top-1 rule from :data:`CONSTANT_AT_TOP1`), naming the rule to use instead."""
    if top_k == 1 and method in CONSTANT_AT_TOP1:
        raise ValueError(
            f"router {method!r} with top_k=1 gives every token the combine weight "
            f"{'scale' if method == 'sigmoid' else '1'} (it normalises over the one chosen expert), so the "
            "task loss sends no gradient to the router; use router='softmax_topk' (Switch gating: the "
            "chosen expert's softmax probability, the default for top_k=1) or top_k >= 2, or pass "
            "allow_constant_gate=True if a constant weight is meant (e.g. inference on a copied model)"
        )


@dataclass(frozen=True)
class Routing:
    """The routing decision for ``T`` tokens over ``E`` experts, ``k`` experts per token.

    indices: (T, k) int64 -- expert ids, distinct within a row, ordered by selection score (best first).
    weights: (T, k) float32 -- combine weights: ``y_t = sum_j weights[t, j] * expert_{indices[t, j]}(x_t)``.
    logits:  (T, E) -- router logits the selection was made on (the noisy ones for noisy top-k);
             keeps its autograd graph, for router z-losses.
    scores:  (T, E) float32 -- per-expert scores over *all* experts before selection: softmax
             probabilities for the softmax rules and noisy top-k, sigmoid affinities for ``sigmoid``
             (these do not sum to 1). Load-balancing losses use them.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor
    scores: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.indices.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.indices.shape[1])

    @property
    def n_experts(self) -> int:
        return int(self.logits.shape[-1])

    def tokens_per_expert(self) -> torch.Tensor:
        """(E,) int64: how many (token, slot) assignments each expert received (sums to T * k)."""
        return torch.bincount(self.indices.reshape(-1), minlength=self.n_experts)

    def combine_matrix(self) -> torch.Tensor:
        """(T, E) float32: the combine weight of every expert for every token (0 where not selected)."""
        dense = torch.zeros(self.n_tokens, self.n_experts, dtype=self.weights.dtype, device=self.weights.device)
        return dense.scatter(1, self.indices, self.weights)


def _check_logits_k(logits: torch.Tensor, k: int) -> int:
    """The routing rules' boundary check: logits (T, E) floating with E >= 1, k in [1, E] -> E."""
    check_shape("logits", logits, (None, None), "(tokens, n_experts)", dtype="floating")
    check_int("k", k, maximum=check_int("logits.shape[1] (n_experts)", logits.shape[1]))
    return logits.shape[1]


def router_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Router logits ``x @ weight.T``: x (T, d_model), weight (n_experts, d_model) -> (T, n_experts)."""
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"router weight must be (n_experts, d_model={x.shape[-1]}), got {tuple(weight.shape)}")
    return F.linear(x, weight)


def topk_softmax(logits: torch.Tensor, k: int) -> Routing:
    """Top-k routing with the mask *before* the softmax: keep each token's k largest logits and
    softmax over those k only. The weights sum to 1 per token.

    Identical (up to rounding) to ``softmax -> top-k -> renormalise``, since ``exp(l_i) / sum_{j in
    top-k} exp(l_j)`` is both. logits: (T, E) -> :class:`Routing`.
    """
    _check_logits_k(logits, k)
    logits32 = logits.float()
    top_logits, indices = torch.topk(logits32, k, dim=-1)
    return Routing(
        indices=indices,
        weights=torch.softmax(top_logits, dim=-1),
        logits=logits,
        scores=torch.softmax(logits32, dim=-1),
    )


def softmax_topk(logits: torch.Tensor, k: int, renormalize: bool = False) -> Routing:
    """Softmax over all experts, then top-k of the probabilities; ``renormalize=True`` divides the k
    kept probabilities by their sum (then equal to :func:`topk_softmax`), ``False`` keeps them as
    they are (they sum to less than 1 unless k = E). logits: (T, E) -> :class:`Routing`.
    """
    _check_logits_k(logits, k)
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(indices=indices, weights=weights, logits=logits, scores=probs)


def sigmoid_topk(
    logits: torch.Tensor,
    k: int,
    *,
    bias: torch.Tensor | None = None,
    n_groups: int = 1,
    topk_groups: int = 1,
    scale: float = 1.0,
    normalize: bool = True,
) -> Routing:
    """DeepSeek-V3 routing: ``s = sigmoid(logits)`` per expert, independently.

    Selection uses ``s + bias`` (``bias``: (E,), the auxiliary-loss-free balancing bias; it only
    changes *which* experts are chosen, never their weights). With ``n_groups > 1`` the experts are
    split into ``n_groups`` equal groups, each group is scored by the sum of its two highest
    biased scores, and only experts in the best ``topk_groups`` groups can be chosen (DeepSeek-V3:
    256 experts, 8 groups, 4 groups kept, k = 8). The weights are the *unbiased* scores of the
    chosen experts, divided by their sum when ``normalize`` (the paper's normalisation over the
    selected experts), times ``scale`` (``routed_scaling_factor``, 2.5 in DeepSeek-V3).

    logits: (T, E) -> :class:`Routing` with ``scores`` = the sigmoid affinities (T, E).
    """
    n_experts = _check_logits_k(logits, k)
    scores = torch.sigmoid(logits.float())
    choice = scores
    if bias is not None:
        check_shape("bias", bias, (n_experts,), f"(n_experts,)=({n_experts},)")
        choice = scores + bias.float()
    check_int("n_groups", n_groups)
    check_int("topk_groups", topk_groups)
    if n_groups > 1:
        if n_experts % n_groups:
            raise ValueError(f"n_groups={n_groups} must divide n_experts={n_experts}")
        per_group = n_experts // n_groups
        if per_group < 2:
            raise ValueError(f"group-limited routing needs >= 2 experts per group, got {per_group}")
        if not 1 <= topk_groups <= n_groups or k > topk_groups * per_group:
            raise ValueError(
                f"topk_groups must be in [1, n_groups={n_groups}] and keep >= k={k} experts "
                f"({per_group} per group), got topk_groups={topk_groups!r}"
            )
        grouped = choice.view(choice.shape[0], n_groups, per_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (T, n_groups)
        keep_groups = group_scores.topk(topk_groups, dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, keep_groups, True)
        expert_mask = group_mask.repeat_interleave(per_group, dim=1)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    indices = torch.topk(choice, k, dim=-1).indices
    weights = scores.gather(1, indices)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(indices=indices, weights=weights * scale, logits=logits, scores=scores)


def noisy_topk(
    logits: torch.Tensor,
    k: int,
    noise_std: torch.Tensor | float,
    *,
    generator: torch.Generator | None = None,
) -> Routing:
    """Noisy top-k gating (Shazeer et al. 2017, eq. 3-5): ``H = logits + N(0, 1) * noise_std``,
    then :func:`topk_softmax` on ``H``. ``noise_std`` is a tensor broadcastable to (T, E) -- in the
    paper (eq. 4) ``softplus(x @ w_noise.T)``, learned, so it depends on the token as well as the
    expert (:class:`Router` with ``"noisy"`` computes it so) -- or a float, one std for every token
    and expert (a simplification, for demonstrations). The noise helps exploration and
    balance during training; at inference pass ``noise_std=0`` (or use :func:`topk_softmax`).

    logits: (T, E) -> :class:`Routing` whose ``logits`` are the noisy logits ``H``.
    """
    _check_logits_k(logits, k)
    if isinstance(noise_std, torch.Tensor):
        try:
            ok = torch.broadcast_shapes(noise_std.shape, logits.shape) == logits.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"noise_std of shape {tuple(noise_std.shape)} does not broadcast to logits {tuple(logits.shape)}"
            )
    else:
        nonnegative_float("noise_std", noise_std)
    # drawn where the generator lives (a CPU generator also works for CUDA logits), then moved
    noise_device = generator.device if generator is not None else logits.device
    noise = torch.randn(logits.shape, generator=generator, dtype=torch.float32, device=noise_device).to(logits.device)
    return topk_softmax(logits.float() + noise * noise_std, k)


class Router(nn.Module):
    """A router: ``weight`` (n_experts, d_model) and a scoring rule from :data:`ROUTERS`.

    forward: x (T, d_model) -> :class:`Routing`.

    * ``"sigmoid"`` also holds ``bias``: an (E,) float32 *buffer* (not trained by gradients) used
      only for selection -- DeepSeek-V3's auxiliary-loss-free balancing updates it in place.
      ``n_groups``, ``topk_groups``, ``scale`` are passed to :func:`sigmoid_topk`.
    * ``"noisy"`` also holds ``noise_weight`` (n_experts, d_model), initialised to zero; the noise
      std is ``softplus(x @ noise_weight.T)``, one std per token and expert, and noise is added only
      in training mode.

    ``method=None`` picks :func:`default_router` (Switch gating for ``top_k = 1``). A top-1 rule
    whose weight is constant (:data:`CONSTANT_AT_TOP1`) raises ``ValueError`` (see
    :func:`check_router_learns`) unless ``allow_constant_gate=True``.
    """

    bias: torch.Tensor  # a buffer, registered for the "sigmoid" rule only

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        method: str | None = None,
        *,
        n_groups: int = 1,
        topk_groups: int = 1,
        scale: float = 1.0,
        allow_constant_gate: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_int("top_k", top_k, maximum=check_int("n_experts", n_experts))
        method = one_of("router method", default_router(top_k) if method is None else method, ROUTERS)
        if not allow_constant_gate:
            check_router_learns(method, top_k)
        if method != "sigmoid" and (n_groups != 1 or topk_groups != 1 or scale != 1.0):
            raise ValueError(f"n_groups, topk_groups and scale apply to the 'sigmoid' router only, not {method!r}")
        self.d_model, self.n_experts, self.top_k, self.method = d_model, n_experts, top_k, method
        self.n_groups, self.topk_groups, self.scale = n_groups, topk_groups, scale
        self.weight = nn.Parameter(torch.empty(n_experts, d_model, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default: U(-1/sqrt(d), 1/sqrt(d))
        if method == "sigmoid":
            self.register_buffer("bias", torch.zeros(n_experts, dtype=torch.float32, device=device))
            # fail early on a bad group configuration rather than at the first forward
            sigmoid_topk(torch.zeros(1, n_experts), top_k, n_groups=n_groups, topk_groups=topk_groups)
        if method == "noisy":
            self.noise_weight = nn.Parameter(torch.zeros(n_experts, d_model, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Routing:
        check_shape("router input", x, (None, self.d_model), f"(tokens, d_model={self.d_model})")
        logits = router_logits(x, self.weight)
        if self.method == "softmax":
            return topk_softmax(logits, self.top_k)
        if self.method == "softmax_topk":
            return softmax_topk(logits, self.top_k, renormalize=False)
        if self.method == "sigmoid":
            return sigmoid_topk(
                logits,
                self.top_k,
                bias=self.bias,
                n_groups=self.n_groups,
                topk_groups=self.topk_groups,
                scale=self.scale,
            )
        if self.training:
            noise_std = F.softplus(router_logits(x, self.noise_weight).float())
            return noisy_topk(logits, self.top_k, noise_std, generator=generator)
        return topk_softmax(logits, self.top_k)

    def extra_repr(self) -> str:
        extra = (
            f", n_groups={self.n_groups}, topk_groups={self.topk_groups}, scale={self.scale}"
            if self.method == "sigmoid"
            else ""
        )
        return f"d_model={self.d_model}, n_experts={self.n_experts}, top_k={self.top_k}, method={self.method!r}{extra}"
