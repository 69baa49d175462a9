"""Presets and configs: every preset's parameter count equals what the transformers library's own
model class reports for the same config (built on the meta device: no memory, no download), per
component and for the active count; bad configs raise ValueError naming the field."""

from __future__ import annotations

import random
import zlib

import pytest
import torch

import dmcourse
from dmcourse.accounting import count_params
from dmcourse.configs import PRESETS, ModelConfig, load_preset

transformers = pytest.importorskip("transformers")


def hf_config(c: ModelConfig):
    """The transformers config for our ModelConfig (test-only translation, hub key names)."""
    common = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        tie_word_embeddings=c.tied_embeddings,
    )
    t = c.hf_model_type
    if t != "deepseek_v3":
        common.update(num_key_value_heads=c.kv_heads, intermediate_size=c.d_ff or c.d_ff_expert)
        if c.head_dim is not None:
            common["head_dim"] = c.head_dim
    moe = dict(num_experts=c.n_experts, num_experts_per_tok=c.top_k)
    if t == "llama":
        return transformers.LlamaConfig(**common)
    if t == "mistral":
        return transformers.MistralConfig(sliding_window=c.sliding_window, **common)
    if t == "mixtral":
        assert c.d_ff_expert == c.d_ff, "Mixtral's config has one intermediate_size"
        return transformers.MixtralConfig(num_local_experts=c.n_experts, num_experts_per_tok=c.top_k, **common)
    if t == "qwen3_moe":
        return transformers.Qwen3MoeConfig(
            moe_intermediate_size=c.d_ff_expert,
            decoder_sparse_step=c.moe_layer_freq,
            mlp_only_layers=[],
            **moe,
            **common,
        )
    if t == "olmoe":
        assert c.d_ff_expert == (c.d_ff or c.d_ff_expert), "OLMoE's config has one intermediate_size"
        return transformers.OlmoeConfig(**moe, **common)
    if t == "deepseek_v3":
        groups = 8 if c.n_experts % 8 == 0 else 1
        return transformers.DeepseekV3Config(
            n_routed_experts=c.n_experts,
            num_experts_per_tok=c.top_k,
            moe_intermediate_size=c.d_ff_expert,
            intermediate_size=c.d_ff,
            n_shared_experts=c.n_shared_experts,
            first_k_dense_replace=c.first_k_dense,
            q_lora_rank=c.q_lora_rank,
            kv_lora_rank=c.kv_lora_rank,
            qk_nope_head_dim=c.qk_nope_head_dim,
            qk_rope_head_dim=c.qk_rope_head_dim,
            v_head_dim=c.v_head_dim,
            num_key_value_heads=c.n_heads,
            n_group=groups,
            topk_group=min(groups, 4),
            **common,
        )
    raise AssertionError(f"no transformers class mapped for {t!r}")


def classify(name: str) -> str:
    """Which ParamCount field a transformers parameter name belongs to (independent of dmcourse)."""
    if "embed_tokens" in name:
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if name.endswith("norm.weight") or "layernorm" in name:
        return "norms"
    if ".self_attn." in name:
        return "attention"
    if ".mlp.shared_expert" in name:
        return "shared_experts"
    if ".mlp.experts." in name:
        return "experts"
    if ".mlp.gate." in name:
        return "router"
    if ".mlp." in name:
        return "dense_ffn"
    raise AssertionError(f"unclassified parameter {name}")


def hf_counts(c: ModelConfig) -> tuple[dict[str, int], float]:
    """Per-component counts and the active count, from the transformers model built on meta."""
    cfg = hf_config(c)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    by_kind: dict[str, int] = {}
    active = 0.0
    n_exp = (
        getattr(cfg, "num_local_experts", None)
        or getattr(cfg, "num_experts", None)
        or getattr(cfg, "n_routed_experts", 0)
    )
    for name, p in model.named_parameters():
        kind = classify(name)
        by_kind[kind] = by_kind.get(kind, 0) + p.numel()
        active += p.numel() * (cfg.num_experts_per_tok / n_exp if kind == "experts" else 1)
    return by_kind, active


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_counts_match_transformers(name: str) -> None:
    c = load_preset(name)
    by_kind, active = hf_counts(c)
    ours = count_params(c)
    assert ours.total == sum(by_kind.values()), f"{name}: total differs from transformers"
    for kind, n in by_kind.items():
        assert getattr(ours, kind) == n, f"{name}: {kind} {getattr(ours, kind)} != transformers {n}"
    for kind in ("experts", "shared_experts", "router", "dense_ffn", "lm_head"):
        assert getattr(ours, kind) == by_kind.get(kind, 0), f"{name}: {kind}"
    assert ours.active == round(active)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_reproduce_published_figures(name: str) -> None:
    """Within 2% of the authors' rounded figures (they round or truncate: 3.35B is "3.3B")."""
    c = load_preset(name)
    p = count_params(c)
    assert c.source.startswith("https://huggingface.co/") and c.source.endswith("/config.json")
    assert c.published is not None and c.published.source.startswith("https://")
    assert p.total == pytest.approx(c.published.total, rel=0.01)
    if c.published.active is None:
        assert not c.is_moe and p.active == p.total
    else:
        assert p.active == pytest.approx(c.published.active, rel=0.02)


def test_deepseek_v3_mtp_explains_685b() -> None:
    p = count_params(load_preset("DeepSeek-V3"))
    # README: "685B, which includes 671B of the Main Model weights and 14B of the MTP Module weights"
    assert round(p.total / 1e9) == 671
    assert 13e9 < p.mtp < 14.5e9
    # 684.5B by our count (the hub's safetensors also hold fp8 block scales, ~1/16384 of that)
    assert 684.0e9 < p.total_with_mtp < 685.5e9


def _random_config(rng: random.Random, family: str) -> ModelConfig:
    n_kv = rng.choice([1, 2, 4])
    n_heads = n_kv * rng.choice([1, 2, 3])
    head = rng.choice([8, 16])
    d = n_heads * head
    base = dict(
        name=f"random-{family}",
        hf_model_type=family,
        vocab_size=rng.randint(50, 300),
        d_model=d,
        n_layers=rng.randint(1, 4),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_ff=rng.choice([24, 40, 64]),
        tied_embeddings=rng.random() < 0.3,
    )
    if family in ("mixtral", "qwen3_moe", "olmoe"):
        e = rng.randint(2, 9)
        base.update(n_experts=e, top_k=rng.randint(1, e), d_ff_expert=base["d_ff"])
    if family == "qwen3_moe":
        base.update(qk_norm="head", head_dim=rng.choice([8, 12]), d_ff_expert=rng.choice([8, 20]))
    if family == "olmoe":
        base.update(qk_norm="full")
    if family == "deepseek_v3":
        e = rng.choice([4, 8, 16])
        base.update(
            attention="mla",
            n_kv_heads=None,
            q_lora_rank=rng.choice([None, 12]),
            kv_lora_rank=rng.choice([8, 16]),
            qk_nope_head_dim=rng.choice([4, 8]),
            qk_rope_head_dim=rng.choice([2, 4]),
            v_head_dim=rng.choice([4, 6]),
            n_experts=e,
            top_k=rng.randint(1, 4),
            d_ff_expert=rng.choice([8, 12]),
            n_shared_experts=rng.randint(1, 2),
            first_k_dense=rng.randint(0, base["n_layers"]),
        )
    return ModelConfig(**base)


@pytest.mark.parametrize("family", ["llama", "mistral", "mixtral", "qwen3_moe", "olmoe", "deepseek_v3"])
def test_random_small_configs_match_transformers(family: str) -> None:
    rng = random.Random(zlib.crc32(family.encode()))
    for _ in range(4):
        c = _random_config(rng, family)
        by_kind, active = hf_counts(c)
        ours = count_params(c)
        assert ours.total == sum(by_kind.values()), c
        assert ours.active == round(active), c


def test_hand_checkable_dense_config() -> None:
    # d=8, 2 heads of 4, 1 KV head, d_ff=16, 2 layers, vocab 10, untied
    c = ModelConfig(name="tiny", vocab_size=10, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=16)
    attn = 8 * 8 + 2 * 8 * 4 + 8 * 8  # q, k and v (one 4-wide head each), o
    ffn = 3 * 8 * 16
    p = count_params(c)
    assert (p.attention, p.dense_ffn, p.norms) == (2 * attn, 2 * ffn, 2 * 2 * 8 + 8)
    assert p.embedding == p.lm_head == 80
    assert p.total == p.active == 2 * (attn + ffn + 16) + 8 + 160
    tied = count_params(c.replace(tied_embeddings=True))
    assert tied.total == p.total - 80 and tied.lm_head == 0
    assert p.active_without_embedding == p.active - 80  # the lookup is not a matmul
    assert tied.active_without_embedding == tied.active  # tied: the matrix is still the LM head
    assert tied.non_embedding == p.non_embedding


def test_hand_checkable_moe_config() -> None:
    c = ModelConfig(
        name="tiny-moe",
        vocab_size=10,
        d_model=8,
        n_layers=3,
        n_heads=2,
        d_ff=32,
        n_experts=4,
        top_k=2,
        d_ff_expert=16,
        n_shared_experts=1,
        first_k_dense=1,
    )
    assert [c.is_moe_layer(i) for i in range(3)] == [False, True, True]
    p = count_params(c)
    one = 3 * 8 * 16
    assert p.dense_ffn == 3 * 8 * 32
    assert (p.experts, p.active_experts, p.shared_experts, p.router) == (2 * 4 * one, 2 * 2 * one, 2 * one, 2 * 4 * 8)
    assert p.total - p.active == 2 * 2 * one
    every_other = c.replace(first_k_dense=0, moe_layer_freq=2)
    assert [every_other.is_moe_layer(i) for i in range(3)] == [False, True, False]


def test_load_preset_names() -> None:
    assert load_preset("mixtral 8x7b") is PRESETS["Mixtral-8x7B"]
    assert dmcourse.load_preset("deepseek-v3") is PRESETS["DeepSeek-V3"]
    assert dmcourse.count_params(PRESETS["Llama-3-8B"]).total == count_params(PRESETS["Llama-3-8B"]).total
    with pytest.raises(ValueError, match="unknown preset.*Llama-3-8B"):
        load_preset("llama-2")
    assert len(PRESETS) == 9


GOOD = dict(name="t", vocab_size=10, d_model=8, n_layers=2, n_heads=2, d_ff=16)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(d_model=-8), "d_model"),
        (dict(d_ff=-1), "d_ff"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(n_layers=2.0), "n_layers"),
        (dict(n_heads=3), "n_heads=3 does not divide d_model=8"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads=3 must divide n_heads=4"),
        (dict(n_experts=4, top_k=5, d_ff_expert=8), "top_k=5"),
        (dict(n_experts=4, top_k=0, d_ff_expert=8), "top_k=0"),
        (dict(n_experts=4, top_k=2), "d_ff_expert"),
        (dict(top_k=2), "n_experts=0"),
        (dict(attention="mha"), "attention"),
        (dict(attention="mla"), "kv_lora_rank"),
        (dict(kv_lora_rank=16), "MLA field"),
        (dict(d_ff=0), "d_ff must be positive"),
        (dict(n_experts=4, top_k=1, d_ff_expert=8, first_k_dense=3), "first_k_dense=3"),
        (dict(sliding_window=0), "sliding_window"),
        (dict(qk_norm="layer"), "qk_norm"),
    ],
)
def test_bad_configs_raise_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**GOOD, **changes})


def test_head_dim_decouples_heads_from_width() -> None:
    # Qwen3-30B-A3B: 32 heads x 128 = 4096 != d_model 2048 is allowed because head_dim is given
    c = load_preset("Qwen3-30B-A3B")
    assert c.n_heads * c.head_size == 4096 != c.d_model
    with pytest.raises(ValueError, match="does not divide"):
        c.replace(head_dim=None, n_heads=48, n_kv_heads=4)
