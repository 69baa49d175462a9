"""Tests of dmcourse.serving: speculative decoding, quantised and offloaded experts, hot experts."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dmcourse import accounting, load_preset
from dmcourse import roofline as rl
from dmcourse import serving as sv

H100 = rl.datasheet_roof("H100")  # (peak FLOP/s, bytes/s), datasheet bf16
MIXTRAL = load_preset("Mixtral-8x7B")
DEEPSEEK = load_preset("DeepSeek-V3")


# ---------------------------------------------------------------- speculative decoding


@pytest.mark.parametrize("alpha, draft", [(0.0, 3), (0.3, 1), (0.85, 1), (0.9, 4), (0.5, 0), (1.0, 5)])
def test_expected_accepted_is_the_truncated_geometric_sum(alpha, draft):
    direct = sum(alpha**i for i in range(draft + 1))
    assert math.isclose(sv.expected_accepted(alpha, draft), direct, rel_tol=1e-12)


def test_expected_accepted_limits():
    assert sv.expected_accepted(0.0, 7) == 1.0  # nothing accepted: the target's own token
    assert sv.expected_accepted(0.8, 0) == 1.0  # g = 0 is plain decoding
    assert sv.expected_accepted(1.0, 4) == 5.0  # everything accepted
    assert math.isclose(sv.expected_accepted(1 - 1e-9, 4), 5.0, rel_tol=1e-6)  # continuous at alpha -> 1
    assert sv.expected_accepted(0.9, 1) == pytest.approx(1.9)  # DeepSeek-V3's MTP: 1 + alpha


def test_monte_carlo_acceptance_matches_formula():
    g = torch.Generator().manual_seed(0)
    alpha, draft, n = 0.7, 3, 200_000
    accepted = (torch.rand(n, draft, generator=g) < alpha).int().cumprod(dim=1).sum(dim=1) + 1
    assert float(accepted.float().mean()) == pytest.approx(sv.expected_accepted(alpha, draft), rel=0.01)


def _moe_counts(n_experts=64, top_k=4, dense=10**8, expert=4 * 10**9):
    return {
        "dense_params": dense,
        "expert_params": expert,
        "n_experts": n_experts,
        "top_k": top_k,
        "bytes_per_param": 2,
    }


def test_draft_zero_is_plain_decode():
    model = _moe_counts()
    plain = rl.decode_step(batch=5, **model)
    assert sv.verify_step(batch=5, draft=0, **model) == plain
    assert sv.verify_cost_ratio(batch=5, draft=0, peak_flops=H100[0], bandwidth=H100[1], **model) == 1.0
    assert sv.speculative_speedup_for(0.8, 0, batch=5, peak_flops=H100[0], bandwidth=H100[1], **model) == 1.0


def test_verify_step_touches_experts_of_b_times_g_plus_one_tokens_and_reads_kv_once_per_sequence():
    model = _moe_counts()
    step = sv.verify_step(batch=3, draft=2, kv_bytes_per_seq=1e6, **model)
    assert step.experts_touched == pytest.approx(rl.expected_experts_touched(64, 4, 9))
    no_kv = sv.verify_step(batch=3, draft=2, **model)
    assert step.nbytes - no_kv.nbytes == pytest.approx(3 * 1e6)
    assert step.flops == pytest.approx(9 * 2 * (10**8 + 4 * 10**9 * 4 / 64))


def test_large_batch_saturates_at_all_experts_and_verification_becomes_free():
    model = _moe_counts(n_experts=8, top_k=2)
    step = sv.verify_step(batch=4096, draft=3, **model)
    assert step.experts_touched == pytest.approx(8.0)
    # a dense model, memory-bound: verification costs nothing
    ratio = sv.verify_cost_ratio(
        batch=1, draft=3, peak_flops=H100[0], bandwidth=H100[1], dense_params=10**9, bytes_per_param=2
    )
    assert ratio == pytest.approx(1.0)


def test_moe_verification_costs_more_than_dense_at_batch_one():
    counts = rl.decode_counts(DEEPSEEK)
    moe = sv.verify_cost_ratio(batch=1, draft=1, peak_flops=H100[0], bandwidth=H100[1], bytes_per_param=2, **counts)
    # bytes of the 2-token step over the 1-token step, weights only, by hand
    touched = [rl.expected_experts_touched(256, 8, b) for b in (1, 2)]
    by_hand = [(counts["dense_params"] + counts["expert_params"] * t / 256) for t in touched]
    assert moe == pytest.approx(by_hand[1] / by_hand[0])
    assert moe > 1.3


def test_speculative_speedup_formula_and_leviathan_limit():
    assert sv.speculative_speedup(0.8, 4, 1.0) == pytest.approx(sv.expected_accepted(0.8, 4))
    c = 0.05
    leviathan = (1 - 0.8**5) / ((1 - 0.8) * (4 * c + 1))
    assert sv.speculative_speedup(0.8, 4, 1.0, draft_cost=c) == pytest.approx(leviathan)
    assert sv.speculative_speedup(0.8, 4, 2.0) == pytest.approx(sv.expected_accepted(0.8, 4) / 2)


def test_dense_can_lose_where_the_moe_stays_memory_bound():
    """The property below needs its premise: past the dense model's critical batch, verification
    costs the dense model (g + 1)x while an MoE that is still memory-bound pays little."""
    peak, bw = H100
    total = 10**8 + 4 * 10**9
    active = 10**8 + 4 * 10**9 * 4 // 64
    dense = {"dense_params": active, "bytes_per_param": 2}
    b = 512  # above the dense model's critical batch (~ridge), below the MoE's (~ridge x total/active)
    assert rl.decode_critical_batch(peak, bw, **dense) < b < rl.decode_critical_batch(peak, bw, **_moe_counts()) / 4
    assert sv.verify_cost_ratio(batch=b, draft=3, peak_flops=peak, bandwidth=bw, **dense) == pytest.approx(4.0)
    moe = sv.verify_cost_ratio(batch=b, draft=3, peak_flops=peak, bandwidth=bw, **_moe_counts())
    assert moe == pytest.approx(1.0, abs=1e-3) and total > active
    assert sv.speculative_speedup(0.8, 3, moe) > 1 > sv.speculative_speedup(0.8, 3, 4.0)


@settings(max_examples=200, deadline=None)
@given(
    n_experts=st.integers(2, 256),
    k_frac=st.floats(0.01, 1.0),
    dense=st.integers(0, 10**10),
    expert=st.integers(1, 10**12),
    batch_frac=st.floats(0.0, 1.0),
    draft=st.integers(0, 8),
    alpha=st.floats(0.0, 1.0),
    draft_cost=st.floats(0.0, 0.2),
    peak_exp=st.floats(13.5, 16),
)
def test_property_moe_speedup_never_exceeds_dense_at_equal_acceptance(
    n_experts, k_frac, dense, expert, batch_frac, draft, alpha, draft_cost, peak_exp
):
    """While the dense model of equal active size is memory-bound when verifying (B (g + 1) tokens
    below its critical batch), the MoE's speed-up is at most the dense one."""
    top_k = max(1, min(n_experts, round(k_frac * n_experts)))
    peak, bw = 10**peak_exp, 3.35e12
    active = dense + expert * top_k // n_experts
    assume(active > 0)
    dense_model = {"dense_params": active, "bytes_per_param": 2}
    crit = rl.decode_critical_batch(peak, bw, **dense_model)
    batch = max(1, int(batch_frac * (crit - 1) / (draft + 1)))
    assume(batch * (draft + 1) < crit)
    moe_model = {
        "dense_params": dense,
        "expert_params": expert,
        "n_experts": n_experts,
        "top_k": top_k,
        "bytes_per_param": 2,
    }
    s_moe = sv.speculative_speedup_for(
        alpha, draft, batch=batch, peak_flops=peak, bandwidth=bw, draft_cost=draft_cost, **moe_model
    )
    s_dense = sv.speculative_speedup_for(
        alpha, draft, batch=batch, peak_flops=peak, bandwidth=bw, draft_cost=draft_cost, **dense_model
    )
    assert s_moe <= s_dense * (1 + 1e-9)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sv.expected_accepted(1.5, 2),
        lambda: sv.expected_accepted(-0.1, 2),
        lambda: sv.expected_accepted(0.5, -1),
        lambda: sv.expected_accepted(0.5, 1.5),
        lambda: sv.expected_accepted(True, 2),
        lambda: sv.speculative_speedup(0.5, 2, 0.0),
        lambda: sv.speculative_speedup(0.5, 2, 1.0, draft_cost=-1),
        lambda: sv.verify_step(batch=0, draft=1, dense_params=10, bytes_per_param=2),
        lambda: sv.verify_step(batch=1, draft=1, kv_bytes_per_seq=-1.0, dense_params=10, bytes_per_param=2),
    ],
)
def test_speculative_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- quantised weights


def test_bytes_per_param_counts_group_scales():
    assert sv.FORMATS["bf16"].bytes_per_param == 2.0
    assert sv.FORMATS["int8 g128"].bytes_per_param == 1 + 2 / 128
    assert sv.FORMATS["int4 g128"].bytes_per_param == 0.5 + 2 / 128
    assert sv.FORMATS["int4 g128 +zero"].bytes_per_param == 0.5 + 4 / 128
    assert sv.QuantFormat("x", 4, 32, scale_bytes=4).bytes_per_param == 0.5 + 4 / 32


def test_quantised_weights_match_accounting_when_unquantised():
    for cfg in (MIXTRAL, DEEPSEEK):
        assert sv.quantised_weight_bytes(cfg) == pytest.approx(accounting.weight_bytes(cfg, "bf16"))
        cost = sv.mixed_decode_cost(cfg, 16)
        step = rl.decode_step_for_config(cfg, 16, "bf16")
        assert cost.flops == pytest.approx(step.flops) and cost.nbytes == pytest.approx(step.nbytes)


def test_quantising_experts_shrinks_bytes_not_flops():
    p = accounting.count_params(MIXTRAL)
    q = sv.quantised_weight_bytes(MIXTRAL, "int4 g128", "bf16")
    assert q == pytest.approx(p.experts * (0.5 + 2 / 128) + (p.total - p.experts) * 2)
    a, b = sv.mixed_decode_cost(MIXTRAL, 1), sv.mixed_decode_cost(MIXTRAL, 1, "int4 g128")
    assert a.flops == b.flops and b.nbytes < 0.4 * a.nbytes
    dense = load_preset("Llama-3-8B")
    assert sv.mixed_decode_cost(dense, 4, "int4 g128").nbytes == pytest.approx(sv.mixed_decode_cost(dense, 4).nbytes)


def test_int8_linear_matches_dequantised_matmul():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g)
    x = torch.randn(3, 128, generator=g)
    wq, s = sv.quantize_int8(w)
    assert wq.dtype == torch.int8 and s.shape == (64,)
    assert (wq.float() * s[:, None] - w).abs().max() <= s.max() / 2 + 1e-6
    ref = x @ (wq.float() * s[:, None]).T
    torch.testing.assert_close(sv.int8_linear(x, wq, s), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        sv.int8_linear(x, w, s)
    with pytest.raises(ValueError):
        sv.quantize_int8(torch.ones(4, dtype=torch.int32))


@pytest.mark.parametrize(
    "call",
    [
        lambda: sv.quant_format("int3"),
        lambda: sv.QuantFormat("x", 0),
        lambda: sv.QuantFormat("x", 4, 0),
        lambda: sv.QuantFormat("x", 4, 128, scale_bytes=-1),
    ],
)
def test_quant_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- offloading


def test_zero_miss_rate_gives_no_transfer_time():
    step = sv.offload_step(MIXTRAL, 1, 0.0, 16e9, peak_flops=H100[0], bandwidth=H100[1])
    assert step.fetched_bytes == 0 and step.transfer_s == 0
    assert step.time_s == pytest.approx(sv.mixed_decode_cost(MIXTRAL, 1).time_s(*H100))


def test_offload_time_grows_with_miss_rate_and_falls_with_bandwidth():
    kw = {"peak_flops": H100[0], "bandwidth": H100[1], "experts": "int4 g128"}
    half = sv.offload_step(MIXTRAL, 1, 0.5, 16e9, **kw)
    # batch 1 touches top_k = 2 experts in each of 32 layers; half of them come over the link
    assert half.fetched_bytes == pytest.approx(0.5 * 2 * 32 * sv.expert_bytes(MIXTRAL, "int4 g128"))
    assert half.transfer_s == pytest.approx(half.fetched_bytes / 16e9)
    assert half.time_s == pytest.approx(half.device_s + half.transfer_s)
    full = sv.offload_step(MIXTRAL, 1, 1.0, 16e9, **kw)
    fast = sv.offload_step(MIXTRAL, 1, 0.5, 64e9, **kw)
    assert full.time_s > half.time_s > fast.time_s
    overlapped = sv.offload_step(MIXTRAL, 1, 0.5, 16e9, overlap=True, **kw)
    assert overlapped.time_s == pytest.approx(max(half.device_s, half.transfer_s))


def test_resident_experts():
    p = accounting.count_params(MIXTRAL)
    other = (p.total - p.experts) * 2
    per_layer = 32 * sv.expert_bytes(MIXTRAL, "int4 g128")
    assert sv.resident_experts(MIXTRAL, other + 3.5 * per_layer, "int4 g128") == 3
    assert sv.resident_experts(MIXTRAL, 1e15, "int4 g128") == 8
    assert sv.resident_experts(MIXTRAL, other / 2) == -1
    assert sv.resident_experts(MIXTRAL, other + per_layer, "int4 g128", reserved_bytes=per_layer) == 0
    with pytest.raises(ValueError):
        sv.expert_bytes(load_preset("Llama-3-8B"))


@pytest.mark.parametrize(
    "call",
    [
        lambda: sv.offload_step(MIXTRAL, 1, 1.5, 16e9, peak_flops=1e12, bandwidth=1e11),
        lambda: sv.offload_step(MIXTRAL, 1, 0.5, 0.0, peak_flops=1e12, bandwidth=1e11),
        lambda: sv.resident_experts(MIXTRAL, -1.0),
        lambda: sv.measure_h2d(2**20, pinned=False, device="cpu"),
    ],
)
def test_offload_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_h2d_on_gpu():
    assert sv.measure_h2d(2**24, pinned=True) > 1e8


# ---------------------------------------------------------------- hot experts


def test_cache_hit_rate():
    counts = torch.tensor([5.0, 1.0, 3.0, 1.0])
    assert sv.cache_hit_rate(counts, 0) == 0.0
    assert sv.cache_hit_rate(counts, 1) == 0.5
    assert sv.cache_hit_rate(counts, 2) == 0.8
    assert sv.cache_hit_rate(counts, 4) == 1.0
    assert sv.cache_hit_rate(torch.ones(8), 2) == pytest.approx(0.25)


@given(E=st.integers(1, 64), k_frac=st.floats(0.01, 1.0), tokens=st.integers(0, 300))
def test_property_uniform_counts_give_the_roofline_formula(E, k_frac, tokens):
    k = max(1, min(E, round(k_frac * E)))
    assert sv.experts_touched_skewed(torch.ones(E), k, tokens) == pytest.approx(
        rl.expected_experts_touched(E, k, tokens)
    )


def test_skew_touches_fewer_experts_and_counting_agrees():
    counts = torch.tensor([8.0, 4, 2, 1, 1, 0, 0, 0])  # top-1 choices
    assert sv.experts_touched_skewed(counts, 1, 6) < rl.expected_experts_touched(8, 1, 6)
    g = torch.Generator().manual_seed(0)
    draws = torch.multinomial(counts.repeat(20_000, 1), 6, replacement=True, generator=g)
    counted = torch.tensor([row.unique().numel() for row in draws]).float().mean()
    assert float(counted) == pytest.approx(sv.experts_touched_skewed(counts, 1, 6), rel=0.02)


def test_replicated_max_load():
    assert sv.replicated_max_load(torch.ones(8), 4) == pytest.approx(1.0)
    skewed = torch.tensor([8.0, 1, 1, 1, 1, 1, 1, 2])
    base = sv.replicated_max_load(skewed, 4)
    # 2 experts per GPU: the hot expert (8) must share its GPU with one more (1): 9 of 16, mean 4
    assert base == pytest.approx(9.0 / 4)
    assert sv.replicated_max_load(skewed, 4, 4) < base
    assert sv.replicated_max_load(skewed, 1, 3) == pytest.approx(1.0)  # one GPU holds everything
    # one replica: the hot expert as 4 + 4 on two GPUs, each with one more expert (1): 5 of mean 4
    assert sv.replicated_max_load(skewed, 4, 1) == pytest.approx(5 / 4)
    # three replicas: 4 copies of 2, one per GPU, plus 2 + 1 + 1 + ... : every GPU carries 4
    assert sv.replicated_max_load(skewed, 4, 3) == pytest.approx(1.0)


@given(
    counts=st.lists(st.integers(0, 1000), min_size=2, max_size=24), n_gpus=st.integers(1, 8), extra=st.integers(0, 6)
)
def test_property_more_replicas_never_raise_the_busiest_gpu(counts, n_gpus, extra):
    c = torch.tensor(counts, dtype=torch.float64)
    assume(float(c.sum()) > 0)
    loads = [sv.replicated_max_load(c, n_gpus, r) for r in range(extra + 1)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(loads))
    assert loads[-1] >= 1 - 1e-12  # the busiest GPU carries at least the mean


@pytest.mark.parametrize(
    "call",
    [
        lambda: sv.cache_hit_rate(torch.ones(4), 5),
        lambda: sv.cache_hit_rate(torch.tensor([-1.0, 2.0]), 1),
        lambda: sv.cache_hit_rate(torch.zeros(3), 1),
        lambda: sv.cache_hit_rate([1, 2], 1),
        lambda: sv.experts_touched_skewed(torch.tensor([10.0, 0.0, 0.0]), 2, 4),
        lambda: sv.replicated_max_load(torch.ones(4), 0),
    ],
)
def test_hot_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_shipped_popularity_record():
    doc = sv.load_popularity()
    assert {"command", "date", "versions", "configs"} <= set(doc)
    for name, entry in doc["configs"].items():
        E, k = entry["arch"]["n_experts"], entry["arch"]["top_k"]
        assert len(entry["indices"]) == entry["arch"]["n_layers"], name
        for idx in entry["indices"]:
            assert idx.dim() == 3 and idx.shape[-1] == k and 0 <= int(idx.min()) and int(idx.max()) < E
            # top-k picks distinct experts per token
            assert bool((idx.sort(dim=-1).values.diff(dim=-1) > 0).all())


def test_popularity_tool_smoke_run(tmp_path, monkeypatch):
    """tools/expert_popularity.py (which made the shipped file) runs and writes what load_popularity reads."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "expert_popularity", Path(__file__).resolve().parents[1] / "tools" / "expert_popularity.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setenv("DMCOURSE_PROGRESS", "0")
    out = tmp_path / "pop.json"
    assert tool.main(["--out", str(out), "--steps", "2"]) == 0
    doc = json.loads(out.read_text())
    assert doc["command"] == f"python tools/expert_popularity.py --out {out} --steps 2"
    assert set(doc["configs"]) == set(sv.load_popularity()["configs"])
    entry = doc["configs"]["Mixtral top-2, no balancing"]
    assert torch.tensor(entry["indices"]).shape == (2, tool.EVAL_SEQS, tool.EVAL_LEN, 2)
