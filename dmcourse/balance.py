"""Load balancing for Mixture-of-Experts routers: losses, the bias balancer, statistics.

Chapter 4 ("Routing collapse and load balancing") introduces it.

Everything here works on plain tensors -- router logits ``(T, E)``, selected experts ``(T, k)``, an
optional attention mask -- so it fits any router (``dmcourse.routing.Routing`` carries exactly these).
``T`` tokens, ``E`` (= ``N`` in the papers) experts, ``k`` experts per token.

**Auxiliary balancing loss** (Switch Transformer, Fedus et al. 2021, eq. 4-6):
``loss = N * sum_i f_i * P_i`` (the caller multiplies by the coefficient ``alpha``), with ``P_i`` the
mean router probability of expert ``i`` (differentiable) and ``f_i`` the share of tokens actually
*assigned* to it (counted from the top-k choice, no gradient). Its minimum over ``P`` for a given
``f`` pushes probability away from overloaded experts. How ``f_i`` is normalised differs, and changes
the value at perfect balance (``f_i`` and ``P_i`` uniform); :func:`load_balancing_loss` makes the
choice an explicit argument (:data:`AUX_CONVENTIONS`):

==================  ================================================  =====================
convention          ``f_i``                                            value when balanced
==================  ================================================  =====================
``"switch"``        tokens whose (only) expert is ``i`` / ``T``; k = 1   1
``"hf"``            assignments to ``i`` / ``T`` (sums to ``k``)          ``k``
``"divide_by_k"``   assignments to ``i`` / ``(k T)`` (sums to 1)          1
==================  ================================================  =====================

``"hf"`` is ``transformers``' ``load_balancing_loss_func`` (Mixtral, Qwen2/3-MoE, OLMoE, ...): given a
tuple of per-layer logits it *pools* all layers' tokens into one ``f`` and one ``P`` (it does not
average per-layer losses), and padding tokens (``attention_mask == 0``) are left out of both.
``"divide_by_k"`` is the same divided by ``k`` (e.g. DeepSeek's ``f_i = N / (k T) * count_i`` without
the ``N``, which then multiplies the sum). With ``k = 1`` all three coincide.

**Router z-loss** (ST-MoE, Zoph et al. 2022, eq. 5): ``mean_t (logsumexp_i logits_ti)^2``; it keeps
router logits small (the coefficient is 1e-3 in ST-MoE).

**Sequence-wise balance loss** (DeepSeek-V3, eq. 17-20): per sequence, ``sum_i f_i P_i`` with
``f_i = N / (k S) * count_i`` and ``P_i`` the mean over the sequence of the per-token *normalised*
affinities ``s_ti / sum_j s_tj``; averaged over sequences. Equal to 1 at perfect balance. ``count_i``
counts the ``indices`` it is given: the paper's eq. 18 counts the top-k of the *unbiased* scores
``s`` (:func:`unbiased_topk`), the course's trainer passes the experts actually chosen (top-k of
``s + b``); the two differ only for tokens whose choice the bias changed.

**Capacity** (GShard, Switch) -- dropping what an expert cannot take -- is :mod:`dmcourse.capacity`.

**Auxiliary-loss-free balancing** (DeepSeek-V3, Wang et al. 2024): a per-expert bias ``b`` is added
to the scores *for selection only* (the gating weights use the unbiased scores) and after each step
``b_i += gamma * sign(mean_j load_j - load_i)`` (:func:`bias_update`; selection with the bias is
:func:`dmcourse.routing.sigmoid_topk`).

**Statistics**: :func:`load_stats` -- share per expert, max/mean, entropy, coefficient of variation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dmcourse.checks import check_int, check_shape, nonnegative_float, one_of

AUX_CONVENTIONS: tuple[str, ...] = ("switch", "hf", "divide_by_k")
"""Normalisations of ``f_i`` accepted by :func:`load_balancing_loss` (see the module docstring)."""

"""Priority orders accepted by :func:`capacity_mask`."""


# ----------------------------------------------------------------------------------------------
# argument checks (the public functions check at their boundary; these helpers trust them)


def _flat_logits(name: str, logits: object) -> torch.Tensor:
    """(..., E) floating logits -> (T, E), after checking them."""
    t = check_shape(name, logits, (..., None, None), "(..., tokens, n_experts)", dtype="floating")
    if t.shape[-1] < 1:
        raise ValueError(f"{name} has no expert column: shape {tuple(t.shape)}")
    return t.reshape(-1, t.shape[-1])


def _flat_indices(indices: object, n_experts: int, name: str = "indices") -> torch.Tensor:
    """(..., k) integer expert ids in [0, n_experts) -> (T, k) int64, after checking them."""
    t = check_shape(name, indices, (..., None, None), "(..., tokens, k)", dtype="integer")
    flat = t.reshape(-1, t.shape[-1]).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n_experts):
        raise ValueError(
            f"{name} holds expert ids in [{int(flat.min())}, {int(flat.max())}], expected [0, {n_experts - 1}]"
        )
    return flat


def _token_mask(attention_mask: torch.Tensor | None, n_tokens: int, device: torch.device) -> torch.Tensor:
    """(T,) float32 weights: 1 for real tokens, 0 for padding."""
    if attention_mask is None:
        return torch.ones(n_tokens, dtype=torch.float32, device=device)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.numel() != n_tokens:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have one entry per token ({n_tokens}), got {got}")
    mask = attention_mask.reshape(-1).to(device=device, dtype=torch.float32)
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    return mask


def _counts(flat: torch.Tensor, n_experts: int, mask: torch.Tensor) -> torch.Tensor:
    """(T, k) expert ids, (T,) token weights -> (E,) float32 assignments per expert."""
    weights = mask.repeat_interleave(flat.shape[1])
    return torch.zeros(n_experts, dtype=torch.float32, device=flat.device).index_add_(0, flat.reshape(-1), weights)


def expert_counts(indices: torch.Tensor, n_experts: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Assignments per expert: indices (..., k) expert ids -> (E,) float32, summing to ``k * n_real_tokens``.

    Padding tokens (``attention_mask == 0``, mask shaped like ``indices[..., 0]``) are not counted.
    """
    flat = _flat_indices(indices, check_int("n_experts", n_experts))
    return _counts(flat, n_experts, _token_mask(attention_mask, flat.shape[0], flat.device))


# ----------------------------------------------------------------------------------------------
# losses


def _as_layers(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)) and len(x) > 0:
        return list(x)
    raise ValueError(f"expected a tensor or a non-empty tuple/list of per-layer tensors, got {type(x).__name__}")


def _layers_and_choice(
    router_logits: torch.Tensor | Sequence[torch.Tensor],
    top_k: int | None,
    indices: torch.Tensor | Sequence[torch.Tensor] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, int]:
    """The checked arguments of :func:`load_balancing_loss`: per-layer (T, E) logits, per-layer
    (T, k) chosen experts (None: the top-k of the probabilities) and k."""
    layers = [_flat_logits("router_logits", lg) for lg in _as_layers(router_logits)]
    n_experts = layers[0].shape[1]
    if any(lg.shape[1] != n_experts for lg in layers):
        raise ValueError(f"every layer needs the same number of experts, got {[lg.shape[1] for lg in layers]}")
    if indices is None:
        if top_k is None:
            raise ValueError("give top_k (or the selected indices)")
        return layers, None, check_int("top_k", top_k, maximum=n_experts)
    chosen = [_flat_indices(ix, n_experts) for ix in _as_layers(indices)]
    if len(chosen) != len(layers):
        raise ValueError(f"indices gives {len(chosen)} layers, router_logits {len(layers)}")
    k = chosen[0].shape[1]
    if top_k is not None and top_k != k:
        raise ValueError(f"top_k={top_k!r} but indices select {k} experts per token")
    for i, (idx, logits) in enumerate(zip(chosen, layers)):
        check_shape(f"indices of layer {i}", idx, (logits.shape[0], k), f"(tokens={logits.shape[0]}, k={k})")
    return layers, chosen, check_int("top_k", k, maximum=n_experts)


def load_balancing_loss(
    router_logits: torch.Tensor | Sequence[torch.Tensor],
    top_k: int | None = None,
    *,
    convention: str,
    indices: torch.Tensor | Sequence[torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Switch-style auxiliary loss ``N * sum_i f_i * P_i`` (without the coefficient alpha) -> scalar float32.

    router_logits: (T, E) or (batch, seq, E), or a tuple/list of those, one per MoE layer: all layers'
        tokens are pooled into one ``f`` and one ``P`` (what ``transformers`` does).
    top_k: experts per token. ``f`` counts each token's ``top_k`` largest probabilities unless
        ``indices`` gives the actual choice (``(T, k)`` per layer, e.g. a biased or capacity-limited
        selection); then ``top_k`` may be omitted (it must equal ``k`` if given).
    convention: ``"switch"`` (paper, top-1; 1 when balanced), ``"hf"`` (``f`` sums to k; k when
        balanced; ``transformers``' ``load_balancing_loss_func``), ``"divide_by_k"`` (``f`` sums to 1;
        1 when balanced). Required: the three differ by a factor ``k``.
    attention_mask: (batch, seq) or (T,) with 1 for tokens and 0 for padding, applied to every layer;
        padding enters neither ``f`` nor ``P``.

    ``P_i`` is the mean softmax probability (float32), differentiable; ``f_i`` is not.
    """
    one_of("convention", convention, AUX_CONVENTIONS)
    layers, chosen, top_k = _layers_and_choice(router_logits, top_k, indices)
    if convention == "switch" and top_k != 1:
        raise ValueError(
            f"the 'switch' convention is the paper's top-1 loss; with top_k={top_k} choose "
            "'hf' (k at balance) or 'divide_by_k' (1 at balance)"
        )

    n_experts, device = layers[0].shape[1], layers[0].device
    counts = torch.zeros(n_experts, dtype=torch.float32, device=device)
    prob_sum = torch.zeros(n_experts, dtype=torch.float32, device=device)
    n_real = torch.zeros((), dtype=torch.float32, device=device)
    for i, logits in enumerate(layers):
        probs = torch.softmax(logits.float(), dim=-1)
        mask = _token_mask(attention_mask, logits.shape[0], device)
        idx = torch.topk(probs.detach(), top_k, dim=-1).indices if chosen is None else chosen[i]
        counts = counts + _counts(idx, n_experts, mask)
        prob_sum = prob_sum + (probs * mask[:, None]).sum(dim=0)
        n_real = n_real + mask.sum()
    if float(n_real) == 0:
        raise ValueError("no tokens to balance: the attention mask masks every token")
    f = counts / n_real
    if convention == "divide_by_k":
        f = f / top_k
    p = prob_sum / n_real
    return n_experts * torch.sum(f * p)


def router_z_loss(
    router_logits: torch.Tensor | Sequence[torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_t (logsumexp_i logits_ti)^2`` -> scalar float32.

    Computed on the *logits* (probabilities always sum to one and carry no scale). router_logits:
    (..., E) or a tuple of per-layer tensors (the mean is over all layers' tokens);
    attention_mask: one entry per token of a layer, 0 for padding (left out of the mean).
    """
    total = torch.zeros(())
    n_real = 0.0
    for logits in _as_layers(router_logits):
        flat = _flat_logits("router_logits", logits)
        mask = _token_mask(attention_mask, flat.shape[0], flat.device)
        z2 = torch.logsumexp(flat.float(), dim=-1) ** 2
        part = (z2 * mask).sum()
        total = total.to(part.device) + part
        n_real += float(mask.sum())
    if n_real == 0:
        raise ValueError("no tokens: the attention mask masks every token")
    return total / n_real


def sequence_wise_balance_loss(
    scores: torch.Tensor,
    indices: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (without its small coefficient alpha).

    scores: (batch, seq, E) non-negative affinities (sigmoid scores in DeepSeek-V3; softmax
        probabilities work too), normalised per token here: ``s'_ti = s_ti / sum_j s_tj``.
    indices: (batch, seq, k) the experts counted in ``f``. DeepSeek-V3 (eq. 18) counts the top-k of
        the *unbiased* scores, ``unbiased_topk(scores, k)``; passing the experts actually chosen
        (top-k of ``s + bias``, as :func:`dmcourse.moe_train.moe_loss_fn` does) counts the biased choice
        instead. This function counts exactly what it is given.
    attention_mask: (batch, seq), 0 for padding (left out of ``f`` and ``P`` and of ``S``).

    For each sequence ``sum_i f_i P_i`` with ``f_i = E / (k S) * count_i`` and ``P_i = mean_t s'_ti``,
    then the mean over sequences (sequences that are all padding are skipped). 1 at perfect balance.
    -> scalar float32, differentiable through ``scores``.
    """
    check_shape("scores", scores, (None, None, None), "(batch, seq, n_experts)", dtype="floating")
    batch, seq, n_experts = scores.shape
    check_shape("indices", indices, (batch, seq, None), f"(batch={batch}, seq={seq}, k)")
    k = check_int("indices.shape[-1] (experts per token)", indices.shape[-1], maximum=n_experts)
    if bool((scores.detach() < 0).any()):
        raise ValueError("scores must be non-negative affinities (sigmoid or softmax outputs), not logits")
    idx = _flat_indices(indices, n_experts).view(batch, seq, k)
    mask = _token_mask(attention_mask, batch * seq, scores.device).view(batch, seq)
    normed = scores.float() / scores.float().sum(dim=-1, keepdim=True).clamp_min(1e-20)
    one_hot = torch.zeros(batch, seq, n_experts, dtype=torch.float32, device=scores.device)
    one_hot.scatter_add_(2, idx, torch.ones(idx.shape, dtype=torch.float32, device=scores.device))
    n_tok = mask.sum(dim=1)  # (batch,)
    keep = n_tok > 0
    if not bool(keep.any()):
        raise ValueError("no tokens: the attention mask masks every token")
    n_tok = n_tok.clamp_min(1.0)
    f = n_experts / (k * n_tok[:, None]) * (one_hot * mask[..., None]).sum(dim=1)  # (batch, E)
    p = (normed * mask[..., None]).sum(dim=1) / n_tok[:, None]  # (batch, E)
    per_seq = (f * p).sum(dim=-1)
    return per_seq[keep].mean()


def unbiased_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's experts for the sequence-wise loss: top-k of the unbiased scores, (..., E) -> (..., k) int64."""
    check_shape("scores", scores, (..., None), "(..., n_experts)", dtype="floating")
    check_int("k", k, maximum=scores.shape[-1])
    return scores.detach().topk(k, dim=-1).indices


# ----------------------------------------------------------------------------------------------
# auxiliary-loss-free balancing


def bias_update(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """One DeepSeek-V3 bias step: ``bias + gamma * sign(mean(load) - load)`` -> new (E,) tensor.

    bias: (E,) the selection bias; load: (E,) tokens (or shares) each expert received in the step;
    gamma: the bias update speed (0.001 in DeepSeek-V3). Overloaded experts go down by ``gamma``,
    underloaded ones up, experts exactly at the mean stay. Use the bias only to *select* experts,
    never in the gating weights (:func:`dmcourse.routing.sigmoid_topk` does this).
    """
    check_shape("bias", bias, (None,), "(n_experts,)")
    check_shape("load", load, tuple(bias.shape), f"(n_experts={bias.shape[0]},) like bias")
    nonnegative_float("gamma", gamma)
    load = load.to(device=bias.device, dtype=torch.float32)
    return bias + (gamma * torch.sign(load.mean() - load)).to(bias.dtype)


# ----------------------------------------------------------------------------------------------
# statistics


@dataclass(frozen=True)
class LoadStats:
    """How evenly assignments are spread over ``E`` experts.

    fraction: (E,) float32, each expert's share of the assignments (sums to 1).
    max_over_mean: largest load / mean load (1 balanced, E when one expert takes everything).
    entropy: ``-sum_i fraction_i ln fraction_i`` in nats (``ln E`` balanced, 0 collapsed).
    cv: coefficient of variation std/mean of the loads, population std (0 balanced, sqrt(E-1) collapsed).
    dead: experts that received nothing.
    """

    fraction: torch.Tensor
    max_over_mean: float
    entropy: float
    cv: float
    dead: int

    @property
    def n_experts(self) -> int:
        return int(self.fraction.numel())

    @property
    def normalized_entropy(self) -> float:
        """entropy / ln E in [0, 1] (1 balanced); 1.0 when E = 1."""
        return self.entropy / math.log(self.n_experts) if self.n_experts > 1 else 1.0

    def as_dict(self) -> dict[str, float]:
        """The scalar figures (for histories and tables)."""
        return {
            "max_over_mean": self.max_over_mean,
            "entropy": self.entropy,
            "normalized_entropy": self.normalized_entropy,
            "cv": self.cv,
            "dead": float(self.dead),
        }


def load_stats_from_counts(counts: torch.Tensor) -> LoadStats:
    """:class:`LoadStats` of per-expert loads: counts (E,) non-negative, not all zero."""
    check_shape("counts", counts, (None,), "(n_experts,)")
    c = counts.detach().double().cpu()
    if bool((c < 0).any()) or float(c.sum()) <= 0:
        raise ValueError(f"counts must be non-negative with a positive total, got {counts.tolist()}")
    frac = c / c.sum()
    nz = frac[frac > 0]
    entropy = float(-(nz * nz.log()).sum())
    mean = float(frac.mean())
    return LoadStats(
        fraction=frac.float(),
        max_over_mean=float(frac.max()) / mean,
        entropy=max(entropy, 0.0),
        cv=float(frac.std(unbiased=False)) / mean,
        dead=int((c == 0).sum()),
    )


def load_stats(indices: torch.Tensor, n_experts: int, attention_mask: torch.Tensor | None = None) -> LoadStats:
    """:class:`LoadStats` of a routing decision: indices (..., k) expert ids (padding left out)."""
    return load_stats_from_counts(expert_counts(indices, n_experts, attention_mask))
