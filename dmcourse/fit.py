"""Chapter 2 (Dense models, "Does it fit on one GPU?"): memory needed vs a GPU's datasheet memory.

What counts is listed, nothing hidden: the weights (:func:`dmcourse.accounting.weight_bytes`), the
KV cache (:func:`dmcourse.accounting.kv_cache_bytes`) and whatever else you reserve. Sizes in bytes;
GPU memory from the datasheet table (:mod:`dmcourse.hardware`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dmcourse import hardware
from dmcourse.accounting import kv_cache_bytes, mla_cache_compressed, to_gb, weight_bytes
from dmcourse.checks import check_int, is_real, nonnegative_float
from dmcourse.configs import ModelConfig
from dmcourse.hardware import GPUSpec


@dataclass(frozen=True)
class Fit:
    """Memory needed vs a GPU's datasheet memory. All sizes in bytes.

    ``needed_bytes`` = weights + KV cache + ``extra_bytes``; ``available_bytes`` =
    ``n_gpus * memory_bytes`` (datasheet; usable memory is a little less).
    """

    gpu: str
    n_gpus: int
    memory_bytes: int
    weight_bytes: float
    kv_cache_bytes: float
    extra_bytes: float

    @property
    def needed_bytes(self) -> float:
        return self.weight_bytes + self.kv_cache_bytes + self.extra_bytes

    @property
    def available_bytes(self) -> int:
        return self.n_gpus * self.memory_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.available_bytes

    @property
    def headroom_bytes(self) -> float:
        """Datasheet memory left over (negative: short by that much)."""
        return self.available_bytes - self.needed_bytes

    @property
    def gpus_needed(self) -> int:
        """Fewest GPUs of this kind whose datasheet memory adds up to ``needed_bytes``."""
        return max(1, math.ceil(self.needed_bytes / self.memory_bytes))

    def __str__(self) -> str:
        verdict = "fits" if self.fits else f"does not fit (needs {self.gpus_needed})"
        return (
            f"{to_gb(self.needed_bytes):.1f} GB on {self.n_gpus} x {self.gpu} "
            f"({to_gb(self.available_bytes):.0f} GB datasheet): {verdict}"
        )


def fits_on_gpu(
    model: ModelConfig | int | float,
    gpu: str | GPUSpec,
    dtype: str = "bf16",
    n_gpus: int = 1,
    context: int = 0,
    batch: int = 1,
    kv_dtype: str | None = None,
    extra_bytes: float = 0,
    mla_form: str = "absorbed",
) -> Fit:
    """Whether ``model`` fits in the datasheet memory of ``n_gpus`` x ``gpu``.

    model: a ModelConfig (all ``total`` weights in ``dtype``, plus the KV cache of ``batch``
    sequences of ``context`` tokens in ``kv_dtype``, default ``dtype``) or a number of bytes of
    weights. ``extra_bytes``: anything else you want to reserve (activations, workspace). No hidden
    overhead factor is added: what counts is listed in the returned :class:`Fit`. ``mla_form``:
    which cache an MLA model keeps (:func:`mla_cache_compressed`).
    """
    spec = hardware.gpu(gpu)
    check_int("n_gpus", n_gpus)
    nonnegative_float("extra_bytes", extra_bytes)
    if isinstance(model, ModelConfig):
        w = weight_bytes(model, dtype)
        kv = kv_cache_bytes(model, context, batch, kv_dtype or dtype, mla_cache_compressed(mla_form))
    elif is_real(model) and model >= 0:
        if context:
            raise ValueError("context needs a ModelConfig (the KV cache depends on the architecture)")
        w, kv = float(model), 0.0
    else:
        raise ValueError(f"model must be a ModelConfig or a number of bytes, got {model!r}")
    return Fit(
        gpu=spec.name,
        n_gpus=n_gpus,
        memory_bytes=spec.memory_bytes,
        weight_bytes=w,
        kv_cache_bytes=kv,
        extra_bytes=float(extra_bytes),
    )
