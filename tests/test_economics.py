"""dmcourse.economics (memory, GPUs needed, capacity, decode time and cost), dmcourse.calculator and
the pure functions of the calculator in dmcourse.widgets.

Reference values are derived here by hand from the models' config.json values and the datasheet
figures (gpus.json), not from the functions under test.
"""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")

from dmcourse import calculator as calc  # noqa: E402
from dmcourse import economics as ec  # noqa: E402
from dmcourse import widgets  # noqa: E402
from dmcourse.configs import ModelConfig, load_preset  # noqa: E402

H100_PEAK_BF16 = 989.5e12  # datasheet, dense (gpus.json)
H100_BW = 3.35e12
H100_MEM = 80e9

# Mixtral-8x7B by hand (config.json): d=4096, 32 layers, 32 heads, 8 KV heads of 128, 8 experts
# of width 14336, top-2, vocab 32000, untied head.
D, L, V, DFF, E, K = 4096, 32, 32000, 14336, 8, 2
MX_EXPERT = 3 * D * DFF  # one SwiGLU expert
MX_ATTN = D * D + 2 * D * 8 * 128 + D * D
MX_NON_EXPERT = L * (MX_ATTN + 2 * D + E * D) + D + 2 * V * D  # attention, norms, routers, final norm, emb + head
MX_TOTAL = MX_NON_EXPERT + L * E * MX_EXPERT
MX_KV_PER_TOKEN_BF16 = 2 * L * 8 * 128 * 2  # K and V, every layer, 8 KV heads of 128, 2 bytes

# Llama-3-70B by hand: d=8192, 80 layers, 64 heads, 8 KV heads of 128, d_ff=28672, vocab 128256.
L70_TOTAL = 80 * (8192 * 8192 * 2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192) + 8192 + 2 * 128256 * 8192
L70_KV_PER_TOKEN_BF16 = 2 * 80 * 8 * 128 * 2
# Llama-3-8B: d=4096, 32 layers, 32 heads, 8 KV heads of 128, d_ff=14336, vocab 128256.
LLAMA8_TOTAL = 32 * (4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096 + 2 * 128256 * 4096


# ------------------------------------------------------------------------------------- memory


def test_weights_every_expert_resident_and_kv_cache_by_hand() -> None:
    fit = ec.serving_memory("Mixtral-8x7B", "H100", "bf16", batch=4, context=1000)
    assert fit.weight_bytes == 2 * MX_TOTAL, "all 8 experts of every layer are stored, not just the top-2"
    assert fit.kv_cache_bytes == 4 * 1000 * MX_KV_PER_TOKEN_BF16
    assert 93e9 < fit.weight_bytes < 94e9  # the "~94 GB" of the source text
    # int4 weights keep a 16-bit cache by default; an explicit kv_dtype changes it
    q = ec.serving_memory("Mixtral-8x7B", "H100", "int4", batch=4, context=1000)
    assert q.weight_bytes == MX_TOTAL / 2 and q.kv_cache_bytes == fit.kv_cache_bytes
    q8 = ec.serving_memory("Mixtral-8x7B", "H100", "int4", batch=4, context=1000, kv_dtype="fp8")
    assert q8.kv_cache_bytes == fit.kv_cache_bytes / 2


def test_deepseek_compressed_latent_cache() -> None:
    fit = ec.serving_memory("DeepSeek-V3", "H200", "fp8", batch=2, context=100)
    # 61 layers x (kv_lora_rank 512 + rope key 64) values, bf16 cache: no factor 2, one latent per layer
    assert fit.kv_cache_bytes == 2 * 100 * 61 * (512 + 64) * 2


def test_activation_estimate_by_hand() -> None:
    c = ModelConfig(name="t", vocab_size=100, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40)
    # attention: q 4*4 + new k, v 2*2*4 + out 4*4 = 48; FFN 3*40 = 120 -> max 120; + 2*16 residual
    per_token = 2 * 16 + 120
    assert ec.activation_bytes(c, 3, "bf16") == 3 * per_token * 2 + 3 * 100 * 4
    assert ec.activation_bytes(c, 3, "bf16", logits_tokens=1) == 3 * per_token * 2 + 100 * 4
    # serving_memory reserves the activations of one decode step of the batch
    assert ec.serving_memory(c, "H100", "bf16", batch=3).extra_bytes == 3 * per_token * 2 + 3 * 100 * 4
    moe = c.replace(n_experts=4, top_k=2, d_ff_expert=8, n_shared_experts=1, d_ff_shared=10)
    assert ec.ffn_width_per_token(moe) == 2 * 8 + 10
    assert ec.activation_bytes(moe, 1, "fp32", logits_tokens=0) == (2 * 16 + max(48, 3 * 26)) * 4


def test_gpus_needed_by_hand() -> None:
    assert ec.gpus_needed("Llama-3-70B", "H100") == math.ceil(2 * L70_TOTAL / H100_MEM) == 2
    # 32 sequences x 4096 tokens of KV cache push it to a third GPU
    kv = 32 * 4096 * L70_KV_PER_TOKEN_BF16
    need = ec.gpus_needed("Llama-3-70B", "H100", batch=32, context=4096)
    assert need == 3 and 2 * L70_TOTAL + kv > 2 * H100_MEM
    assert ec.gpus_needed("Llama-3-70B", "H100", "int4") == 1
    assert ec.gpus_needed("Mixtral-8x7B", "H100") == 2, "94 GB of experts do not fit one 80 GB GPU"
    assert ec.gpus_needed("Mixtral-8x7B", "H200") == 1


def test_max_batch_by_hand_exactly_fits_and_one_over() -> None:
    # Llama-3-8B, bf16, context 4096, one H100 (80 GB datasheet). Per sequence: the KV cache
    # 4096 x 2 x 32 layers x 8 heads x 128 x 2 bytes, plus one decode token's activations
    # (2 x 4096 residual + max(attention 4096 + 4096 + 2*1024, FFN 3 x 14336) values x 2 bytes) and
    # its fp32 logits (128256 x 4 bytes).
    per_seq = 4096 * 2 * 32 * 8 * 128 * 2 + (2 * 4096 + 3 * 14336) * 2 + 128256 * 4
    fixed = 2 * LLAMA8_TOTAL
    expected = (80 * 10**9 - fixed) // per_seq
    b = ec.max_batch("Llama-3-8B", "H100", context=4096)
    assert b == expected == 118
    fits = ec.decode_cost("Llama-3-8B", "H100", b, context=4096, n_gpus=1)
    over = ec.decode_cost("Llama-3-8B", "H100", b + 1, context=4096, n_gpus=1)
    assert fits.fits and fits.fit_message.startswith("fits")
    assert not over.fits and "DOES NOT FIT" in over.fit_message and "needs at least 2 x H100" in over.fit_message
    assert over.memory.needed_bytes == pytest.approx(fixed + (b + 1) * per_seq)
    # more GPUs hold more sequences: 2 x 80 GB
    assert ec.max_batch("Llama-3-8B", "H100", context=4096, n_gpus=2) == (160 * 10**9 - fixed) // per_seq
    assert ec.max_batch("DeepSeek-V3", "H100", context=4096) == 0, "671B parameters never fit one 80 GB GPU"


def test_cost_says_when_it_does_not_fit() -> None:
    one = ec.decode_cost("DeepSeek-V3", "H100", 1, n_gpus=1)
    assert not one.fits and f"needs at least {one.memory.gpus_needed} x H100" in one.fit_message
    assert one.memory.gpus_needed == math.ceil(one.memory.needed_bytes / H100_MEM) >= 17
    default = ec.decode_cost("DeepSeek-V3", "H100", 1)
    assert default.fits and default.n_gpus == one.memory.gpus_needed
    est = calc.estimate("Llama-3-8B", "H100", batch=119, context=4096, n_gpus=1)
    assert not est.fits and "DOES NOT FIT" in dict(est.rows())["fits?"]
    assert calc.estimate("Llama-3-8B", "H100", batch=118, context=4096, n_gpus=1).fits
    assert calc.estimate("Llama-3-8B", "H100", batch=119, context=4096).n_gpus == 2


def test_deepseek_absorbed_and_explicit_forms() -> None:
    absorbed = ec.decode_cost("DeepSeek-V3", "H200", 64, context=4096, dtype="fp8")
    explicit = ec.decode_cost("DeepSeek-V3", "H200", 64, context=4096, dtype="fp8", mla_form="explicit")
    # 61 layers x 128 heads x (192 + 128) per-head values vs 61 x 576 latent values: 71x the cache
    assert explicit.memory.kv_cache_bytes / absorbed.memory.kv_cache_bytes == pytest.approx(128 * 320 / 576)
    assert explicit.n_gpus > absorbed.n_gpus and explicit.step_time_s > absorbed.step_time_s
    assert ec.critical_batch("DeepSeek-V3", context=4096) < ec.critical_batch(
        "DeepSeek-V3", context=4096, mla_form="explicit"
    )


# ---------------------------------------------------------------------------------- decode cost


def test_decode_cost_mixtral_batch_1_by_hand() -> None:
    c = ec.decode_cost("Mixtral-8x7B", "H100", 1, n_gpus=1, usd_per_gpu_hour=2.0)
    # one token reads the non-expert weights (minus the input embedding, a lookup) and its 2 experts per layer
    touched = E * (1 - (1 - K / E) ** 1)
    assert touched == pytest.approx(2)
    read = 2 * (MX_NON_EXPERT - V * D + L * MX_EXPERT * touched)
    assert c.step.nbytes == pytest.approx(read)
    assert c.step_time_s == pytest.approx(read / H100_BW)
    assert c.bound == "memory" and c.precision == "bf16"
    assert c.gpu_seconds_per_token == pytest.approx(read / H100_BW)
    assert c.usd_per_million_tokens == pytest.approx(read / H100_BW * 1e6 * 2.0 / 3600)


def test_cost_per_token_divides_the_step_by_the_batch_and_ignores_ideal_gpu_count() -> None:
    one = ec.decode_cost("Llama-3-8B", "H100", 16, context=2048, n_gpus=1, usd_per_gpu_hour=3.0)
    four = ec.decode_cost("Llama-3-8B", "H100", 16, context=2048, n_gpus=4, usd_per_gpu_hour=3.0)
    assert four.step_time_s == pytest.approx(one.step_time_s / 4), "ideal: 4 GPUs, a quarter of the time"
    assert four.usd_per_million_tokens == pytest.approx(one.usd_per_million_tokens)
    assert one.gpu_seconds_per_token == pytest.approx(one.step_time_s / 16)
    assert one.tokens_per_s == pytest.approx(16 / one.step_time_s)
    # memory-bound: weights read once per step plus every sequence's KV cache
    llama8_read_params = LLAMA8_TOTAL - 128256 * 4096  # the input embedding is a lookup
    kv = 16 * 2048 * 2 * 32 * 8 * 128 * 2
    assert one.step.nbytes == pytest.approx(2 * llama8_read_params + kv)
    assert one.usd_per_million_tokens == pytest.approx((2 * llama8_read_params + kv) / H100_BW / 16 * 1e6 * 3 / 3600)


def test_default_gpu_count_and_no_price() -> None:
    c = ec.decode_cost("Llama-3-70B", "H100", 32, context=4096)
    assert c.n_gpus == 3 and c.usd_per_million_tokens is None


def test_compute_bound_at_large_batch_and_twins() -> None:
    dense_twin = ec.decode_cost("Mixtral-8x7B", "H100", 4096, twin="equal_total", n_gpus=1)
    moe = ec.decode_cost("Mixtral-8x7B", "H100", 4096, n_gpus=1)
    active_twin = ec.decode_cost("Mixtral-8x7B", "H100", 4096, twin="equal_active", n_gpus=1)
    assert dense_twin.bound == moe.bound == active_twin.bound == "compute"
    # the twin uses every parameter but the input embedding (norm weights included, as in decode_step)
    assert dense_twin.step.flops == pytest.approx(2 * 4096 * (MX_TOTAL - V * D))
    active = MX_NON_EXPERT - V * D + L * K * MX_EXPERT
    assert moe.step.flops == pytest.approx(2 * 4096 * active)
    assert active_twin.step.flops == pytest.approx(moe.step.flops)
    assert moe.step_time_s == pytest.approx(2 * 4096 * active / H100_PEAK_BF16)
    assert "dense twin" in dense_twin.model


def test_regime_batches_by_hand() -> None:
    r = ec.regime_batches("Mixtral-8x7B", "H100")
    # (1 - 2/8)^B <= 0.1  <=>  B >= ln 0.1 / ln 0.75 = 8.004
    assert r["experts_touched"] == math.ceil(math.log(0.1) / math.log(0.75)) == 9
    # the dense twin's step does 2 FLOPs per parameter per sequence on 2 bytes: intensity = B
    assert r["dense_critical"] == math.ceil(H100_PEAK_BF16 / H100_BW)
    # the MoE's critical batch: FLOPs 2*active*B over bytes of (nearly) all weights
    approx = H100_PEAK_BF16 / H100_BW * (MX_TOTAL - V * D) / (MX_NON_EXPERT - V * D + L * K * MX_EXPERT)
    assert r["moe_critical"] == pytest.approx(approx, rel=0.01)
    deepseek = ec.regime_batches("DeepSeek-V3")
    assert deepseek["experts_touched"] == math.ceil(math.log(0.1) / math.log(1 - 8 / 256))


def test_long_context_keeps_gqa_decode_memory_bound() -> None:
    assert ec.critical_batch("Llama-3-70B", "H100") == math.ceil(H100_PEAK_BF16 / H100_BW)
    # attention at decode does ~2 * n_heads/n_kv_heads FLOPs per KV byte: far below the ridge
    assert ec.critical_batch("Llama-3-70B", "H100", context=4096) == math.inf


# ------------------------------------------------------------------------------------- calculator


def test_estimate_is_consistent_and_labels_the_price() -> None:
    est = calc.estimate("Mixtral-8x7B", "H100", batch=8, context=1024, usd_per_gpu_hour=2.5)
    assert est.n_gpus == est.memory.gpus_needed == 2
    assert est.params_total == MX_TOTAL
    assert est.cost.usd_per_million_tokens == pytest.approx(est.cost.gpu_seconds_per_token * 1e6 * 2.5 / 3600)
    text = dict(est.rows())
    assert "assumed" in text["cost per million tokens"] and "every expert resident" in text["weights"]
    assert calc.estimate("Llama-3-8B").cost.usd_per_million_tokens is None
    assert "no price" in dict(calc.estimate("Llama-3-8B").rows())["cost per million tokens"]


def test_t4_and_fp32_pick_the_right_roof() -> None:
    assert ec.compute_precision("T4", "bf16") == "fp16", "a T4 has no bf16 tensor cores"
    assert ec.compute_precision("H100", "int4") == "bf16"
    assert ec.compute_precision("A100-80GB", "fp32") == "fp32"
    c = ec.decode_cost("Llama-3-8B", "T4", 1, n_gpus=2)
    assert c.peak_flops == 65e12 and c.bandwidth == 320e9  # T4 datasheet: 256-bit GDDR6 x 10 Gb/s / 8


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ec.decode_cost("Llama-3-8B", "H100", 0), "batch"),
        (lambda: ec.decode_cost("Llama-3-8B", "H100", 2.0), "batch"),
        (lambda: ec.decode_cost("Llama-3-8B", "H100", 1, context=-1), "context"),
        (lambda: ec.decode_cost("Llama-3-8B", "H100", 1, n_gpus=0), "n_gpus"),
        (lambda: ec.decode_cost("Llama-3-8B", "H100", 1, usd_per_gpu_hour=-1), "usd_per_gpu_hour"),
        (lambda: ec.decode_cost("Llama-3-8B", "H100", 1, usd_per_gpu_hour="2"), "usd_per_gpu_hour"),
        (lambda: ec.decode_cost("Llama-3-8B", "H100", 1, twin="sparse"), "twin"),
        (lambda: ec.decode_cost("Llama-3-8B", "V100", 1), "V100"),
        (lambda: ec.decode_cost("GPT-5", "H100", 1), "GPT-5"),
        (lambda: ec.decode_cost(42, "H100", 1), "model"),
        (lambda: ec.serving_memory("Llama-3-8B", "H100", "fp12"), "fp12"),
        (lambda: ec.serving_memory("Llama-3-8B", "H100", kv_dtype="fp12"), "fp12"),
        (lambda: ec.serving_memory("Llama-3-8B", "H100", batch=0), "batch"),
        (lambda: ec.activation_bytes("Llama-3-8B", 0), "tokens"),
        (lambda: ec.regime_batches("Llama-3-8B"), "dense"),
        (lambda: ec.regime_batches("Mixtral-8x7B", touched_fraction=1.0), "touched_fraction"),
        (lambda: ec.decode_cost("DeepSeek-V3", "H100", 1, mla_form="naive"), "mla_form"),
        (lambda: ec.max_batch("Llama-3-8B", "H100", n_gpus=0), "n_gpus"),
    ],
)
def test_invalid_inputs_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- widget pure functions


def test_custom_config_matches_a_preset_shape() -> None:
    custom = widgets.model_for(widgets.CUSTOM, {})  # the defaults are Mixtral-8x7B's shape
    mixtral = load_preset("Mixtral-8x7B")
    est_c = widgets.estimate_for(widgets.CUSTOM, "H100", "bf16", 4, 512, 2.0, {})
    est_m = widgets.estimate_for("Mixtral-8x7B", "H100", "bf16", 4, 512, 2.0)
    assert custom.is_moe and est_c.params_total == est_m.params_total == MX_TOTAL
    assert est_c.cost.step_time_s == pytest.approx(est_m.cost.step_time_s)
    dense = widgets.model_for(widgets.CUSTOM, {"n_experts": 0})
    assert not dense.is_moe and dense.d_ff == mixtral.d_ff
    assert widgets.model_for("Llama-3-70B") is load_preset("Llama-3-70B")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: widgets.model_for("nope"), "nope"),
        (lambda: widgets.model_for(widgets.CUSTOM, {"n_heads": 5}), "n_heads"),
        (lambda: widgets.model_for(widgets.CUSTOM, {"top_k": 9}), "top_k"),
        (lambda: widgets.model_for(widgets.CUSTOM, {"depth": 9}), "depth"),
        (lambda: widgets.estimate_for("Llama-3-8B", "H100", "bf16", 0, 0, 2.0), "batch"),
    ],
)
def test_widget_inputs_invalid(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_estimate_html_and_plot() -> None:
    est = widgets.estimate_for("Llama-3-8B", "L4", "bf16", 8, 4096, 1.5)
    page = widgets.estimate_html(est)
    assert page.startswith("<table>") and "assumed" in page and "datasheet" in page
    fig = widgets.plot_estimate(est, batches=(1, 64, 4096))
    assert len(fig.axes) >= 2
    custom_est = widgets.estimate_for(widgets.CUSTOM, "H100", "bf16", 1, 0, 2.0, {"n_layers": 4})
    with pytest.raises(ValueError, match="not a preset"):
        widgets.plot_estimate(custom_est)
    widgets.plot_estimate(custom_est, widgets.model_for(widgets.CUSTOM, {"n_layers": 4}), batches=(1, 2))
    import matplotlib.pyplot as plt

    plt.close("all")


def test_calculator_builds_and_recomputes() -> None:
    pytest.importorskip("ipywidgets")
    ui = widgets.calculator(usd_per_gpu_hour=3.0, model="Llama-3-8B", gpu="L4")
    table = ui.children[3]
    assert "Llama-3-8B" in table.value and "$3/GPU-hour" in table.value
    ui.children[0].children[0].value = "Mixtral-8x7B"
    assert "Mixtral-8x7B" in table.value
    ui.children[2].children[2].value = 5  # custom n_heads: invalid, shown as an error only in custom mode
    ui.children[0].children[0].value = widgets.CUSTOM
    assert "n_heads" in table.value
    import matplotlib.pyplot as plt

    plt.close("all")
