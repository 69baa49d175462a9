"""A tiny character-level language model, dense or MoE, and the text it learns.

Chapter 7 ("Training dense vs MoE, and the middle paths") introduces it.

**The corpus** (:func:`make_corpus`): English-like text generated offline from a small grammar, so
nothing is downloaded. Sentences come from a few *topics* with their own words and sentence shapes
(a farm, a market with prices, a sky with weather, arithmetic lines such as ``12 plus 7 is 19.``):
structure a model can learn in minutes and experts can specialise on. ``topics`` picks the mix;
a different mix is a *shifted distribution* for fine-tuning experiments. :class:`CharData` encodes
it with the fixed alphabet :data:`ALPHABET`, splits it once into train (first 90 %) and validation
(last 10 %) and makes random windows ``x`` (B, S), ``y = x`` shifted by one (B, S) int64.

**The model** (:class:`TinyLM`): token embedding, ``n_layers`` pre-norm blocks
``h = h + attn(RMSNorm(h)); h = h + ffn(RMSNorm(h))`` with causal multi-head attention and no
position embedding (a causal mask alone lets a model infer positions -- "NoPE"), a final RMSNorm
and an untied LM head. Dense and MoE models share this one :class:`Block`; only the FFN differs:
:class:`dmcourse.ffn.SwiGLU` (``n_experts == 0``) or :class:`dmcourse.moe.MoE`. :class:`LMConfig`
describes a model and converts to a :class:`dmcourse.configs.ModelConfig`, so parameter and FLOP
counts come from :mod:`dmcourse.accounting` (no formula is repeated here).

Training uses :func:`dmcourse.train.train` with :func:`lm_loss` as the task loss
(``task_loss_fn(lm_loss)`` for dense models, ``moe_loss_fn(Balancing(...), lm_loss)`` for MoE).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmcourse.checks import check_int, check_shape, one_of, probability
from dmcourse.configs import ModelConfig
from dmcourse.ffn import SwiGLU
from dmcourse.moe import MoE

ALPHABET = "\n .,?abcdefghijklmnopqrstuvwxyz0123456789"
"""The characters of the corpus; token id = position in this string."""

_WORDS = {
    "farm": dict(
        subj=["the cow", "a goat", "the old horse", "a small pig", "the hen", "my dog"],
        verb=["eats", "sees", "chases", "likes", "finds", "follows"],
        obj=["the grass", "an apple", "the farmer", "a bucket", "the barn", "some hay"],
        end=["in the morning", "near the gate", "all day", "after the rain", "at night"],
    ),
    "market": dict(
        item=["bread", "fish", "rice", "salt", "cheese", "honey", "lamps", "rope"],
        seller=["anna", "omar", "lena", "tom", "mia", "ravi"],
    ),
    "sky": dict(
        thing=["the sun", "the moon", "a cloud", "the wind", "a storm", "the stars"],
        does=["rises", "falls", "moves", "shines", "fades", "returns"],
        where=["over the hills", "above the sea", "behind the town", "in the east", "in the west"],
    ),
}
TOPICS: tuple[str, ...] = ("farm", "market", "sky", "math")


def _sentence(topic: str, rng: random.Random) -> str:
    if topic == "farm":
        w = _WORDS["farm"]
        return f"{rng.choice(w['subj'])} {rng.choice(w['verb'])} {rng.choice(w['obj'])} {rng.choice(w['end'])}."
    if topic == "market":
        w = _WORDS["market"]
        n, p = rng.randint(2, 9), rng.randint(1, 9)
        return f"{rng.choice(w['seller'])} sells {n} {rng.choice(w['item'])} for {p} coins, so {n * p} coins."
    if topic == "sky":
        w = _WORDS["sky"]
        return f"{rng.choice(w['thing'])} {rng.choice(w['does'])} {rng.choice(w['where'])}."
    if topic == "math":
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return f"{a} plus {b} is {a + b}."
    raise ValueError(f"topic must be one of {TOPICS}, got {topic!r}")


def make_corpus(
    n_chars: int = 200_000,
    *,
    topics: Sequence[str] = ("farm", "market", "sky"),
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> str:
    """Generated text of at least ``n_chars`` characters: paragraphs of 3-6 sentences, each paragraph
    on one topic drawn from ``topics`` (probabilities ``weights``, default uniform). Deterministic
    for a given ``seed``; every character is in :data:`ALPHABET`."""
    check_int("n_chars", n_chars)
    topics = list(topics)
    if not topics or any(t not in TOPICS for t in topics):
        raise ValueError(f"topics must be a non-empty subset of {TOPICS}, got {topics!r}")
    if weights is not None and (len(weights) != len(topics) or any(w < 0 for w in weights) or sum(weights) <= 0):
        raise ValueError(f"weights must be {len(topics)} non-negative numbers with a positive sum, got {weights!r}")
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < n_chars:
        topic = rng.choices(topics, weights=weights)[0]
        para = " ".join(_sentence(topic, rng) for _ in range(rng.randint(3, 6))) + "\n"
        parts.append(para)
        size += len(para)
    return "".join(parts)


def encode(text: str) -> torch.Tensor:
    """Text -> (len,) int64 token ids (positions in :data:`ALPHABET`)."""
    lookup = {c: i for i, c in enumerate(ALPHABET)}
    bad = sorted(set(text) - set(lookup))
    if bad:
        raise ValueError(f"characters not in ALPHABET: {bad!r}")
    return torch.tensor([lookup[c] for c in text], dtype=torch.int64)


def decode(ids: torch.Tensor | Sequence[int]) -> str:
    """Token ids -> text."""
    return "".join(ALPHABET[int(i)] for i in ids)


@dataclass
class LMBatch:
    """x (B, S) int64 input ids; y (B, S) int64 next-character targets."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device | str) -> LMBatch:
        return LMBatch(self.x.to(device), self.y.to(device))


class CharData:
    """A text, encoded, with a fixed split: train = first ``1 - val_fraction``, validation = the rest."""

    def __init__(self, text: str, val_fraction: float = 0.1) -> None:
        probability("val_fraction", val_fraction, allow_zero=False, allow_one=False)
        ids = encode(text)
        cut = int(len(ids) * (1 - val_fraction))
        self.train, self.val = ids[:cut], ids[cut:]

    def sample(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator | None = None) -> LMBatch:
        """``batch_size`` random windows of ``seq_len + 1`` characters of ``split`` ("train"/"val")."""
        one_of("split", split, ("train", "val"))
        check_int("batch_size", batch_size)
        check_int("seq_len", seq_len)
        ids = self.train if split == "train" else self.val
        if len(ids) <= seq_len + 1:
            raise ValueError(f"the {split} split has {len(ids)} characters, too few for seq_len={seq_len}")
        start = torch.randint(0, len(ids) - seq_len - 1, (batch_size,), generator=generator)
        windows = torch.stack([ids[s : s + seq_len + 1] for s in start.tolist()])
        return LMBatch(windows[:, :-1], windows[:, 1:])

    def batch_fn(self, split: str, batch_size: int, seq_len: int) -> Callable[[int, torch.Generator], LMBatch]:
        """``batch_fn(step, generator)`` for :func:`dmcourse.train.train` / :func:`~dmcourse.train.evaluate`."""
        return lambda step, generator: self.sample(split, batch_size, seq_len, generator)


# ------------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class LMConfig:
    """Sizes of a :class:`TinyLM`. ``n_experts == 0``: dense FFN of width ``d_ff``; otherwise an
    :class:`~dmcourse.moe.MoE` with ``n_experts`` experts of width ``d_ff``, ``top_k`` per token and
    the MoE's default router (:func:`dmcourse.routing.default_router`: Switch gating for ``top_k = 1``,
    so the language-model loss trains the router)."""

    vocab_size: int = len(ALPHABET)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    n_experts: int = 0
    top_k: int = 1
    seq_len: int = 64

    def __post_init__(self) -> None:
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "top_k", "seq_len"):
            check_int(f, getattr(self, f))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if check_int("n_experts", self.n_experts, 0):  # 0: a dense model
            check_int("top_k", self.top_k, maximum=self.n_experts)

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def model_config(self, name: str = "tiny-lm") -> ModelConfig:
        """The same model as a :class:`dmcourse.configs.ModelConfig`, for :mod:`dmcourse.accounting`."""
        if self.is_moe:
            return ModelConfig(
                name=name,
                vocab_size=self.vocab_size,
                d_model=self.d_model,
                n_layers=self.n_layers,
                n_heads=self.n_heads,
                n_experts=self.n_experts,
                top_k=self.top_k,
                d_ff_expert=self.d_ff,
            )
        return ModelConfig(
            name=name,
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
        )


class Attention(nn.Module):
    """Causal multi-head self-attention, no biases: x (B, S, d_model) -> (B, S, d_model)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d_model, d_model, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (w(x).view(b, s, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    """``h + attn(norm1(h))``, then ``+ ffn(norm2(h))``; ``ffn`` any module (..., d) -> (..., d)."""

    def __init__(self, d_model: int, n_heads: int, ffn: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ffn = ffn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.ffn(self.norm2(h))


def make_ffn(config: LMConfig) -> nn.Module:
    """The FFN of one block: ``SwiGLU(d_model, d_ff)`` or ``MoE(d_model, d_ff, n_experts, top_k)`` with
    the default router (Switch gating at ``top_k = 1``, Mixtral's softmax over the chosen k above)."""
    if config.is_moe:
        return MoE(config.d_model, config.d_ff, config.n_experts, config.top_k)
    return SwiGLU(config.d_model, config.d_ff)


class TinyLM(nn.Module):
    """Character LM: ids (B, S) int64 -> logits (B, S, vocab_size) float. See the module docstring."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        if not isinstance(config, LMConfig):
            raise ValueError(f"config must be an LMConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, make_ffn(config)) for _ in range(config.n_layers)
        )
        self.norm = nn.RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_shape("ids", ids, (None, None), "(batch, seq)", dtype="integer")
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    @torch.no_grad()
    def generate(
        self, prompt: str, n_chars: int, generator: torch.Generator | None = None, temperature: float = 0.8
    ) -> str:
        """Sample ``n_chars`` characters after ``prompt`` (context cut to ``seq_len``)."""
        device = self.head.weight.device
        ids = encode(prompt).to(device)
        for _ in range(n_chars):
            logits = self(ids[-self.config.seq_len :][None])[0, -1].float() / temperature
            nxt = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=generator).to(device)
            ids = torch.cat([ids, nxt])
        return decode(ids.tolist())


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy in nats: logits (B, S, V), targets (B, S) -> scalar (float32)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def ffn_layers(model: TinyLM) -> list[nn.Module]:
    """The FFN module of each block, in order."""
    return [b.get_submodule("ffn") for b in model.blocks]


@torch.no_grad()
def expert_choices(model: TinyLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """Top-k expert indices per layer for ids (B, S): a list of (B*S, k) int64 (model in eval mode)."""
    was = model.training
    model.eval()
    try:
        model(ids)
    finally:
        model.train(was)
    routings = [f.last_routing for f in ffn_layers(model) if isinstance(f, MoE)]
    return [r.indices.clone() for r in routings if r is not None]


# ------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(model: TinyLM, path: str | Path, **extra: Any) -> None:
    """Save ``{"config": dict, "state": state_dict, **extra}`` to ``path`` (weights moved to the CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": dataclasses.asdict(model.config), "state": state, **extra}, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[TinyLM, dict[str, Any]]:
    """-> (model rebuilt from the stored config with the stored weights, the extra entries)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "config" not in blob or "state" not in blob:
        raise ValueError(f"{path} is not a dmcourse.lm checkpoint (needs 'config' and 'state')")
    model = TinyLM(LMConfig(**blob["config"]))
    model.load_state_dict(blob["state"])
    extra = {k: v for k, v in blob.items() if k not in ("config", "state")}
    return model.to(device), extra


__all__: Sequence[str] = (
    "ALPHABET",
    "TOPICS",
    "Attention",
    "Block",
    "CharData",
    "LMBatch",
    "LMConfig",
    "TinyLM",
    "decode",
    "encode",
    "expert_choices",
    "ffn_layers",
    "lm_loss",
    "load_checkpoint",
    "make_corpus",
    "make_ffn",
    "save_checkpoint",
)
