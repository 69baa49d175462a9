from __future__ import annotations

import math

import pytest
import torch

from dmcourse.ffn import MLP, SwiGLU, mlp, swiglu


def test_swiglu_by_hand() -> None:
    # d_model = 1, d_ff = 2: every step can be done on paper.
    x = torch.tensor([[2.0]])
    w_gate = torch.tensor([[1.0], [0.0]])  # gate pre-activations 2, 0 -> silu: 2*sigmoid(2), 0
    w_up = torch.tensor([[3.0], [5.0]])  # up: 6, 10
    w_down = torch.tensor([[1.0, 1.0]])
    expected = 2 / (1 + math.exp(-2)) * 6 + 0.0 * 10
    assert swiglu(x, w_gate, w_up, w_down).item() == pytest.approx(expected)


def test_swiglu_module_matches_functional_and_transformers() -> None:
    torch.manual_seed(0)
    d_model, d_ff = 16, 40
    ffn = SwiGLU(d_model, d_ff)
    x = torch.randn(2, 5, d_model)
    y = ffn(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, swiglu(x, ffn.w_gate.weight, ffn.w_up.weight, ffn.w_down.weight))
    assert sum(p.numel() for p in ffn.parameters()) == 3 * d_model * d_ff
    assert ffn.flops_per_token() == 6 * d_model * d_ff

    # an independent reference: transformers' own Llama MLP with the same weights
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    ref = LlamaMLP(
        LlamaConfig(
            hidden_size=d_model, intermediate_size=d_ff, num_attention_heads=2, num_key_value_heads=2, hidden_act="silu"
        )
    )
    with torch.no_grad():
        ref.gate_proj.weight.copy_(ffn.w_gate.weight)
        ref.up_proj.weight.copy_(ffn.w_up.weight)
        ref.down_proj.weight.copy_(ffn.w_down.weight)
    torch.testing.assert_close(y, ref(x))


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_mlp(activation: str) -> None:
    torch.manual_seed(1)
    m = MLP(8, 32, activation=activation)
    x = torch.randn(7, 8)
    h = x @ m.w_up.weight.T
    h = {"relu": h.clamp(min=0), "gelu": 0.5 * h * (1 + torch.erf(h / math.sqrt(2))), "silu": h * torch.sigmoid(h)}[
        activation
    ]
    torch.testing.assert_close(m(x), h @ m.w_down.weight.T)
    torch.testing.assert_close(m(x), mlp(x, m.w_up.weight, m.w_down.weight, activation))
    assert sum(p.numel() for p in m.parameters()) == 2 * 8 * 32
    assert m.flops_per_token() == 4 * 8 * 32


def test_bias_dtype_device() -> None:
    m = SwiGLU(4, 6, bias=True, dtype=torch.float64, device="cpu")
    assert m.w_gate.bias is not None and m.w_down.weight.dtype == torch.float64
    assert sum(p.numel() for p in m.parameters()) == 3 * 4 * 6 + 6 + 6 + 4
    with torch.device("meta"):
        big = SwiGLU(4096, 14336)
    assert big.w_up.weight.shape == (14336, 4096) and big.w_down.weight.shape == (4096, 14336)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="d_ff"):
        SwiGLU(4, 0)
    with pytest.raises(ValueError, match="d_model"):
        MLP(-1, 4)
    with pytest.raises(ValueError, match="activation"):
        MLP(4, 4, activation="tanh")
    x = torch.randn(3, 4)
    g, u, d = torch.randn(6, 4), torch.randn(6, 4), torch.randn(4, 6)
    with pytest.raises(ValueError, match="w_down"):
        swiglu(x, g, u, d.T)
    with pytest.raises(ValueError, match="d_model=4"):
        swiglu(torch.randn(3, 5), g, u, d)
    with pytest.raises(ValueError, match="d_model"):
        mlp(torch.randn(3, 5), u, d)
