# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Rooflines on your own device
#
# Why does a dense model generate text at almost the same speed per step whether it serves one
# user or eight? Why is an MoE not as fast as a dense model of its active size once a few users
# share a decode step? Both answers come from one picture, the **roofline**: every kernel is limited
# either by how fast the device computes or by how fast it moves bytes to and from memory.
#
# In this chapter you measure the two ceilings of **the machine this notebook runs on**, draw its
# roofline, place GEMMs, a dense FFN and an MoE layer on it, *predict* their times and then
# measure them. If this page is the rendered book, the measurements come from the machine that
# built it (each figure names it in its corner); GPU figures from vendor datasheets are shown beside them
# and labelled as such. Open the notebook in Colab (rocket icon) to measure your own device.

# %%
import datetime
import math

import matplotlib.pyplot as plt
import torch

import dmcourse
from dmcourse import accounting, configs, fit, plot
from dmcourse import measure as ms
from dmcourse import roofline as rl
from dmcourse import roofline_plot as rp
from dmcourse.ffn import swiglu
from dmcourse.moe import MoE

plot.use_style()
torch.set_grad_enabled(False)  # we only run forward passes here
# On a CPU this chapter measures ONE core by default: a CPU shared with other programs (a CI
# runner, a laptop busy elsewhere) makes multi-threaded timings erratic, while one core gives
# steady numbers and the same lessons. Set CPU_THREADS = None to use every core.
CPU_THREADS = 1
if CPU_THREADS is not None and not torch.cuda.is_available():
    torch.set_num_threads(CPU_THREADS)
info = dmcourse.device_info()
device, dtype = info.device, info.dtype
GPU = device.type == "cuda"
PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
S = accounting.bytes_per_param(PRECISION)  # bytes per element in the course dtype
TODAY = datetime.date.today().isoformat()
print(f"{info.summary()}, {TODAY}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
print(f"compute dtype {PRECISION}: {S:g} bytes per element")

# %% [markdown]
# On a CPU the notebook uses a single core unless you change `CPU_THREADS` above (the first line
# of output says how many threads it uses): the ceilings it measures are then those of one core.
# The ideas do not depend on it, and the numbers stay steady when other programs share the CPU.
#
# ## Ceiling 1: memory bandwidth
#
# The first ceiling is how many bytes per second the device can move between its main memory
# (DRAM on a CPU, HBM or GDDR on a GPU) and its compute units. Measure it with the simplest
# memory-bound kernel there is, a **copy**: `dst.copy_(src)` reads every byte of `src` once and
# writes every byte of `dst` once, so it moves **twice** the buffer size.
#
# One trap: caches. A CPU's last-level cache (L3) or a GPU's L2 is many times faster than main
# memory. Copy a small buffer again and again and it stays in the cache: you measure the cache,
# not the memory. The cure is buffers larger than the cache, and *rotating* through several
# of them so that the data of one call has been evicted by the next calls.

# %%
llc = ms.last_level_cache_bytes(device)
print(f"last-level cache of this device: {llc / 2**20:.0f} MiB")


def my_copy_bandwidth(buffer_bytes: int, n_sets: int) -> float:
    """Bytes/s of dst.copy_(src), cycling through n_sets (dst, src) pairs; counts read + written."""
    n = buffer_bytes // 4
    sets = [(torch.empty(n, device=device), torch.ones(n, device=device)) for _ in range(n_sets)]
    state = {"i": 0}

    def step():
        dst, src = sets[state["i"] % n_sets]
        state["i"] += 1
        dst.copy_(src)

    for _ in range(n_sets):
        step()  # touch every buffer once (first-touch page faults are not what we measure)
    t = dmcourse.time_fn(step, device=device, warmup=2, repeats=7)
    return 2 * n * 4 / t.median_s


small = max(llc // 16, 2**20)
big = ms.default_buffer_bytes(device)
cached = my_copy_bandwidth(small, 1)
from_memory = my_copy_bandwidth(big, ms.rotation_count(2 * big, device))
print(f"copy of {small / 2**20:5.1f} MiB, one buffer (fits in cache): {cached / 1e9:8.1f} GB/s")
print(f"copy of {big / 2**20:5.1f} MiB, rotating buffers          : {from_memory / 1e9:8.1f} GB/s")
print(f"the cached copy looks {cached / from_memory:.1f}x faster than memory")

# %% [markdown]
# How much faster the cached copy looks depends on the machine (the cell printed it for
# yours); only the second number is the memory's. `dmcourse.measure.measure_bandwidth` is the
# same measurement, with the buffer sized from the cache (twice the last-level cache, at least
# 16 MiB on a CPU and 256 MiB on a GPU) and enough buffers to overflow it. It also has a
# **read-only** variant, a reduction `src.sum()` that reads every byte once and writes nothing:
# the traffic of reading weights, which is what inference mostly does.

# %%
copy = ms.measure_bandwidth(device, kind="copy")
read = ms.measure_bandwidth(device, kind="read")
assert copy.work == 2 * copy.settings["buffer_bytes"], "a copy counts the bytes read plus the bytes written"
assert read.work == read.settings["buffer_bytes"], "a reduction only reads"
print(copy, "| buffers:", copy.settings["buffer_bytes"] // 2**20, "MiB x", copy.settings["rotating_sets"])
print(read, "| buffers:", read.settings["buffer_bytes"] // 2**20, "MiB x", read.settings["rotating_sets"])
print(f"inline copy / dmcourse copy: {from_memory / copy.value:.2f} (two measurements of the same thing)")
BANDWIDTH = max(copy.value, read.value)
print(f"memory roof used below: {BANDWIDTH / 1e9:.1f} GB/s (the higher of the two), {info.name}, {TODAY}")

# %% [markdown]
# A roof is an upper bound, so the model below uses the higher of the two measured rates.
# (On a CPU a copy may really move more than we count: before writing a cache line the core
# usually reads it, so `dst` crosses the memory bus twice. We count what the program asks for,
# as the STREAM benchmark does.)
#
# ## Ceiling 2: matmul throughput
#
# The second ceiling is how many floating-point operations per second the device executes. A
# large square matmul is the kernel that gets closest to it: `(n, n) @ (n, n)` takes
# $2n^3$ FLOPs (a multiply and an add per term) and touches only $3n^2$ numbers. GPUs have
# separate units for each precision: fp32 on the ordinary cores, and tf32, bf16 and fp16 on
# *tensor cores* (from compute capability 8.0 for tf32 and bf16; a T4 has fp16 tensor cores
# only). `available_precisions` lists what this device runs natively.

# %%
n = 1024 if not GPU else 8192
a = torch.randn(n, n, device=device)
b = torch.randn(n, n, device=device)
t = dmcourse.time_fn(lambda: a @ b, device=device, warmup=2, repeats=5)
mine = 2 * n**3 / t.median_s
print(f"inline: {n} x {n} fp32 matmul, {t.median_s * 1e3:.2f} ms -> {mine / 1e12:.3f} TFLOP/s")
del a, b

precisions = ms.available_precisions(device)
matmul = {p: ms.measure_matmul(device, precision=p) for p in precisions}
for p, m in matmul.items():
    print(f"{m}  (size {m.settings['size']})")
assert matmul["fp32"].work == 2 * matmul["fp32"].settings["size"] ** 3
PEAK = matmul[PRECISION].value
print(f"compute roof used below ({PRECISION}): {PEAK / 1e12:.3f} TFLOP/s, {info.name}, {TODAY}")

# %% [markdown]
# `measure_matmul` picks the matrix size itself: it starts small and doubles it until one matmul
# takes a few tens of milliseconds (or a cap is reached), so it stays quick on a laptop and still
# fills a large GPU. On a CPU, bf16 is only listed when the CPU has native bf16 instructions; the
# course computes in fp32 on CPUs anyway.
#
# ## This device next to the datasheets
#
# Here are the two measured ceilings beside the **datasheet** figures of the GPUs the course
# talks about (from `dmcourse/data/gpus.json`, each with its source; tensor-core figures are the
# dense ones, half of the "with sparsity" figures NVIDIA prints first). The **ridge point**
# `peak / bandwidth` is the number of FLOPs a kernel must do per byte it moves to keep the
# compute units busy.

# %%
from dmcourse import hardware

rows = [(f"{info.name} ({PRECISION}, measured {TODAY})", PEAK, BANDWIDTH)]
DATASHEET = {}
for name, spec in hardware.gpus().items():
    precision = "bf16" if "bf16" in spec.peak_flops else "fp16"
    peak, bw = rl.datasheet_roof(name, precision)
    DATASHEET[name] = (peak, bw, precision)
    rows.append((f"{name} ({precision}, datasheet)", peak, bw))
print(f"{'device':<52}{'peak TFLOP/s':>14}{'bandwidth GB/s':>16}{'ridge FLOP/B':>14}")
for label, peak, bw in rows:
    print(f"{label:<52}{peak / 1e12:>14.3g}{bw / 1e9:>16.4g}{peak / bw:>14.1f}")
print("\ndatasheet sources:")
for name, spec in hardware.gpus().items():
    print(f"  {name}: {spec.peak_flops_source}" + (f" | bandwidth: {spec.memory_bandwidth_source}"
                                                     if spec.memory_bandwidth_source != spec.peak_flops_source else ""))

# %%
low = min(peak / bw for peak, bw, _ in DATASHEET.values())
print(f"lowest ridge among the datasheet GPUs: {low:.0f} FLOP/byte; this device: {PEAK / BANDWIDTH:.1f}")

# %% [markdown]
# Every datasheet GPU in the table needs well over a hundred FLOPs per byte it moves (its ridge)
# to be compute-bound in 16 bit. Keep that number in mind: we will see that a decode step of a
# language model does about one FLOP per byte.
#
# **Measured GPUs.** `python -m dmcourse.records --out my_gpu.json` measures the current device
# and writes a JSON record (device, date, versions, command, figures). Records shipped with the
# course in `dmcourse/data/` are shown here beside your device:

# %% tags=["dmcourse-record"]
from dmcourse.records import gpu_summary, shipped_records

records = shipped_records()  # GPU roofline records shipped in the package (the explorer below adds them)
print(gpu_summary("roofline"))  # each one labelled with its device and date, or that none is shipped
print("(your device's measured ceilings are in the table above; `python -m dmcourse.gpucheck` on a GPU "
      "writes a record to dmcourse/data/records/ that shows here)")


# %% [markdown]
# ## The roofline model
#
# A kernel that does $F$ FLOPs and moves $B$ bytes needs at least $F/\text{peak}$ seconds to
# compute and at least $B/\text{bandwidth}$ seconds to move its data. Whichever is longer is its
# lower bound on time. Divide by $F$ and write the **arithmetic intensity** $I = F/B$ (FLOP/byte):
#
# $$\text{attainable FLOP/s} = \min(\text{peak},\; I \times \text{bandwidth}).$$
#
# Below the ridge ($I < \text{peak}/\text{bandwidth}$) the kernel is **memory-bound**: faster
# arithmetic would not help. Above it, it is **compute-bound**.
#
# For a GEMM $(M\times K) @ (K\times N)$ with $s$ bytes per element: $F = 2MKN$, and at least
# $A$ and $B$ must be read and $C$ written, $s\,(MK + KN + MN)$ bytes. In a transformer layer
# $K\times N$ is a weight matrix and $M$ is the number of **tokens** processed together.

# %%
def my_intensity(m: int, k: int, n: int, s: float) -> float:
    return 2 * m * k * n / (s * (m * k + k * n + m * n))


def my_attainable(intensity: float, peak: float, bandwidth: float) -> float:
    return min(peak, intensity * bandwidth)


for m, k, n in [(1, 4096, 4096), (16, 4096, 14336), (4096, 4096, 4096), (7, 3, 5)]:
    for s in (4, 2):
        assert math.isclose(my_intensity(m, k, n, s), rl.gemm_intensity(m, k, n, s))
        i = my_intensity(m, k, n, s)
        assert math.isclose(my_attainable(i, PEAK, BANDWIDTH), rl.attainable_flops(i, PEAK, BANDWIDTH))
print("inline intensity and min rule agree with dmcourse.roofline")
for m in (1, 16, 256, 4096):
    print(f"M={m:5d}, K=N=4096, bf16: intensity {rl.gemm_intensity(m, 4096, 4096, 2):8.1f} FLOP/byte")


# %% [markdown]
# With one token ($M=1$) a GEMM does 2 FLOPs per weight it reads; in bf16 a weight is 2 bytes,
# so the intensity is about **1 FLOP/byte**, over a hundred times below the ridge of every
# datasheet GPU above. Intensity
# grows with $M$ until the activations, not the weights, dominate the bytes.
#
# The **critical batch size** is the $M$ at which the GEMM reaches the ridge. Counting only the
# weights ($F = 2MKN$, $B \approx sKN$): $M^* = \text{ridge}\times s/2$. Counting every operand
# exactly gives a little more, and for small $K, N$ the ridge may never be reached.

# %%
def my_critical(peak: float, bandwidth: float, s: float) -> float:
    return peak / bandwidth * s / 2


print(f"{'device':<34}{'ridge':>8}{'M* weights only':>17}{'M* K=N=4096':>13}")
for label, (peak, bw, precision) in {f"{info.name} ({PRECISION}, measured)": (PEAK, BANDWIDTH, PRECISION),
                                     **{f"{k} ({v[2]}, datasheet)": v for k, v in DATASHEET.items()}}.items():
    s = accounting.bytes_per_param(precision)
    assert math.isclose(my_critical(peak, bw, s), rl.critical_batch_size(peak, bw, s))
    print(f"{label[:33]:<34}{peak / bw:>8.1f}{rl.critical_batch_size(peak, bw, s):>17.1f}"
          f"{rl.critical_batch_size(peak, bw, s, 4096, 4096):>13.1f}")

# %% [markdown]
# ## A GEMM sweep: from memory-bound to compute-bound
#
# Now measure it. Keep one weight matrix $K\times N$ and grow the number of tokens $M$. Each
# GEMM is timed with `ms.time_gemm`, which rotates through copies of the operands large enough
# together to overflow the cache, so the weights come from memory every call, as they would in a
# model too large for the cache.

# %%
K = N = 2048 if not GPU else 8192
Ms = [2**i for i in range(0, 11 if not GPU else 15)]
sweep = []
for m in Ms:
    t = ms.time_gemm(m, K, N, device=device, precision=PRECISION, warmup=1, repeats=7)
    flops, nbytes = rl.gemm_flops(m, K, N), rl.gemm_bytes(m, K, N, S)
    sweep.append(dict(m=m, t=t.median_s, intensity=flops / nbytes, achieved=flops / t.median_s,
                      predicted=rl.roofline_time(flops, nbytes, PEAK, BANDWIDTH)))
print(f"K = N = {K}, {PRECISION}, {info.name}, {TODAY}")
print(f"{'M':>6}{'intensity':>11}{'measured':>12}{'predicted':>12}{'ratio':>7}{'achieved TFLOP/s':>18}  bound")
for r in sweep:
    bound = "memory" if rl.is_memory_bound(r["intensity"], PEAK, BANDWIDTH) else "compute"
    print(f"{r['m']:>6}{r['intensity']:>11.1f}{r['t'] * 1e3:>10.3f}ms{r['predicted'] * 1e3:>10.3f}ms"
          f"{r['t'] / r['predicted']:>7.2f}{r['achieved'] / 1e12:>18.4f}  {bound}")
M_STAR = rl.critical_batch_size(PEAK, BANDWIDTH, S, K, N)
print(f"model: compute-bound from M = {M_STAR:.0f}")

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
lo = min(r["intensity"] for r in sweep) / 2
hi = max(max(r["intensity"] for r in sweep) * 2, PEAK / BANDWIDTH * 4)
rp.draw_roofline(ax, PEAK, BANDWIDTH, label=f"{info.name} roofline (measured ceilings)",
                 color=plot.COLORS["dense"], intensity_range=(lo, hi))
ax.plot([r["intensity"] for r in sweep], [r["achieved"] / 1e12 for r in sweep], "o-",
        color=plot.COLORS["measured"], label=f"GEMM (M x {K}) @ ({K} x {N}), measured")
for r in sweep[:: max(1, len(sweep) // 6)]:
    ax.annotate(f"M={r['m']}", (r["intensity"], r["achieved"] / 1e12), textcoords="offset points",
                xytext=(4, -10), fontsize=7)
ax.set_title(f"GEMM sweep over the token count M ({PRECISION})")
ax.legend(loc="lower right", fontsize=8)
plot.stamp(ax, info.name)
plt.show()
first_compute = next((r["m"] for r in sweep if not rl.is_memory_bound(r["intensity"], PEAK, BANDWIDTH)), None)
print(f"the model puts the turn at M = {M_STAR:.0f}; in the sweep, the first compute-bound M is {first_compute}")
best = max(r["achieved"] for r in sweep)
print(f"best measured: {best / PEAK:.0%} of the matmul roof")
near = next((r["m"] for i, r in enumerate(sweep) if all(s["t"] <= 1.1 * s["predicted"] for s in sweep[i:])), None)
print(f"measured within 10% of the roofline prediction from M = {near} on" if near else
      "no point of the sweep came within 10% of the roofline prediction")
if best > 1.05 * PEAK:
    print("a measured point lies above the roof: the square matmul that set the roof ran slower than this GEMM "
          "(noise from other programs, or a shape that suits this device better). A roof is only as good as "
          "its measurement; rerun the notebook on a quiet machine.")

# %% [markdown]
# Read the figure from left to right. In the model, below the critical $M$ a GEMM sits on the
# slanted bandwidth roof: doubling the tokens doubles the work but barely changes the bytes (the
# weights dominate), so extra tokens cost almost no extra time. Past the critical $M$ it sits on the
# flat compute roof, and more tokens cost proportionally more time. Where the turn happens
# depends on the device: a GPU's ridge is hundreds of FLOP/byte, a CPU core's only a few (both
# printed above), so on a CPU only the first few points of the sweep lie left of it. The measured
# points stay below the roofs, furthest at small sizes, where fixed per-call costs weigh most (a
# kernel launch on a GPU; on a CPU, for instance, the library repacking the weight matrix): the
# roofline is a *lower bound* on time, so the ratio measured/predicted in the table is at or above 1,
# and the last line above says from which $M$ on it stays within 10%.
#
# ## Prefill vs decode for a dense FFN
#
# A language model processes the prompt all at once (**prefill**: many tokens per weight read)
# and then generates one token per step (**decode**: each step reads every weight for one token
# per sequence). The same SwiGLU FFN, timed for T tokens per call, shows the two regimes. The
# prediction counts the FFN's three GEMMs with `rl.swiglu_cost` (every operand of every GEMM,
# plus the elementwise `silu(g) * u`).

# %%
D_MODEL, D_FF = (1024, 4096) if not GPU else (4096, 14336)
ffn_bytes = 3 * D_MODEL * D_FF * S
n_sets = ms.rotation_count(int(ffn_bytes), device)
gen = torch.Generator(device=device).manual_seed(0)
ffn_sets = [tuple(torch.randn(shape, device=device, dtype=dtype, generator=gen) * 0.02
                  for shape in [(D_FF, D_MODEL), (D_FF, D_MODEL), (D_MODEL, D_FF)]) for _ in range(n_sets)]
print(f"SwiGLU d_model={D_MODEL}, d_ff={D_FF}: {ffn_bytes / 2**20:.0f} MiB of weights, {n_sets} rotating copies")

tokens_list = [1, 4, 16, 64, 256, 1024] + ([4096] if GPU else [])
ffn_rows = []
for T in tokens_list:
    x = torch.randn(T, D_MODEL, device=device, dtype=dtype)
    t = ms.time_rotating(lambda wg, wu, wd: swiglu(x, wg, wu, wd), ffn_sets, device=device, warmup=1, repeats=7)
    cost = rl.swiglu_cost(T, D_MODEL, D_FF, S)
    ffn_rows.append(dict(T=T, t=t.median_s, predicted=cost.time_s(PEAK, BANDWIDTH), intensity=cost.intensity))
print(f"{'tokens':>7}{'per call':>12}{'per token':>12}{'predicted/token':>17}{'ratio':>7}{'intensity':>10}")
for r in ffn_rows:
    print(f"{r['T']:>7}{r['t'] * 1e3:>10.3f}ms{r['t'] / r['T'] * 1e6:>10.1f}us{r['predicted'] / r['T'] * 1e6:>15.1f}us"
          f"{r['t'] / r['predicted']:>7.2f}{r['intensity']:>10.1f}")
print(f"{info.name}, {PRECISION}, {TODAY}")

# %%
fig, ax = plt.subplots()
Ts = [r["T"] for r in ffn_rows]
ax.loglog(Ts, [r["t"] / r["T"] * 1e6 for r in ffn_rows], "o-", color=plot.COLORS["measured"], label="measured")
ax.loglog(Ts, [r["predicted"] / r["T"] * 1e6 for r in ffn_rows], "--", color=plot.COLORS["dense"],
          label="roofline prediction")
ax.set(xlabel="tokens per call (1 = decode, many = prefill)", ylabel="time per token (us)",
       title=f"SwiGLU FFN {D_MODEL} -> {D_FF} -> {D_MODEL}, {PRECISION}")
ax.legend()
plot.stamp(ax, info.name)
plt.show()
decode, prefill = ffn_rows[0], ffn_rows[-1]
print(f"time per token: decode (1 token) {decode['t'] * 1e6:.0f} us, prefill ({prefill['T']} tokens) "
      f"{prefill['t'] / prefill['T'] * 1e6:.1f} us: {decode['t'] / (prefill['t'] / prefill['T']):.0f}x cheaper per token "
      f"(model: {decode['predicted'] / (prefill['predicted'] / prefill['T']):.0f}x)")


# %% [markdown]
# One decode token pays for reading every weight; a prefill token shares that read with all the
# other tokens of the call. That is why serving systems **batch** many users' decode steps
# together: until the critical batch size, extra sequences ride along almost for free.
#
# ## MoE decode: how many experts does a batch touch?
#
# An MoE layer sends each token to $k$ of $E$ experts. At decode, only the experts that *some*
# token of the batch picked must be read. If routing is uniform and tokens are independent, a
# given expert is missed by one token with probability $1 - k/E$ and by all $B$ tokens with
# probability $(1-k/E)^B$, so the expected number of distinct experts touched is
#
# $$E\left(1 - \left(1 - \tfrac{k}{E}\right)^B\right).$$
#
# Check the formula against a real router: the router of a `dmcourse.moe.MoE` layer (randomly
# initialised, so close to uniform; a trained router with uneven load touches fewer experts),
# fed random tokens.

# %%
def my_touched(n_experts: int, top_k: int, tokens: int) -> float:
    return n_experts * (1 - (1 - top_k / n_experts) ** tokens)


batches = [1, 2, 4, 8, 16, 32, 64, 128, 256]
fig, ax = plt.subplots()
for (E, k), color in zip([(8, 2), (64, 8), (128, 8)], [plot.COLORS["dense"], plot.COLORS["moe"], plot.COLORS["accent"]]):
    layer = MoE(d_model=256, d_ff=64, n_experts=E, top_k=k)
    counted = []
    for B in batches:
        assert math.isclose(my_touched(E, k, B), rl.expected_experts_touched(E, k, B))
        trials = [layer.router(torch.randn(B, 256)).indices.unique().numel() for _ in range(100)]
        counted.append(sum(trials) / len(trials))
    gap = max(abs(c - rl.expected_experts_touched(E, k, B)) for B, c in zip(batches, counted))
    ax.semilogx(batches, [rl.expected_experts_touched(E, k, B) for B in batches], "-", color=color,
                label=f"formula, E={E}, k={k}")
    ax.semilogx(batches, counted, "o", color=color, label=f"router's choices, E={E}, k={k}")
    print(f"E={E:3d}, k={k}: largest gap {gap:.2f} experts; " + "  ".join(
        f"B={B}: {c:.1f}/{rl.expected_experts_touched(E, k, B):.1f}" for B, c in zip(batches, counted)))
ax.set(xlabel="batch size B (tokens per decode step)", ylabel="distinct experts touched",
       title="Experts touched by one decode step (counted / formula)")
ax.legend(fontsize=7, ncol=2)
plt.show()

# %% [markdown]
# The counts follow the formula closely (the largest gap per router is printed: a fraction of
# one expert, from the 100 random batches per point and from the untrained router's slight
# preferences). The lesson is in the curve's shape: with Mixtral's 8 experts and top-2,
# a handful of tokens already touch most experts; with many small experts (64 or 128, top-8)
# it takes more tokens, but a few dozen still touch most of them.
#
# ## Bytes per decode step: MoE vs dense
#
# A decode step reads each weight it needs once, whatever the batch size. For an MoE that is the
# always-used weights (attention, router, shared experts, output head) plus the experts touched.
# Compare three models with the same attention and other shared weights:
#
# * the **MoE** (here the Mixtral-8x7B and DeepSeek-V3 configurations from `dmcourse.configs`);
# * a dense model of **equal active** size: its FFN is as big as the k experts a token uses;
# * a dense model of **equal total** size: its FFN holds as many weights as all experts.
#
# `rl.decode_step_for_config` counts the MoE from `dmcourse.accounting`; the two dense models
# are `rl.decode_step` with the MoE's active and total counts. Times are predicted for a
# datasheet H100 (bf16), weights only (no KV cache, so attention does not blur the picture), on one
# **ideal H100 with capacity ignored**: neither MoE's weights fit one 80 GB card (the cell prints
# how many H100s each model's weights need). On n ideal GPUs every step takes 1/n of the time
# printed, so the *ratios* between the models do not depend on the count.

# %%
h100_peak, h100_bw, _ = DATASHEET["H100"]
steps_b = [2**i for i in range(0, 13)]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
summary = {}
for ax, name in zip(axes, ["Mixtral-8x7B", "DeepSeek-V3"]):
    cfg = configs.load_preset(name)
    c = rl.decode_counts(cfg)  # dense_params (read every step), expert_params, n_experts, top_k
    active = c["dense_params"] + c["expert_params"] * c["top_k"] // c["n_experts"]
    total = c["dense_params"] + c["expert_params"]
    models = {
        "MoE": [rl.decode_step_for_config(cfg, B, "bf16") for B in steps_b],
        "dense, equal active": [rl.decode_step(batch=B, dense_params=active, bytes_per_param=2) for B in steps_b],
        "dense, equal total": [rl.decode_step(batch=B, dense_params=total, bytes_per_param=2) for B in steps_b],
    }
    colors = {"MoE": plot.COLORS["moe"], "dense, equal active": plot.COLORS["dense"],
              "dense, equal total": plot.COLORS["datasheet"]}
    for label, steps in models.items():
        ax.loglog(steps_b, [s.time_s(h100_peak, h100_bw) * 1e3 for s in steps], "o-", ms=3,
                  color=colors[label], label=label)
    ax.set(xlabel="batch size B", ylabel="predicted time per decode step (ms)",
           title=f"{name} (E={cfg.n_experts}, k={cfg.top_k}), one ideal H100\n(datasheet roof, capacity ignored)")
    ax.legend(fontsize=8)
    summary[name] = (cfg, models)
fig.tight_layout()
plt.show()

for name, (cfg, models) in summary.items():
    moe, act, tot = models["MoE"], models["dense, equal active"], models["dense, equal total"]
    print(f"{name}: its bf16 weights alone need {fit.fits_on_gpu(cfg, 'H100', 'bf16').gpus_needed} x H100 "
          "(80 GB datasheet); the times below are for one ideal H100, capacity ignored")
    print(f"{name}: GB read per step at B=1: MoE {moe[0].weight_bytes / 1e9:.1f}, dense equal active "
          f"{act[0].weight_bytes / 1e9:.1f}, dense equal total {tot[0].weight_bytes / 1e9:.1f}")
    for i, B in enumerate(steps_b):
        if B in (1, 4, 32, 256, 4096):
            print(f"   B={B:5d}: experts touched {moe[i].experts_touched:6.1f} of {cfg.n_experts} per layer; "
                  f"time MoE / dense-active {moe[i].time_s(h100_peak, h100_bw) / act[i].time_s(h100_peak, h100_bw):5.2f}, "
                  f"MoE / dense-total {moe[i].time_s(h100_peak, h100_bw) / tot[i].time_s(h100_peak, h100_bw):5.2f}")
    crit = rl.decode_critical_batch(h100_peak, h100_bw, **rl.decode_counts(cfg), bytes_per_param=2)
    crit_dense = rl.decode_critical_batch(h100_peak, h100_bw, dense_params=10**9, bytes_per_param=2)
    print(f"   compute-bound from B = {crit:.0f} (MoE) vs B = {crit_dense:.0f} (any dense model, bf16, weights only)")

# %% [markdown]
# Three regimes, in the roofline's terms:
#
# * **Batch 1**: the MoE reads only its active weights, as little as the equal-active dense model
#   and far less than the equal-total one. Here the MoE is as fast as a dense model of its active
#   size.
# * **Middle batches**: every extra token touches new experts, the MoE's bytes climb towards its
#   total size, but its FLOPs stay those of the active size, so it stays memory-bound. Here it
#   costs nearly as much per step as a dense model of equal **total** size, and several times
#   the equal-active one.
# * **Large batches**: once compute-bound, time follows FLOPs, and the MoE is back to its
#   active size. It gets there only at a much larger batch than a dense model (printed above):
#   at large batch its intensity is that of a dense model times active/total, so the critical
#   batch grows by total/active (for a model made only of experts, $E/k$).
#
# So the MoE never beats the dense model of equal active size in this model (it can at best tie
# it), and never loses to the dense model of equal total size; how much it saves depends on the
# batch. A widely shared blog post on dense vs MoE inference says that large batches ("batch size
# 32+") are compute-bound, where "MoE shines": the next cell checks that claim with the numbers above.

# %%
for name, (cfg, models) in summary.items():
    i32 = steps_b.index(32)
    moe32 = models["MoE"][i32]
    bound = "memory-bound" if rl.is_memory_bound(moe32.intensity, h100_peak, h100_bw) else "compute-bound"
    dense_bound = ("memory-bound" if rl.is_memory_bound(models["dense, equal active"][i32].intensity, h100_peak, h100_bw)
                   else "compute-bound")
    print(f"{name} at B=32 on an H100 (datasheet, bf16, weights only): MoE {bound} (intensity "
          f"{moe32.intensity:.1f} vs ridge {h100_peak / h100_bw:.0f}), dense {dense_bound}; "
          f"MoE step / dense-active step = {moe32.time_s(h100_peak, h100_bw) / models['dense, equal active'][i32].time_s(h100_peak, h100_bw):.2f}")

# %% [markdown]
# By the roofline, decode at batch 32 is still memory-bound on an H100 for dense and MoE models
# alike, and it is exactly the batch range where an MoE pays for reading most of its experts.
# The claim is too coarse: the regime changes at the critical batch size, which depends on the
# GPU's ridge and, for an MoE, on $E/k$ (a KV cache read per sequence pushes it further still).
#
# ## Measured: an MoE layer vs dense FFNs on this device
#
# Now the same comparison measured, one layer at a time, on this device: a `dmcourse.moe.MoE`
# layer with 8 experts and top-2 against SwiGLU FFNs of equal active size (hidden size $2\times$
# the expert's) and equal total size ($8\times$), for growing batches. All three do their matmuls
# with the same function, `dmcourse.moe.linear` (`dmcourse.matmul.linear`: on a CPU the kernel this
# machine measured fastest for the number of rows, `F.linear` on a GPU; see
# [Measuring CPU kernels](#measuring-cpu-kernels) below), so that
# only the layer differs; the compute
# roof of this section is the faster of that kernel's and `torch.matmul`'s square GEMM (both
# printed). The prediction on the same plot is `rl.moe_cost` / `rl.swiglu_cost` under these roofs.

# %%
from dmcourse.moe import expert_swiglu, linear as moe_linear

SIZE = matmul[PRECISION].settings["size"]
linear_gemm = ms.measure_matmul(device, precision=PRECISION, size=SIZE, matmul=moe_linear)
PEAK_LAYERS = max(PEAK, linear_gemm.value)
print(f"square {SIZE} GEMM, {PRECISION}: dmcourse.moe.linear {linear_gemm.value / 1e12:.3f} TFLOP/s, "
      f"torch.matmul {PEAK / 1e12:.3f} TFLOP/s; compute roof of this section {PEAK_LAYERS / 1e12:.3f} TFLOP/s")

E, TOPK = 8, 2
DM, DFF = (512, 1024) if not GPU else (2048, 4096)
expert_bytes = 3 * DM * DFF * S
moe_copies = [MoE(DM, DFF, E, TOPK, dtype=dtype, device=device).eval()
              for _ in range(ms.rotation_count(int(E * expert_bytes), device))]


def dense_sets(d_ff):
    count = ms.rotation_count(int(3 * DM * d_ff * S), device)
    return [tuple(torch.randn(shape, device=device, dtype=dtype) * 0.02
                  for shape in [(d_ff, DM), (d_ff, DM), (DM, d_ff)]) for _ in range(count)]


dense_active, dense_total = dense_sets(TOPK * DFF), dense_sets(E * DFF)
batch_list = [1, 2, 4, 8, 16, 32, 64, 128, 256] + ([1024, 4096] if GPU else [])
measured = {"MoE": [], "dense, equal active": [], "dense, equal total": []}
predicted = {key: [] for key in measured}
for B in batch_list:
    x = torch.randn(B, DM, device=device, dtype=dtype)
    measured["MoE"].append(ms.time_rotating(lambda layer: layer(x), [(m,) for m in moe_copies],
                                            device=device, warmup=1, repeats=5).median_s)
    for key, sets in (("dense, equal active", dense_active), ("dense, equal total", dense_total)):
        measured[key].append(ms.time_rotating(lambda wg, wu, wd: expert_swiglu(x, wg, wu, wd), sets,
                                              device=device, warmup=1, repeats=5).median_s)
    predicted["MoE"].append(rl.moe_cost(B, DM, DFF, E, TOPK, S).time_s(PEAK_LAYERS, BANDWIDTH))
    predicted["dense, equal active"].append(rl.swiglu_cost(B, DM, TOPK * DFF, S).time_s(PEAK_LAYERS, BANDWIDTH))
    predicted["dense, equal total"].append(rl.swiglu_cost(B, DM, E * DFF, S).time_s(PEAK_LAYERS, BANDWIDTH))

colors = {"MoE": plot.COLORS["moe"], "dense, equal active": plot.COLORS["dense"],
          "dense, equal total": plot.COLORS["datasheet"]}
fig, ax = plt.subplots(figsize=(7, 4.2))
for key in measured:
    ax.loglog(batch_list, [t * 1e3 for t in measured[key]], "o", color=colors[key], label=f"{key}, measured")
    ax.loglog(batch_list, [t * 1e3 for t in predicted[key]], "--", color=colors[key], label=f"{key}, predicted")
ax.set(xlabel="batch size B (tokens)", ylabel="time per layer call (ms)",
       title=f"MoE (E={E}, k={TOPK}, d_ff={DFF}) vs dense SwiGLU, d_model={DM}, {PRECISION}")
ax.legend(fontsize=7, ncol=2)
plot.stamp(ax, info.name)
plt.show()
print(f"{'B':>5}" + "".join(f"{key + ' (ms)':>26}" for key in measured) + f"{'MoE/active':>12}{'MoE/total':>11}")
for i, B in enumerate(batch_list):
    print(f"{B:>5}" + "".join(f"{measured[key][i] * 1e3:>12.3f} (pred {predicted[key][i] * 1e3:6.3f})" for key in measured)
          + f"{measured['MoE'][i] / measured['dense, equal active'][i]:>12.2f}"
          + f"{measured['MoE'][i] / measured['dense, equal total'][i]:>11.2f}")
print(f"{info.name}, {PRECISION}, {TODAY}")

# %%
first, last = 0, len(batch_list) - 1
wins_total = [B for i, B in enumerate(batch_list) if measured["MoE"][i] < measured["dense, equal total"][i]]
wins_active = [B for i, B in enumerate(batch_list) if measured["MoE"][i] < measured["dense, equal active"][i]]
print(f"measured on {info.name}: the MoE layer was faster than the dense FFN of equal TOTAL size at "
      f"{len(wins_total)} of {len(batch_list)} batch sizes ({wins_total}),")
print(f"and faster than the dense FFN of equal ACTIVE size at {len(wins_active)} of {len(batch_list)} ({wins_active}).")
print(f"MoE / equal-total: {measured['MoE'][first] / measured['dense, equal total'][first]:.2f} at B={batch_list[first]}, "
      f"{max(m / d for m, d in zip(measured['MoE'], measured['dense, equal total'])):.2f} at worst, "
      f"{measured['MoE'][last] / measured['dense, equal total'][last]:.2f} at B={batch_list[last]}")

# %% [markdown]
# Where the MoE wins and where it does not, on this device, is printed above; compare it with
# the prediction. The model says: against the dense FFN of equal total size the MoE wins at
# small batches (it reads only the touched experts) and at large, compute-bound batches (it does
# $k/E$ of the FLOPs), with the smallest gain in between, where it already reads nearly all
# experts but is still memory-bound. Against the dense FFN of equal active size it cannot win in
# the model: same FLOPs, at least as many bytes, plus routing. (All three layers use the
# same matmul function, which picks its kernel by the number of rows; on a CPU, where the dense
# layer gets $B$ rows but each expert, seeing about $Bk/E$ tokens, gets fewer, the two can run
# different kernels. Elsewhere a win is something the model leaves out, such as
# small per-expert matrices staying in the cache, or noise: run the cell again and see whether it
# persists.) A real
# MoE layer also pays for what the roofline leaves out: the router, sorting tokens by expert, one
# small GEMM per expert instead of one large one (small GEMMs run further below the roof), and on
# a GPU a kernel launch per expert. Expect that overhead to show at small batches, where the
# layer's time is shortest (compare the ratios in the table below).
#
# ## Predicted vs measured
#
# Every measurement of this chapter next to its roofline prediction. The ratio measured /
# predicted is at least about 1 when the model is a good lower bound; large ratios mark where
# something the model ignores (fixed per-call costs, small GEMMs that do not reach the peak)
# dominates.

# %%
table = [(f"GEMM M={r['m']}", r["predicted"], r["t"]) for r in sweep[:: max(1, len(sweep) // 5)]]
table += [(f"SwiGLU FFN, {r['T']} tokens", r["predicted"], r["t"]) for r in ffn_rows]
for key in measured:
    for i in (0, len(batch_list) // 2, len(batch_list) - 1):
        table.append((f"{key}, B={batch_list[i]}", predicted[key][i], measured[key][i]))
print(f"{'what':<36}{'predicted':>12}{'measured':>12}{'ratio':>8}")
for what, pred, meas in table:
    print(f"{what:<36}{pred * 1e3:>10.3f}ms{meas * 1e3:>10.3f}ms{meas / pred:>8.2f}")
ratios = sorted(meas / pred for _, pred, meas in table)
print(f"\nmeasured on {info.name}, {PRECISION}, {TODAY}: ratios from {ratios[0]:.2f} to {ratios[-1]:.2f}, "
      f"median {ratios[len(ratios) // 2]:.2f}")

# %% [markdown]
# A ratio below 1 means the device did better than its measured roofs allow: a cache helped
# after all, a kernel ran faster than the square matmul that set the compute roof (on CPUs,
# mid-sized GEMMs whose operands stay in cache can), or the ceilings were measured at a noisy
# moment (on a shared machine, run the notebook again). Ratios well above 1 at small sizes are fixed costs; the roofline predicts
# the large, memory- or compute-bound cases best, which are the ones that dominate serving
# costs.
#
# ## Explore the roofline
#
# In a live notebook the cell below gives an explorer: pick a device (this one, measured, or a
# GPU from the datasheet table), a GEMM shape and a dtype, and see where it lands, whether it is
# memory- or compute-bound and how long it should take at best. The static page shows, instead,
# the datasheet rooflines with dense decode steps at growing batch size placed on the H100's.

# %% tags=["remove-output"]
roofs = {f"{info.name} (measured)": (PEAK, BANDWIDTH)}
roofs.update({f"{name} {v[2]} (datasheet)": (v[0], v[1]) for name, v in DATASHEET.items()})
for r in records:
    roofs[f"{r['device']} (measured {r['date'][:10]})"] = (
        max(r["figures"]["matmul_flops_per_s"].values()), max(r["figures"]["bandwidth_bytes_per_s"].values()))
rp.explorer(roofs, default="H100 bf16 (datasheet)")

# %%
fig, ax = plt.subplots(figsize=(9, 4.5))
roof_list = [dict(name=f"{name} {v[2]}", peak=v[0], bandwidth=v[1], kind="datasheet") for name, v in DATASHEET.items()]
roof_list.append(dict(name=f"{info.name} {PRECISION} (measured)", peak=PEAK, bandwidth=BANDWIDTH, kind="measured"))
points = []
for B in (1, 8, 64, 512, 4096):
    i = rl.decode_step(batch=B, dense_params=10**9, bytes_per_param=2).intensity  # dense bf16, weights only
    points.append(dict(intensity=i, flops=rl.attainable_flops(i, h100_peak, h100_bw), annotate=f"B={B}",
                       label="dense bf16 decode step on the H100" if B == 1 else None, color=plot.COLORS["moe"]))
rp.roofline_figure(roof_list, points, ax=ax, intensity_range=(0.1, 1e4),
                   title="Rooflines: datasheet GPUs (dashed) and this device; dense bf16 decode on the H100")
plot.stamp(ax, info.name)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What we have
#
# | helper | what it does |
# |---|---|
# | `ms.measure_bandwidth(device, kind="copy" / "read")` | memory bandwidth (bytes/s), rotating buffers larger than the cache |
# | `ms.measure_matmul(device, precision=...)`, `ms.available_precisions` | matmul throughput (FLOP/s) per precision |
# | `ms.time_gemm`, `ms.time_rotating` | timing with operands rotated out of the cache |
# | `rl.gemm_intensity`, `rl.attainable_flops`, `rl.ridge_point`, `rl.critical_batch_size` | the roofline model |
# | `rl.expected_experts_touched`, `rl.decode_step`, `rl.decode_step_for_config`, `rl.decode_critical_batch` | decode steps of dense and MoE models |
# | `rl.swiglu_cost`, `rl.moe_cost` | FLOPs and bytes of one FFN / MoE layer call |
# | `python -m dmcourse.records --out FILE` | measure this device and write a JSON record |
# | `dmcourse.roofline_plot` | roofline figures and the interactive explorer |
#
# Practise it in [Exercise 4](https://colab.research.google.com/github/dmcourse/dmcourse/blob/main/exercises/ex04_roofline/ex04_roofline.ipynb)
# (`exercises/ex04_roofline`): GEMM and decode-step intensity, the min rule, memory- or compute-bound,
# a decode-step time prediction and the experts a batch touches.
#
# Next: what these times mean in money, in the [inference-economics chapter](06_economics.ipynb).

# %% [markdown]
# ## Measuring CPU kernels
#
# How the course measures a kernel on a CPU, used by [the MoE chapter's](03_moe.ipynb) benchmark
# (`benchmarks/moe_dispatch.py`) and by the kernel choice of its layer:
#
# * **Interleave, then take medians.** On a shared machine a neighbour's burst slows whatever runs at
#   that moment. Compared variants are timed one call at a time in round-robin, so a busy moment hits
#   all alike, and ratios are of medians measured in the same run.
# * **Operands out of the cache.** Before every timed decode call the benchmark reads twice the
#   last-level cache: its strategies share one set of weights, and a call would otherwise find part of
#   them left in the cache by the one before (in a real model the other layers evict them).
#   `ms.time_rotating` does the same by cycling through copies larger than the cache.
# * **A floor for each call.** A decode call's floor is `max(bytes of the experts touched /
#   bandwidth, FLOPs / matmul throughput)`. The bandwidth is measured in the same rounds as the
#   calls (a cloud VM's drifts by tens of percent within minutes) as the fastest of three probes: a
#   copy (bytes read plus written), a read-only `torch.sum`, and `dmcourse.stream.read_sum`, a
#   read-only loop in C. The throughput is a large square `torch.matmul`, as in this chapter.
#   The time of the expert matmuls alone on pre-sorted tokens separates the kernel's distance from
#   the floor from what routing, dispatch and combine add.
# * **Choose by measuring, where it runs.** `dmcourse.matmul.linear(x, w)` is `x @ w.T`. On a CPU,
#   without gradients, its first call times the kernels torch ships (MKL behind `F.linear`, oneDNN)
#   on one expert for 1, 2–4, 5–16, 17–64 rows and for prefill, scoring each by its fastest call, and
#   caches the ranking per machine (CPU model and flags, torch version, threads).
#   `DMCOURSE_MATMUL=F.linear` or `with dmcourse.matmul.use("onednn"):` overrides it;
#   `dmcourse.matmul.reprobe()` measures again (e.g. if other programs loaded the machine the first time).
# * **The C decode kernel, an exhibit.** With a few rows, `x @ w.T` is a matrix-vector product in
#   disguise: its time is the time to read `w` once, and GEMM kernels built for many rows read it
#   below the bandwidth. `dmcourse.stream.linear_stream` (about 120 lines of C in
#   `dmcourse/csrc/stream.c`, compiled at first use) loads each 16-float vector of a weight row once
#   and multiplies it into every row of `x` while it sits in a register, the threads splitting the
#   weight rows. It is opt-in (`DMCOURSE_KERNEL=1` or `dmcourse.stream.enable()`), and even then the
#   probe offers it only where it was built with OpenMP threads, and uses it only for the row counts
#   where it measured faster. The cell below times it against the probe's choice on this device.
#

# %%
from dmcourse import matmul as seam, stream

with torch.inference_mode():
    print(seam.status())  # the probe ran at this chapter's first MoE call without gradients (CPU)
    if device.type == "cpu" and stream.available():
        w_sets = [(torch.randn(2816, 1024),) for _ in range(ms.rotation_count(2816 * 1024 * 4, device))]
        print(f"\none 1024 -> 2816 projection, fp32, weights rotated out of the cache ({info.name}, {TODAY}):")
        for rows in (1, 4, 16):
            x_rows = torch.randn(rows, 1024)
            t_c = ms.time_rotating(lambda w: stream.linear_stream(x_rows, w), w_sets, device=device, repeats=9).median_s
            t_seam = ms.time_rotating(lambda w: seam.linear(x_rows, w), w_sets, device=device, repeats=9).median_s
            print(f"{rows:3d} rows: C kernel {t_c * 1e3:.2f} ms ({2816 * 1024 * 4 / t_c / 1e9:.1f} GB/s), "
                  f"{seam.kernel_for(x_rows, w_sets[0][0])} {t_seam * 1e3:.2f} ms: C kernel / chosen = {t_c / t_seam:.2f}")
    else:
        print("the C decode kernel:", stream.status() if device.type == "cpu" else "CPU only")

