"""Chapter 6 (Inference economics): the calculator -- everything the chapter's calculator shows for
one setting, as one pure function over :mod:`dmcourse.economics` (the widget in
:mod:`dmcourse.widgets` only displays it).

Units: bytes, seconds, dollars; ``GB = 1e9`` bytes, ``GiB = 2**30`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmcourse import accounting, fit, hardware
from dmcourse import economics as ec
from dmcourse.configs import ModelConfig
from dmcourse.hardware import GPUSpec


@dataclass(frozen=True)
class Estimate:
    """What the calculator shows for one setting. Bytes, seconds, dollars; see :func:`estimate`.
    ``cost`` carries the memory on the GPUs costed (``cost.memory``) and whether it fits."""

    model: str
    gpu: str
    dtype: str
    kv_dtype: str
    batch: int
    context: int
    params_total: int
    params_active: int
    cost: ec.DecodeCost

    @property
    def memory(self) -> fit.Fit:
        """Weights + KV cache + activations against the datasheet memory of the GPUs costed."""
        return self.cost.memory

    @property
    def n_gpus(self) -> int:
        return self.cost.n_gpus

    @property
    def bound(self) -> str:
        return self.cost.bound

    @property
    def fits(self) -> bool:
        """Whether the setting fits the GPUs costed (:attr:`dmcourse.economics.DecodeCost.fits`)."""
        return self.cost.fits

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, formatted for display (GB = 1e9 bytes, GiB = 2**30 bytes)."""
        m, k = self.memory, self.cost
        gb = accounting.to_gb
        price = k.usd_per_gpu_hour
        return [
            (
                "model",
                f"{self.model}: {self.params_total / 1e9:.1f}B parameters, {self.params_active / 1e9:.1f}B active",
            ),
            (
                "weights",
                (
                    f"{gb(m.weight_bytes):,.1f} GB ({self.dtype}"
                    f"{'; every expert resident' if self.params_active < self.params_total else ''})"
                ),
            ),
            ("KV cache", f"{gb(m.kv_cache_bytes):,.2f} GB ({self.batch} x {self.context} tokens, {self.kv_dtype})"),
            ("activations (estimate)", f"{m.extra_bytes / 1e6:,.1f} MB"),
            ("total memory", f"{gb(m.needed_bytes):,.1f} GB = {accounting.to_gib(m.needed_bytes):,.1f} GiB"),
            ("GPUs needed", f"{m.gpus_needed} x {self.gpu} ({m.memory_bytes / 1e9:.0f} GB each, datasheet)"),
            ("GPUs costed", f"{k.n_gpus}"),
            ("fits?", k.fit_message),
            ("time per step (= per token of one sequence)", f"{k.step_time_s * 1e3:,.2f} ms"),
            ("throughput", f"{k.tokens_per_s:,.0f} tokens/s"),
            ("GPU-seconds per token", f"{k.gpu_seconds_per_token:.3g}"),
            (
                "cost per million tokens",
                "no price given"
                if price is None
                else f"${k.usd_per_million_tokens:,.2f} at an assumed ${price:g}/GPU-hour",
            ),
            ("bound", f"{k.bound} (intensity {k.step.intensity:,.1f} FLOP/byte, ridge {k.ridge:,.0f})"),
        ]


def estimate(
    model: ModelConfig | str,
    gpu: str | GPUSpec = "H100",
    *,
    dtype: str = "bf16",
    batch: int = 1,
    context: int = 0,
    usd_per_gpu_hour: float | None = None,
    kv_dtype: str | None = None,
    n_gpus: int | None = None,
    mla_form: str = "absorbed",
) -> Estimate:
    """The calculator: memory (:func:`dmcourse.economics.serving_memory`), GPUs needed, whether the
    setting fits, and the roofline time, cost and bound of a decode step
    (:func:`dmcourse.economics.decode_cost`) for ``model`` on ``gpu`` at ``batch`` sequences of
    ``context`` tokens. ``n_gpus`` defaults to the GPUs needed; with fewer, ``.fits`` is False and
    the ``"fits?"`` row says by how much. A pure function: no widgets, no I/O."""
    c = ec.load_model(model)
    spec = hardware.gpu(gpu)
    cost = ec.decode_cost(
        c,
        spec,
        batch,
        context=context,
        dtype=dtype,
        kv_dtype=kv_dtype,
        n_gpus=n_gpus,
        usd_per_gpu_hour=usd_per_gpu_hour,
        mla_form=mla_form,
    )
    p = accounting.count_params(c)
    return Estimate(
        model=c.name,
        gpu=spec.name,
        dtype=dtype,
        kv_dtype=cost.kv_dtype,
        batch=cost.batch,
        context=cost.context,
        params_total=p.total,
        params_active=p.active,
        cost=cost,
    )
