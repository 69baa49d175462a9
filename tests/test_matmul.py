"""dmcourse.matmul: the one matmul seam. The probe picks the faster kernel, overrides win, the choice is
cached per machine, and every candidate computes the same x @ w.T (and the same MoE layer)."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dmcourse import matmul, stream
from dmcourse.moe import MoE

TINY = (matmul.Bucket("1", 1, 1, 1), matmul.Bucket("prefill", 2, None, 8))


def _sleepy(seconds: float):
    def kernel(x, w):
        time.sleep(seconds)
        return F.linear(x, w)

    return kernel


def test_probe_picks_the_faster_of_two_fake_kernels():
    result = matmul.probe(
        kernels={"slow": _sleepy(0.05), "fast": _sleepy(0.0)}, d_model=16, d_ff=32, rounds=5, buckets=TINY
    )
    assert set(result) == {"1", "prefill"}
    for entry in result.values():  # two calls per timing (gate and down): at least 0.1 s for "slow"
        assert entry["ranking"] == ["fast", "slow"], entry
        assert entry["best_s"]["slow"] >= 2 * 0.05


def test_probe_needs_a_kernel():
    with pytest.raises(ValueError, match="at least one kernel"):
        matmul.probe(kernels={}, buckets=TINY)


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fresh cache dir, the env override removed, and a probe that records its calls and ranks
    onednn first for prefill and F.linear first for decode (as a fake, instantly)."""
    monkeypatch.setenv("DMCOURSE_CACHE", str(tmp_path))
    monkeypatch.delenv("DMCOURSE_MATMUL", raising=False)
    matmul._env_forced.cache_clear()
    monkeypatch.setattr(matmul, "_choices", {})
    monkeypatch.setattr(matmul, "_memo", {})
    monkeypatch.setattr(matmul, "_override", None)
    calls = []

    def fake_probe(dtype, **kwargs):
        calls.append(dtype)
        return {
            b.name: {
                "ranking": ["onednn", "F.linear"] if b.hi is None else ["F.linear", "onednn"],
                "best_s": {"onednn": 1.0, "F.linear": 2.0},
            }
            for b in matmul.BUCKETS
        }

    monkeypatch.setattr(matmul, "probe", fake_probe)
    monkeypatch.setattr(matmul, "onednn_works", lambda dtype: True)
    yield calls
    monkeypatch.undo()
    matmul._env_forced.cache_clear()


def test_first_eligible_call_probes_once_and_uses_the_ranking(machine):
    w = torch.randn(8, 16)
    with torch.inference_mode():
        assert matmul.kernel_for(torch.randn(200, 16), w) == "onednn"
        assert matmul.kernel_for(torch.randn(3, 16), w) == "F.linear"
    assert machine == [torch.float32]
    # a call that needs a gradient, or a dtype the seam does not choose for, is F.linear without a probe
    assert matmul.kernel_for(torch.randn(200, 16, requires_grad=True), w) == "F.linear"
    assert matmul.kernel_for(torch.randn(200, 16, dtype=torch.float64), w.double()) == "F.linear"
    assert machine == [torch.float32]
    assert "float32 rows prefill: onednn" in matmul.status()


def test_the_cache_is_per_machine(machine, monkeypatch):
    with torch.inference_mode():
        matmul.kernel_for(torch.randn(4, 16), torch.randn(8, 16))
    saved = json.loads(matmul.cache_file().read_text())
    assert len(saved) == 1 and "float32" in next(iter(saved.values()))["choices"]
    monkeypatch.setattr(matmul, "_choices", {})  # a new process on the same machine: read from disk
    monkeypatch.setattr(matmul, "_memo", {})
    with torch.inference_mode():
        matmul.kernel_for(torch.randn(4, 16), torch.randn(8, 16))
    assert machine == [torch.float32]
    real_key = matmul.machine_key
    monkeypatch.setattr(matmul, "machine_key", lambda names: {**real_key(names), "cpu": "another CPU"})
    monkeypatch.setattr(matmul, "_memo", {})  # another machine: another process
    with torch.inference_mode():
        matmul.kernel_for(torch.randn(4, 16), torch.randn(8, 16))
    assert machine == [torch.float32, torch.float32], "a different machine key must probe again"
    assert len(json.loads(matmul.cache_file().read_text())) == 2


def test_reprobe_forgets_and_probes_again(machine):
    with torch.inference_mode():
        matmul.kernel_for(torch.randn(4, 16), torch.randn(8, 16))
        assert matmul.reprobe(torch.float32)["prefill"]["ranking"][0] == "onednn"
        matmul.kernel_for(torch.randn(4, 16), torch.randn(8, 16))
    assert machine == [torch.float32, torch.float32], "reprobe probes once more, then the choice is cached again"
    saved = json.loads(matmul.cache_file().read_text())
    assert len(saved) == 1 and "float32" in next(iter(saved.values()))["choices"]


def test_threads_are_part_of_the_machine_key():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = matmul.machine_key(("F.linear",))
        torch.set_num_threads(2)
        assert matmul.machine_key(("F.linear",)) != one
    finally:
        torch.set_num_threads(before)


def test_overrides_win_over_the_probe(machine, monkeypatch):
    x, w = torch.randn(200, 16), torch.randn(8, 16)
    with torch.inference_mode():
        with matmul.use("F.linear"):
            assert matmul.kernel_for(x, w) == "F.linear"
            assert "forced: F.linear" in matmul.status()
        assert matmul.kernel_for(x, w) == "onednn"
        monkeypatch.setenv("DMCOURSE_MATMUL", "F.linear")
        matmul._env_forced.cache_clear()  # read once per process: a new process
        assert matmul.kernel_for(x, w) == "F.linear"
        matmul.set_choice("onednn")  # code wins over the environment
        assert matmul.kernel_for(x, w) == "onednn"
        matmul.set_choice(None)
        assert matmul.kernel_for(x, w) == "F.linear"
    with pytest.raises(ValueError, match="one of"):
        matmul.set_choice("mkl")
    monkeypatch.setenv("DMCOURSE_MATMUL", "fastest")
    matmul._env_forced.cache_clear()
    with pytest.raises(ValueError, match="fastest"), torch.inference_mode():
        matmul.linear(x, w)


def test_a_ranked_kernel_that_cannot_run_the_call_is_skipped(machine, monkeypatch):
    monkeypatch.setattr(
        matmul, "choose", lambda dtype: {b.name: {"ranking": ["stream", "F.linear"]} for b in matmul.BUCKETS}
    )
    with torch.inference_mode():
        assert matmul.kernel_for(torch.randn(2, 24), torch.randn(8, 24)) == "F.linear"  # 24 % 16 != 0


def _all_kernels():
    names = ["F.linear"]
    if matmul.onednn_works(torch.float32):
        names.append("onednn")
    if stream.available():
        names.append("stream")
    return names


@pytest.mark.parametrize("name", _all_kernels())
@pytest.mark.parametrize("rows", [1, 3, 17, 70])
def test_every_kernel_computes_x_at_w_t(name, rows):
    gen = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 48, generator=gen), torch.randn(40, 48, generator=gen)
    with torch.inference_mode(), matmul.use(name):
        assert matmul.kernel_for(x, w) == name
        got = matmul.linear(x, w)
    torch.testing.assert_close(got.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", _all_kernels())
@pytest.mark.parametrize("dispatch", ["sorted", "loop"])
@pytest.mark.parametrize("tokens", [1, 4, 40])
def test_moe_output_the_same_through_every_kernel(name, dispatch, tokens):
    torch.manual_seed(tokens)
    layer = MoE(64, 96, 8, 2, dispatch=dispatch).eval()
    x = torch.randn(1, tokens, 64)
    with torch.inference_mode():
        with matmul.use("F.linear"):
            ref = layer(x)
        with matmul.use(name):
            got = layer(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_gradients_always_take_f_linear():
    x, w = torch.randn(3, 16, requires_grad=True), torch.randn(8, 16)
    with matmul.use("onednn" if matmul.onednn_works(torch.float32) else "F.linear"):
        matmul.linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(3, 16))


@pytest.mark.parametrize("name", _all_kernels())
@pytest.mark.parametrize("rows", [1, 5, 70])
def test_gated_is_the_swiglu_hidden_state_through_every_kernel(name, rows):
    gen = torch.Generator().manual_seed(rows)
    x, g, u = (
        torch.randn(rows, 32, generator=gen),
        torch.randn(24, 32, generator=gen),
        torch.randn(24, 32, generator=gen),
    )
    want = F.silu(x.double() @ g.double().T) * (x.double() @ u.double().T)
    with torch.inference_mode(), matmul.use(name):
        assert matmul.fuses(x, g, u) == (name == "onednn" and matmul.onednn_fuses(torch.float32))
        got = matmul.gated(x, g, u)
        plain = matmul.gated(x, g, u, F.linear)  # any other linear: never fused
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain.double(), want, rtol=1e-4, atol=1e-4)


def test_gated_keeps_autograd():
    x = torch.randn(4, 16, requires_grad=True)
    g, u = torch.randn(8, 16), torch.randn(8, 16)
    matmul.gated(x, g, u).sum().backward()
    xr = x.detach().clone().requires_grad_()
    (F.silu(xr @ g.T) * (xr @ u.T)).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 80), in_blocks=st.integers(1, 4), out=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_property_every_kernel_agrees_with_f_linear(rows, in_blocks, out, seed):
    """Whatever the probe picks, the seam computes F.linear: every kernel, any shape it accepts."""
    gen = torch.Generator().manual_seed(seed)
    x, w = torch.randn(rows, 16 * in_blocks, generator=gen), torch.randn(out, 16 * in_blocks, generator=gen)
    want = F.linear(x, w)
    with torch.inference_mode():
        for name in _all_kernels():
            with matmul.use(name):
                torch.testing.assert_close(matmul.linear(x, w), want, rtol=1e-4, atol=1e-4)
