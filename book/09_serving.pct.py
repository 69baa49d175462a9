# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Serving an MoE: speculative decoding, quantised, offloaded and hot experts
#
# The [roofline chapter](05_roofline.ipynb) built one model of a decode step: it reads the
# always-used weights plus the experts the batch touches, $E_t(B) = E\,(1 - (1 - k/E)^B)$ of $E$
# per layer, and it is memory-bound until a large batch. The [economics chapter](06_economics.ipynb)
# turned it into GPUs and cost per token. This chapter uses the same model to answer four questions
# that serving an MoE raises and that a dense model does not:
#
# 1. **Speculative decoding and multi-token prediction**: why an MoE gains *less* from verifying
#    draft tokens than a dense model, and when it gains as much;
# 2. **Quantised experts**: what 8-bit and 4-bit weights (scales counted) save in memory and in
#    decode time, and why quantising the experts pays more than quantising the rest;
# 3. **Offloaded experts**: keeping only some experts in GPU memory and fetching the rest over
#    PCIe — when that makes a model runnable on a T4 and what a token then costs;
# 4. **Hot experts**: how skewed a trained router's choices are, what caching the most popular
#    experts hits, and why expert-parallel deployments replicate them.
#
# Each section derives the prediction from the model (`dmcourse.serving`, built on
# `dmcourse.roofline` and `dmcourse.accounting`), measures what this device can measure, and prints
# both side by side with the device and the date. GPU figures from datasheets say "datasheet".

# %%
import datetime
import math

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display

import dmcourse
from dmcourse import accounting, balance, hardware, measure, plot
from dmcourse import economics as ec
from dmcourse import roofline as rl
from dmcourse import serving as sv
from dmcourse.moe import MoE, expert_swiglu
from dmcourse.moe import linear as moe_linear

plot.use_style()
torch.set_grad_enabled(False)
# One CPU core, as in the roofline chapter: steadier timings on a shared machine.
CPU_THREADS = 1
if CPU_THREADS is not None and not torch.cuda.is_available():
    torch.set_num_threads(CPU_THREADS)
info = dmcourse.device_info()
device, dtype = info.device, info.dtype
GPU = device.type == "cuda"
PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
S = accounting.bytes_per_param(PRECISION)
TODAY = datetime.date.today().isoformat()
MEASURED = []  # (what, predicted, measured, unit): the closing table
print(f"{info.summary()}, {TODAY}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")


def show_table(header, rows):
    """Display a table (HTML: renders in Jupyter, Colab and the static book)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    display(HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"))


# %% [markdown]
# The predictions on this device need its two ceilings, measured as in the roofline chapter:
# the memory bandwidth (the highest of a copy, a read and, on a CPU, the decode kernel's read loop;
# buffers larger than the last-level cache) and the matmul throughput of the kernel the MoE layer
# uses. One change: where the roofline chapter takes the median of several calls, this chapter
# takes the **fastest** call. On a machine shared with other programs some calls are interrupted
# and run many times longer; the fastest call is the least disturbed one, and a roof is an upper
# bound anyway. Every timing below is the fastest of several calls, for the same reason.

# %%
from dmcourse import stream


def fastest(m: measure.Measurement) -> float:
    """Work per second of the fastest timed call of a measurement (bytes/s or FLOP/s)."""
    return m.work / min(m.timing.times_s)


kinds = ("copy", "read") + (("read_kernel",) if not GPU and stream.available() else ())
BANDWIDTH = max(fastest(measure.measure_bandwidth(device, kind=k, repeats=7)) for k in kinds)
gemm = measure.measure_matmul(device, precision=PRECISION, repeats=5)
PEAK = max(fastest(gemm), fastest(measure.measure_matmul(device, precision=PRECISION, size=gemm.settings["size"],
                                                    repeats=5, matmul=moe_linear)))
print(f"{info.name}, {PRECISION}, {TODAY}: bandwidth {BANDWIDTH / 1e9:.1f} GB/s, matmul {PEAK / 1e12:.3f} TFLOP/s, "
      f"ridge {PEAK / BANDWIDTH:.1f} FLOP/byte")


# %% [markdown]
# (serving-spec)=
# ## 1. Speculative decoding and multi-token prediction
#
# A decode step produces one token per sequence and, at small batch, is limited by reading the
# weights. **Speculative decoding** ([Leviathan et al. 2023](https://arxiv.org/abs/2211.17192))
# lets a cheap drafter propose $g$ tokens; the model checks all of them in **one** step of $g+1$
# tokens per sequence and keeps the draft up to the first token it would not have produced, plus
# one token of its own. DeepSeek-V3's **multi-token prediction** (MTP) module is such a drafter,
# built into the model. If each draft token is accepted with probability $\alpha$, independently,
# a step yields
#
# $$\mathbb{E}[\text{tokens per step}] = \sum_{i=0}^{g} \alpha^i = \frac{1 - \alpha^{g+1}}{1 - \alpha}.$$
#
# What does the step cost? For a **dense** model at small batch, nothing extra: its bytes are its
# weights, read once whatever the token count, until the critical batch. For an **MoE**, the
# $B(g+1)$ tokens of the step touch more experts than the $B$ tokens of a plain step:
# $E_t(B(g+1))$ instead of $E_t(B)$. The speed-up is therefore
#
# $$\text{speed-up} = \frac{(1-\alpha^{g+1})/(1-\alpha)}{T(B(g+1))/T(B) + g\,c},$$
#
# with $T$ the roofline time of a step and $c$ the drafter's cost per token relative to a step
# (0 below unless stated). Inline, then `dmcourse.serving`:

# %%
def my_accepted(alpha, g):
    return sum(alpha**i for i in range(g + 1))


peak_h, bw_h = rl.datasheet_roof("H100")
ds = dmcourse.load_preset("DeepSeek-V3")
counts = rl.decode_counts(ds)
for alpha, g, B in [(0.85, 1, 1), (0.6, 4, 8), (0.9, 3, 64)]:
    assert math.isclose(my_accepted(alpha, g), sv.expected_accepted(alpha, g))
    plain = rl.decode_step(batch=B, bytes_per_param=2, **counts).time_s(peak_h, bw_h)
    verify = rl.decode_step(batch=B * (g + 1), bytes_per_param=2, **counts).time_s(peak_h, bw_h)
    mine = my_accepted(alpha, g) / (verify / plain)
    assert math.isclose(mine, sv.speculative_speedup_for(alpha, g, batch=B, peak_flops=peak_h, bandwidth=bw_h,
                                                         bytes_per_param=2, **counts))
    print(f"DeepSeek-V3 on H100 (datasheet), alpha={alpha}, g={g}, B={B}: {my_accepted(alpha, g):.2f} tokens per step, "
          f"verification costs {verify / plain:.2f}x a plain step -> speed-up {mine:.2f}")

# %% [markdown]
# ### Dense vs MoE, by batch size
#
# The same prediction for Mixtral-8x7B and DeepSeek-V3 against their dense twins of equal active
# size (`economics.twin_counts`: same attention, an FFN as large as the experts one token uses), on
# a datasheet H100 in bf16, weights only, with $\alpha = 0.8$:

# %%
ALPHA = 0.8
batches = [2**i for i in range(0, 12)]
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, name in zip(axes, ["Mixtral-8x7B", "DeepSeek-V3"]):
    cfg = dmcourse.load_preset(name)
    models = {"MoE": rl.decode_counts(cfg), "dense, equal active": ec.twin_counts(cfg, "equal_active")}
    for g, style in ((1, "-"), (3, "--")):
        for label, model in models.items():
            speed = [sv.speculative_speedup_for(ALPHA, g, batch=B, peak_flops=peak_h, bandwidth=bw_h,
                                                bytes_per_param=2, **model) for B in batches]
            ax.semilogx(batches, speed, style, color=plot.COLORS["moe" if label == "MoE" else "dense"],
                        label=f"{label}, g={g}")
    ax.axhline(1, color=plot.COLORS["datasheet"], lw=0.8)
    ax.set(xlabel="batch size B (sequences)", title=f"{name}, H100 bf16 (datasheet), alpha={ALPHA}")
axes[0].set_ylabel("predicted speed-up of speculative decoding")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
for name in ["Mixtral-8x7B", "DeepSeek-V3"]:
    cfg = dmcourse.load_preset(name)
    for B in (1, 16, 256):
        s = {lab: sv.speculative_speedup_for(ALPHA, 3, batch=B, peak_flops=peak_h, bandwidth=bw_h, bytes_per_param=2,
                                             **m) for lab, m in (("moe", rl.decode_counts(cfg)),
                                                                 ("dense", ec.twin_counts(cfg, "equal_active")))}
        touched = (rl.expected_experts_touched(cfg.n_experts, cfg.top_k, B),
                   rl.expected_experts_touched(cfg.n_experts, cfg.top_k, 4 * B))
        print(f"{name:13s} B={B:4d}, g=3: MoE {s['moe']:.2f}x, dense {s['dense']:.2f}x; experts touched per layer "
              f"{touched[0]:.1f} -> {touched[1]:.1f} of {cfg.n_experts}")

# %% [markdown]
# Three regimes, all from the experts-touched curve:
#
# * **Small batch**: a plain step touches $E_t(B) \approx Bk$ experts, a verification step up to
#   $(g+1)$ times more. The dense model verifies for free and gets the full
#   $(1-\alpha^{g+1})/(1-\alpha)$; the MoE pays for the extra experts and gets much less (with
#   Mixtral's 8 experts, 4 tokens already touch most of them).
# * **Batch large enough that the plain step already touches every expert** (DeepSeek-V3: a few
#   hundred sequences; Mixtral: a handful): the extra tokens touch nothing new, and the MoE gets the
#   full speed-up again.
# * **Past the dense model's critical batch**: verification costs the dense model $(g+1)\times$
#   (it is compute-bound), so speculation stops paying; the MoE, whose critical batch is larger by
#   about total/active, keeps its gain further. In this regime an MoE can gain *more* than its dense
#   twin. The property test in `tests/test_serving.py` checks the MoE never gains more while the
#   dense model is memory-bound, and a unit test shows the reverse past its critical batch.
#
# ### Measured: the course's MoE layer verifying g tokens on this device
#
# The model predicts the verification cost ratio $T(B(g+1))/T(B)$. Measure it with one
# `dmcourse.moe.MoE` layer (8 experts, top-2, like Mixtral) and a SwiGLU FFN of equal active size,
# timed at $B$ and $B(g+1)$ tokens with copies rotated out of the cache (as in the roofline
# chapter), and compare with `rl.moe_cost` / `rl.swiglu_cost` under this device's measured
# ceilings (the compute ceiling: the fastest of the square GEMMs above and the dense FFN itself on
# 64 tokens, printed). The router is untrained and the tokens random, so routing is close to uniform, as the
# formula assumes. (The acceptance rate is not measured here: there is no drafter; the speed-up
# uses $\alpha = 0.8$.)

# %%
E, TOPK = 8, 2
DM, DFF = (512, 1024) if not GPU else (2048, 4096)
moe_copies = [MoE(DM, DFF, E, TOPK, dtype=dtype, device=device).eval()
              for _ in range(measure.rotation_count(int(E * 3 * DM * DFF * S), device))]
gen = torch.Generator(device=device).manual_seed(0)
n_dense = measure.rotation_count(int(3 * DM * TOPK * DFF * S), device)
dense_sets = [tuple(torch.randn(shape, device=device, dtype=dtype, generator=gen) * 0.02
                    for shape in [(TOPK * DFF, DM), (TOPK * DFF, DM), (DM, TOPK * DFF)]) for _ in range(n_dense)]


def fastest_call(fn, arg_sets) -> float:
    """Seconds of the fastest of 5 calls, operands rotated out of the cache."""
    return min(measure.time_rotating(fn, arg_sets, device=device, warmup=1, repeats=5).times_s)


DRAFTS = [0, 1, 2, 3, 5, 7]
B_MEAS = 1
xs = {g: torch.randn(B_MEAS * (g + 1), DM, device=device, dtype=dtype, generator=gen) for g in DRAFTS}
best_t = {g: [math.inf, math.inf] for g in DRAFTS}
for _ in range(3):  # rounds over every g in turn: a burst of load elsewhere hits all draft lengths alike
    for g in DRAFTS:
        x = xs[g]
        best_t[g][0] = min(best_t[g][0], fastest_call(lambda layer: layer(x), [(m,) for m in moe_copies]))
        best_t[g][1] = min(best_t[g][1], fastest_call(lambda wg, wu, wd: expert_swiglu(x, wg, wu, wd), dense_sets))
touched = {g: sum(moe_copies[0].router(torch.randn(B_MEAS * (g + 1), DM, device=device, dtype=dtype,
                                                   generator=gen)).indices.unique().numel() for _ in range(100)) / 100
           for g in DRAFTS}
times = {g: (*best_t[g], touched[g]) for g in DRAFTS}
# The compute roof of these layers: the faster of the square GEMMs above and the dense FFN itself
# on 64 tokens (on a CPU, the decode-shaped matmuls can outrun a square GEMM measured under load).
x64 = torch.randn(64, DM, device=device, dtype=dtype, generator=gen)
t64 = fastest_call(lambda wg, wu, wd: expert_swiglu(x64, wg, wu, wd), dense_sets)
PEAK_LAYERS = max(PEAK, rl.swiglu_cost(64, DM, TOPK * DFF, S).flops / t64)
print(f"compute roof for the layers: {PEAK_LAYERS / 1e12:.3f} TFLOP/s (square GEMM {PEAK / 1e12:.3f}, "
      f"dense FFN on 64 tokens {rl.swiglu_cost(64, DM, TOPK * DFF, S).flops / t64 / 1e12:.3f})")
spec_rows = []
for g in DRAFTS:
    tokens = B_MEAS * (g + 1)
    pred_moe = (rl.moe_cost(tokens, DM, DFF, E, TOPK, S).time_s(PEAK_LAYERS, BANDWIDTH)
                / rl.moe_cost(B_MEAS, DM, DFF, E, TOPK, S).time_s(PEAK_LAYERS, BANDWIDTH))
    pred_dense = (rl.swiglu_cost(tokens, DM, TOPK * DFF, S).time_s(PEAK_LAYERS, BANDWIDTH)
                  / rl.swiglu_cost(B_MEAS, DM, TOPK * DFF, S).time_s(PEAK_LAYERS, BANDWIDTH))
    meas_moe, meas_dense = times[g][0] / times[0][0], times[g][1] / times[0][1]
    spec_rows.append(dict(g=g, pred_moe=pred_moe, pred_dense=pred_dense, meas_moe=meas_moe, meas_dense=meas_dense,
                          touched=times[g][2], formula=rl.expected_experts_touched(E, TOPK, tokens)))
print(f"MoE E={E} k={TOPK} d_model={DM} d_ff={DFF} vs dense SwiGLU d_ff={TOPK * DFF}, B={B_MEAS}, {PRECISION}, "
      f"{info.name}, {TODAY}")
print(f"{'g':>2}{'experts touched (counted/formula)':>36}{'MoE ratio meas/pred':>22}{'dense ratio meas/pred':>24}"
      f"{'speed-up MoE meas/pred':>25}{'dense meas/pred':>18}")
for r in spec_rows:
    acc = sv.expected_accepted(ALPHA, r["g"])
    print(f"{r['g']:>2}{r['touched']:>25.2f} / {r['formula']:<8.2f}{r['meas_moe']:>12.2f} / {r['pred_moe']:<8.2f}"
          f"{r['meas_dense']:>14.2f} / {r['pred_dense']:<8.2f}{acc / r['meas_moe']:>15.2f} / {acc / r['pred_moe']:<8.2f}"
          f"{acc / r['meas_dense']:>9.2f} / {acc / r['pred_dense']:<6.2f}")
for r in spec_rows[1:]:
    MEASURED.append((f"verify cost, MoE layer, g={r['g']}", r["pred_moe"], r["meas_moe"], "x plain step"))
MEASURED.append((f"verify cost, dense FFN, g={spec_rows[-1]['g']}", spec_rows[-1]["pred_dense"],
                 spec_rows[-1]["meas_dense"], "x plain step"))

# %%
fig, ax = plt.subplots(figsize=(7, 4))
gs = [r["g"] for r in spec_rows]
for key, color, label in (("moe", plot.COLORS["moe"], "MoE layer"), ("dense", plot.COLORS["dense"], "dense FFN")):
    ax.plot(gs, [sv.expected_accepted(ALPHA, r["g"]) / r[f"pred_{key}"] for r in spec_rows], "--", color=color,
            label=f"{label}, predicted")
    ax.plot(gs, [sv.expected_accepted(ALPHA, r["g"]) / r[f"meas_{key}"] for r in spec_rows], "o", color=color,
            label=f"{label}, measured cost")
ax.axhline(1, color=plot.COLORS["datasheet"], lw=0.8)
ax.set(xlabel="draft tokens g", ylabel=f"speed-up at alpha={ALPHA}",
       title=f"Speculative decoding, one layer, B={B_MEAS} ({PRECISION})")
ax.legend(fontsize=8)
plot.stamp(ax, info.name)
plt.show()
best = {key: max(spec_rows, key=lambda r: sv.expected_accepted(ALPHA, r["g"]) / r[f"meas_{key}"]) for key in ("moe", "dense")}
print(f"measured on {info.name}, {TODAY}: best g for the MoE layer {best['moe']['g']} "
      f"({sv.expected_accepted(ALPHA, best['moe']['g']) / best['moe']['meas_moe']:.2f}x), for the dense FFN "
      f"{best['dense']['g']} ({sv.expected_accepted(ALPHA, best['dense']['g']) / best['dense']['meas_dense']:.2f}x)")

# %% [markdown]
# The counted experts follow $E_t(B(g+1))$, and the MoE layer's verification cost grows with them,
# roughly as the bytes predict (the table gives measured and predicted ratios; the measured ones
# are usually higher, since every touched expert also costs a kernel call and a small matmul that
# runs below the roof). The dense FFN's cost stays near 1 while its $g+1$ tokens stay below the
# device's ridge point — hundreds of FLOP/byte on a GPU, a few on one CPU core (printed at the top);
# the small rise that is measured is the small-matmul overhead growing with the rows. The lesson
# holds on this device (the line under the figure): the dense model wants long drafts, the MoE
# short ones, and the MoE's best speed-up is well below the dense one.
#
# One assumption favours the dense model too much here: the draft tokens of one sequence are
# treated as independent tokens. Consecutive tokens of a real sequence tend to pick overlapping
# experts, so a verification step touches fewer than $E_t(B(g+1))$; section 4 measures that
# effect on a trained router.
#
# ### DeepSeek-V3's MTP, in the model
#
# The DeepSeek-V3 technical report ([arXiv:2412.19437](https://arxiv.org/abs/2412.19437), §5.4.3)
# reports for its one-token MTP ($g=1$) an acceptance rate of the second token "between 85% and
# 90%" and a decoding speed of "1.8 times TPS" (tokens per second). By the formula a step yields
# $1+\alpha$ tokens; so the step with MTP cost $(1+\alpha)/1.8$ times a plain step:

# %%
for alpha in (0.85, 0.90):
    print(f"alpha = {alpha}: {sv.expected_accepted(alpha, 1):.2f} tokens per step -> reported 1.8x implies a step "
          f"costing {sv.expected_accepted(alpha, 1) / 1.8:.3f}x a plain one (verification + the MTP module)")
for B in (1, 8, 32, 128, 256, 1024):
    r = sv.verify_cost_ratio(batch=B, draft=1, peak_flops=peak_h, bandwidth=bw_h, bytes_per_param=2, **counts)
    print(f"  model, DeepSeek-V3 bf16 on H100 (datasheet), weights only, B={B:5d}: verification costs {r:.3f}x, "
          f"speed-up at alpha 0.85-0.90 {sv.speculative_speedup(0.85, 1, r):.2f}-{sv.speculative_speedup(0.9, 1, r):.2f}x")
per_expert = 256  # tokens per expert in DeepSeek's decode deployment: "usually within 256" (report, 3.4.2)
tokens = per_expert * ds.n_experts // ds.top_k
print(f"{per_expert} tokens per expert on average = {tokens} tokens per step (B x top_k = tokens x E); "
      f"experts touched per layer {rl.expected_experts_touched(ds.n_experts, ds.top_k, tokens):.1f} of {ds.n_experts}")

# %% [markdown]
# The reported 1.8x needs a verification step only 3–6% dearer than a plain one. The model gives
# that only where a plain step already touches (nearly) every expert, from about a hundred
# sequences per step on. DeepSeek's decoding deployment is there: the report (§3.4.2) describes
# expert parallelism over hundreds of GPUs with a batch per expert of up to about 256 tokens, and
# says that decoding is limited by memory access rather than computation — a memory-bound step that
# touches every expert, where extra tokens are nearly free (the last line above). At batch 1 the same
# MTP would, by the model, give only about 1.2x. The report's speed-up is a large-batch figure,
# consistent with the experts-touched model; the cost of the MTP module (one extra transformer block)
# also fits inside the 3–6%.
#
# (serving-quant)=
# ## 2. Quantised experts
#
# Storing weights in 8 or 4 bits instead of 16 shrinks what must be resident and what each decode
# step reads. Integer formats also store **scales**: one per group of weights (here 128) in bf16,
# plus, for asymmetric formats, a zero point. Counted:

# %%
rows = []
for f in sv.FORMATS.values():
    by_hand = f.bits / 8 + (0 if f.group_size is None else (f.scale_bytes + f.zero_bytes) / f.group_size)
    assert by_hand == f.bytes_per_param
    rows.append([f.name, f.bits, f.group_size or "-", f"{f.bytes_per_param:.4f}",
                 f"{f.bytes_per_param / (f.bits / 8) - 1:.1%}"])
show_table(["format", "bits", "group", "bytes / parameter", "scales add"], rows)

# %% [markdown]
# Which weights to quantise? In an MoE nearly all parameters are experts, and at small batch a
# decode step reads only the experts it touches. Memory (weights only) and the predicted decode step
# on a datasheet H100 for three choices: everything bf16, only the experts in int4, only the rest
# (attention, shared experts, head) in int4:

# %%
FMT = "int4 g128"
h100 = hardware.gpu("H100")
rows = []
for name in ["Mixtral-8x7B", "DeepSeek-V3"]:
    cfg = dmcourse.load_preset(name)
    p = dmcourse.count_params(cfg)
    for label, experts, other in [("all bf16", "bf16", "bf16"), (f"experts {FMT}", FMT, "bf16"),
                                  (f"rest {FMT}", "bf16", FMT), (f"all {FMT}", FMT, FMT)]:
        mem = sv.quantised_weight_bytes(cfg, experts, other)
        t = [sv.mixed_decode_cost(cfg, B, experts, other).time_s(peak_h, bw_h) for B in (1, 64)]
        rows.append([name, label, f"{accounting.to_gb(mem):,.1f}", math.ceil(mem / h100.memory_bytes),
                     f"{t[0] * 1e3:.2f}", f"{t[1] * 1e3:.2f}"])
    print(f"{name}: routed experts are {p.experts / p.total:.1%} of the parameters")
show_table(["model", "weights", "GB (weights)", "H100s for weights (datasheet 80 GB)",
            "ms / step B=1", "ms / step B=64"], rows)

# %% [markdown]
# Quantising the experts takes most of the memory and, once a batch touches most experts, most of
# the decode time; quantising the rest saves little memory but, at batch 1, a visible share of the
# time, because a single token reads all the always-used weights and only $k$ experts. (The times
# are lower bounds: weight-only quantisation saves bytes only if a kernel reads the packed weights
# at full bandwidth and dequantises on the fly.)
#
# ### Measured: weight-only int8 matmul on this device
#
# Does such a kernel exist here? PyTorch ships `torch.ops.aten._weight_int8pack_mm` (int8 weights,
# one scale per output channel, activations in bf16 or fp32) — the kernel `torch.ao` / torchao's
# int8 weight-only path calls on CPUs. Timed on a decode-shaped matmul, weights rotated out of the
# cache, against the fp32 and bf16 matmuls of the MoE layer (`dmcourse.moe.linear`); predicted:
# the weight bytes over the measured bandwidth.

# %%
K = N = 2048 if not GPU else 8192
qrows = []
for M in (1, 4, 16):
    variants = {}
    for label, wdtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8)):
        if label == "fp32" and GPU:
            continue
        bpp = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0 + 4 / K}[label]  # int8: + one fp32 scale per row
        n_sets = measure.rotation_count(int(N * K * bpp), device)
        ws = [torch.randn(N, K, device=device, generator=gen) for _ in range(n_sets)]
        xa = torch.randn(M, K, device=device, dtype=torch.bfloat16 if label != "fp32" else torch.float32)
        if label == "int8":
            sets = [sv.quantize_int8(w) for w in ws]
            fn = lambda wq, s: sv.int8_linear(xa, wq, s)
        else:
            sets = [(w.to(wdtype),) for w in ws]
            fn = lambda w: moe_linear(xa, w)
        try:
            t = fastest_call(fn, sets)
        except (RuntimeError, NotImplementedError) as err:  # no such kernel on this device
            print(f"{label}: not available on {device}: {str(err)[:100]}")
            continue
        variants[label] = (t, N * K * bpp / BANDWIDTH)
        del ws, sets
    qrows.append((M, variants))
print(f"({M} x {K}) @ ({K} x {N}).T, weights rotated out of cache, {info.name}, {TODAY}")
print(f"{'M':>3}" + "".join(f"{v + ' ms meas/pred':>24}" for v in qrows[0][1]))
for M, variants in qrows:
    print(f"{M:>3}" + "".join(f"{t * 1e3:>14.3f} / {p * 1e3:<7.3f}" for t, p in variants.values()))
m1 = dict(qrows[0][1])
if "int8" in m1:
    ref = "fp32" if "fp32" in m1 else "bf16"
    print(f"M=1: int8 weight-only is {m1[ref][0] / m1['int8'][0]:.2f}x faster than {ref} "
          f"(bytes predict {m1[ref][1] / m1['int8'][1]:.2f}x)")
    for label, (t, p) in m1.items():
        MEASURED.append((f"matmul {label}, M=1, {K}x{N}", p * 1e3, t * 1e3, "ms"))
if not GPU:
    xf = torch.randn(1, K)
    wq, s = sv.quantize_int8(torch.randn(N, K))
    t_slow = min(dmcourse.time_fn(lambda: sv.int8_linear(xf, wq, s), warmup=1, repeats=3).times_s)
    print(f"the same int8 kernel with fp32 activations, M=1: {t_slow * 1e3:.2f} ms (a slow fallback path)")

# %% [markdown]
# The prediction assumes each kernel reads its weights at the measured bandwidth. Where the int8
# kernel does, int8 weights save time in proportion to their bytes (4x against fp32, 2x against
# bf16); where it does not, less — the ratio measured/predicted in the table says how far each
# kernel is from its roof on this device (on the machine that built this page, the fp32 decode
# kernel reaches it, bf16 and int8 run at about half of it, so int8 gains about 2x on fp32 rather
# than 4x). With fp32 activations the same int8 operator takes a slow path and loses to plain fp32 by
# a wide margin: a kernel that exists is not always a fast one. int4 CPU kernels
# (`aten._weight_int4pack_mm_for_cpu`) need a packed layout and are not timed here. On a GPU,
# int8/int4 weight-only GEMMs come from libraries (torchao, Marlin, TensorRT-LLM), not from
# PyTorch core: where `aten._weight_int8pack_mm` is missing the cell says so.
#
# (serving-offload)=
# ## 3. Offloaded experts
#
# A model whose weights do not fit in GPU memory can keep some experts in host memory and copy
# them in when a token needs them. Per decode step, with a fraction $m$ (the **miss rate**) of the
# touched expert bytes not resident, and a host link of bandwidth $L$:
#
# $$T = T_\text{GPU} + \frac{m \cdot \text{bytes of the touched experts}}{L}$$
#
# (or $\max$ of the two when copies overlap the computation, which needs the next experts known
# in advance). $m = 0$ is the ordinary step. Host links (datasheet figures, per direction):

# %%
for link in sv.LINKS.values():
    print(f"{link.name:22s} {link.bytes_per_s / 1e9:5.0f} GB/s   {link.datasheet}")
if GPU:
    for pinned in (True, False):
        h2d = sv.measure_h2d(256 * 2**20, pinned=pinned, device=device)
        print(f"measured host-to-device copy on {info.name}, {'pinned' if pinned else 'pageable'} memory, "
              f"256 MiB: {h2d / 1e9:.1f} GB/s ({TODAY})")
        MEASURED.append((f"host-to-device copy, {'pinned' if pinned else 'pageable'}", float("nan"), h2d / 1e9, "GB/s"))
else:
    print(f"no GPU here ({info.name}): the host link is shown as a model with the datasheet figures above; "
          "run this notebook on a GPU (Colab) to measure pinned and pageable host-to-device copies")

# %% [markdown]
# **Mixtral-8x7B on a T4.** A T4 has 16 GB (datasheet), of which about 15 GB are usable (the
# driver and the CUDA context keep the rest; Colab shows 15 GB of GPU RAM). Mixtral does not fit even in 4 bits. The model below keeps the non-expert weights
# and as many experts per layer as fit, reserving the bf16 KV cache of one 4096-token sequence and
# an assumed 1 GB of workspace; with uniform routing and $N$ of $E$ experts resident the miss rate is
# $1 - N/E$. Time per token at batch 1 on the T4's datasheet roof (fp16 tensor cores, 300 GB/s)
# over its PCIe 3.0 x16 link:

# %%
t4_peak, t4_bw = rl.datasheet_roof("T4", "fp16")
T4_USABLE = 15e9
mixtral = dmcourse.load_preset("Mixtral-8x7B")
reserve = accounting.kv_cache_bytes(mixtral, 4096, 1, "bf16") + 1e9  # KV of one 4k sequence + assumed workspace
link_t4 = sv.LINKS["PCIe 3.0 x16 (T4)"].bytes_per_s
rows = []
for experts, other in [("bf16", "bf16"), ("int8 g128", "bf16"), ("int4 g128", "bf16"), ("int4 g128", "int4 g128")]:
    n_res = sv.resident_experts(mixtral, T4_USABLE, experts, other, reserve)
    if n_res < 0:
        rows.append([experts, other, "-", "-", "non-expert weights do not fit", "-", "-"])
        continue
    miss = 1 - n_res / mixtral.n_experts
    step = sv.offload_step(mixtral, 1, miss, link_t4, peak_flops=t4_peak, bandwidth=t4_bw, experts=experts, other=other)
    over = sv.offload_step(mixtral, 1, miss, link_t4, peak_flops=t4_peak, bandwidth=t4_bw, experts=experts,
                           other=other, overlap=True)
    rows.append([experts, other, f"{n_res} of {mixtral.n_experts}", f"{miss:.0%}",
                 f"{step.device_s * 1e3:.0f} + {step.transfer_s * 1e3:.0f} = {step.time_s * 1e3:.0f}",
                 f"{1 / step.time_s:.1f} ({1 / over.time_s:.1f} overlapped)",
                 f"{step.time_s:.3f}"])
show_table(["experts", "rest", "experts resident / layer", "miss rate (uniform)", "ms per token: GPU + PCIe",
            "tokens/s", "GPU-seconds per token"], rows)

# %%
fig, ax = plt.subplots(figsize=(7, 4))
misses = [i / 20 for i in range(21)]
for (name, link), color in zip(sv.LINKS.items(), [plot.COLORS["moe"], plot.COLORS["accent"], plot.COLORS["dense"]]):
    ax.plot(misses, [sv.offload_step(mixtral, 1, m, link.bytes_per_s, peak_flops=t4_peak, bandwidth=t4_bw,
                                     experts="int4 g128").time_s * 1e3 for m in misses], color=color,
            label=f"{name}, {link.bytes_per_s / 1e9:.0f} GB/s (datasheet)")
ax.set(xlabel="miss rate (share of touched expert bytes fetched)", ylabel="ms per token (B=1)",
       title="Mixtral-8x7B, int4 experts, T4 roof (datasheet): offloading")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# With 4-bit experts three or four of Mixtral's eight experts per layer fit next to the rest, and
# each token then fetches one to one and a quarter experts per layer over PCIe: the link, not the GPU's memory, sets the time, a few
# tokens per second at best. That is the order of magnitude [Eliseev & Mazur
# (2023)](https://arxiv.org/abs/2312.17238) report for Mixtral-8x7B on a free Colab T4 (about 2
# tokens/s, with mixed 2–4-bit quantisation, an LRU expert cache and speculative prefetching of the
# next layer's experts, which overlaps the copies). The cost per token is the GPU-seconds of one
# token times the price of a T4-hour: one sequence pays for the whole step. Batching does not rescue
# it: more sequences touch more experts, so more misses per step. The miss rate is the lever, which
# is where popularity comes in.
#
# (serving-hot)=
# ## 4. Hot experts
#
# The formula $E_t(B)$ assumes every expert equally likely. A trained router is not uniform. The
# package ships the expert choices of the balancing chapter's toy MoE (8 experts, top-2, and a
# fine-grained 16-expert top-4 variant) trained with several of that chapter's balancing settings,
# routed on 64 held-out sequences of 32 tokens (`tools/expert_popularity.py` made the file; its
# command and date are printed):

# %%
pop = sv.load_popularity()
print(f"recorded {pop['date'][:10]} by `{pop['command'].strip()}` (torch {pop['versions']['torch']})")
rows = []
POP = {}
for name, entry in pop["configs"].items():
    E_, k_ = entry["arch"]["n_experts"], entry["arch"]["top_k"]
    idx = entry["indices"][0]  # layer 0: (sequences, tokens, k)
    c = balance.expert_counts(idx.reshape(-1, k_), E_).double()
    stats = balance.load_stats_from_counts(c)
    POP[name] = (idx, c, E_, k_)
    half = E_ // 2
    rows.append([name, f"{E_} / top-{k_}", f"{stats.max_over_mean:.2f}", f"{stats.normalized_entropy:.2f}",
                 f"{sv.cache_hit_rate(c, 1):.0%} (uniform {1 / E_:.0%})",
                 f"{sv.cache_hit_rate(c, half):.0%} (uniform {half / E_:.0%})"])
show_table(["router (layer 0)", "experts", "max / mean load", "entropy / ln E",
            "hit rate, top-1 cached", "hit rate, top half cached"], rows)

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, (idx, c, E_, k_) in POP.items():
    ax.plot([n / E_ for n in range(E_ + 1)], [sv.cache_hit_rate(c, n) for n in range(E_ + 1)], "o-", ms=3, label=name)
ax.plot([0, 1], [0, 1], "--", color=plot.COLORS["datasheet"], label="uniform routing")
ax.set(xlabel="share of experts cached (most popular first)", ylabel="hit rate (share of assignments)",
       title=f"Caching the hottest experts (toy routers, layer 0, recorded {pop['date'][:10]})")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# The router trained without balancing is skewed (two experts dead, the busiest at almost three
# times the mean load), and caching its hottest experts beats the uniform diagonal by far; the
# balanced routers — the point of the balancing chapter — come closer to the diagonal (the
# bias-balanced ones closest), so caching buys less. Load
# balancing, good for training and for expert parallelism, removes the skew a cache feeds on.
#
# **Experts touched by a skewed batch.** With expert $e$ chosen by a token with probability
# $p_e = k\,\text{count}_e/\sum \text{count}$, a batch of $B$ independent tokens touches
# $\sum_e 1-(1-p_e)^B$ experts (uniform $p_e = k/E$ gives $E_t(B)$). Counted on the recorded
# choices with one token from each of $B$ sequences (a decode batch), and with $B$ sequences of
# $g+1$ *consecutive* tokens (a verification step):

# %%
gen_cpu = torch.Generator().manual_seed(0)
rows = []
for name in ["Mixtral top-2, no balancing", "DeepSeek sigmoid, bias 0.01"]:
    idx, c, E_, k_ = POP[name]
    n_seq, n_tok, _ = idx.shape
    for B, g in [(2, 0), (4, 0), (1, 3), (2, 3)]:
        trials = []
        for _ in range(300):
            seqs = torch.randperm(n_seq, generator=gen_cpu)[:B]
            start = int(torch.randint(0, n_tok - g, (1,), generator=gen_cpu))
            trials.append(idx[seqs, start:start + g + 1].unique().numel())
        tokens = B * (g + 1)
        counted = sum(trials) / len(trials)
        rows.append([name, B, g, f"{counted:.2f}", f"{sv.experts_touched_skewed(c, k_, tokens):.2f}",
                     f"{rl.expected_experts_touched(E_, k_, tokens):.2f}"])
        if (B, g) in ((4, 0), (1, 3)):
            MEASURED.append((f"experts touched, {name}, B={B}, g={g}", sv.experts_touched_skewed(c, k_, tokens),
                             counted, "experts"))
show_table(["router", "sequences B", "draft g", "counted", "skewed formula", "uniform formula"], rows)

# %% [markdown]
# For independent tokens the skewed formula matches the count; the uniform one overestimates for the
# skewed router. For $g+1$ consecutive tokens of one sequence the count falls well below both: the
# tokens of a sequence come from the same two clusters of the task and pick the same experts. A
# verification step then touches fewer experts than $E_t(B(g+1))$ — the MoE's speculative penalty of
# section 1 is an upper bound, and routers whose choices persist across neighbouring tokens (as the
# offloading work above observed in Mixtral) shrink it.
#
# **Replicating hot experts.** In expert parallelism each GPU holds some experts, and a step lasts
# as long as the most loaded GPU. Giving the hottest experts extra replicas (their tokens split
# between the copies) evens the load. DeepSeek-V3 does this with "redundant experts" chosen from
# load statistics and refreshed periodically: for prefill 32 redundant experts, one extra per GPU
# besides its 8 (technical report, §3.4.1). The model (`sv.replicated_max_load`: replicas to the
# expert with the highest load per copy, copies placed greedily, heaviest first, equal numbers per
# GPU; the best layout with up to that many replicas), on the recorded loads with 4 GPUs holding 2
# experts each:

# %%
rows = []
for name in ["Mixtral top-2, no balancing", "Mixtral top-2, aux 0.01", "DeepSeek sigmoid, bias 0.01"]:
    _, c, E_, _ = POP[name]
    rows.append([name] + [f"{sv.replicated_max_load(c, 4, r):.2f}" for r in (0, 1, 2, 4, 8)])
show_table(["router (layer 0)", "busiest GPU / mean, no replica", "up to +1 replica", "+2", "+4 (one per GPU)",
            "+8"], rows)

# %% [markdown]
# The step time of an expert-parallel layer scales with the busiest GPU's load; a few replicas of
# the hottest experts bring it close to the mean for the skewed router, at the price of the memory
# of those copies. The same popularity decides what to keep resident when offloading (section 3):
# caching the top experts turns the uniform miss rate $1-N/E$ into $1-$ hit rate. If Mixtral's
# routers were as skewed as these toy routers (an assumption: the real ones were not measured
# here), the T4 of section 3 with 4-bit experts would give, at batch 1:

# %%
n_res = sv.resident_experts(mixtral, T4_USABLE, "int4 g128", "bf16", reserve)
for name, (_, c, E_, _) in POP.items():
    if E_ != mixtral.n_experts:
        continue
    for label, miss in (("uniform", 1 - n_res / E_), (f"top-{n_res} cached", 1 - sv.cache_hit_rate(c, n_res))):
        step = sv.offload_step(mixtral, 1, miss, link_t4, peak_flops=t4_peak, bandwidth=t4_bw, experts="int4 g128")
        print(f"{name:30s} {label:14s} miss rate {miss:4.0%}: {step.time_s * 1e3:5.0f} ms per token "
              f"({1 / step.time_s:.1f} tokens/s; T4 datasheet roof, PCIe 3.0 x16 datasheet)")
#
# ## Predicted vs measured
#
# Every measurement of this chapter next to its prediction, on the device and date printed:

# %%
print(f"{info.name}, {PRECISION}, {TODAY}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
print(f"{'what':<58}{'predicted':>11}{'measured':>11}{'ratio':>8}  unit")
for what, pred, meas, unit in MEASURED:
    ratio = meas / pred if pred == pred and pred else float("nan")
    print(f"{what:<58}{pred:>11.3f}{meas:>11.3f}{ratio:>8.2f}  {unit}")

# %% [markdown]
# Read the ratios as in the roofline chapter: the roofline is a lower bound, so measured/predicted
# at or above 1 is expected for times; the verification cost ratios compare two times of the same
# layer, so costs the model leaves out move them both ways: a fixed cost per call (routing,
# sorting) pulls the ratio towards 1, a cost per touched expert (one more kernel call, one more small
# matmul below the roof) pushes it up. Which wins depends on the device; the table shows it for
# this one. The experts-touched counts come from the recorded routers: a trained router's choices
# are predicted by the skewed formula, and consecutive tokens of a sequence touch fewer experts than
# independent ones.
#
# ## What we have
#
# | helper | what it does |
# |---|---|
# | `sv.expected_accepted`, `sv.verify_step`, `sv.verify_cost_ratio`, `sv.speculative_speedup(_for)` | speculative decoding / MTP through the experts-touched decode step |
# | `sv.QuantFormat`, `sv.FORMATS`, `sv.quantised_weight_bytes`, `sv.mixed_decode_cost` | weight formats with scales counted; experts and the rest in their own formats |
# | `sv.quantize_int8`, `sv.int8_linear` | weight-only int8 with the kernel torch ships |
# | `sv.offload_step`, `sv.resident_experts`, `sv.LINKS`, `sv.measure_h2d` | offloaded experts: time per step by miss rate and link |
# | `sv.cache_hit_rate`, `sv.experts_touched_skewed`, `sv.replicated_max_load`, `sv.load_popularity` | hot experts: caching, skewed batches, replication |
#
# Next: [training MoEs, and the paths between dense and sparse](07_training.ipynb) (upcycling,
# dense training with sparse inference).
