"""The middle paths between dense and MoE: upcycling and dense-train / sparse-infer.

Chapter 7 ("Training dense vs MoE, and the middle paths") introduces it.

* **Upcycling** (Komatsuzaki et al. 2022, "Sparse Upcycling"; NVIDIA's Nemotron upcycling): copy a
  trained dense SwiGLU FFN into every expert of an MoE layer and give it a fresh router.
  :func:`upcycle_ffn` does one layer, :func:`upcycle_lm` a whole :class:`dmcourse.lm.TinyLM`
  (attention, norms, embeddings copied). With identical experts and routing weights that sum to 1
  (softmax over the chosen k, the default router for ``top_k >= 2``), the MoE computes exactly the
  dense FFN, whatever the router says: ``sum_j w_j f(x) = f(x)``. At that start the router gets no
  task-loss gradient either (``sum_j w_j`` is constant), until the experts' different tokens make
  them differ. With ``top_k = 1`` the default router is Switch gating (the chosen expert's softmax
  probability ``p``, so that the task loss trains the router): the start is ``p(x) f(x)``, not an
  exact copy. Options people use to let the copies diverge: ``noise`` (Gaussian
  noise of ``noise * std`` of each weight matrix) and ``reinit_fraction`` (re-initialise that
  fraction of each expert's hidden units, as in Drop-Upcycling, Nakamura et al. 2025).
* **Dense training, sparse inference** (DS-MoE, Pan et al. 2024): train with every expert active
  (``top_k = n_experts``), then serve with a smaller ``k``. :func:`with_top_k` changes ``k`` of every
  MoE layer inside a ``with`` block.
* :func:`freeze_routers` stops gradients to the routers (a fine-tuning mitigation for router drift);
  :func:`routing_agreement` measures drift (share of (token, layer) pairs whose expert set is unchanged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from dmcourse.checks import check_int, probability
from dmcourse.ffn import SwiGLU
from dmcourse.lm import LMConfig, TinyLM
from dmcourse.moe import MoE
from dmcourse.moe_train import moe_layers


@torch.no_grad()
def upcycle_ffn(
    ffn: SwiGLU,
    n_experts: int,
    top_k: int,
    *,
    noise: float = 0.0,
    reinit_fraction: float = 0.0,
    generator: torch.Generator | None = None,
    router: str | None = None,
) -> MoE:
    """An :class:`~dmcourse.moe.MoE` whose ``n_experts`` experts start as copies of ``ffn``.

    The router is new (``nn.Linear``-style init), with the rule ``router`` (default: the MoE default,
    :func:`dmcourse.routing.default_router`; the copy reproduces ``ffn`` exactly when the weights sum
    to 1, i.e. ``"softmax"`` with ``top_k >= 2``, see the module docstring). ``noise``: add N(0, (noise * std(W))^2) to each
    expert's copy of each matrix W. ``reinit_fraction``: in each expert, re-draw that fraction of
    the hidden units (rows of ``w_gate``/``w_up``, columns of ``w_down``) from the fresh MoE init;
    the units are chosen at random per expert. Both 0: every expert equals ``ffn`` exactly.
    """
    if not isinstance(ffn, SwiGLU):
        raise ValueError(f"ffn must be a dmcourse.ffn.SwiGLU, got {type(ffn).__name__}")
    if ffn.w_gate.bias is not None:
        raise ValueError("upcycling needs a bias-free SwiGLU (the MoE experts have no biases)")
    noise = float(noise)
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    reinit_fraction = probability("reinit_fraction", reinit_fraction)
    w = ffn.w_gate.weight
    moe = MoE(ffn.d_model, ffn.d_ff, n_experts, top_k, router=router, dtype=w.dtype, device=w.device)
    fresh = [moe.w_gate.detach().clone(), moe.w_up.detach().clone(), moe.w_down.detach().clone()]
    dense = [ffn.w_gate.weight, ffn.w_up.weight, ffn.w_down.weight]
    n_reinit = round(reinit_fraction * ffn.d_ff)
    for e in range(n_experts):
        units = torch.randperm(ffn.d_ff, generator=generator)[:n_reinit].to(w.device)
        for i, (dst, src) in enumerate(zip((moe.w_gate, moe.w_up, moe.w_down), dense)):
            copy = src.detach().clone()
            if noise:
                copy += noise * src.std() * torch.randn(copy.shape, generator=generator).to(copy)
            if n_reinit:
                if i < 2:  # gate / up: rows are hidden units
                    copy[units] = fresh[i][e][units]
                else:  # down: columns are hidden units
                    copy[:, units] = fresh[i][e][:, units]
            dst[e].copy_(copy)
    return moe


@torch.no_grad()
def upcycle_lm(
    model: TinyLM, n_experts: int, top_k: int, *, noise: float = 0.0, reinit_fraction: float = 0.0, seed: int = 0
) -> TinyLM:
    """A MoE :class:`~dmcourse.lm.TinyLM` from a dense one: every FFN upcycled (:func:`upcycle_ffn`),
    everything else copied. The experts have the dense ``d_ff``; ``model`` is left unchanged."""
    if not isinstance(model, TinyLM) or model.config.is_moe:
        raise ValueError("upcycle_lm needs a dense dmcourse.lm.TinyLM (n_experts == 0)")
    config = LMConfig(**{**model.config.__dict__, "n_experts": n_experts, "top_k": top_k})
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the routers' init
    moe_model = TinyLM(config).to(model.head.weight.device)
    state = {k: v for k, v in model.state_dict().items() if ".ffn." not in k}
    missing, unexpected = moe_model.load_state_dict(state, strict=False)
    if unexpected or any(".ffn." not in k for k in missing):
        raise ValueError(f"state mismatch while upcycling: missing {missing}, unexpected {unexpected}")
    for src, dst in zip(model.blocks, moe_model.blocks):
        assert isinstance(src.ffn, SwiGLU), f"a dense TinyLM block holds a SwiGLU, got {type(src.ffn).__name__}"
        dst.ffn = upcycle_ffn(
            src.ffn, n_experts, top_k, noise=noise, reinit_fraction=reinit_fraction, generator=generator
        )
    return moe_model


def moe_modules(model: nn.Module) -> list[MoE]:
    """The model's MoE layers (:func:`dmcourse.moe_train.moe_layers`); ``ValueError`` if it has none."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("the model has no dmcourse.moe.MoE layer")
    return layers


@contextlib.contextmanager
def with_top_k(model: nn.Module, k: int) -> Iterator[None]:
    """Inside the block every MoE layer of ``model`` routes each token to ``k`` experts, with the
    layer's own rule (for the ``"softmax"`` router: softmax over the chosen k,
    :func:`dmcourse.routing.topk_softmax`); the old ``k`` comes back afterwards. Meant for
    evaluation: at ``k = 1`` a ``"softmax"`` router's weight is the constant 1, which does not train
    the router (see :func:`dmcourse.routing.check_router_learns`)."""
    layers = moe_modules(model)
    for m in layers:
        check_int("k", k, maximum=m.n_experts)
    old = [(m.top_k, m.router.top_k) for m in layers]
    try:
        for m in layers:
            m.top_k = m.router.top_k = k
        yield
    finally:
        for m, (a, b) in zip(layers, old):
            m.top_k, m.router.top_k = a, b


def freeze_routers(model: nn.Module, frozen: bool = True) -> int:
    """Set ``requires_grad = not frozen`` on every router parameter; -> number of parameters touched."""
    n = 0
    for m in moe_modules(model):
        for p in m.router.parameters():
            p.requires_grad_(not frozen)
            n += p.numel()
    return n


def routing_agreement(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float:
    """Share of (token, layer) pairs whose *set* of top-k experts is the same in ``before`` and
    ``after`` (lists of (T, k) int64 per layer, e.g. from :func:`dmcourse.lm.expert_choices`)."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need the same non-zero number of layers, got {len(before)} and {len(after)}")
    same, total = 0, 0
    for a, b in zip(before, after):
        if a.shape != b.shape:
            raise ValueError(f"routing shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        same += int((a.sort(-1).values == b.sort(-1).values).all(-1).sum())
        total += a.shape[0]
    return same / total


__all__: Sequence[str] = (
    "freeze_routers",
    "moe_modules",
    "routing_agreement",
    "upcycle_ffn",
    "upcycle_lm",
    "with_top_k",
)
