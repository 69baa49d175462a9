"""Chapter 2 (Dense models): parameter, FLOP and byte accounting for a
:class:`~dmcourse.configs.ModelConfig`.

Conventions (chapter 2 explains each):

* **total**: every trained parameter of the main model, as ``sum(p.numel())`` over the
  ``transformers`` model reports it. A tied LM head is counted once (in ``embedding``).
* **active**: the parameters one token uses: total minus the routed experts it is *not* sent to.
  The input embedding and the LM head are included -- this is the convention of the published
  figures (Mixtral's 12.9B, DeepSeek-V3's 37B = 36.7B "including 0.9B for Embedding and 0.9B for
  the output Head", Qwen3's 3.3B, OLMoE's 1.3B); ``active_without_embedding`` drops the input
  embedding (a table lookup: memory, but no FLOPs). ``non_embedding`` drops both embedding and
  LM head (Qwen's "non-embedding" figure, Kaplan et al.'s N).
* DeepSeek-V3's router bias (``e_score_correction_bias``, one float per expert and MoE layer) is
  a buffer updated without gradients, not a parameter: not counted. Its multi-token-prediction
  module is reported as ``mtp`` and not added to ``total`` (the 685B on the hub = 671B + MTP).
* FLOPs: one multiply-add = 2 FLOPs. Forward per token ~ 2 x (weights used in matmuls) + the
  attention term 2 * n_layers * n_heads * (d_score + d_mix) * context, which grows with the
  context. MLA (DeepSeek-V3) is counted in one form at a time (:data:`MLA_FORMS`): by default the
  *absorbed* form with the compressed latent cache, as DeepSeek serves it; the *explicit* form
  goes with the decompressed per-head cache.
  Training ~ 3x forward (the backward pass costs about twice the forward): ~6N.
* Bytes: ``GB = 1e9`` bytes, ``GiB = 2**30`` bytes. Datasheets and model hubs use GB; ``nvidia-smi``
  and ``torch.cuda`` report MiB/GiB. Quantised formats' scales are not counted (a few % at most).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dmcourse.checks import check_int, is_real, one_of
from dmcourse.configs import ModelConfig

GB: int = 10**9
GiB: int = 2**30

BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4,
    "float32": 4,
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
    "fp8": 1,
    "float8": 1,
    "int8": 1,
    "int4": 0.5,
    "fp4": 0.5,
}


def bytes_per_param(dtype: str) -> float:
    """Bytes one parameter takes in ``dtype`` ("fp32", "bf16", "fp16", "fp8", "int8", "int4", ...)."""
    key = str(dtype).removeprefix("torch.").lower()
    if key not in BYTES_PER_PARAM:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(set(BYTES_PER_PARAM))}")
    return BYTES_PER_PARAM[key]


def to_gb(n_bytes: float) -> float:
    """Bytes -> GB (decimal, 1e9 bytes): the unit of datasheets and model hubs."""
    return n_bytes / GB


def to_gib(n_bytes: float) -> float:
    """Bytes -> GiB (binary, 2**30 bytes): the unit of nvidia-smi and torch.cuda."""
    return n_bytes / GiB


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a model, by where they live. ``total`` and ``active`` are derived.

    embedding: input token embedding (vocab, d_model) -- also the LM head when tied
    attention: q/k/v/o projections of all layers (MLA: down/up projections)
    dense_ffn: FFNs of the dense layers
    experts: all routed experts of all MoE layers
    shared_experts: always-active experts of all MoE layers
    router: router weights (n_experts, d_model) per MoE layer
    norms: every RMSNorm weight (two per layer, the final one, QK-norms, MLA's latent norms)
    lm_head: output projection (d_model, vocab); 0 when tied
    active_experts: routed expert parameters one token uses (top_k of n_experts per MoE layer)
    mtp: DeepSeek-V3's multi-token-prediction module(s), not part of total (0 elsewhere)
    """

    embedding: int
    attention: int
    dense_ffn: int
    experts: int
    shared_experts: int
    router: int
    norms: int
    lm_head: int
    active_experts: int
    mtp: int = 0

    @property
    def total(self) -> int:
        return (
            self.embedding
            + self.attention
            + self.dense_ffn
            + self.experts
            + self.shared_experts
            + self.router
            + self.norms
            + self.lm_head
        )

    @property
    def active(self) -> int:
        """Parameters used per token, input embedding and LM head included (published convention)."""
        return self.total - self.experts + self.active_experts

    @property
    def active_without_embedding(self) -> int:
        """``active`` minus the input embedding lookup. With tied embeddings (``lm_head == 0``) the
        same matrix is the LM head, which every token multiplies: nothing is dropped then."""
        return self.active - self.embedding if self.lm_head else self.active

    @property
    def non_embedding(self) -> int:
        """``total`` minus input embedding and LM head (Kaplan's N; Qwen's "non-embedding")."""
        return self.total - self.embedding - self.lm_head

    @property
    def ffn(self) -> int:
        """All FFN parameters: dense FFNs, routed and shared experts (routers not included)."""
        return self.dense_ffn + self.experts + self.shared_experts

    @property
    def total_with_mtp(self) -> int:
        """What the checkpoint stores: ``total`` plus the MTP module(s) (DeepSeek-V3: the hub's 685B)."""
        return self.total + self.mtp

    def as_dict(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(total=self.total, active=self.active)
        return out


def attention_params(config: ModelConfig) -> int:
    """Weights of one layer's attention projections (no norms), in parameters.

    GQA: q (d_model -> n_heads*head_dim), k and v (d_model -> n_kv_heads*head_dim each),
    o (n_heads*head_dim -> d_model). MLA: q_a (d_model -> q_lora_rank), q_b (q_lora_rank ->
    n_heads*(nope+rope)) [or one q (d_model -> n_heads*(nope+rope)) without q_lora_rank],
    kv_a (d_model -> kv_lora_rank + rope), kv_b (kv_lora_rank -> n_heads*(nope+v)),
    o (n_heads*v -> d_model).
    """
    c, d = config, config.d_model
    if c.attention == "gqa":
        q = d * c.n_heads * c.head_size
        kv = 2 * d * c.kv_heads * c.head_size
        o = c.n_heads * c.head_size * d
        return q + kv + o
    q_out = c.n_heads * c.qk_head_dim
    q = d * q_out if c.q_lora_rank is None else d * c.q_lora_rank + c.q_lora_rank * q_out
    kv_a = d * (c.kv_lora_rank + c.qk_rope_head_dim)
    kv_b = c.kv_lora_rank * c.n_heads * (c.qk_nope_head_dim + c.v_head_dim)
    o = c.n_heads * c.v_head_dim * d
    return q + kv_a + kv_b + o


def attention_norm_params(config: ModelConfig) -> int:
    """RMSNorm weights inside one layer's attention (QK-norm; MLA's latent norms)."""
    c = config
    if c.attention == "mla":
        return (c.q_lora_rank or 0) + c.kv_lora_rank
    if c.qk_norm == "head":
        return 2 * c.head_size
    if c.qk_norm == "full":
        return (c.n_heads + c.kv_heads) * c.head_size
    return 0


def ffn_params(d_model: int, d_ff: int, kind: str = "swiglu") -> int:
    """Weights of one FFN: 3*d_model*d_ff (SwiGLU: gate, up, down) or 2*d_model*d_ff (MLP)."""
    return {"swiglu": 3, "mlp": 2}[kind] * d_model * d_ff


def _layer_counts(config: ModelConfig, moe: bool) -> dict[str, int]:
    c, d = config, config.d_model
    out = dict(
        attention=attention_params(c),
        norms=2 * d + attention_norm_params(c),
        dense_ffn=0,
        experts=0,
        shared_experts=0,
        router=0,
        active_experts=0,
    )
    if moe:
        one = ffn_params(d, c.expert_width)
        out.update(
            experts=c.n_experts * one,
            active_experts=c.top_k * one,
            shared_experts=c.n_shared_experts * ffn_params(d, c.shared_width),
            router=c.n_experts * d,
        )
    else:
        out["dense_ffn"] = ffn_params(d, c.d_ff, c.ffn)
    return out


def count_params(config: ModelConfig) -> ParamCount:
    """Count the parameters of ``config`` by component; see :class:`ParamCount` and the module
    docstring for the conventions (``.total``, ``.active``, ``.active_without_embedding``)."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"count_params needs a ModelConfig (see dmcourse.load_preset), got {type(config).__name__}")
    c, d = config, config.d_model
    sums = dict.fromkeys(
        ("attention", "norms", "dense_ffn", "experts", "shared_experts", "router", "active_experts"), 0
    )
    for moe in (False, True):
        n = c.n_moe_layers if moe else c.n_dense_layers
        if n:
            for k, v in _layer_counts(c, moe).items():
                sums[k] += n * v
    sums["norms"] += d  # final norm
    embedding = c.vocab_size * d
    lm_head = 0 if c.tied_embeddings else c.vocab_size * d
    mtp = 0
    if c.n_mtp_layers:
        # One MTP module (DeepSeek-V3 README_WEIGHTS.md): enorm + hnorm (2*d), eh_proj (2d -> d),
        # one transformer layer like the last main layer, a final norm (d), and its own copies of
        # the embedding and output head (shared with the main model, but stored again).
        layer = _layer_counts(c, c.is_moe_layer(c.n_layers - 1))
        layer_total = sum(v for k, v in layer.items() if k != "active_experts")
        mtp = c.n_mtp_layers * (2 * d + 2 * d * d + layer_total + d + 2 * c.vocab_size * d)
    return ParamCount(embedding=embedding, lm_head=lm_head, mtp=mtp, **sums)


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def matmul_params_per_token(config: ModelConfig) -> int:
    """Weights that take part in a matrix multiply for one token: active parameters without the
    input embedding (a lookup) and without norms (elementwise), plus the LM head even when tied."""
    p = count_params(config)
    return p.active - p.embedding - p.norms - p.lm_head + config.vocab_size * config.d_model


MLA_FORMS: tuple[str, ...] = ("absorbed", "explicit")
"""The two ways to compute multi-head latent attention (MLA, DeepSeek-V2/V3), each with its own
cache: ``"absorbed"`` reads the compressed latent cache directly (the form DeepSeek serves);
``"explicit"`` decompresses per-head keys and values and caches those."""


def mla_cache_compressed(mla_form: str) -> bool:
    """Whether ``mla_form`` reads the compressed latent cache (``"absorbed"``: True) or the
    decompressed per-head one (``"explicit"``: False); the ``mla_compressed`` argument of
    :func:`kv_cache_bytes` that goes with the FLOPs of :func:`attention_flops_per_token`."""
    return one_of("mla_form", mla_form, MLA_FORMS) == "absorbed"


def attention_dims(config: ModelConfig, mla_form: str = "absorbed") -> tuple[int, int]:
    """``(d_score, d_mix)``: per head, the width of the vectors dotted to score one cached token
    and the width of the cached vector summed with the attention weights.

    GQA: ``(head_dim, head_dim)``. MLA in the ``"explicit"`` form: ``(qk_nope + qk_rope, v_head_dim)``
    (DeepSeek-V3: 128 + 64 and 128) over decompressed per-head keys and values. MLA in the
    ``"absorbed"`` form: ``(kv_lora_rank + qk_rope, kv_lora_rank)`` (DeepSeek-V3: 512 + 64 and 512):
    the key up-projection is folded into the query and the value up-projection into the output, so
    every head scores and sums the *cached latent* itself. The folded up-projections cost, per
    token, exactly the FLOPs of the ``kv_b`` weights the explicit form spends decompressing the new
    token (both ``2 * kv_lora_rank * n_heads * (qk_nope + v_head_dim)``), so
    :func:`matmul_params_per_token` is the same in both forms; only the per-context-token term
    differs.
    """
    c = config
    if mla_cache_compressed(mla_form) and c.attention == "mla":
        return c.kv_lora_rank + c.qk_rope_head_dim, c.kv_lora_rank
    return c.qk_head_dim, c.v_head_size


def attention_flops_per_token(config: ModelConfig, context: int, mla_form: str = "absorbed") -> int:
    """Forward FLOPs of the attention scores and weighted sum for one token that attends to
    ``context`` tokens: ``2 * n_layers * n_heads * (d_score + d_mix) * context`` (QK^T and A V),
    with ``(d_score, d_mix)`` from :func:`attention_dims`.

    The sliding window (if any) caps ``context``. For a whole causal sequence of length L the
    average context is about L/2. MLA is counted in ``mla_form`` (default ``"absorbed"``, the form
    that reads the compressed cache of :func:`kv_cache_bytes_per_token`; use ``"explicit"`` together
    with ``mla_compressed=False`` there). GQA models ignore ``mla_form``.
    """
    check_int("context", context, 0)
    c = config
    if c.sliding_window is not None:
        context = min(context, c.sliding_window)
    d_score, d_mix = attention_dims(c, mla_form)
    return 2 * c.n_layers * c.n_heads * (d_score + d_mix) * context


def forward_flops_per_token(config: ModelConfig, context: int = 0, mla_form: str = "absorbed") -> int:
    """Forward FLOPs for one token: ``2 * matmul_params_per_token + attention term`` (FLOP).

    ``context=0`` gives the familiar ~2N (N = active parameters)."""
    return 2 * matmul_params_per_token(config) + attention_flops_per_token(config, context, mla_form)


def training_flops_per_token(config: ModelConfig, context: int = 0, mla_form: str = "absorbed") -> int:
    """Forward + backward FLOPs for one token, ~3x forward (~6N): the backward pass computes
    gradients with respect to both activations and weights, two matmuls per forward matmul."""
    return 3 * forward_flops_per_token(config, context, mla_form)


# --------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------


def weight_bytes(config_or_params: ModelConfig | int | float, dtype: str = "bf16", which: str = "total") -> float:
    """Bytes of weights in ``dtype``: ``params * bytes_per_param(dtype)`` (bytes).

    ``config_or_params``: a ModelConfig (``which`` = "total", "active", "active_without_embedding"
    or "total_with_mtp" picks the count) or a plain number of parameters.
    """
    if isinstance(config_or_params, ModelConfig):
        p = count_params(config_or_params)
        if which not in ("total", "active", "active_without_embedding", "total_with_mtp", "non_embedding"):
            raise ValueError(f"which must name a ParamCount figure such as 'total' or 'active', got {which!r}")
        n = getattr(p, which)
    elif is_real(config_or_params) and config_or_params >= 0:
        n = config_or_params
    else:
        raise ValueError(f"expected a ModelConfig or a non-negative parameter count, got {config_or_params!r}")
    return n * bytes_per_param(dtype)


def kv_cache_bytes_per_token(config: ModelConfig, dtype: str = "bf16", mla_compressed: bool = True) -> float:
    """Bytes of KV cache one token adds, over all layers (bytes/token).

    GQA: ``2 (K and V) * n_layers * n_kv_heads * head_dim * bytes``: grouped-query attention
    caches only the KV heads, not one per query head. MLA (DeepSeek-V3): the compressed latent
    and the shared RoPE key, ``n_layers * (kv_lora_rank + qk_rope_head_dim) * bytes`` -- the cache
    of the absorbed form (:data:`MLA_FORMS`); with ``mla_compressed=False``, the decompressed
    per-head K and V of the explicit form (what a naive implementation caches),
    ``n_layers * n_heads * (qk_nope + qk_rope + v_head_dim) * bytes``. Pair it with the FLOPs of the
    same form: :func:`mla_cache_compressed` maps a form to this flag.
    """
    c, b = config, bytes_per_param(dtype)
    if c.attention == "mla":
        if mla_compressed:
            return c.n_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * b
        return c.n_layers * c.n_heads * (c.qk_head_dim + c.v_head_dim) * b
    return 2 * c.n_layers * c.kv_heads * c.head_size * b


def kv_cache_bytes(
    config: ModelConfig, context: int, batch: int = 1, dtype: str = "bf16", mla_compressed: bool = True
) -> float:
    """KV-cache bytes for ``batch`` sequences of ``context`` tokens each (bytes).

    A sliding window (Mistral-7B v0.1: 4096) caps what one sequence keeps at ``sliding_window``
    tokens.
    """
    check_int("context", context, 0)
    check_int("batch", batch)
    if config.sliding_window is not None:
        context = min(context, config.sliding_window)
    return batch * context * kv_cache_bytes_per_token(config, dtype, mla_compressed)
