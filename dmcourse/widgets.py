"""The inference-cost calculator: an ipywidgets front end on :func:`dmcourse.calculator.estimate`.

Chapter 6 ("Inference economics") introduces it.

Everything that computes is a plain function, tested without a kernel: :func:`custom_config`
(a model from the calculator's fields), :func:`model_for` (a preset or the custom model),
:func:`estimate_for` (the calculator's inputs -> :class:`~dmcourse.calculator.Estimate`),
:func:`estimate_html` (the table it shows) and :func:`plot_estimate` (its figure, also drawn on
static pages, where widgets cannot run). :func:`calculator` only wires widgets to them.

Widgets sit on top of the package: no model module imports this one, and ``ipywidgets`` is imported
only when :func:`calculator` is called.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from dmcourse import accounting, economics, hardware, plot
from dmcourse import calculator as calc
from dmcourse.configs import PRESETS, ModelConfig

#: An *assumed* price, the calculator's starting value: not a datasheet figure and not a quote.
#: GPU-hour prices differ by provider, contract and year; type your own into the calculator.
DEFAULT_ASSUMED_USD_PER_GPU_HOUR: float = 2.0

CUSTOM = "custom"
DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")
CUSTOM_DEFAULTS: dict[str, int] = dict(
    d_model=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    d_ff=14336,
    vocab_size=32000,
    n_experts=8,
    top_k=2,
    d_ff_expert=14336,
)
"""Fields of a custom model (Mixtral-8x7B's shape; ``n_experts=0`` makes it dense)."""

BATCHES: tuple[int, ...] = tuple(2**i for i in range(15))


def custom_config(
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    d_ff: int,
    vocab_size: int,
    n_experts: int = 0,
    top_k: int = 0,
    d_ff_expert: int = 0,
    name: str = CUSTOM,
) -> ModelConfig:
    """A :class:`~dmcourse.configs.ModelConfig` from the calculator's custom fields: GQA attention,
    SwiGLU FFNs; ``n_experts = 0``: dense (``top_k`` and ``d_ff_expert`` ignored); else every layer
    is an MoE layer with ``n_experts`` experts of width ``d_ff_expert``, ``top_k`` per token.
    Invalid values raise ``ValueError`` (from ModelConfig), naming the field."""
    dense = ModelConfig(
        name=name,
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_ff=d_ff,
    )
    if not n_experts:  # dense: top_k and d_ff_expert are ignored, the MoE fields keep ModelConfig's defaults
        return dense
    return dataclasses.replace(dense, n_experts=n_experts, top_k=top_k, d_ff_expert=d_ff_expert)


def model_for(choice: str, custom: Mapping[str, int] | None = None) -> ModelConfig:
    """The preset called ``choice``, or, for ``choice == "custom"``, :func:`custom_config` of
    ``custom`` (missing fields from :data:`CUSTOM_DEFAULTS`)."""
    if choice == CUSTOM:
        fields: dict[str, Any] = {**CUSTOM_DEFAULTS, **(custom or {})}
        unknown = set(fields) - set(CUSTOM_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown custom field(s) {sorted(unknown)}; expected {sorted(CUSTOM_DEFAULTS)}")
        return custom_config(**fields)
    if choice not in PRESETS:
        raise ValueError(f"unknown model {choice!r}; choose one of {list(PRESETS)} or {CUSTOM!r}")
    return PRESETS[choice]


def estimate_for(
    choice: str,
    gpu: str,
    dtype: str,
    batch: int,
    context: int,
    usd_per_gpu_hour: float,
    custom: Mapping[str, int] | None = None,
) -> calc.Estimate:
    """The calculator's computation: :func:`dmcourse.calculator.estimate` for its inputs."""
    return calc.estimate(
        model_for(choice, custom), gpu, dtype=dtype, batch=batch, context=context, usd_per_gpu_hour=usd_per_gpu_hour
    )


def estimate_html(est: calc.Estimate) -> str:
    """An HTML table of :meth:`Estimate.rows`, with a line saying what is datasheet and what assumed."""
    body = "".join(f"<tr><td>{html.escape(k)}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in est.rows())
    note = (
        "Roofline lower bound with datasheet bandwidth and peak; ideal scaling over the GPUs "
        "(no communication); the price per GPU-hour is an assumption."
    )
    return f"<table>{body}</table><p style='font-size:smaller'>{html.escape(note)}</p>"


def plot_estimate(
    est: calc.Estimate,
    config: ModelConfig | None = None,
    batches: Sequence[int] = BATCHES,
    axes: Sequence[plt.Axes] | None = None,
) -> plt.Figure:
    """Two panels for one :class:`~dmcourse.calculator.Estimate`: the memory it needs (weights, KV
    cache, activations) against the datasheet memory of the GPUs costed; and GPU-seconds (and, with
    a price, dollars) per million tokens as the batch varies, the estimate's batch marked,
    memory- and compute-bound parts of the curve drawn differently. ``config``: the estimate's model
    (default: the preset of that name; pass it for a custom model). Returns the figure."""
    if config is None:
        if est.model not in PRESETS:
            raise ValueError(f"{est.model!r} is not a preset: pass its config to plot_estimate")
        config = PRESETS[est.model]
    if config.name != est.model:
        raise ValueError(f"config {config.name!r} is not the model of the estimate ({est.model!r})")
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    else:
        parent = axes[0].get_figure(root=True)
        assert parent is not None, "the axes passed in belong to no figure"
        fig = parent
    ax_mem, ax_cost = axes
    m, gb = est.memory, accounting.to_gb
    parts = [
        ("weights", m.weight_bytes, plot.COLORS["dense"]),
        ("KV cache", m.kv_cache_bytes, plot.COLORS["moe"]),
        ("activations", m.extra_bytes, plot.COLORS["accent"]),
    ]
    bottom = 0.0
    for label, value, color in parts:
        ax_mem.bar(
            [0],
            [gb(value)],
            bottom=bottom,
            color=color,
            label=f"{label} {gb(value):,.{1 if gb(value) >= 1 else 3}f} GB",
            width=0.6,
        )
        bottom += gb(value)
    capacity = gb(est.n_gpus * m.memory_bytes)
    ax_mem.axhline(
        capacity,
        color=plot.COLORS["datasheet"],
        ls="--",
        label=f"{est.n_gpus} x {est.gpu}: {capacity:,.0f} GB (datasheet)",
    )
    ax_mem.set(
        xticks=[],
        xlim=(-0.5, 2.5),
        ylim=(0, 1.25 * max(bottom, capacity)),
        ylabel="GB (1e9 bytes)",
        title=f"{est.model}, {est.dtype}: memory",
    )
    ax_mem.legend(loc="center right", fontsize=8)

    price = est.cost.usd_per_gpu_hour
    color = plot.COLORS["moe"] if config.is_moe else plot.COLORS["dense"]
    points = []
    for b in batches:
        r = economics.decode_cost(
            config, est.gpu, b, context=est.context, dtype=est.dtype, kv_dtype=est.kv_dtype, n_gpus=est.n_gpus
        )
        fits = economics.serving_memory(
            config, est.gpu, est.dtype, batch=b, context=est.context, kv_dtype=est.kv_dtype, n_gpus=est.n_gpus
        ).fits
        points.append((b, r.gpu_seconds_per_token * 1e6, r.bound, fits))
    for bound, style in (("memory", "-"), ("compute", "--")):
        pts = [(b, y) for b, y, bd, _ in points if bd == bound]
        if pts:
            ax_cost.loglog(*zip(*pts), style, color=color, label=f"{bound}-bound")
    over = [(b, y) for b, y, _, fits in points if not fits]
    if over:
        ax_cost.loglog(
            *zip(*over),
            "x",
            color=plot.COLORS["datasheet"],
            ms=5,
            label=f"does not fit {est.n_gpus} GPU(s): more GPUs, same cost if scaling were ideal",
        )
    ax_cost.loglog([est.batch], [est.cost.gpu_seconds_per_token * 1e6], "o", color="k", label=f"batch {est.batch}")
    ax_cost.set(
        xlabel="batch (sequences decoded together)",
        ylabel="GPU-seconds per million tokens",
        title=f"{est.n_gpus} x {est.gpu} (datasheet roof), context {est.context}",
    )
    if price:
        usd_per_gpu_s = price / 3600
        sec = ax_cost.secondary_yaxis(
            "right", functions=(lambda s: np.asarray(s) * usd_per_gpu_s, lambda d: np.asarray(d) / usd_per_gpu_s)
        )
        sec.set_ylabel(f"\\$ per million tokens (assumed \\${price:g}/GPU-hour)", fontsize=8)
    ax_cost.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.tight_layout()
    return fig


def calculator(
    usd_per_gpu_hour: float = DEFAULT_ASSUMED_USD_PER_GPU_HOUR, model: str = "Mixtral-8x7B", gpu: str = "H100"
) -> Any:
    """The interactive calculator for a live notebook: model (a preset or custom fields), GPU,
    dtype, batch, context, assumed $/GPU-hour -> memory, GPUs needed, time and cost per token, bound
    (:func:`estimate_for`, :func:`estimate_html`, :func:`plot_estimate`). Returns the widget."""
    import ipywidgets as w

    choice = w.Dropdown(options=[*PRESETS, CUSTOM], value=model, description="model")
    gpu_w = w.Dropdown(options=list(hardware.gpus()), value=hardware.gpu(gpu).name, description="GPU")
    dtype = w.Dropdown(options=DTYPES, value="bf16", description="weights")
    batch = w.SelectionSlider(options=list(BATCHES), value=1, description="batch")
    context = w.SelectionSlider(options=[0] + [2**i for i in range(8, 18)], value=4096, description="context")
    price = w.BoundedFloatText(
        value=usd_per_gpu_hour,
        min=0.0,
        max=1000.0,
        step=0.1,
        description="assumed $/GPU-h",
        style={"description_width": "initial"},
    )
    custom = {
        k: w.BoundedIntText(
            value=v,
            min=0 if k in ("n_experts", "top_k", "d_ff_expert") else 1,
            max=10**7,
            description=k,
            layout=w.Layout(width="190px"),
        )
        for k, v in CUSTOM_DEFAULTS.items()
    }
    custom_box = w.GridBox(list(custom.values()), layout=w.Layout(grid_template_columns="repeat(3, 200px)"))
    table, figure = w.HTML(), w.Output()

    def redraw(*_: object) -> None:
        custom_box.layout.display = None if choice.value == CUSTOM else "none"
        fields = {k: v.value for k, v in custom.items()}
        figure.clear_output(wait=True)
        try:
            est = estimate_for(choice.value, gpu_w.value, dtype.value, batch.value, context.value, price.value, fields)
        except ValueError as err:
            table.value = f"<p style='color:#d1495b'>{html.escape(str(err))}</p>"
            return
        table.value = estimate_html(est)
        with figure:
            plot_estimate(est, model_for(choice.value, fields))
            plt.show()

    for widget in (choice, gpu_w, dtype, batch, context, price, *custom.values()):
        widget.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([choice, gpu_w, dtype]), w.HBox([batch, context, price]), custom_box, table, figure])
