# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Your device and how we measure
#
# Every chapter of this course measures something on **the machine you are running it on**:
# a laptop CPU, a free Colab T4, or a data-centre GPU. Before we compare dense models and
# Mixture-of-Experts, we need two things we can trust: knowing what that machine is, and timing
# work on it correctly. This chapter builds both, small and inline first, then checks them against
# the `dmcourse` helpers that the rest of the course uses.
#
# If this page is the rendered book, the numbers below were measured on the machine that built it;
# each measured figure names that machine, and the date, in its corner. Open the notebook in
# Colab (rocket icon above) to get your own.

# %%
import datetime
import statistics
import time

import matplotlib.pyplot as plt
import torch

import dmcourse
from dmcourse import plot

plot.use_style()
TODAY = datetime.date.today().isoformat()
# On a CPU the timings of this chapter use ONE thread: PyTorch splits a CPU matmul over all cores and
# waits for the slowest, so on a machine shared with other programs (a CI runner, a busy laptop) one
# busy core stalls every call and the numbers jump. One core gives steady numbers and the same
# lessons. Set CPU_THREADS = None to use every core.
CPU_THREADS = 1
if CPU_THREADS is not None and not torch.cuda.is_available():
    torch.set_num_threads(CPU_THREADS)

# %% [markdown]
# ## What is this machine?
#
# `dmcourse.device_info()` answers: the device PyTorch will use (a CUDA GPU if there is one,
# else the CPU), its name and memory, and the **compute dtype** the course will use on it.

# %%
info = dmcourse.device_info()
print(info.summary())
for field in ("device", "name", "dtype", "capability", "cpu_threads", "torch_version", "in_colab"):
    print(f"{field:>14}: {getattr(info, field)}")
if info.memory_bytes:
    print(f"{'memory':>14}: {info.memory_bytes / 1e9:.1f} GB = {info.memory_bytes / 2**30:.1f} GiB")

# %% [markdown]
# ### Which dtype, and why not always bf16?
#
# Large models are run in 16-bit floats: half the bytes of fp32, and GPUs have *tensor cores*
# that multiply 16-bit matrices many times faster than fp32 ones. There are two 16-bit formats:
#
# * **fp16**: 5 exponent bits, 10 mantissa bits. Precise, but its range ends at 65504, so
#   training needs loss scaling.
# * **bf16**: 8 exponent bits (the range of fp32), 7 mantissa bits. The default for LLMs.
#
# `torch.finfo` reads these numbers off each format (the mantissa bits from `eps`, the gap between
# 1 and the next number, which is 2 to the power minus the mantissa bits):

# %%
import math

for dt in (torch.float32, torch.float16, torch.bfloat16):
    fi = torch.finfo(dt)
    mantissa = round(-math.log2(fi.eps))
    print(f"{str(dt).removeprefix('torch.'):>8}: {fi.bits} bits = 1 sign + {fi.bits - 1 - mantissa} exponent + {mantissa} mantissa, "
          f"largest {fi.max:.5g}, eps {fi.eps:.2g}")


# %% [markdown]
# bf16 tensor cores arrived with the Ampere generation, **compute capability 8.0** (A100; then L4,
# H100, H200; capabilities from [NVIDIA's list](https://developer.nvidia.com/cuda-gpus)). Colab's
# free **T4 is capability 7.5**: it has fp16 tensor cores but no bf16 ones.
# `torch.cuda.is_bf16_supported()` can still answer `True` there, because PyTorch can *emulate*
# bf16, slowly (`is_bf16_supported(including_emulation=False)` asks about the hardware alone). So
# the rule the course follows is explicit: bf16 from capability 8.0, fp16 below it, fp32 on the
# CPU (how fast a CPU multiplies 16-bit matrices depends on its instruction set: far slower than
# fp32 on many, faster in bf16 on recent server CPUs; fp32 is dependable everywhere).
#
# Here is that rule written inline:

# %%
def my_pick_dtype(device_type: str, capability: tuple[int, int] | None) -> torch.dtype:
    if device_type == "cpu":
        return torch.float32
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


gpus = {"T4": (7, 5), "V100": (7, 0), "A100": (8, 0), "L4": (8, 9), "H100": (9, 0)}
for name, cap in gpus.items():
    mine, course = my_pick_dtype("cuda", cap), dmcourse.pick_dtype("cuda", cap)
    assert mine == course
    print(f"{name:>5} (sm_{cap[0]}{cap[1]}): {course}")
assert my_pick_dtype("cpu", None) == dmcourse.pick_dtype("cpu") == torch.float32
print("the inline rule and dmcourse.pick_dtype agree")

# %% [markdown]
# From here on the notebooks call `dmcourse.pick_dtype` (or read `info.dtype`).
#
# ## Timing: three ways a naive measurement lies
#
# The obvious way to time something is to read the clock before and after it. Three things make
# that number wrong.
#
# **1. The first call is not like the others.** The first time an operation runs, PyTorch and
# the hardware do one-off work: allocating memory, picking a kernel, filling caches, compiling.
# Time it and you measure the set-up, not the steady state.

# %%
device, dtype = info.device, info.dtype
n = 512
a = torch.randn(n, n, device=device, dtype=dtype)
b = torch.randn(n, n, device=device, dtype=dtype)


def clock(fn) -> float:
    """Wall-clock seconds of one call, synchronising first and after so GPU work is included."""
    dmcourse.timing.synchronize(device)
    t0 = time.perf_counter()
    fn()
    dmcourse.timing.synchronize(device)
    return time.perf_counter() - t0


fresh = torch.randn(n + 1, n + 1, device=device, dtype=dtype)  # a new shape: nothing cached yet
calls = [clock(lambda: fresh @ fresh) for _ in range(8)]
for i, t in enumerate(calls):
    print(f"call {i}: {t * 1e6:9.1f} us")
print(f"first call / median of the rest: {calls[0] / statistics.median(calls[1:]):.1f}x")

# %% [markdown]
# How large the first-call penalty is depends on the machine and the operation (the cell above
# printed it for yours); the fix is the same everywhere: **warm up**, then measure.
#
# **2. A GPU runs asynchronously.** `a @ b` on a GPU only *queues* the kernel and returns at once;
# the Python line finishes long before the GPU does. Reading the clock straight after it measures
# the launch. You must either synchronise before reading the clock, or record **CUDA events** on the
# GPU's own timeline. (A CPU computes before returning, so on a CPU both lines below agree.)

# %%
big = torch.randn(2048, 2048, device=device, dtype=dtype)
for _ in range(3):
    big @ big  # warm-up
dmcourse.timing.synchronize(device)

naive = []
for _ in range(5):
    t0 = time.perf_counter()
    big @ big  # on a GPU this returns once the kernel is queued
    naive.append(time.perf_counter() - t0)
synced = [clock(lambda: big @ big) for _ in range(5)]
print(f"device: {device.type}")
print(f"no synchronisation : {statistics.median(naive) * 1e3:8.3f} ms")
print(f"synchronised       : {statistics.median(synced) * 1e3:8.3f} ms")
dmcourse.timing.synchronize(device)
r = statistics.median(naive) / statistics.median(synced)
if device.type == "cuda":
    print(f"without synchronisation the clock saw {r:.0%} of the work's time: " +
          ("it measured the launch" if r < 0.5 else "a GPU this fast finishes nearly as soon as it launches"))
else:
    print(f"ratio {r:.2f}: " + ("on this CPU both time the work itself, as expected" if 2 / 3 < r < 1.5 else
                                "more than 1.5x apart on a CPU, where both time the same work: other programs "
                                "disturbed one of them; rerun the cell"))

# %% [markdown]
# **3. One measurement is noise.** Other processes, frequency scaling and the memory system make
# repeated runs differ. Take many samples and report the **median**: unlike the mean, a few slow
# outliers (a background task, a page fault) do not drag it.

# %%
samples = [clock(lambda: a @ b) for _ in range(60)]
med, mean = statistics.median(samples), statistics.fmean(samples)
fig, ax = plt.subplots()
ax.hist([s * 1e6 for s in samples], bins=30, color=plot.COLORS["measured"])
ax.axvline(med * 1e6, color="k", label=f"median {med * 1e6:.0f} us")
ax.axvline(mean * 1e6, color=plot.COLORS["moe"], ls="--", label=f"mean {mean * 1e6:.0f} us")
ax.set(xlabel=f"time of one {n}x{n} @ {n}x{n} matmul (us)", ylabel="count", title="60 repeats of the same matmul")
ax.legend(loc="center right")
plot.stamp(ax, info.name, loc="upper right")  # the short bars of slow outliers sit bottom right
plt.show()
print(f"min {min(samples) * 1e6:.0f} us, median {med * 1e6:.0f} us, mean {mean * 1e6:.0f} us, max {max(samples) * 1e6:.0f} us")


# %% [markdown]
# ## A timer that does all three
#
# Put the three fixes together: warm up, synchronise (or use CUDA events on a GPU), repeat and take
# the median.

# %%
def my_time(fn, warmup: int = 3, repeats: int = 11) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(clock(fn) for _ in range(repeats))


# interleaved rounds: a burst of background load hits both timers alike instead of one of them
ratios = []
for _ in range(5):
    mine = my_time(lambda: a @ b)
    course = dmcourse.time_fn(lambda: a @ b, device=device, warmup=3, repeats=11)
    ratios.append(course.median_s / mine)
ratio = statistics.median(ratios)
print(f"inline timer   : {mine * 1e6:.1f} us  (last round)")
print(f"dmcourse.time_fn: {course}  (last round)")
print(f"ratio dmcourse / inline, median of 5 interleaved rounds: {ratio:.2f} (rounds: "
      + ", ".join(f"{x:.2f}" for x in ratios) + ")")
if 0.8 <= ratio <= 1.25:
    print("-> the two timers agree to within 25 %: two measurements of the same thing")
elif device.type == "cuda" and ratio < 0.8:
    print("-> dmcourse is lower: CUDA events leave out the synchronisation round trip of the inline clock")
else:
    print("-> they differ by more than 25 %: this machine is too busy for a steady measurement; rerun the cell")

# %% [markdown]
# `dmcourse.time_fn` is that timer with argument checks, CUDA events on a GPU and an `inner`
# option for very short calls; it returns all samples, so a chapter can show the spread as well as
# the median. The rest of the course times everything with it.
#
# On a CPU the ratio printed above compares two measurements of the same thing, so it should be
# close to 1 but not equal; the cell times both in interleaved rounds and prints which case it
# found. On a GPU it can be below 1 for a call this short: CUDA events leave out the
# synchronisation round trip that the inline timer's clock readings include.
#
# ## A first measurement: how fast does this machine multiply matrices?
#
# Multiplying an $m\times k$ matrix by a $k\times n$ one takes $m\,n\,k$ multiply-adds, that is
# $2mnk$ floating-point operations (FLOPs): one multiply and one add each. Dividing by the measured
# time gives the **achieved FLOP/s**. We sweep square sizes $n$ and plot both.

# %%
sizes = [64, 128, 256, 512, 1024, 2048] + ([4096, 8192] if device.type == "cuda" else [])
operands = {size: (torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype))
            for size in sizes}
samples = {size: [] for size in sizes}
for _ in range(3):  # interleaved rounds: every size once per round, the median over rounds
    for size, (x, y) in operands.items():
        samples[size].append(dmcourse.time_fn(lambda: x @ y, device=device, warmup=1,
                                              repeats=5 if size <= 1024 else 2).median_s)
rows = []
for size in sizes:
    t = statistics.median(samples[size])
    flops = 2 * size**3
    rows.append((size, t, flops / t))
    print(f"n={size:5d}: {t * 1e3:9.3f} ms  {flops / t / 1e9:9.1f} GFLOP/s")
threads = f", {torch.get_num_threads()} thread(s)" if device.type == "cpu" else ""
print(f"measured on {info.summary()}{threads}, {TODAY}, torch {torch.__version__}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
ns, ts, fs = zip(*rows)
ax1.loglog(ns, [t * 1e3 for t in ts], "o-", color=plot.COLORS["measured"], label="measured")
ax1.loglog(ns, [ts[-1] * 1e3 * (m / ns[-1]) ** 3 for m in ns], ":", color=plot.COLORS["datasheet"], label=r"$\propto n^3$")
ax1.set(xlabel="matrix size n", ylabel="time (ms)", title=f"n x n @ n x n, {str(dtype).removeprefix('torch.')}")
ax1.legend()
ax2.semilogx(ns, [f / 1e9 for f in fs], "o-", color=plot.COLORS["measured"])
ax2.set(xlabel="matrix size n", ylabel="achieved GFLOP/s", title="throughput")
ax2.set_ylim(bottom=0)
plot.stamp(ax2, info.name)
fig.tight_layout()
plt.show()
best = max(rows, key=lambda r: r[2])
print(f"best: {best[2] / 1e9:.1f} GFLOP/s at n={best[0]}; smallest size reaches {fs[0] / best[2]:.0%} of that")
slope = math.log(ts[-1] / ts[-2]) / math.log(ns[-1] / ns[-2])  # time ~ n^slope between the two largest sizes
print(f"between n={ns[-2]} and n={ns[-1]} the time grows like n^{slope:.1f}: " +
      ("close to the n^3 of the FLOP count, the machine is busy computing" if 2.5 <= slope <= 3.5 else
       "not n^3 on this run: the largest sizes are not yet compute-bound here, or other programs disturbed them"))
print("small matrices " + (f"reach only {fs[0] / best[2]:.0%} of the best throughput" if fs[0] < 0.5 * best[2]
                           else f"reach {fs[0] / best[2]:.0%} of the best throughput, more than usual"))

# %% [markdown]
# Two things to look for in the figure (the lines printed under it say whether this run shows them):
#
# * For large matrices the time should grow like $n^3$ (the dotted line), as the FLOP count does:
#   the machine is busy computing.
# * Small matrices should reach only a fraction of the best throughput: each call has fixed costs
#   (launching, reading the operands), and there is too little work to fill every core. The
#   roofline chapter turns this observation into a model — and it is exactly the regime an MoE
#   expert lives in when only a few tokens are routed to it.
#
# Two words for the two regimes, used from chapter 3 on. A language model answers a prompt in two
# phases. **Prefill** runs the whole prompt through the model in one forward pass: every weight
# matrix multiplies as many rows as the prompt (times the batch) has tokens, large matmuls like the
# right end of the figure. **Decode** then generates the answer one token per step: each step is a
# forward pass over one new token per sequence, so every weight matrix multiplies only as many rows
# as there are sequences in the batch, small matmuls like the left end, whose time goes into reading
# the weights rather than computing.
#
# ## What we have
#
# | helper | what it does |
# |---|---|
# | `dmcourse.device_info()` | device, name, memory and compute dtype of this machine |
# | `dmcourse.pick_dtype(device, capability)` | bf16 from capability 8.0, fp16 below (T4), fp32 on CPU |
# | `dmcourse.time_fn(fn, device=...)` | warm-up, synchronisation / CUDA events, median of repeats |
# | `dmcourse.seed_everything(seed)` | the same random numbers in Python, NumPy and torch |
# | `dmcourse.plot.use_style()`, `plot.stamp(ax, device)` | the course's figure style; every measured figure names its device and date |
#
# Practise it in
# [Exercise 0](https://colab.research.google.com/github/dmcourse/dmcourse/blob/main/exercises/ex00_warmup/ex00_warmup.ipynb)
# (`exercises/ex00_warmup`): the FLOPs of a matrix multiplication, achieved FLOP/s, the dtype rule
# and a robust timer.
#
# Next: what a dense model's parameters cost, in parameters, FLOPs and bytes.
