"""dmcourse.roofline: the roofline model's arithmetic, the experts formula, the records and the CLI
(the measurements themselves: tests/test_measure.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmcourse import roofline as rl

# ---------------------------------------------------------------------------------- the model


def test_gemm_counts_every_operand() -> None:
    # square n x n @ n x n: 2 n^3 FLOPs over 3 n^2 elements of s bytes each -> 2n / (3s)
    for n, s in [(1, 4), (64, 2), (4096, 2), (1000, 4)]:
        assert rl.gemm_intensity(n, n, n, s) == pytest.approx(2 * n / (3 * s))
    # decode-like GEMM, one token through a (4096 -> 14336) bf16 projection
    m, k, n, s = 1, 4096, 14336, 2
    assert rl.gemm_flops(m, k, n) == 2 * 4096 * 14336
    assert rl.gemm_bytes(m, k, n, s) == 2 * (4096 + 4096 * 14336 + 14336)
    assert rl.gemm_intensity(m, k, n, s) < 1.0, "one token: about one FLOP per byte in bf16"


def test_min_rule_and_ridge() -> None:
    peak, bw = 100e12, 2e12
    assert rl.ridge_point(peak, bw) == 50.0
    assert rl.attainable_flops(10.0, peak, bw) == 20e12  # memory-bound: intensity x bandwidth
    assert rl.attainable_flops(500.0, peak, bw) == peak  # compute-bound: the flat roof
    assert rl.attainable_flops(50.0, peak, bw) == pytest.approx(peak)
    assert rl.is_memory_bound(49.0, peak, bw) and not rl.is_memory_bound(51.0, peak, bw)
    # the time form says the same thing
    flops, nbytes = 3e12, 1e11
    assert rl.roofline_time(flops, nbytes, peak, bw) == pytest.approx(
        flops / rl.attainable_flops(flops / nbytes, peak, bw)
    )
    assert rl.roofline_time(flops, nbytes, peak, bw) == max(flops / peak, nbytes / bw)


def test_critical_batch_size() -> None:
    peak, bw, s, k, n = 989e12, 3.35e12, 2, 4096, 14336
    ridge = peak / bw
    assert rl.critical_batch_size(peak, bw, s) == pytest.approx(ridge * s / 2)
    m_star = rl.critical_batch_size(peak, bw, s, k, n)
    assert m_star > ridge * s / 2, "counting activations too, it takes more tokens to reach the ridge"
    # at the critical M the GEMM's exact intensity equals the ridge point (checked by hand, not via gemm_intensity)
    assert 2 * m_star * k * n / (s * (m_star * k + k * n + m_star * n)) == pytest.approx(ridge)
    assert rl.critical_batch_size(peak, bw, s, 8, 8) == math.inf, "a tiny GEMM never reaches a ridge of ~295"


def test_expected_experts_matches_simulation() -> None:
    gen = torch.Generator().manual_seed(0)
    trials = 4000
    for n_experts, top_k, tokens in [(8, 2, 1), (8, 2, 4), (64, 8, 16), (128, 8, 3), (16, 1, 40), (4, 4, 2)]:
        # every token picks top_k distinct experts uniformly at random (the top-k of iid scores)
        picks = torch.rand(trials, tokens, n_experts, generator=gen).topk(top_k, dim=-1).indices
        hit = torch.zeros(trials, n_experts, dtype=torch.bool)
        hit.scatter_(1, picks.reshape(trials, -1), True)
        counts = hit.sum(1).double()
        stderr = counts.std().item() / trials**0.5
        want = rl.expected_experts_touched(n_experts, top_k, tokens)
        assert abs(counts.mean().item() - want) <= 4 * stderr + 1e-9, (n_experts, top_k, tokens, counts.mean(), want)
    assert rl.expected_experts_touched(8, 2, 0) == 0
    assert rl.expected_experts_touched(8, 2, 1) == pytest.approx(2)
    assert rl.expected_experts_touched(8, 2, 10**6) == pytest.approx(8)


def test_decode_step_dense_and_moe() -> None:
    p, s = 7_000_000_000, 2
    dense = rl.decode_step(batch=1, dense_params=p, bytes_per_param=s)
    assert dense.flops == 2 * p and dense.nbytes == s * p and dense.intensity == pytest.approx(1.0)
    assert rl.decode_step(batch=8, dense_params=p, bytes_per_param=s).intensity == pytest.approx(8.0)
    shared, experts, e, k = 1_000_000_000, 8_000_000_000, 8, 2
    one = rl.decode_step(batch=1, dense_params=shared, expert_params=experts, n_experts=e, top_k=k, bytes_per_param=s)
    active = shared + experts * k / e
    assert one.flops == pytest.approx(2 * active) and one.nbytes == pytest.approx(s * active)
    many = rl.decode_step(
        batch=4096, dense_params=shared, expert_params=experts, n_experts=e, top_k=k, bytes_per_param=s
    )
    assert many.nbytes == pytest.approx(s * (shared + experts)), "a large batch touches every expert"
    kv = rl.decode_step(batch=2, dense_params=p, bytes_per_param=s, kv_bytes_per_seq=1e9, attention_flops_per_seq=1e6)
    assert kv.nbytes == s * p + 2e9 and kv.flops == 4 * p + 2e6 and kv.weight_bytes == s * p


def test_decode_critical_batch() -> None:
    peak, bw = 989e12, 3.35e12
    model = dict(dense_params=10**8, expert_params=8 * 10**9, n_experts=64, top_k=4, bytes_per_param=2)
    b = rl.decode_critical_batch(peak, bw, **model)
    ridge = peak / bw
    assert (
        rl.decode_step(batch=int(b), **model).intensity >= ridge > rl.decode_step(batch=int(b) - 1, **model).intensity
    )
    dense_b = rl.decode_critical_batch(peak, bw, dense_params=10**9, bytes_per_param=2)
    assert dense_b == math.ceil(ridge), "dense bf16: intensity = batch FLOP/byte"
    assert b > dense_b, "an MoE needs a larger batch than a dense model to leave the memory roof"
    assert (
        rl.decode_critical_batch(peak, bw, dense_params=10**9, bytes_per_param=2, kv_bytes_per_seq=1e8) == math.inf
    ), "reading the KV cache caps the intensity"


def test_decode_step_is_a_cost() -> None:
    step = rl.decode_step(batch=3, dense_params=10**6, bytes_per_param=2, kv_bytes_per_seq=100.0)
    assert isinstance(step, rl.Cost)
    assert step.time_s(1e12, 1e9) == rl.Cost(step.flops, step.nbytes).time_s(1e12, 1e9)
    assert step.intensity == step.flops / step.nbytes and step.nbytes - step.weight_bytes == 300.0


def test_smallest_batch_is_the_first_true() -> None:
    for threshold in (0, 1, 2, 7, 100, 1023, 1024):
        assert rl.smallest_batch(lambda b, t=threshold: b >= t, 0, 1024) == max(threshold, 0)
    assert rl.smallest_batch(lambda b: b >= 5, 5, 5) == 5
    assert rl.smallest_batch(lambda b: False, 1, 10**9) is None
    calls = []
    rl.smallest_batch(lambda b: calls.append(b) or b >= 123_456, 1, 2**24)
    assert len(calls) <= 26, "a bisection, not a scan"
    with pytest.raises(ValueError, match="below"):
        rl.smallest_batch(lambda b: True, 5, 4)


@given(e=st.integers(1, 512), k=st.integers(1, 16), f=st.floats(0.01, 0.999))
@settings(max_examples=200, deadline=None)
def test_batch_touching_is_the_smallest_batch(e: int, k: int, f: float) -> None:
    """The closed form is the first batch whose expected experts touched reach the fraction."""
    k = min(k, e)
    b = rl.batch_touching(e, k, f)
    assert rl.expected_experts_touched(e, k, b) >= f * e
    assert b == 1 or rl.expected_experts_touched(e, k, b - 1) < f * e


def test_batch_touching_by_hand() -> None:
    assert rl.batch_touching(8, 2, 0.9) == math.ceil(math.log(0.1) / math.log(0.75)) == 9
    assert rl.batch_touching(4, 4, 0.5) == 1
    with pytest.raises(ValueError, match="fraction"):
        rl.batch_touching(8, 2, 1.0)


def test_deepseek_decode_uses_one_mla_form() -> None:
    from dmcourse import configs

    ds = configs.load_preset("DeepSeek-V3")
    layers, heads, rank, rope, nope, v, ctx, b = 61, 128, 512, 64, 128, 128, 4096, 16
    absorbed = rl.decode_step_for_config(ds, b, "bf16", ctx)
    explicit = rl.decode_step_for_config(ds, b, "bf16", ctx, mla_form="explicit")
    assert absorbed.weight_bytes == explicit.weight_bytes, "the weights are the same in both forms"
    assert absorbed.nbytes - absorbed.weight_bytes == b * ctx * layers * (rank + rope) * 2
    assert explicit.nbytes - explicit.weight_bytes == b * ctx * layers * heads * (nope + rope + v) * 2
    weight_flops = absorbed.flops - b * 2 * layers * heads * (rank + rope + rank) * ctx
    assert explicit.flops - b * 2 * layers * heads * (nope + rope + v) * ctx == pytest.approx(weight_flops)
    peak, bw = rl.datasheet_roof("H100", "bf16")
    crit = {
        f: rl.decode_critical_batch(peak, bw, **rl.decode_kwargs(ds, "bf16", ctx, mla_form=f))
        for f in ("absorbed", "explicit")
    }
    assert math.isfinite(crit["absorbed"]) and crit["explicit"] == math.inf, (
        "the decompressed cache is read at ~1 FLOP/byte"
    )
    # what an explicit form over a compressed cache would be (the old mix) is not offered
    with pytest.raises(ValueError, match="mla_form"):
        rl.decode_kwargs(ds, "bf16", ctx, mla_form="mixed")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rl.gemm_intensity(0, 4, 4, 2), "m"),
        (lambda: rl.gemm_intensity(4, 4, 4, 0), "bytes_per_element"),
        (lambda: rl.attainable_flops(-1.0, 1e12, 1e9), "intensity"),
        (lambda: rl.attainable_flops(1.0, 0.0, 1e9), "peak_flops"),
        (lambda: rl.ridge_point(1e12, float("inf")), "bandwidth"),
        (lambda: rl.critical_batch_size(1e12, 1e9, 2, k=4), "both"),
        (lambda: rl.expected_experts_touched(8, 9, 4), "top_k"),
        (lambda: rl.expected_experts_touched(8, 2, -1), "tokens"),
        (lambda: rl.decode_step(batch=0, dense_params=10, bytes_per_param=2), "batch"),
        (lambda: rl.decode_step(batch=1, dense_params=0, bytes_per_param=2), "parameters"),
        (lambda: rl.decode_step(batch=1, dense_params=10, bytes_per_param=2, kv_bytes_per_seq=-1), "kv_bytes_per_seq"),
        (lambda: rl.roofline_time(1.0, 0.0, 1.0, 1.0), "nbytes"),
    ],
)
def test_model_refuses_nonsense(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# records and the CLI (python -m dmcourse.records): tests/test_records.py


# ---------------------------------------------------------------------------------- layer costs, configs, datasheets


def test_swiglu_and_moe_costs() -> None:
    d, f, s = 64, 256, 2
    one = rl.swiglu_cost(1, d, f, s)
    assert one.flops == 2 * 3 * d * f
    # gate and up: x (1 x d), W (d x f), out (1 x f); down: (1 x f), (f x d), out (1 x d); silu*mul: 3 f
    assert one.nbytes == s * (2 * (d + d * f + f) + (f + f * d + d) + 3 * f)
    assert rl.swiglu_cost(10, d, f, s).flops == 10 * one.flops
    e, k = 8, 2
    moe1 = rl.moe_cost(1, d, f, e, k, s)
    router_flops = 2 * d * e
    assert moe1.flops == pytest.approx(k * one.flops + router_flops)
    weights = 3 * d * f * s
    assert k * weights < moe1.nbytes < k * weights * 1.2, "one token reads k experts' weights (plus small activations)"
    big = rl.moe_cost(4096, d, f, e, k, s)
    assert big.nbytes > e * weights, "a large batch reads every expert"
    assert (
        rl.moe_cost(4, d, f, e, k, s, experts_touched=3).nbytes
        < rl.moe_cost(4, d, f, e, k, s, experts_touched=5).nbytes
    )
    with pytest.raises(ValueError, match="experts_touched"):
        rl.moe_cost(4, d, f, e, k, s, experts_touched=9)
    assert (one + one).flops == 2 * one.flops and one.time_s(1e12, 1e9) == max(one.flops / 1e12, one.nbytes / 1e9)


def test_decode_counts_follow_accounting() -> None:
    from dmcourse import accounting, configs

    for name in ("Mixtral-8x7B", "Llama-3-8B", "DeepSeek-V3"):
        cfg = configs.load_preset(name)
        p = accounting.count_params(cfg)
        c = rl.decode_counts(cfg)
        embedding_not_read = 0 if cfg.tied_embeddings else p.embedding
        assert c["dense_params"] + c["expert_params"] == p.total - embedding_not_read
        step = rl.decode_step_for_config(cfg, 1, "bf16")
        # batch 1 reads the active weights (minus the embedding lookup) in bf16
        assert step.weight_bytes == pytest.approx(2 * (p.active - embedding_not_read), rel=1e-9)
        ctx = rl.decode_step_for_config(cfg, 2, "bf16", context=1000)
        assert ctx.nbytes - ctx.weight_bytes == pytest.approx(accounting.kv_cache_bytes(cfg, 1000, 2, "bf16"))


def test_datasheet_roof() -> None:
    from dmcourse import hardware

    peak, bw = rl.datasheet_roof("H100", "bf16")
    spec = hardware.gpu("H100")
    assert peak == spec.peak_flops["bf16"] and bw == spec.memory_bandwidth_bytes_per_s
    for spec in hardware.gpus().values():
        assert spec.memory_bandwidth_source.startswith("https://") and spec.peak_flops_source.startswith("https://")
        assert spec.peak_flops["fp32"] < max(spec.peak_flops.values()), "tensor cores beat plain fp32"
    with pytest.raises(ValueError, match="T4"):
        rl.datasheet_roof("T4", "bf16")  # Turing has no bf16 tensor cores


def test_plots_and_explorer() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dmcourse import roofline_plot as rp

    ax = rp.roofline_figure(
        [dict(name="X", peak=1e12, bandwidth=1e10), dict(name="Y", peak=1e14, bandwidth=1e12, kind="datasheet")],
        [dict(intensity=1.0, flops=1e10, label="p", annotate="B=1")],
    )
    labels = [line.get_label() for line in ax.get_lines()]
    assert "X" in labels and "Y (datasheet)" in labels
    with pytest.raises(ValueError, match="kind"):
        rp.roofline_figure([dict(name="Z", peak=1.0, bandwidth=1.0, kind="guess")])
    plt.close("all")
    widget = rp.explorer({"X": (1e12, 1e10)})
    assert widget.children
    plt.close("all")
