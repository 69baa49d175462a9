"""FLOP, byte, KV-cache and fits-on-GPU accounting, and the GPU datasheet table."""

from __future__ import annotations

import json

import pytest
import torch

from dmcourse import hardware
from dmcourse.accounting import (
    GB,
    GiB,
    attention_flops_per_token,
    bytes_per_param,
    count_params,
    forward_flops_per_token,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    matmul_params_per_token,
    to_gb,
    to_gib,
    training_flops_per_token,
    weight_bytes,
)
from dmcourse.configs import ModelConfig, load_preset
from dmcourse.fit import fits_on_gpu

TINY = ModelConfig(name="tiny", vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=16)


def test_units() -> None:
    assert GB == 1_000_000_000 and GiB == 1_073_741_824
    assert to_gb(141e9) == 141 and to_gib(2**31) == 2
    assert [bytes_per_param(d) for d in ("fp32", "bf16", "fp16", "fp8", "int4")] == [4, 2, 2, 1, 0.5]
    assert bytes_per_param(str(torch.bfloat16)) == 2
    with pytest.raises(ValueError, match="unknown dtype"):
        bytes_per_param("fp12")


def test_dense_70b_in_16_bit_is_about_140_gb() -> None:
    c = load_preset("Llama-3-70B")
    assert weight_bytes(c, "bf16") == 2 * count_params(c).total
    assert 140 < to_gb(weight_bytes(c, "bf16")) < 142
    assert weight_bytes(c, "int4") * 8 == weight_bytes(c, "fp32")
    assert weight_bytes(7e9, "fp8") == 7e9
    assert (
        weight_bytes(load_preset("Mixtral-8x7B"), "bf16", which="active")
        == 2 * count_params(load_preset("Mixtral-8x7B")).active
    )
    with pytest.raises(ValueError, match="which"):
        weight_bytes(c, which="some")
    with pytest.raises(ValueError, match="ModelConfig or a non-negative"):
        weight_bytes(-1)


def test_flops_hand_checked() -> None:
    # matmul weights per token: attention 2*(64+32+64)=... use the hand count, plus the LM head
    p = count_params(TINY)
    attn = 8 * 8 + 2 * 8 * 4 + 8 * 8
    matmul = 2 * (attn + 3 * 8 * 16) + 10 * 8
    assert matmul_params_per_token(TINY) == matmul == p.total - p.embedding - p.norms
    assert forward_flops_per_token(TINY) == 2 * matmul
    # attention: per layer, QK^T (2 heads x 4 x ctx MACs) and AV (same): 2 FLOPs per MAC
    assert attention_flops_per_token(TINY, 100) == 2 * 2 * 2 * (4 + 4) * 100
    assert forward_flops_per_token(TINY, 100) == 2 * matmul + 2 * 2 * 2 * 8 * 100
    assert training_flops_per_token(TINY, 100) == 3 * forward_flops_per_token(TINY, 100)
    tied = TINY.replace(tied_embeddings=True)  # a tied head still multiplies
    assert matmul_params_per_token(tied) == matmul
    with pytest.raises(ValueError, match="context"):
        attention_flops_per_token(TINY, -1)


def test_flops_moe_use_active_experts_only() -> None:
    c = load_preset("Mixtral-8x7B")
    p = count_params(c)
    assert matmul_params_per_token(c) == p.active - p.embedding - p.norms
    assert forward_flops_per_token(c) == pytest.approx(2 * p.active_without_embedding, rel=1e-4)
    # the forward ~2N rule, N = active parameters (the embedding lookup costs no FLOPs)
    assert training_flops_per_token(c) == pytest.approx(6 * p.active_without_embedding, rel=1e-4)


def test_sliding_window_caps_attention_and_cache() -> None:
    c = load_preset("Mistral-7B")
    assert attention_flops_per_token(c, 32768) == attention_flops_per_token(c, 4096)
    assert kv_cache_bytes(c, 32768) == kv_cache_bytes(c, 4096) == 4096 * kv_cache_bytes_per_token(c)


def test_kv_cache_gqa_counts_kv_heads_only() -> None:
    c = load_preset("Llama-3-8B")  # 32 layers, 8 KV heads of 128
    assert kv_cache_bytes_per_token(c, "bf16") == 2 * 32 * 8 * 128 * 2 == 131072
    full_heads = c.replace(n_kv_heads=32)
    assert kv_cache_bytes_per_token(full_heads) == 4 * kv_cache_bytes_per_token(c)
    assert kv_cache_bytes(c, 8192, batch=4, dtype="fp8") == 4 * 8192 * 65536
    with pytest.raises(ValueError, match="batch"):
        kv_cache_bytes(c, 10, batch=0)


def test_kv_cache_mla_is_compressed() -> None:
    c = load_preset("DeepSeek-V3")
    assert kv_cache_bytes_per_token(c, "bf16") == 61 * (512 + 64) * 2
    assert kv_cache_bytes_per_token(c, "bf16", mla_compressed=False) == 61 * 128 * (192 + 128) * 2


def test_mla_flops_and_cache_in_one_form_by_hand() -> None:
    from dmcourse import accounting

    c = load_preset("DeepSeek-V3")  # config.json: 61 layers, 128 heads, kv_lora_rank 512, rope 64, nope 128, v 128
    layers, heads, rank, rope, nope, v = 61, 128, 512, 64, 128, 128
    # absorbed (default): score over the cached latent + rope key (576), weighted sum over the latent (512)
    assert attention_flops_per_token(c, 4096) == 2 * layers * heads * ((rank + rope) + rank) * 4096
    assert (
        kv_cache_bytes(c, 4096, dtype="bf16", mla_compressed=accounting.mla_cache_compressed("absorbed"))
        == 4096 * layers * (rank + rope) * 2
    )
    # explicit: per-head keys of 128 + 64, values of 128, over the decompressed per-head cache
    assert attention_flops_per_token(c, 4096, "explicit") == 2 * layers * heads * ((nope + rope) + v) * 4096
    assert (
        kv_cache_bytes(c, 4096, dtype="bf16", mla_compressed=accounting.mla_cache_compressed("explicit"))
        == 4096 * layers * heads * (nope + rope + v) * 2
    )
    assert forward_flops_per_token(c, 10, "explicit") < forward_flops_per_token(c, 10)
    # the absorbed up-projections (q_nope 128 -> 512 per head, latent 512 -> v 128 per head) cost per
    # token what the explicit form's kv_b (512 -> 128 x (128 + 128)) costs: 2N is the same in both forms
    folded = 2 * heads * nope * rank + 2 * heads * rank * v
    kv_b = rank * heads * (nope + v)
    q = c.d_model * c.q_lora_rank + c.q_lora_rank * heads * (nope + rope)
    assert accounting.attention_params(c) - q - c.d_model * (rank + rope) - heads * v * c.d_model == kv_b
    assert folded == 2 * kv_b
    assert accounting.attention_dims(c) == (rank + rope, rank)
    assert accounting.attention_dims(c, "explicit") == (nope + rope, v)
    # GQA models have one form: mla_form changes nothing
    llama = load_preset("Llama-3-8B")
    assert (
        attention_flops_per_token(llama, 100, "explicit")
        == attention_flops_per_token(llama, 100)
        == 2 * 32 * 32 * 256 * 100
    )
    with pytest.raises(ValueError, match="mla_form"):
        attention_flops_per_token(c, 1, "decompressed")
    with pytest.raises(ValueError, match="mla_form"):
        fits_on_gpu(c, "H200", "fp8", context=10, mla_form="naive")
    # the explicit form's cache is the bigger one when it has to fit
    assert fits_on_gpu(c, "H200", "fp8", n_gpus=8, context=4096, batch=64).fits
    assert not fits_on_gpu(c, "H200", "fp8", n_gpus=8, context=4096, batch=64, mla_form="explicit").fits


def test_t4_bandwidth_is_the_datasheet_figure() -> None:
    t4 = hardware.gpu("T4")
    assert t4.memory_bandwidth_bytes_per_s == 256 * 10e9 / 8 == 320e9  # 256-bit GDDR6 at 10 Gb/s per pin
    assert "datasheet" in t4.memory_bandwidth_source and t4.memory_bandwidth_source.endswith(".pdf")
    assert t4.peak_flops["fp16"] / t4.memory_bandwidth_bytes_per_s == pytest.approx(203.125)  # the ridge


def test_link_table_by_hand() -> None:
    table = hardware.links()
    assert list(table) == [
        "NVLink 4 (H100 SXM)",
        "PCIe 5.0 x16",
        "InfiniBand NDR (1 port)",
        "PCIe 3.0 x16 (T4)",
        "PCIe 4.0 x16 (A100)",
    ]
    # per direction: NVLink 900 GB/s bidirectional / 2, PCIe Gen5 x16 128 GB/s both ways / 2, NDR 400 Gb/s / 8,
    # PCIe Gen3 x16 32 GB/s both ways / 2, PCIe Gen4 x16 64 GB/s both ways / 2
    assert [link.bytes_per_s for link in table.values()] == [900e9 / 2, 128e9 / 2, 400e9 / 8, 32e9 / 2, 64e9 / 2]
    assert all(link.datasheet.startswith("datasheet") and link.source.startswith("https://") for link in table.values())
    for bad, msg in [
        ({"links": []}, "non-empty"),
        ({"links": [{"name": "x"}]}, "exactly"),
        ({"links": [{"name": "x", "bytes_per_s": 0, "datasheet": "d", "source": "https://x"}]}, "bytes_per_s"),
        ({"links": [{"name": "x", "bytes_per_s": 1, "datasheet": "d", "source": "x"}]}, "URL"),
    ]:
        with pytest.raises(ValueError, match=msg):
            hardware.parse_links(bad)


def test_gpu_table() -> None:
    table = hardware.gpus()
    assert list(table) == ["T4", "L4", "A100-40GB", "A100-80GB", "H100", "H200"]
    assert [g.memory_bytes // GB for g in table.values()] == [16, 24, 40, 80, 80, 141]
    assert all(g.source.startswith("https://www.nvidia.com/") for g in table.values())
    assert hardware.gpu("a100 80gb").name == "A100-80GB"
    assert hardware.gpu("H200").memory_label == "141 GB HBM3e"  # extra fields read as attributes
    assert hardware.gpu("T4").get("bandwidth", "n/a") == "n/a"
    assert hardware.gpu("H100").memory_gib == pytest.approx(74.5, abs=0.05)
    with pytest.raises(ValueError, match="unknown GPU"):
        hardware.gpu("V100")
    with pytest.raises(AttributeError, match="no field"):
        _ = hardware.gpu("T4").tflops
    import copy
    import pickle

    h200 = hardware.gpu("H200")
    assert copy.deepcopy(h200) == pickle.loads(pickle.dumps(h200)) == h200


def test_gpu_loader_is_generic_and_strict() -> None:
    doc = {"gpus": [{"name": "X1", "memory_bytes": 10, "source": "https://x", "peak_bf16_flops": 1e15}]}
    x = hardware.parse_gpus(doc)["X1"]
    assert x.peak_bf16_flops == 1e15
    for bad, msg in [
        ({"gpus": []}, "non-empty"),
        ({"gpus": [{"name": "X"}]}, "lacks"),
        ({"gpus": [{"name": "X", "memory_bytes": -1, "source": "https://x"}]}, "memory_bytes"),
        ({"gpus": [{"name": "X", "memory_bytes": 1, "source": "x"}]}, "source"),
        ({"gpus": [doc["gpus"][0], doc["gpus"][0]]}, "duplicate"),
    ]:
        with pytest.raises(ValueError, match=msg):
            hardware.parse_gpus(bad)


def test_shipped_json_is_valid() -> None:
    from importlib import resources

    doc = json.loads((resources.files("dmcourse") / "data" / "gpus.json").read_text())
    assert set(hardware.parse_gpus(doc)) == set(hardware.gpus())


def test_fits_on_gpu() -> None:
    llama70 = load_preset("Llama-3-70B")
    one = fits_on_gpu(llama70, "H100", "bf16")
    assert not one.fits and one.gpus_needed == 2 and one.needed_bytes == weight_bytes(llama70, "bf16")
    assert fits_on_gpu(llama70, "A100-80GB", "bf16", n_gpus=2).fits
    assert fits_on_gpu(llama70, "H100", "int4").fits
    assert fits_on_gpu(load_preset("Mistral-7B"), "T4", "fp16").fits  # 14.5 GB
    assert not fits_on_gpu(load_preset("Llama-3-8B"), "T4", "fp16").fits  # 16.06 GB > 16 GB
    # the KV cache counts: 8B in bf16 fits an L4 alone but not with 32 x 8192 tokens of cache
    l8 = load_preset("Llama-3-8B")
    assert fits_on_gpu(l8, "L4").fits and not fits_on_gpu(l8, "L4", context=8192, batch=32).fits
    with_kv = fits_on_gpu(l8, "L4", context=8192, batch=32)
    assert with_kv.kv_cache_bytes == kv_cache_bytes(l8, 8192, batch=32)
    assert fits_on_gpu(15e9, "T4").fits and not fits_on_gpu(17e9, "T4").fits  # datasheet GB, not GiB
    assert "does not fit" in str(one)
    with pytest.raises(ValueError, match="n_gpus"):
        fits_on_gpu(1e9, "T4", n_gpus=0)
    with pytest.raises(ValueError, match="unknown GPU"):
        fits_on_gpu(1e9, "TPU")
