"""The dense feed-forward network (FFN) of a transformer block: a plain MLP and SwiGLU.

Chapter 2 ("Dense models: the FFN, and what 'every parameter, every token' costs") introduces it.

Weights follow ``nn.Linear``'s (out_features, in_features) convention everywhere, the layout the
MoE experts share (``w_gate (d_ff, d_model)``, ``w_up (d_ff, d_model)``, ``w_down (d_model, d_ff)``;
an expert stack adds a leading ``E`` axis).

* MLP (GPT-2, BERT): ``down(act(up(x)))`` -- two matrices, ``2 * d_model * d_ff`` weights.
* SwiGLU (Llama, Mistral, Mixtral, Qwen3, DeepSeek, OLMoE): ``down(silu(gate(x)) * up(x))`` --
  three matrices, ``3 * d_model * d_ff`` weights, ``2 * 3 * d_model * d_ff`` FLOPs per token
  (forward, one multiply and one add per weight).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmcourse.checks import check_int

ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}
ACTIVATIONS = tuple(ACTIVATION_FNS)


def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """SwiGLU FFN: ``(silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T``.

    x: (..., d_model); w_gate, w_up: (d_ff, d_model); w_down: (d_model, d_ff) -> (..., d_model).
    """
    if w_gate.dim() != 2 or w_up.dim() != 2 or w_down.dim() != 2:
        raise ValueError(
            f"swiglu weights must be 2-D, got w_gate {tuple(w_gate.shape)}, w_up {tuple(w_up.shape)}, "
            f"w_down {tuple(w_down.shape)}"
        )
    d_ff, d_model = w_gate.shape
    if tuple(w_up.shape) != (d_ff, d_model) or tuple(w_down.shape) != (d_model, d_ff):
        raise ValueError(
            f"swiglu weight shapes do not match: w_gate {tuple(w_gate.shape)} (d_ff, d_model), expected "
            f"w_up {(d_ff, d_model)} and w_down {(d_model, d_ff)}, got {tuple(w_up.shape)} and {tuple(w_down.shape)}"
        )
    if x.shape[-1] != d_model:
        raise ValueError(f"x has last dimension {x.shape[-1]}, expected d_model={d_model} (from w_gate)")
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def mlp(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """Two-matrix MLP: ``act(x @ w_up.T) @ w_down.T`` (no biases).

    x: (..., d_model); w_up: (d_ff, d_model); w_down: (d_model, d_ff) -> (..., d_model).
    ``activation``: "relu", "gelu" (exact erf form) or "silu".
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if w_up.dim() != 2 or w_down.dim() != 2 or tuple(w_down.shape) != tuple(w_up.shape[::-1]):
        raise ValueError(
            f"mlp weights must be w_up (d_ff, d_model) and w_down (d_model, d_ff), got "
            f"{tuple(w_up.shape)} and {tuple(w_down.shape)}"
        )
    if x.shape[-1] != w_up.shape[1]:
        raise ValueError(f"x has last dimension {x.shape[-1]}, expected d_model={w_up.shape[1]} (from w_up)")
    act = ACTIVATION_FNS[activation]
    return act(x @ w_up.T) @ w_down.T


class SwiGLU(nn.Module):
    """SwiGLU FFN as an ``nn.Module`` with ``w_gate``, ``w_up`` (d_model -> d_ff) and ``w_down``
    (d_ff -> d_model) ``nn.Linear`` layers.

    forward: x (..., d_model) -> (..., d_model). ``n_params`` = 3 * d_model * d_ff (+ biases).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        bias: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model)
        self.d_ff = check_int("d_ff", d_ff)
        kw: dict[str, Any] = {"bias": bias, "dtype": dtype, "device": device}
        self.w_gate = nn.Linear(d_model, d_ff, **kw)
        self.w_up = nn.Linear(d_model, d_ff, **kw)
        self.w_down = nn.Linear(d_ff, d_model, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))

    def flops_per_token(self) -> int:
        """Forward FLOPs per token of the three matmuls: ``2 * 3 * d_model * d_ff`` (FLOP)."""
        return 2 * 3 * self.d_model * self.d_ff

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}"


class MLP(nn.Module):
    """Classic two-matrix FFN ``down(act(up(x)))`` with ``w_up`` (d_model -> d_ff) and ``w_down``.

    forward: x (..., d_model) -> (..., d_model). ``activation``: "relu", "gelu" or "silu".
    GPT-2 uses GELU with biases and d_ff = 4 * d_model.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "gelu",
        bias: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.d_model = check_int("d_model", d_model)
        self.d_ff = check_int("d_ff", d_ff)
        self.activation = activation
        kw: dict[str, Any] = {"bias": bias, "dtype": dtype, "device": device}
        self.w_up = nn.Linear(d_model, d_ff, **kw)
        self.w_down = nn.Linear(d_ff, d_model, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = ACTIVATION_FNS[self.activation]
        return self.w_down(act(self.w_up(x)))

    def flops_per_token(self) -> int:
        """Forward FLOPs per token of the two matmuls: ``2 * 2 * d_model * d_ff`` (FLOP)."""
        return 2 * 2 * self.d_model * self.d_ff

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation!r}"
