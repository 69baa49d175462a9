"""Model configurations: one typed dataclass for dense and MoE decoder-only transformers, and
named presets for the nine models the course discusses.

Chapter 2 ("Dense models: the FFN, and what 'every parameter, every token' costs") introduces it.

A :class:`ModelConfig` holds exactly what parameter, FLOP and byte accounting needs (sizes of
every weight matrix), validated on construction: a bad value raises ``ValueError`` naming the
field. ``load_preset(name)`` returns a preset; ``PRESETS`` lists them.

Field names follow the course; each preset's docstring-level comment maps them to the Hugging Face
``config.json`` keys (``hidden_size`` -> ``d_model``, ``intermediate_size`` -> ``d_ff``,
``moe_intermediate_size`` -> ``d_ff_expert``, ...). Where the preset values come from: each preset
cites its ``config.json`` on the Hugging Face hub (``source``); the values were checked by
rebuilding every model with the ``transformers`` library's own classes on the meta device and
comparing parameter counts (``tests/test_configs.py``), and against the totals the model authors
publish (``published``).

Layer layout: layer ``i`` (0-based) is an MoE layer when ``n_experts > 0``, ``i >= first_k_dense``
and ``(i + 1 - first_k_dense) % moe_layer_freq == 0``. With ``first_k_dense = 0`` this is Qwen's
``decoder_sparse_step`` rule; DeepSeek-V3 is ``first_k_dense = 3`` (``first_k_dense_replace``),
``moe_layer_freq = 1``. Every other layer is dense and uses ``d_ff``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dmcourse.checks import check_int, one_of

ATTENTION_KINDS = ("gqa", "mla")
QK_NORMS = ("none", "head", "full")
FFN_KINDS = ("swiglu", "mlp")


@dataclass(frozen=True)
class Published:
    """Parameter counts as the model's authors (or the hub) state them, with where they say it."""

    total: float  # parameters
    active: float | None  # parameters per token; None for a dense model (active = total)
    source: str
    note: str = ""


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer: embeddings, ``n_layers`` blocks (attention + FFN, two RMSNorms
    each), a final RMSNorm, and an LM head (tied to the embedding or not).

    Attention (``attention``):
      * ``"gqa"``: grouped-query attention; ``n_kv_heads`` key/value heads shared by groups of
        ``n_heads // n_kv_heads`` query heads (``n_kv_heads == n_heads`` is plain multi-head
        attention, ``1`` is multi-query). ``head_dim`` defaults to ``d_model // n_heads``.
      * ``"mla"``: DeepSeek's multi-head latent attention; uses ``q_lora_rank`` (``None``: no
        query compression), ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``,
        ``v_head_dim``. ``n_kv_heads`` and ``head_dim`` are not used.
    ``qk_norm``: RMSNorm on queries and keys: ``"head"`` (Qwen3: one ``head_dim`` weight each),
    ``"full"`` (OLMoE: over all heads, ``n_heads*head_dim`` and ``n_kv_heads*head_dim``).

    FFN: dense layers use ``d_ff`` (``ffn="swiglu"``: 3 matrices; ``"mlp"``: 2). MoE layers
    (``n_experts > 0``) have ``n_experts`` routed SwiGLU experts of width ``d_ff_expert``, a
    router ``(n_experts, d_model)``, and ``n_shared_experts`` always-active experts of width
    ``d_ff_shared`` each (default ``d_ff_expert``); each token uses ``top_k`` routed experts.

    ``n_mtp_layers``: DeepSeek-V3's multi-token-prediction modules, shipped with the checkpoint
    but not part of the main model (counted separately, see ``accounting.count_params``).
    ``sliding_window``: attention looks back at most this many tokens (Mistral-7B v0.1), which
    caps the KV cache. ``max_context``: ``max_position_embeddings``.
    """

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int = 0
    n_kv_heads: int | None = None
    head_dim: int | None = None
    attention: str = "gqa"
    qk_norm: str = "none"
    ffn: str = "swiglu"
    tied_embeddings: bool = False
    # Mixture-of-Experts
    n_experts: int = 0
    top_k: int = 0
    d_ff_expert: int | None = None
    n_shared_experts: int = 0
    d_ff_shared: int | None = None
    first_k_dense: int = 0
    moe_layer_freq: int = 1
    # Multi-head latent attention (DeepSeek-V3)
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    n_mtp_layers: int = 0
    # Context
    max_context: int | None = None
    sliding_window: int | None = None
    # Provenance
    hf_model_type: str | None = None
    source: str = ""
    published: Published | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        def positive(name: str, allow_zero: bool = False, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            check_int(f"{self.name}: {name}", value, 0 if allow_zero else 1)

        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads"):
            positive(name)
        for name in ("d_ff", "n_experts", "top_k", "n_shared_experts", "first_k_dense", "n_mtp_layers"):
            positive(name, allow_zero=True)
        for name in ("n_kv_heads", "head_dim", "d_ff_expert", "d_ff_shared", "max_context", "sliding_window"):
            positive(name, allow_none=True)
        positive("moe_layer_freq")
        for name, allowed in (("attention", ATTENTION_KINDS), ("qk_norm", QK_NORMS), ("ffn", FFN_KINDS)):
            one_of(f"{self.name}: {name}", getattr(self, name), allowed)

        # attention geometry
        if self.attention == "gqa":
            if self.head_dim is None and self.d_model % self.n_heads:
                raise ValueError(
                    f"{self.name}: n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                    "give head_dim explicitly if the architecture decouples them"
                )
            if self.n_heads % self.kv_heads:
                raise ValueError(
                    f"{self.name}: n_kv_heads={self.kv_heads} must divide n_heads={self.n_heads} "
                    "(each key/value head serves a whole group of query heads)"
                )
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                if getattr(self, name):
                    raise ValueError(f"{self.name}: {name} is an MLA field; set attention='mla' to use it")
        else:
            positive("q_lora_rank", allow_none=True)
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                positive(name)
            if self.qk_norm != "none":
                raise ValueError(f"{self.name}: qk_norm is not defined for attention='mla'")

        # FFN / MoE
        if self.n_experts:
            if not 1 <= self.top_k <= self.n_experts:
                raise ValueError(f"{self.name}: top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")
            if self.d_ff_expert is None:
                raise ValueError(f"{self.name}: an MoE config needs d_ff_expert (the width of one expert)")
            if self.ffn != "swiglu":
                raise ValueError(f"{self.name}: MoE experts are SwiGLU; ffn must be 'swiglu'")
            if self.first_k_dense > self.n_layers:
                raise ValueError(f"{self.name}: first_k_dense={self.first_k_dense} exceeds n_layers={self.n_layers}")
        else:
            for name in ("top_k", "n_shared_experts", "first_k_dense"):
                if getattr(self, name):
                    raise ValueError(f"{self.name}: {name}={getattr(self, name)} given but n_experts=0 (dense)")
            if self.d_ff_expert is not None or self.d_ff_shared is not None:
                raise ValueError(f"{self.name}: expert widths given but n_experts=0 (dense)")
        if self.n_dense_layers and self.d_ff < 1:
            raise ValueError(f"{self.name}: d_ff must be positive: {self.n_dense_layers} layer(s) have a dense FFN")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        """Key/value heads (``n_kv_heads``, defaulting to ``n_heads``)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_size(self) -> int:
        """Per-head width of GQA attention (``head_dim``, defaulting to ``d_model // n_heads``)."""
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def qk_head_dim(self) -> int:
        """Width of one query/key head: ``head_size`` (GQA) or ``qk_nope + qk_rope`` (MLA)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.attention == "mla" else self.head_size

    @property
    def v_head_size(self) -> int:
        """Width of one value head: ``head_size`` (GQA) or ``v_head_dim`` (MLA)."""
        return self.v_head_dim if self.attention == "mla" else self.head_size

    @property
    def expert_width(self) -> int:
        return self.d_ff_expert or 0

    @property
    def shared_width(self) -> int:
        """Width of one shared expert (``d_ff_shared``, defaulting to ``d_ff_expert``)."""
        return self.d_ff_shared if self.d_ff_shared is not None else self.expert_width

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer ``i`` (0-based) has an MoE FFN (see the module docstring for the rule)."""
        if not 0 <= i < self.n_layers:
            raise ValueError(f"layer index {i} out of range for n_layers={self.n_layers}")
        return self.is_moe and i >= self.first_k_dense and (i + 1 - self.first_k_dense) % self.moe_layer_freq == 0

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers - self.n_moe_layers

    def replace(self, **changes) -> ModelConfig:
        """A copy with ``changes`` applied (validated again); drops ``published``/``source``
        unless given, since the changed model is no longer the published one."""
        changes.setdefault("published", None)
        changes.setdefault("source", "")
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# Presets. Values from each model's config.json on the Hugging Face hub (``source``). Mapping of
# hub keys: hidden_size->d_model, num_hidden_layers->n_layers, num_attention_heads->n_heads,
# num_key_value_heads->n_kv_heads, intermediate_size->d_ff, moe_intermediate_size->d_ff_expert,
# num_local_experts / num_experts / n_routed_experts->n_experts, num_experts_per_tok->top_k,
# n_shared_experts->n_shared_experts, first_k_dense_replace->first_k_dense,
# decoder_sparse_step->moe_layer_freq, tie_word_embeddings->tied_embeddings,
# max_position_embeddings->max_context, num_nextn_predict_layers->n_mtp_layers.
# --------------------------------------------------------------------------------------------

_HF = "https://huggingface.co/{}/blob/main/config.json"

PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig(
            name="Llama-3-8B",
            hf_model_type="llama",
            source=_HF.format("meta-llama/Meta-Llama-3-8B"),
            vocab_size=128256,
            d_model=4096,
            n_layers=32,
            n_heads=32,
            n_kv_heads=8,
            d_ff=14336,
            max_context=8192,
            published=Published(
                8.03e9,
                None,
                "https://huggingface.co/meta-llama/Meta-Llama-3-8B",
                "parameter count the hub reads from the safetensors files",
            ),
        ),
        ModelConfig(
            name="Llama-3-70B",
            hf_model_type="llama",
            source=_HF.format("meta-llama/Meta-Llama-3-70B"),
            vocab_size=128256,
            d_model=8192,
            n_layers=80,
            n_heads=64,
            n_kv_heads=8,
            d_ff=28672,
            max_context=8192,
            published=Published(
                70.6e9,
                None,
                "https://huggingface.co/meta-llama/Meta-Llama-3-70B",
                "parameter count the hub reads from the safetensors files",
            ),
        ),
        ModelConfig(
            name="Mistral-7B",
            hf_model_type="mistral",
            source=_HF.format("mistralai/Mistral-7B-v0.1"),
            vocab_size=32000,
            d_model=4096,
            n_layers=32,
            n_heads=32,
            n_kv_heads=8,
            d_ff=14336,
            max_context=32768,
            sliding_window=4096,
            published=Published(
                7.24e9,
                None,
                "https://huggingface.co/mistralai/Mistral-7B-v0.1",
                "parameter count the hub reads from the safetensors files",
            ),
        ),
        ModelConfig(
            name="Mixtral-8x7B",
            hf_model_type="mixtral",
            source=_HF.format("mistralai/Mixtral-8x7B-v0.1"),
            vocab_size=32000,
            d_model=4096,
            n_layers=32,
            n_heads=32,
            n_kv_heads=8,
            d_ff=14336,
            n_experts=8,
            top_k=2,
            d_ff_expert=14336,
            max_context=32768,
            published=Published(46.7e9, 12.9e9, "https://mistral.ai/news/mixtral-of-experts"),
        ),
        ModelConfig(
            name="Mixtral-8x22B",
            hf_model_type="mixtral",
            source=_HF.format("mistralai/Mixtral-8x22B-v0.1"),
            vocab_size=32000,
            d_model=6144,
            n_layers=56,
            n_heads=48,
            n_kv_heads=8,
            d_ff=16384,
            n_experts=8,
            top_k=2,
            d_ff_expert=16384,
            max_context=65536,
            published=Published(141e9, 39e9, "https://mistral.ai/news/mixtral-8x22b"),
        ),
        ModelConfig(
            name="Qwen3-30B-A3B",
            hf_model_type="qwen3_moe",
            source=_HF.format("Qwen/Qwen3-30B-A3B"),
            vocab_size=151936,
            d_model=2048,
            n_layers=48,
            n_heads=32,
            n_kv_heads=4,
            head_dim=128,
            qk_norm="head",
            d_ff=6144,
            n_experts=128,
            top_k=8,
            d_ff_expert=768,
            max_context=40960,
            published=Published(
                30.5e9,
                3.3e9,
                "https://huggingface.co/Qwen/Qwen3-30B-A3B",
                "model card: 30.5B total, 3.3B activated, 29.9B non-embedding",
            ),
        ),
        ModelConfig(
            name="Qwen3-235B-A22B",
            hf_model_type="qwen3_moe",
            source=_HF.format("Qwen/Qwen3-235B-A22B"),
            vocab_size=151936,
            d_model=4096,
            n_layers=94,
            n_heads=64,
            n_kv_heads=4,
            head_dim=128,
            qk_norm="head",
            d_ff=12288,
            n_experts=128,
            top_k=8,
            d_ff_expert=1536,
            max_context=40960,
            published=Published(
                235e9,
                22e9,
                "https://huggingface.co/Qwen/Qwen3-235B-A22B",
                "model card: 235B total, 22B activated, 234B non-embedding",
            ),
        ),
        ModelConfig(
            name="DeepSeek-V3",
            hf_model_type="deepseek_v3",
            source=_HF.format("deepseek-ai/DeepSeek-V3"),
            vocab_size=129280,
            d_model=7168,
            n_layers=61,
            n_heads=128,
            attention="mla",
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            d_ff=18432,
            n_experts=256,
            top_k=8,
            d_ff_expert=2048,
            n_shared_experts=1,
            first_k_dense=3,
            n_mtp_layers=1,
            max_context=163840,
            published=Published(
                671e9,
                37e9,
                "https://github.com/deepseek-ai/DeepSeek-V3/blob/main/README_WEIGHTS.md",
                "main model 671B total, 36.7B activated incl. 0.9B embedding and 0.9B output head; "
                "the hub's 685B adds the 14B multi-token-prediction module",
            ),
        ),
        ModelConfig(
            name="OLMoE-1B-7B",
            hf_model_type="olmoe",
            source=_HF.format("allenai/OLMoE-1B-7B-0924"),
            vocab_size=50304,
            d_model=2048,
            n_layers=16,
            n_heads=16,
            n_kv_heads=16,
            qk_norm="full",
            d_ff=1024,
            n_experts=64,
            top_k=8,
            d_ff_expert=1024,
            max_context=4096,
            published=Published(
                6.9e9, 1.3e9, "https://arxiv.org/abs/2409.02060", "OLMoE paper: 1.3B active out of 6.9B total"
            ),
        ),
    )
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def load_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (case, spaces, dots and dashes ignored: "mixtral 8x7b" works)."""
    if not isinstance(name, str):
        raise ValueError(f"preset name must be a string, got {name!r}")
    by_key = {_key(k): v for k, v in PRESETS.items()}
    if _key(name) not in by_key:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return by_key[_key(name)]
