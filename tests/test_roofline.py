"""dmcourse.roofline: the roofline model's arithmetic, the experts formula, CPU measurements, the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from dmcourse import roofline as rl

# ---------------------------------------------------------------------------------- measurements


@pytest.mark.parametrize("kind", ["copy", "read"])
def test_bandwidth_on_cpu_is_positive_and_finite(kind: str) -> None:
    m = rl.measure_bandwidth("cpu", kind=kind, buffer_bytes=2 * rl.MiB, warmup=1, repeats=3)
    assert m.unit == "B/s" and math.isfinite(m.value) and m.value > 0
    per_call = 2 * 2 * rl.MiB if kind == "copy" else 2 * rl.MiB  # copy counts read + write
    assert m.work == per_call and m.settings["counted_bytes_per_call"] == per_call
    assert m.value == pytest.approx(m.work / m.timing.median_s)
    # the rotating sets together overflow the last-level cache
    assert m.settings["rotating_sets"] * per_call >= min(2 * rl.last_level_cache_bytes("cpu"), 64 * per_call)


def test_matmul_on_cpu_is_positive_and_finite() -> None:
    m = rl.measure_matmul("cpu", precision="fp32", size=128, warmup=1, repeats=3)
    assert m.unit == "FLOP/s" and m.work == 2 * 128**3
    assert math.isfinite(m.value) and m.value > 0
    adaptive = rl.measure_matmul("cpu", max_size=256, target_s=1e-6, warmup=0, repeats=1)
    assert adaptive.settings["size"] <= 256 and adaptive.value > 0


def test_matmul_with_another_kernel_times_that_kernel() -> None:
    seen = []

    def kernel(a, b):
        seen.append((tuple(a.shape), tuple(b.shape), a.dtype))
        return a @ b.T

    m = rl.measure_matmul("cpu", precision="fp32", size=64, warmup=1, repeats=2, matmul=kernel)
    assert math.isfinite(m.value) and m.value > 0 and m.work == 2 * 64**3
    assert seen and all(s == ((64, 64), (64, 64), torch.float32) for s in seen) and len(seen) >= 3
    assert m.settings["kernel"].endswith("kernel")
    assert rl.measure_matmul("cpu", size=64, warmup=0, repeats=1).settings["kernel"] == "torch.matmul"


def test_time_gemm_and_rotation() -> None:
    t = rl.time_gemm(4, 64, 32, device="cpu", warmup=1, repeats=3)
    assert len(t.times_s) == 3 and t.median_s > 0
    assert rl.rotation_count(10**12, "cpu") == 2
    assert rl.rotation_count(1, "cpu") == 64
    calls = []
    rl.time_rotating(lambda x: calls.append(x), [(0,), (1,), (2,)], device="cpu", warmup=0, repeats=3)
    assert calls == [0, 1, 2, 0, 1, 2], "every set is touched once before timing, then the sets rotate"


def test_precisions() -> None:
    assert rl.available_precisions("cpu")[0] == "fp32"
    assert "fp16" not in rl.available_precisions("cpu")
    before = torch.backends.cuda.matmul.allow_tf32
    with rl.matmul_precision("tf32") as dtype:
        assert dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.mark.parametrize(("call", "match"), [
    (lambda: rl.measure_bandwidth("cpu", kind="write"), "kind"),
    (lambda: rl.measure_bandwidth("cpu", buffer_bytes=1000), "buffer_bytes"),
    (lambda: rl.measure_bandwidth("cpu", buffer_bytes=-5), "buffer_bytes"),
    (lambda: rl.measure_bandwidth("cpu", buffer_bytes=2 * rl.MiB, repeats=0), "repeats"),
    (lambda: rl.measure_matmul("cpu", precision="fp8"), "precision"),
    (lambda: rl.measure_matmul("cpu", precision="fp16"), "fp16"),
    (lambda: rl.measure_matmul("cpu", size=0), "size"),
    (lambda: rl.measure_matmul("cpu", target_s=-1.0), "target_s"),
    (lambda: rl.measure_matmul("cpu", target_s=float("nan")), "target_s"),
    (lambda: rl.time_gemm(0, 4, 4, device="cpu"), "m"),
    (lambda: rl.time_gemm(4, 4, 2.5, device="cpu"), "n"),
    (lambda: rl.time_rotating(print, [], device="cpu"), "arg_sets"),
    (lambda: rl.rotation_count(0), "bytes_per_set"),
    (lambda: rl.measure_bandwidth("tpu"), "tpu"),
])
def test_measurements_refuse_nonsense(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


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
    assert rl.roofline_time(flops, nbytes, peak, bw) == pytest.approx(flops / rl.attainable_flops(flops / nbytes, peak, bw))
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
    many = rl.decode_step(batch=4096, dense_params=shared, expert_params=experts, n_experts=e, top_k=k, bytes_per_param=s)
    assert many.nbytes == pytest.approx(s * (shared + experts)), "a large batch touches every expert"
    kv = rl.decode_step(batch=2, dense_params=p, bytes_per_param=s, kv_bytes_per_seq=1e9, attention_flops_per_seq=1e6)
    assert kv.nbytes == s * p + 2e9 and kv.flops == 4 * p + 2e6 and kv.weight_bytes == s * p


def test_decode_critical_batch() -> None:
    peak, bw = 989e12, 3.35e12
    model = dict(dense_params=10**8, expert_params=8 * 10**9, n_experts=64, top_k=4, bytes_per_param=2)
    b = rl.decode_critical_batch(peak, bw, **model)
    ridge = peak / bw
    assert rl.decode_step(batch=int(b), **model).intensity >= ridge > rl.decode_step(batch=int(b) - 1, **model).intensity
    dense_b = rl.decode_critical_batch(peak, bw, dense_params=10**9, bytes_per_param=2)
    assert dense_b == math.ceil(ridge), "dense bf16: intensity = batch FLOP/byte"
    assert b > dense_b, "an MoE needs a larger batch than a dense model to leave the memory roof"
    assert rl.decode_critical_batch(peak, bw, dense_params=10**9, bytes_per_param=2,
                                    kv_bytes_per_seq=1e8) == math.inf, "reading the KV cache caps the intensity"


@pytest.mark.parametrize(("call", "match"), [
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
])
def test_model_refuses_nonsense(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# records and the CLI (python -m dmcourse.roofline): tests/test_records.py


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
    assert rl.moe_cost(4, d, f, e, k, s, experts_touched=3).nbytes < rl.moe_cost(4, d, f, e, k, s, experts_touched=5).nbytes
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

    ax = rp.roofline_figure([dict(name="X", peak=1e12, bandwidth=1e10),
                             dict(name="Y", peak=1e14, bandwidth=1e12, kind="datasheet")],
                            [dict(intensity=1.0, flops=1e10, label="p", annotate="B=1")])
    labels = [line.get_label() for line in ax.get_lines()]
    assert "X" in labels and "Y (datasheet)" in labels
    with pytest.raises(ValueError, match="kind"):
        rp.roofline_figure([dict(name="Z", peak=1.0, bandwidth=1.0, kind="guess")])
    plt.close("all")
    widget = rp.explorer({"X": (1e12, 1e10)})
    assert widget.children
    plt.close("all")
