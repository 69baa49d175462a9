# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Inference economics and the decision: dense or MoE?
#
# The previous chapters counted parameters, FLOPs and bytes, and built the roofline: the least time
# a piece of work can take on a device, given its FLOPs and the bytes it moves. This chapter turns
# those models into the questions an infrastructure team asks before it serves a model:
#
# 1. **Memory**: how many bytes must sit on the GPUs (weights, KV cache, activations), and so how
#    many GPUs of each kind the model needs — and what quantisation changes;
# 2. **Cost per token**: how long a decode step takes and what a generated token costs, as a
#    function of the batch size, for dense models and MoEs;
# 3. **Rules of thumb**: the "dense equivalent" figures quoted for MoE models, where they come from,
#    and whether the roofline agrees with them;
# 4. **Communication**: what splitting an MoE over GPUs puts on the wire;
# 5. **The decision**: a table whose every row points at the cell that quantifies it (or says that
#    this course does not measure it).
#
# Everything here is a *model*: datasheet figures in, lower bounds out. No GPU is needed, and
# nothing in this chapter is measured on your machine. The chapter ends with a calculator you can
# use on your own deployment questions.

# %%
import math

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display

import dmcourse
from dmcourse import accounting, comm, hardware, plot, widgets
from dmcourse import calculator as calc
from dmcourse import dense_equivalent as deq
from dmcourse import economics as ec
from dmcourse import roofline as rl

plot.use_style()
MODELS = ["Llama-3-8B", "Llama-3-70B", "Mixtral-8x7B", "Mixtral-8x22B", "DeepSeek-V3"]
CFG = {name: dmcourse.load_preset(name) for name in MODELS}
COUNT = {name: dmcourse.count_params(c) for name, c in CFG.items()}
GB = accounting.to_gb


def show_table(header: list[str], rows: list[list]) -> None:
    """Display a table (HTML: renders in Jupyter, Colab and the static book)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    display(HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"))


for name in MODELS:
    p = COUNT[name]
    print(f"{name:14s} {p.total / 1e9:7.1f}B parameters, {p.active / 1e9:5.1f}B active per token   {CFG[name].source}")

# %% [markdown]
# (econ-memory)=
# ## Memory: what must be resident
#
# ### Weights, by dtype
#
# The weights take `parameters x bytes per parameter`: 4 bytes in fp32, 2 in bf16 or fp16, 1 in
# fp8 or int8, half a byte in int4 (quantised formats also store scales, a few percent more, not
# counted here). Written inline for Mixtral-8x7B, then checked against
# `accounting.weight_bytes`:

# %%
mixtral = CFG["Mixtral-8x7B"]
mine = COUNT["Mixtral-8x7B"].total * 2  # bf16: 2 bytes per parameter
assert mine == accounting.weight_bytes(mixtral, "bf16")
print(f"Mixtral-8x7B in bf16: {mine:,} bytes = {GB(mine):.1f} GB = {accounting.to_gib(mine):.1f} GiB")

DTYPES = ("fp32", "bf16", "fp8", "int4")
rows = []
for name in MODELS:
    p = COUNT[name]
    rows.append([name] + [f"{GB(accounting.weight_bytes(CFG[name], d)):,.1f}" for d in DTYPES]
                + [f"{GB(accounting.weight_bytes(p.active, 'bf16')):,.1f}"])
show_table(["model"] + [f"{d} (GB)" for d in DTYPES] + ["bf16, active only (GB)"], rows)

# %% [markdown]
# **All experts must be resident.** A token's router may pick any expert, and the next token may
# pick any other: the weights of *every* expert must be in GPU memory, even though each token
# multiplies by only `top_k` of them. The last column is what a token actually uses; the bf16
# column is what must be stored. A widely shared blog post on dense vs MoE inference says "Dense 70B in
# FP16: ~140 GB VRAM. Mixtral 8x7B (47B total, 13B active): ~94 GB". Computed:

# %%
w70 = accounting.weight_bytes(CFG["Llama-3-70B"], "fp16")
wmx = accounting.weight_bytes(mixtral, "fp16")
print(f"Llama-3-70B  fp16 weights: {GB(w70):.1f} GB ({accounting.to_gib(w70):.1f} GiB)  -- claim ~140 GB: "
      f"{'holds' if abs(GB(w70) / 140 - 1) < 0.05 else 'does not hold'}")
print(f"Mixtral-8x7B fp16 weights: {GB(wmx):.1f} GB ({accounting.to_gib(wmx):.1f} GiB)  -- claim ~94 GB: "
      f"{'holds' if abs(GB(wmx) / 94 - 1) < 0.05 else 'does not hold'}")
print(f"Mixtral stores {COUNT['Mixtral-8x7B'].total / COUNT['Mixtral-8x7B'].active:.1f}x the parameters one token uses")
print(f"1 GiB = {accounting.GiB / accounting.GB:.4f} GB: the same bytes read {1 - accounting.GB / accounting.GiB:.1%} fewer in GiB")

# %% [markdown]
# Both figures hold for the weights, in GB (10⁹ bytes, the unit of datasheets and model hubs).
# In GiB (2³⁰ bytes, the unit `nvidia-smi` and `torch.cuda` report) the same bytes are a smaller
# number, by the fraction printed last: enough, when the units are mixed, to misjudge whether a
# model fits. And "VRAM" is more than the weights: the KV cache and the activations come on top.
#
# ### The KV cache, per token
#
# To generate a token, attention needs the keys and values of every earlier token of the
# sequence; they are cached. Per token and per layer a grouped-query-attention (GQA) model caches
# one key **and** one value vector for each of its `n_kv_heads` heads — hence the factor 2:
#
# $$\text{KV bytes per token} = 2 \times n_\text{layers} \times n_\text{kv heads} \times d_\text{head} \times \text{bytes}.$$
#
# DeepSeek-V3's multi-head latent attention (MLA) caches instead one compressed latent vector
# (`kv_lora_rank`) and one shared rotary key (`qk_rope_head_dim`) per layer, which every head reads
# directly in the absorbed form of MLA (chapter 2; the form this chapter costs). Inline for Llama-3-70B and DeepSeek-V3, then `accounting.kv_cache_bytes_per_token`
# for all:

# %%
c = CFG["Llama-3-70B"]
kv_llama = 2 * c.n_layers * c.n_kv_heads * (c.d_model // c.n_heads) * 2  # K and V, bf16
assert kv_llama == accounting.kv_cache_bytes_per_token(c, "bf16")
d = CFG["DeepSeek-V3"]
kv_ds = d.n_layers * (d.kv_lora_rank + d.qk_rope_head_dim) * 2  # one latent + one rope key per layer, bf16
assert kv_ds == accounting.kv_cache_bytes_per_token(d, "bf16")

rows = []
for name in MODELS:
    cfg = CFG[name]
    per = accounting.kv_cache_bytes_per_token(cfg, "bf16")
    full = (accounting.kv_cache_bytes_per_token(cfg, "bf16", mla_compressed=False) if cfg.attention == "mla"
            else accounting.kv_cache_bytes_per_token(cfg.replace(n_kv_heads=cfg.n_heads), "bf16"))
    rows.append([name, f"{per / 1024:,.1f}", f"{GB(per * 4096):.2f}", f"{GB(per * 32768):.2f}",
                 f"{GB(per * 4096 * 64):,.1f}", f"{full / per:.1f}x"])
show_table(["model (bf16 cache)", "KiB / token", "GB / sequence of 4k", "GB / sequence of 32k",
            "GB for 64 x 4k", "without GQA / MLA"], rows)

# %% [markdown]
# The cache grows with **tokens**, and a batch holds `batch x context` of them: 64 sequences of 4k
# tokens are a quarter of a million tokens of cache, comparable to the weights of the smaller
# models (the table prints both). The last column is the factor GQA saves over one K/V head per
# query head — for DeepSeek-V3, the factor the compressed latent saves over caching the
# decompressed per-head keys and values. A per-token figure must be multiplied by the context
# *and* the batch; a per-sequence figure only by the batch: confusing the two gets the cache wrong by
# a factor of the context length, thousands.
#
# ### Activations
#
# At inference no activations are kept for a backward pass: only one layer's intermediate tensors
# are alive at a time. `ec.activation_bytes` estimates their peak: per token the residual stream
# and its normalised copy, plus the larger of the attention block's tensors (queries, new keys
# and values, output) and the FFN's (gate, up and their product, `3 x` the FFN width a token uses;
# for an MoE, `top_k` experts' widths), plus the logits in fp32. It assumes fused attention
# (FlashAttention, PyTorch's SDPA), which never stores the `context x context` score matrix. Inline
# for Llama-3-70B at a decode step of batch 32:

# %%
B = 32
hd = c.d_model // c.n_heads  # head dimension
per_token = 2 * c.d_model + max(c.n_heads * hd + 2 * c.n_kv_heads * hd + c.n_heads * hd, 3 * c.d_ff)
act = B * per_token * 2 + B * c.vocab_size * 4  # bf16 activations, fp32 logits
assert act == ec.activation_bytes(c, B, "bf16")
prompt = 8192
for label, tokens, logits in (("decode step, batch 32", B, B), ("prefill of one 8k prompt, last logits", prompt, 1),
                              ("prefill of one 8k prompt, all logits", prompt, prompt)):
    print(f"{label:38s}: {ec.activation_bytes(c, tokens, 'bf16', logits_tokens=logits) / 1e6:9.1f} MB")
print(f"(weights: {GB(accounting.weight_bytes(c, 'bf16')):.0f} GB)")

# %% [markdown]
# At decode, activations are megabytes against tens or hundreds of gigabytes of weights and cache.
# A long prefill is the exception, and the printed lines show why servers compute the logits of
# the last prompt token only (and split long prompts into chunks).
#
# ### How many GPUs?
#
# `ec.serving_memory` adds the three (weights in the chosen dtype, every expert included; KV
# cache of `batch x context` tokens; activations of a decode step) and `gpus_needed` divides by a
# GPU's **datasheet** memory. A program can allocate somewhat less than the datasheet figure, and
# deployments round the count up to a layout their parallelism supports (often a power of two):
# these are lower bounds. The workload below: 32 sequences of 4096 tokens.

# %%
GPUS = list(hardware.gpus())
WORKLOAD = dict(batch=32, context=4096)
for dtype in ("bf16", "fp8", "int4"):
    rows = []
    for name in MODELS:
        fit = ec.serving_memory(name, "H100", dtype, **WORKLOAD)
        rows.append([name, f"{GB(fit.weight_bytes):,.0f} + {GB(fit.kv_cache_bytes):,.0f}"]
                    + [str(ec.gpus_needed(name, g, dtype, **WORKLOAD)) for g in GPUS])
    show_table([f"{dtype} weights, 16-bit cache", "weights + KV (GB)"]
               + [f"{g} ({hardware.gpu(g).memory_gb:.0f} GB)" for g in GPUS], rows)

# %% [markdown]
# The source texts also claim "A 7B model fits on one GPU. A 70B model needs eight." Computed for
# one sequence of 4096 tokens (the smallest serving workload) and for the workload above:

# %%
for name in ("Mistral-7B", "Llama-3-8B", "Llama-3-70B"):
    for wl in (dict(batch=1, context=4096), WORKLOAD):
        counts = {g: ec.gpus_needed(name, g, "bf16", **wl) for g in GPUS}
        print(f"{name:11s} bf16, {wl['batch']:2d} x {wl['context']} tokens: "
              + ", ".join(f"{g} {n}" for g, n in counts.items()))
one_seq = dict(batch=1, context=4096)
for name in ("Mistral-7B", "Llama-3-8B"):
    misses = [g for g in GPUS if ec.gpus_needed(name, g, "bf16", **one_seq) > 1]
    batch_misses = [g for g in GPUS if ec.gpus_needed(name, g, "bf16", **WORKLOAD) > 1]
    verdict = "fits one of every GPU in the table" if not misses else f"does not fit one {', '.join(misses)}"
    more = f"; 32 sequences do not fit one {', '.join(batch_misses)}" if batch_misses else ""
    print(f'"A 7B model fits on one GPU", {name}: one sequence of 4096 tokens {verdict}{more}')
t4 = ec.serving_memory("Mistral-7B", "T4", "bf16", **one_seq)
print(f"  (Mistral-7B with one 4k sequence on a T4: {GB(t4.needed_bytes):.2f} GB of {GB(t4.available_bytes):.0f} GB datasheet)")
big = {g: ec.gpus_needed("Llama-3-70B", g, "bf16", **one_seq) for g in GPUS}
eight = [g for g, n in big.items() if n == 8]
print(f'"A 70B model needs eight": for one sequence memory asks for ' + ", ".join(f"{n} x {g}" for g, n in big.items())
      + (f"; eight only on {', '.join(eight)}" if eight else "; eight on none of them"))

# %% [markdown]
# Both sentences are too coarse. Whether a 7B-class model fits one GPU depends on its exact size,
# on the card and on how much KV cache the workload keeps (the cell prints where it does and does
# not, and how little room a 16 GB card leaves). For a 70B model, eight GPUs are a choice for speed
# or batch size; the memory of one sequence asks for the counts printed.
#
# ### What quantisation changes
#
# Storing weights in fp8 or int4 halves or quarters their bytes, and so lowers the GPUs needed (the
# tables above; the 16-bit KV cache does not shrink, so the count falls by less than the weights).
# It also speeds up decoding in the memory-bound regime: a decode step at small batch spends its time *reading weights*, so fewer bytes means less time. Here the model treats
# quantisation as *weight-only*: the matmuls still run at the 16-bit peak, so the compute-bound
# regime does not speed up (GPUs with fp8 tensor cores can do better there; the datasheet table
# has no fp8 peak). What quantisation costs in accuracy is not measured in this course; see e.g.
# [Dettmers & Zettlemoyer 2023](https://arxiv.org/abs/2212.09720) for a study of 4-bit inference.

# %%
for dtype in ("bf16", "fp8", "int4"):
    one = ec.decode_cost("Llama-3-70B", "H100", 1, context=4096, dtype=dtype)
    many = ec.decode_cost("Llama-3-70B", "H100", 4096, dtype=dtype, n_gpus=one.n_gpus)
    print(f"Llama-3-70B {dtype:4s} on {one.n_gpus} x H100: batch 1 costs {one.gpu_seconds_per_token * 1e3:5.1f} GPU-ms per token "
          f"({one.step_time_s * 1e3:5.2f} ms latency, {one.bound}-bound); batch 4096, context 0: "
          f"{many.gpu_seconds_per_token * 1e6:4.0f} GPU-us per token ({many.bound}-bound)")

# %% [markdown]
# At batch 1 the cost per token follows the bytes: fp8 halves it, int4 quarters it (the latency
# moves less when the smaller model also runs on fewer GPUs). At a large, compute-bound batch the
# weight-only quantised model costs the same as the 16-bit one.
#
# (econ-cost)=
# ## Cost per token as a function of the batch
#
# A **decode step** generates one token for each of the `batch` sequences served together. By the
# roofline (chapter *Rooflines*), it takes at least
#
# $$t_\text{step} = \max\left(\frac{\text{FLOPs}}{\text{peak}},\ \frac{\text{bytes}}{\text{bandwidth}}\right),$$
#
# where the bytes are the weights the batch needs — for an MoE, the experts its tokens touch, on
# average $E\,(1 - (1 - k/E)^B)$ per layer — plus each sequence's KV cache, and the FLOPs are
# `2 x active parameters` per token plus attention. The step is shared by the `batch` sequences,
# each getting one token, so a token costs
#
# $$\text{GPU-seconds per token} = \frac{n_\text{GPUs} \times t_\text{step}}{\text{batch}},\qquad
# \$\,\text{per token} = \text{GPU-seconds per token} \times \frac{\text{price per GPU-hour}}{3600}.$$
#
# **The price is an assumption, not a datasheet figure.** What a GPU-hour costs depends on the
# provider, the contract and the year. The cell below sets the value this chapter uses; change it
# and every dollar figure follows. Figures also show GPU-seconds, which do not depend on it.
#
# The GPU is an **H100 SXM**, datasheet figures (dense bf16 tensor-core peak and HBM bandwidth,
# from `dmcourse/data/gpus.json`):

# %%
ASSUMED_USD_PER_GPU_HOUR = 2.0  # an ASSUMPTION for illustration: change it to your price
GPU = "H100"
PEAK, BW = rl.datasheet_roof(GPU, "bf16")
print(f"{GPU} (datasheet): {PEAK / 1e12:.1f} TFLOP/s bf16 dense, {BW / 1e12:.2f} TB/s; ridge {PEAK / BW:.0f} FLOP/byte "
      f"[{hardware.gpu(GPU).source}]")
print(f"assumed price: ${ASSUMED_USD_PER_GPU_HOUR:.2f} per GPU-hour (not a quote)")

# %% [markdown]
# Inline, for Llama-3-70B at batch 8 with 1024 tokens of context per sequence, then checked against
# `ec.decode_cost`:

# %%
c, batch, ctx = CFG["Llama-3-70B"], 8, 1024
counts = rl.decode_counts(c)  # parameters read each step (the input embedding is only looked up)
weights = counts["dense_params"] * 2
kv = batch * ctx * accounting.kv_cache_bytes_per_token(c, "bf16")
flops = batch * (2 * counts["dense_params"] + accounting.attention_flops_per_token(c, ctx))
n_gpus = ec.gpus_needed(c, GPU, "bf16", batch=batch, context=ctx)
t_step = max(flops / (n_gpus * PEAK), (weights + kv) / (n_gpus * BW))
usd_per_m = n_gpus * t_step / batch * 1e6 * ASSUMED_USD_PER_GPU_HOUR / 3600
cost = ec.decode_cost(c, GPU, batch, context=ctx, usd_per_gpu_hour=ASSUMED_USD_PER_GPU_HOUR)
assert cost.n_gpus == n_gpus and math.isclose(cost.step_time_s, t_step) and math.isclose(cost.usd_per_million_tokens, usd_per_m)
print(f"{n_gpus} x {GPU}: step {t_step * 1e3:.2f} ms ({cost.bound}-bound), {cost.tokens_per_s:,.0f} tokens/s, "
      f"${usd_per_m:.2f} per million tokens at the assumed price")
ideal = ec.decode_cost(c, GPU, batch, context=ctx, n_gpus=2 * n_gpus, usd_per_gpu_hour=ASSUMED_USD_PER_GPU_HOUR)
print(f"on {2 * n_gpus} GPUs: step {ideal.step_time_s * 1e3:.2f} ms, ${ideal.usd_per_million_tokens:.2f} per million tokens")

# %% [markdown]
# The second line shows a property of the model worth keeping in mind: with **ideal** scaling,
# twice the GPUs halve the step time and double the price per second, so the cost per token does
# not change — only the latency does. What breaks this in practice is communication between GPUs
# (see [below](econ-ep)) and kernels that run less efficiently on smaller slices.
#
# Now four models — a small dense model, a dense 70B, Mixtral-8x7B and DeepSeek-V3 — over batch
# sizes from 1 to 16384, with no context (weights only, left) and with 4096 tokens of context per
# sequence (right). **Capacity is part of the picture.** Each model is costed on a stated number
# of H100s: the smallest power of two whose datasheet memory holds its weights and one sequence of
# 4096 tokens (printed below). Its curve is drawn only up to the largest batch whose weights, KV
# cache and activations fit those GPUs (`ec.max_batch`, marked |). Beyond that, a thin dotted line
# continues it under **ideal scaling, capacity ignored**: the cost on as many GPUs as that batch
# needs (the table prints how many), with no communication. Solid: memory-bound, dashed:
# compute-bound.

# %%
BATCHES = [2**i for i in range(15)]
CTXS = (0, 4096)
FIG_MODELS = {"Llama-3-8B": "#5b8fd1", "Llama-3-70B": plot.COLORS["dense"], "Mixtral-8x7B": plot.COLORS["moe"],
              "DeepSeek-V3": "#8c2d3a"}
# the stated GPUs: the smallest power of two that holds the weights and one sequence of 4096 tokens
N_GPUS = {name: 1 << (ec.gpus_needed(name, GPU, batch=1, context=4096) - 1).bit_length() for name in FIG_MODELS}
CAP = {(name, ctx): ec.max_batch(name, GPU, n_gpus=N_GPUS[name], context=ctx) for name in FIG_MODELS for ctx in CTXS}
for name, n in N_GPUS.items():
    print(f"{name:13s} on {n:2d} x {GPU} ({n * hardware.gpu(GPU).memory_gb:,.0f} GB datasheet): largest batch that fits "
          + ", ".join(f"{CAP[name, ctx]:,} at context {ctx}" for ctx in CTXS))
curves = {}
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
for ax, ctx in zip(axes, CTXS):
    for name, color in FIG_MODELS.items():
        cap, crit = CAP[name, ctx], ec.critical_batch(name, GPU, context=ctx)
        # the curve reaches the cap, and its memory-bound part reaches the critical batch
        drawn = sorted(set(BATCHES) | {b for b in (cap, crit - 1, crit) if 1 <= b < BATCHES[-1]})
        drawn = [int(b) for b in drawn]
        rows = [ec.decode_cost(name, GPU, b, context=ctx, n_gpus=N_GPUS[name], usd_per_gpu_hour=ASSUMED_USD_PER_GPU_HOUR)
                for b in drawn]
        curves[name, ctx] = [r for r in rows if r.batch in BATCHES]
        fit = [(b, r.gpu_seconds_per_token * 1e6, r.bound) for b, r in zip(drawn, rows) if r.fits]
        for bound, style in (("memory", "-"), ("compute", "--")):
            pts = [(b, y) for b, y, bd in fit if bd == bound]
            if pts:
                ax.loglog(*zip(*pts), style, color=color, label=f"{name}, {N_GPUS[name]} GPU(s)" if bound == "memory" else None)
        over = [(b, r.gpu_seconds_per_token * 1e6) for b, r in zip(drawn, rows) if not r.fits]
        if over:
            ax.loglog(*zip(*([fit[-1][:2]] + over)), ":", color=color, lw=1)
            ax.plot([fit[-1][0]], [fit[-1][1]], "|", color=color, ms=12, mew=2)
        if crit < BATCHES[-1]:
            r = ec.decode_cost(name, GPU, int(crit), context=ctx, n_gpus=N_GPUS[name])
            ax.plot([crit], [r.gpu_seconds_per_token * 1e6], "o", color=color, ms=5, mfc=color if r.fits else "white")
    ax.axvspan(1, 8, color=plot.COLORS["accent"], alpha=0.15, lw=0)
    ax.text(1.2, 0.93, "interactive\n(small batch)", transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    ax.set(xlabel="batch (sequences per decode step)", title=f"{GPU} datasheet roofline, bf16, context {ctx}")
axes[0].set_ylabel("GPU-seconds per million tokens")
sec = axes[1].secondary_yaxis("right", functions=(lambda s: s * ASSUMED_USD_PER_GPU_HOUR / 3600,
                                                   lambda u: u * 3600 / ASSUMED_USD_PER_GPU_HOUR))
sec.set_ylabel(f"\\$ per million tokens (assumed \\${ASSUMED_USD_PER_GPU_HOUR:g}/GPU-h)", fontsize=8)
axes[0].legend(loc="lower left", fontsize=8)
fig.text(0.5, -0.02, "solid: memory-bound, dashed: compute-bound, |: largest batch that fits the stated GPUs, "
         "dotted: ideal scaling, capacity ignored; dot: critical batch (hollow: beyond capacity). Model, not measurement.",
         ha="center", fontsize=8, color=plot.COLORS["datasheet"])
fig.tight_layout()
plt.show()

# %%
show_rows = []
for name in FIG_MODELS:
    for ctx in CTXS:
        rows = curves[name, ctx]
        cells = [f"${r.usd_per_million_tokens:,.3f} ({r.bound[:3]})" + ("" if r.fits else f" *{r.memory.gpus_needed}")
                 for b, r in zip(BATCHES, rows) if b in (1, 32, 256, 4096)]
        crit = ec.critical_batch(name, GPU, context=ctx)
        show_rows.append([name, ctx, N_GPUS[name], f"{CAP[name, ctx]:,}"] + cells
                         + ["never" if math.isinf(crit) else f"{crit:,.0f}"])
show_table(["model", "context", "GPUs", "largest batch that fits", "batch 1", "batch 32", "batch 256", "batch 4096",
            "critical batch"], show_rows)
print(f"$ per million tokens at the assumed ${ASSUMED_USD_PER_GPU_HOUR:g}/GPU-hour; mem = memory-bound, com = compute-bound;")
print(f"*N: does not fit the stated GPUs -- the cost under ideal scaling on the N x {GPU} that batch needs (capacity ignored)")

at_cap = {name: ec.decode_cost(name, GPU, CAP[name, 4096], context=4096, n_gpus=N_GPUS[name],
                               usd_per_gpu_hour=ASSUMED_USD_PER_GPU_HOUR) for name in ("DeepSeek-V3", "Llama-3-8B")}
ds, l8 = at_cap["DeepSeek-V3"], at_cap["Llama-3-8B"]
ratio = ds.usd_per_million_tokens / l8.usd_per_million_tokens
print(f"context 4096, each at the largest batch that fits its GPUs: DeepSeek-V3 {ds.batch:,} sequences on {ds.n_gpus} x {GPU} "
      f"${ds.usd_per_million_tokens:.3f}, Llama-3-8B {l8.batch} sequences on {l8.n_gpus} x {GPU} ${l8.usd_per_million_tokens:.3f} "
      f"per million tokens: DeepSeek-V3 costs {ratio:.2f}x the 8B model")
big = {name: curves[name, 4096][-1] for name in ("DeepSeek-V3", "Llama-3-8B")}
print(f"largest batch of the figure ({BATCHES[-1]:,}), context 4096, ideal scaling, capacity ignored: "
      + ", ".join(f"{name} ${r.usd_per_million_tokens:.3f} on the {r.memory.gpus_needed} x {GPU} it needs"
                  for name, r in big.items()))

# %% [markdown]
# How to read the figure and the table:
#
# * **Small batches (interactive serving) are memory-bound for every model.** A step reads the
#   weights it needs whatever the batch; until the batch is large, adding sequences costs almost
#   nothing, so the cost per token falls like `1/batch`. At batch 1 the MoEs read only the experts
#   one token picks and cost about as much as a dense model of their *active* size (the equal-active
#   ratio at batch 1, printed [below](econ-flop-advantage)).
# * **Weights only (left), each curve flattens at its critical batch** (the dot), where the step
#   becomes compute-bound and a token costs `2 x active parameters` FLOPs at the peak. The MoEs
#   reach it much later than the dense models: their bytes are those of nearly all experts, their
#   FLOPs those of the active ones. The table prints each critical batch.
# * **With a real context (right), the KV cache changes the picture.** Each sequence reads its
#   own cache every step; that read does not amortise over the batch, and GQA attention does few
#   FLOPs per cached byte, so a GQA model (Llama, Mixtral) stays memory-bound at any batch (the
#   table's "never"). At large batch, the cost per token approaches `KV bytes per sequence /
#   bandwidth`: the cache, not the parameter count, sets the price.
# * **The cache also fills the memory.** At 4096 tokens of context the stated GPUs hold only the
#   batches of the "largest batch that fits" column: for the dense models and Mixtral a few dozen
#   to a few hundred sequences, far from any critical batch. Larger batches need more GPUs (the
#   table's `*N`); under ideal scaling that leaves the cost per token unchanged, but the GPU count
#   grows with the batch, and real deployments pay for the communication between them.
# * **DeepSeek-V3** reads its compressed latent cache in the absorbed form of MLA, at a few hundred
#   FLOPs per cached byte (chapter 2), so even at this context it has a finite critical batch
#   (printed in the table; the dot is hollow where that batch does not fit the stated GPUs). The
#   two lines under the table compare it with the 8B model, first each at the largest batch its
#   own GPUs hold, then at the figure's largest batch with capacity ignored: they print which of
#   the two costs less per token, by how much, and on how many GPUs.
#
# (econ-flop-advantage)=
# ### When does the MoE's FLOP advantage appear?
#
# Compare an MoE with its two **dense twins**: the same attention, with FFNs that use all of the
# MoE's parameters for every token (*equal total*), or only as many as it activates (*equal
# active*). `ec.regime_batches` finds three batch sizes (weights only):
#
# * `experts_touched`: the batch whose tokens touch 90% of a layer's experts on average, from
#   $E(1-(1-k/E)^B) \ge 0.9E$: from here the MoE reads nearly all its weights every step, and its
#   *memory* advantage over the equal-total twin is gone;
# * `dense_critical`: the equal-total twin's critical batch: from here the twin is compute-bound,
#   its cost per token stops falling, and the MoE's *FLOP* advantage begins to show;
# * `moe_critical`: the MoE's own critical batch: from here the MoE is compute-bound too and the
#   FLOP advantage is complete (cost ratio = total / active).

# %% [markdown]
# **Which form of MLA.** The DeepSeek-V3 numbers above use the absorbed form with the compressed
# latent cache, as DeepSeek serves it (chapter 2 derives both forms). Costing the explicit form
# instead — its per-head FLOPs *and* its decompressed per-head cache — at 4096 tokens of context:

# %%
for form in accounting.MLA_FORMS:
    crit = ec.critical_batch("DeepSeek-V3", GPU, context=4096, mla_form=form)
    r = ec.decode_cost("DeepSeek-V3", GPU, 32, context=4096, mla_form=form, usd_per_gpu_hour=ASSUMED_USD_PER_GPU_HOUR)
    print(f"{form:8s} MLA: critical batch at context 4096 {'never' if math.isinf(crit) else f'{crit:,.0f}'}; "
          f"32 sequences of 4096 tokens: {GB(r.memory.kv_cache_bytes):,.0f} GB of cache, {r.n_gpus} x {GPU}, "
          f"${r.usd_per_million_tokens:.2f} per million tokens ({r.bound}-bound)")

# %% [markdown]
# The explicit form caches every head's keys and values, so its cache is many times larger and
# is read at about one FLOP per byte: the step stays memory-bound at any batch, and the same
# workload needs more GPUs and costs more per token (printed). A model that counted the explicit
# form's FLOPs against the compressed cache's bytes would describe neither implementation.

# %%
E, k = mixtral.n_experts, mixtral.top_k
b90 = math.ceil(math.log(1 - 0.9) / math.log(1 - k / E))  # smallest B with (1 - k/E)^B <= 0.1
assert b90 == ec.regime_batches(mixtral, GPU)["experts_touched"]
REGIMES = {}
for name in ("Mixtral-8x7B", "Mixtral-8x22B", "DeepSeek-V3"):
    r = REGIMES[name] = ec.regime_batches(name, GPU)
    print(f"{name:14s} 90% of experts touched from batch {r['experts_touched']:5.0f}; equal-total twin compute-bound from "
          f"{r['dense_critical']:5.0f}; MoE compute-bound from {r['moe_critical']:6.0f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
ratio_b = [2**i for i in range(17)]
for ax, name in zip(axes, ("Mixtral-8x7B", "DeepSeek-V3")):
    moe = [ec.decode_cost(name, GPU, b, n_gpus=1).step_time_s for b in ratio_b]
    tot = [ec.decode_cost(name, GPU, b, n_gpus=1, twin="equal_total").step_time_s for b in ratio_b]
    act = [ec.decode_cost(name, GPU, b, n_gpus=1, twin="equal_active").step_time_s for b in ratio_b]
    ax.semilogx(ratio_b, [t / m for t, m in zip(tot, moe)], "-", color=plot.COLORS["dense"],
                label="equal-total dense twin / MoE")
    ax.semilogx(ratio_b, [a / m for a, m in zip(act, moe)], ":", color="#5b8fd1",
                label="equal-active dense twin / MoE")
    r = REGIMES[name]
    for key, style in (("experts_touched", ":"), ("dense_critical", "--"), ("moe_critical", "-.")):
        ax.axvline(r[key], color=plot.COLORS["datasheet"], ls=style, lw=1)
        ax.text(r[key], 0.98, f" {key}", rotation=90, va="top", fontsize=7, transform=ax.get_xaxis_transform())
    ax.axhline(1, color="k", lw=0.6)
    ax.set(xlabel="batch", title=f"{name}: dense twin / MoE cost\n(ideal scaling, capacity ignored)", yscale="log")
axes[0].set_ylabel("cost ratio (> 1: the MoE is cheaper)")
axes[0].legend(fontsize=8, loc="lower left")
fig.tight_layout()
plt.show()
for name in ("Mixtral-8x7B", "DeepSeek-V3"):
    at = {b: ec.decode_cost(name, GPU, b, n_gpus=1, twin="equal_total").step_time_s / ec.decode_cost(name, GPU, b, n_gpus=1).step_time_s
          for b in (1, 32, 256, 65536)}
    print(f"{name}: equal-total twin / MoE cost at batch " + ", ".join(f"{b}: {v:.2f}" for b, v in at.items()))
    act = [ec.decode_cost(name, GPU, b, n_gpus=1, twin="equal_active").step_time_s / ec.decode_cost(name, GPU, b, n_gpus=1).step_time_s
           for b in ratio_b]
    print(f"{name}: equal-active twin / MoE cost at batch 1: {act[0]:.2f}, at most {max(act):.2f} over batches 1 to {ratio_b[-1]:,}")
    print(f"    (capacity ignored: batch {ratio_b[-1]:,} at context 0 needs {ec.gpus_needed(name, GPU, batch=ratio_b[-1])} x {GPU} "
          f"for the MoE, {ec.gpus_needed(name, GPU, batch=1)} at batch 1; per-token costs do not depend on the count under ideal scaling)")

# %% [markdown]
# Against the **equal-total** twin the MoE wins twice: at small batch (it reads only the touched
# experts) and at large batch (it does `k/E` of the FLOPs), with a valley in between where it
# reads nearly everything and is still memory-bound. Mixtral's 8 experts are all touched by a
# handful of tokens, so its valley starts early; DeepSeek-V3's 256 fine-grained experts keep the
# memory advantage to larger batches (the cells print both). Against the **equal-active** twin the
# MoE never wins in this model (the ratio never exceeds 1, printed): the same FLOPs, at least as
# many bytes.
#
# The source texts put the switch at "batch size 32+": "Prefill and large batches (batch size
# 32+): The workload is compute-bound. MoE shines." By the roofline, a decode step at batch 32 is
# memory-bound on an H100 for all four models (table above), and it is exactly where Mixtral's
# advantage over an equal-total dense model is smallest. The claim fits *prefill*, where a single
# prompt supplies thousands of tokens per step, not decode at batch 32.
#
# (econ-rules)=
# ## Dense-equivalent rules of thumb
#
# Three rules are quoted for "what dense model an MoE is equivalent to". Their provenance, as far
# as this course could trace it (`deq.RULES`, module `dmcourse.dense_equivalent`):

# %%
show_table(["rule", "formula", "what it claims", "provenance", "what is traceable"],
           [[r.name, r.formula, r.claims, r.provenance, r.traceable] for r in deq.RULES.values()])

# %% [markdown]
# In words: the **geometric-mean rule** is folklore. It is widely repeated as coming from a talk
# Mistral AI gave on Mixtral in Stanford's CS25 seminar; this course found no paper, report or
# slide that states it, so the attribution remains second-hand. It is also a claim about *quality*
# (the dense model an MoE performs like), not about serving cost, so a cost model cannot confirm
# or refute it. The **"Epoch AI" formula** is quoted by the source blog post without a link; no
# Epoch AI publication with this formula or these exponents could be found, and the same expression
# also circulates with the division turned into a multiplication, which gives values *above* the
# total. The **half-the-total** rule is the blog's own summary, with no source.
#
# What each predicts, with the published totals and active counts (the formulas need only those and
# the expert counts), and the two figures the blog derives from the Epoch formula:

# %%
CASES = {  # name: (total, active, routed experts, experts per token), published figures
    "Mixtral-8x7B": (46.7e9, 12.9e9, 8, 2),
    "Mixtral-8x22B": (141e9, 39e9, 8, 2),
    "DeepSeek-V3": (671e9, 37e9, 256, 8),
}
for name, (total, active, n_exp, k_exp) in CASES.items():
    pub = CFG[name].published
    assert (pub.total, pub.active) == (total, active), "the presets carry the published figures"
rows = [[name] + [f"{r.fn(*case) / 1e9:,.1f}B" for r in deq.RULES.values()] + [f"{case[1] / 1e9:g}B", f"{case[0] / 1e9:g}B"]
        for name, case in CASES.items()]
show_table(["model"] + list(deq.RULES) + ["active", "total"], rows)

mx22 = deq.quoted_epoch_rule(141e9, 8, 2)
gpt4 = deq.quoted_epoch_rule(1.76e12, 8, 2)
gpt4_16 = deq.quoted_epoch_rule(1.76e12, 16, 2)
print(f'blog: "Mixtral 8x22B (141B total, 8 experts, 2 active) -> ~90B": the formula gives {mx22 / 1e9:.1f}B: '
      f"{'follows' if abs(mx22 / 90e9 - 1) < 0.05 else 'does not follow'}")
print(f'blog: "GPT-4 (~1.76T total, 8 experts, 2 active) -> ~950B": the formula gives {gpt4 / 1e9:,.0f}B: '
      f"{'follows' if abs(gpt4 / 950e9 - 1) < 0.05 else 'does not follow'} "
      f"(with 16 experts, another rumoured configuration: {gpt4_16 / 1e9:,.0f}B)")
print(f"DeepSeek-V3 counting its shared expert as a ninth active one: {deq.quoted_epoch_rule(671e9, 256, 9) / 1e9:.0f}B "
      f"instead of {deq.quoted_epoch_rule(671e9, 256, 8) / 1e9:.0f}B")

# %% [markdown]
# The Mixtral-8x22B figure follows from the formula; the GPT-4 figure does not follow from the
# formula it is quoted with, whichever rumoured expert count is used (both printed). GPT-4's size
# and structure are themselves unpublished rumours. The formula has further gaps: it does not say
# whether a shared expert counts as active (DeepSeek-V3's one changes the result, printed above),
# and it applies the same factor to all parameters although attention and embeddings are not
# experts.
#
# **Testing the rules against the roofline.** The roofline gives its own dense equivalent: the
# size of the dense model whose decode step takes the same time at the same batch,
# `deq.roofline_dense_equivalent`. It is not one number but a function of the batch:

# %%
eq_b = sorted(set(int(2 ** (i / 4)) for i in range(0, 4 * 16 + 1)))
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, (name, case) in zip(axes, CASES.items()):
    eq = [deq.roofline_dense_equivalent(name, b, GPU) / 1e9 for b in eq_b]
    ax.semilogx(eq_b, eq, "-", color=plot.COLORS["moe"], lw=2, label="roofline dense equivalent")
    for (rule_name, rule), style in zip(deq.RULES.items(), (":", "--", "-.")):
        ax.axhline(rule.fn(*case) / 1e9, color=plot.COLORS["dense"], ls=style, lw=1, label=rule_name)
    ax.axhline(case[1] / 1e9, color=plot.COLORS["datasheet"], lw=0.8, label="active / total (published)")
    ax.axhline(case[0] / 1e9, color=plot.COLORS["datasheet"], lw=0.8)
    ax.set(xlabel="batch", ylabel="dense parameters (B)", title=f"{name} on {GPU} (datasheet), bf16")
axes[0].legend(fontsize=7, loc="center left")
fig.tight_layout()
plt.show()

rows = []
for name, case in CASES.items():
    lo, hi = deq.roofline_dense_equivalent(name, 1, GPU), max(deq.roofline_dense_equivalent(name, b, GPU) for b in eq_b)
    for rule_name, rule in deq.RULES.items():
        rising, falling = deq.dense_equivalent_batches(name, rule.fn(*case), GPU)
        where = "never" if rising is None else f"batch {rising} (rising), {falling if falling else 'never'} (falling)"
        rows.append([name, rule_name, f"{rule.fn(*case) / 1e9:,.1f}B", f"{lo / 1e9:,.1f}B .. {hi / 1e9:,.1f}B", where])
show_table(["model", "rule", "rule says", "roofline equivalent, batch 1 .. max", "roofline matches the rule at"], rows)

# %% [markdown]
# The roofline equivalent runs from about the active size (batch 1, and again once the MoE is
# compute-bound) up to about the total size (mid batches, where the MoE reads every expert but its
# step is still memory-bound). Each rule is a constant inside that range, so each is "right" at
# two particular batch sizes (the table prints them) and wrong elsewhere, by up to the ratio of
# total to active parameters. None of the rules states a batch size or a GPU, and without one the
# question "which dense model costs the same to serve" has no single answer. If you need a number,
# compute it for your batch and hardware — the [calculator](econ-calculator) does.
#
# (econ-ep)=
# ## Expert parallelism in one paragraph of numbers
#
# When an MoE does not fit on one GPU, its experts are spread over GPUs (**expert parallelism**):
# every MoE layer sends each token's hidden vector to the GPUs of its `k` experts and brings the
# results back, two all-to-alls. A dense layer split by **tensor parallelism** instead joins the
# partial results of every GPU with an all-reduce, after attention and after the FFN. The byte
# counts come from `dmcourse.comm` ([the chapter on expert parallelism](08_parallel.ipynb)
# builds and measures both); below, per token and per layer, in bf16, on 8 GPUs, and the time for a batch of 256 tokens
# on NVLink and on InfiniBand (datasheet link figures from `comm.LINKS`):

# %%
P, BATCH_TOKENS = 8, 256
links = {name.split(" (")[0]: link.bytes_per_s for name, link in comm.LINKS.items() if "PCIe" not in name}
rows = []
for name in ("Mixtral-8x7B", "DeepSeek-V3", "Llama-3-70B"):
    cfg = CFG[name]
    if cfg.is_moe:
        # each GPU owns BATCH_TOKENS / P tokens; copies bound for its own experts stay home: (P-1)/P travel
        per_token = comm.bytes_per_token(cfg.top_k, cfg.d_model, torch.bfloat16) * (P - 1) / P
        per_gpu_step = per_token * BATCH_TOKENS / P * cfg.n_moe_layers
        scheme = f"expert parallel, all-to-all x 2, {cfg.n_moe_layers} MoE layers"
    else:
        # every GPU sees every token: an all-reduce of d_model after attention and after the FFN
        per_token = 2 * comm.allreduce_bytes(cfg.d_model, P, torch.bfloat16)
        per_gpu_step = per_token * BATCH_TOKENS * cfg.n_layers
        scheme = f"tensor parallel, all-reduce x 2, {cfg.n_layers} layers"
    step = ec.decode_cost(name, GPU, BATCH_TOKENS, n_gpus=P).step_time_s
    fits = ec.serving_memory(name, GPU, "bf16", batch=BATCH_TOKENS, n_gpus=P).fits
    rows.append([name + ("" if fits else " (does not fit 8 GPUs in bf16)"), scheme, f"{per_token / 1024:.1f}",
                 f"{per_gpu_step / 1e6:,.1f}", f"{step * 1e3:.2f}"]
                + [f"{per_gpu_step / bw * 1e3:.2f} ({per_gpu_step / bw / step:.0%})" for bw in links.values()])
show_table(["model", "scheme", "KiB per token per layer (sent)", f"MB per GPU per step of {BATCH_TOKENS}",
            f"roofline step on {P} x {GPU} (ms)"] + [f"{n} ms (% of step)" for n in links], rows)
nv, ib = links.values()
print(f"NVLink / InfiniBand per GPU (datasheet, comm.LINKS): {nv / ib:.0f}x")

# %% [markdown]
# Per token and layer, an all-to-all of `k` copies of the hidden vector is of the same order as a
# dense layer's two all-reduces (DeepSeek-V3's `k = 8` and wider hidden vector make it the largest).
# But in tensor parallelism every GPU handles every token of the batch, while in expert parallelism
# each GPU sends only its own share, so per GPU and step the MoE moves far less (the table's
# MB column). Inside one NVLink node, the transfers of both MoEs take a small fraction of the
# roofline step, while the tensor-parallel dense model's all-reduces take a large one at this
# batch (printed). InfiniBand is several times slower per GPU (printed), and every fraction grows by
# that factor — the reason DeepSeek-V3 sends each token to experts on at most a few nodes
# ("node-limited routing", [DeepSeek-V3 technical report](https://arxiv.org/abs/2412.19437)).
# These are byte counts over datasheet links: latency per message, load imbalance between GPUs
# and overlapping communication with compute are left to the chapter on expert parallelism.
#
# (econ-decision)=
# ## The decision framework
#
# The source blog post ends with a table of factors for choosing dense or MoE. Here are its rows,
# each with what this course computed about it and where — or a plain statement that the course
# does not measure it.
#
# | factor | source's advice (dense / MoE) | what the numbers say | where |
# |---|---|---|---|
# | VRAM budget | single GPU or edge / multi-GPU cluster | holds: an MoE needs memory for its **total** parameters (all experts resident); Mixtral-8x7B in 16 bit does not fit one 80 GB GPU, a dense model of its active size does | [memory](econ-memory) |
# | batch / latency regime | small batch, memory-bound / large batch, compute-bound | partly: at batch 1 an MoE costs about as much as a dense model of its *active* size, not more; its disadvantage is at *mid* batches, and its FLOP advantage needs batches beyond the dense twin's critical batch, well above the "32+" quoted, and never comes at long context for GQA models | [cost per token](econ-cost), [FLOP advantage](econ-flop-advantage) |
# | task type | reasoning-heavy / knowledge-heavy | **not measured in this course**. A claim from the literature: [Jelassi et al. 2024, "Mixture of Parrots"](https://arxiv.org/abs/2410.19034) find that adding experts improves memorisation more than reasoning | — |
# | training from scratch | straightforward / needs routing expertise | the mechanics are built in the course (router, load-balancing losses, capacity); their difficulty in production is not measured | chapters *The MoE layer* and *Load balancing* |
# | model scale | under ~7B active / tens of billions+ | **not measured in this course**. The literature disagrees on how MoE's advantage changes with scale: [Clark et al. 2022](https://arxiv.org/abs/2202.01169) found the gain from routing shrinking with model size, [Krajewski et al. 2024](https://arxiv.org/abs/2402.07871) found it growing once granularity and training length are tuned | — |
# | fine-tuning stability | predictable / needs guardrails against router drift | **not measured in this course**. [Zoph et al. 2022 (ST-MoE)](https://arxiv.org/abs/2202.08906) report sparse models overfitting more on small fine-tuning tasks and give recipes against it | chapter *Training and the middle paths* |
# | "dense equivalent" | — / — | each rule holds at two particular batch sizes only; one quoted figure does not follow from its own formula | [rules of thumb](econ-rules) |
# | communication | none / all-to-all | per GPU and step an expert-parallel MoE moves *less* than a tensor-parallel dense model; across nodes (InfiniBand) every transfer takes several times longer, for both schemes | [expert parallelism](econ-ep) |
#
# The cost rows lean on the roofline, a lower bound with datasheet figures and ideal scaling. Real
# serving stacks reach a fraction of both roofs; the *shape* of the comparisons (where regimes
# change, which model is cheaper) is what the model is for.
#
# (econ-calculator)=
# ## A calculator
#
# In a live notebook (Jupyter, or Colab: rocket icon above), the cell below is an interactive
# calculator: pick a model (a preset, or *custom* to type a shape of your own), a GPU, the weight
# dtype, the batch and the context, and your price per GPU-hour; it shows the memory, the GPUs
# needed, the time and cost per token and the bound. It is a thin layer on `calc.estimate` (`dmcourse.calculator`), a pure
# function you can call yourself. The price field starts at `widgets.DEFAULT_ASSUMED_USD_PER_GPU_HOUR`,
# an assumption, not a quote.

# %% tags=["remove-output"]
widgets.calculator(usd_per_gpu_hour=ASSUMED_USD_PER_GPU_HOUR, model="Mixtral-8x7B", gpu=GPU)

# %% tags=["dmcourse-record"]
from dmcourse import records

# GPUs measured for the course (python -m dmcourse.gpucheck), beside the datasheet figures used here
print(records.gpu_summary("economics"))

# %% [markdown]
# A static page cannot run widgets, so here is what the calculator shows for two settings: Mixtral-8x7B
# in bf16 on H100s and DeepSeek-V3 in fp8 on H200s, each serving 32 sequences of 4096 tokens.

# %%
for name, gpu, dtype in (("Mixtral-8x7B", "H100", "bf16"), ("DeepSeek-V3", "H200", "fp8")):
    est = calc.estimate(name, gpu, dtype=dtype, batch=32, context=4096, usd_per_gpu_hour=ASSUMED_USD_PER_GPU_HOUR)
    display(HTML(widgets.estimate_html(est)))
    widgets.plot_estimate(est)
    plt.show()

# %% [markdown]
# ## What we have
#
# | helper | what it does |
# |---|---|
# | `ec.serving_memory(model, gpu, dtype, batch=, context=)`, `ec.gpus_needed` | weights (all experts) + KV cache + activations, GPUs needed (datasheet memory) |
# | `ec.activation_bytes(model, tokens)` | estimated live activations at inference |
# | `ec.decode_cost(model, gpu, batch, context=, usd_per_gpu_hour=, twin=)` | roofline time of a decode step, GPU-seconds and $ per token, bound; dense twins |
# | `ec.critical_batch`, `ec.regime_batches`, `ec.max_batch` | where decode turns compute-bound; where an MoE's advantages appear |
# | `deq.RULES`, `deq.roofline_dense_equivalent`, `deq.dense_equivalent_batches` | the rules of thumb with provenance, and the roofline's own answer |
# | `calc.estimate(...)` (says whether the setting fits), `widgets.calculator()`, `widgets.plot_estimate` | the calculator: pure function, widget, static figure |
#
# Practise it in [exercise 5](https://colab.research.google.com/github/dmcourse/dmcourse/blob/main/exercises/ex05_economics/ex05_economics.ipynb)
# (memory, GPUs needed, cost per token and the dense-or-MoE choice, written yourself). Next:
# [serving an MoE](09_serving.ipynb): speculative decoding, quantised, offloaded and hot experts,
# each through the same experts-touched decode model.
