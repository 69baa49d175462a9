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


# ---------------------------------------------------------------------------------- records and CLI


def test_cli_writes_a_valid_record(tmp_path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "rec.json"
    done = subprocess.run([sys.executable, "-m", "dmcourse.roofline", "--device", "cpu", "--quick",
                           "--precisions", "fp32", "--repeats", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert rl.read_record(out) == record
    assert record["device_type"] == "cpu" and record["device"] and record["date"][:2] == "20"
    assert record["command"].startswith("python -m dmcourse.roofline") and "--quick" in record["command"]
    assert record["versions"]["torch"] == torch.__version__
    figures = record["figures"]
    assert set(figures["bandwidth_bytes_per_s"]) == {"copy", "read"} and set(figures["matmul_flops_per_s"]) == {"fp32"}
    assert all(v > 0 and math.isfinite(v) for group in figures.values() for v in group.values())


def test_cli_refuses_nonsense(tmp_path) -> None:
    with pytest.raises(SystemExit):
        rl.main(["--device", "cpu", "--precisions", "fp64", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_records_are_validated() -> None:
    with pytest.raises(ValueError, match="lacks"):
        rl.validate_record({"schema": 1})
    good = {"schema": 1, "device": "X", "device_type": "cuda", "date": "2026-01-01", "versions": {},
            "command": "", "figures": {"bandwidth_bytes_per_s": {"copy": 1e12}, "matmul_flops_per_s": {"bf16": 1e15}}}
    assert rl.validate_record(good) is good
    bad = {**good, "figures": {"bandwidth_bytes_per_s": {"copy": -1.0}, "matmul_flops_per_s": {"bf16": 1e15}}}
    with pytest.raises(ValueError, match="copy"):
        rl.validate_record(bad)
    for record in rl.shipped_records():  # whatever is shipped must be readable
        assert record["device_type"] == "cuda"
