# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Beyond one device: expert parallelism on torch.distributed
#
# An MoE layer stores `E` experts but each token uses only `k` of them. Sooner or later the experts
# no longer fit on one GPU, and the natural way to split the layer is by expert: **expert
# parallelism** (EP). Each GPU (a *rank*) holds a few experts; tokens travel to the ranks that hold
# their experts, and their results travel back. Computation stays sparse, but now every MoE layer
# also pays for two trips over the network.
#
# This chapter runs real expert parallelism with PyTorch's own distributed engine,
# `torch.distributed` — several processes on your CPU talking through the `gloo` backend, or several
# GPUs through NCCL when the machine has them — and measures what the trips cost:
#
# 1. why and how: the layer sharded over ranks, built in one process first (the all-to-all is a
#    transpose), and dense tensor parallelism for comparison;
# 2. a launcher: a notebook cannot run collectives itself, so it starts processes and reads back
#    their results;
# 3. correctness: outputs and gradients equal the single-process layer's, on 2 and 4 ranks;
# 4. costs: bytes per token, all-to-all time against tokens per rank, load imbalance (the most
#    loaded rank sets the step time) with and without balancing, node-limited routing;
# 5. a model of communication time (bytes / link bandwidth) against the measurements, and what it
#    predicts for NVLink and InfiniBand.

# %%
import datetime
import inspect
import math
import statistics
import time

import matplotlib.pyplot as plt
import torch

import dmcourse
from dmcourse import accounting, comm, configs, hardware, launch, moe, parallel, plot, routing
from dmcourse.ffn import swiglu

plot.use_style()
info = dmcourse.device_info()
TODAY = datetime.date.today().isoformat()
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(info.summary(), TODAY, f"torch {torch.__version__}, {GPUS} CUDA GPU(s)")

# %% [markdown]
# ## Why: the experts do not fit
#
# DeepSeek-V3 is the extreme case among the course's presets. Its parameter count, from its
# published configuration (`dmcourse.configs`, counted by `dmcourse.accounting` in chapter 2):

# %%
ds = configs.load_preset("DeepSeek-V3")
count = accounting.count_params(ds)
h100 = hardware.gpu("H100")
expert_bytes = accounting.weight_bytes(count.experts, "bf16")
print(f"{ds.name}: {count.total / 1e9:.0f}B parameters, of which routed experts {count.experts / 1e9:.0f}B "
      f"({count.experts / count.total:.0%})")
print(f"routed experts in bf16: {expert_bytes / 1e12:.2f} TB; one {h100.name} holds {h100.memory_gb:.0f} GB "
      f"(datasheet) -> at least {math.ceil(expert_bytes / h100.memory_bytes)} GPUs for the experts alone")
print(f"per token and MoE layer, only k={ds.top_k} of {ds.n_experts} experts are used")

# %% [markdown]
# The experts are almost all of the model, and each token touches only a few of them. Splitting
# every expert across GPUs (tensor parallelism) would make every GPU work on every token; splitting
# the *set* of experts keeps each expert whole on one GPU. DeepSeek-V3 trains with experts spread
# over 64 GPUs on 8 nodes ([DeepSeek-V3 report](https://arxiv.org/abs/2412.19437), section 3.2).
#
# ## How: one MoE layer on several ranks
#
# With `p` ranks (the `world_size`) and `E` experts, rank `r` holds experts `r·E/p … (r+1)·E/p − 1` and a copy
# of the (small) router; each rank has its own batch of tokens. One forward pass:
#
# 1. **route**: each rank picks the top-k experts of its tokens — the single-process router, unchanged;
# 2. **sort** its `T·k` (token, expert) rows by expert, so the rows for each rank are contiguous;
# 3. **dispatch**: an *all-to-all* sends each rank's block to its owner. The blocks have different
#    sizes on every rank and every step, so the sizes are exchanged first;
# 4. **compute**: each rank runs its experts on what it received;
# 5. **combine**: a second all-to-all sends the results back, and each rank mixes its tokens' `k`
#    results with their routing weights.
#
# An all-to-all is a transpose: rank `r` has one block for each rank `s`, and afterwards rank `s`
# holds block `r→s` from every `r`. Here is the whole layer simulated in one process, with a Python
# list standing for the ranks, checked against the single-process `dmcourse.moe.MoE`:

# %%
torch.manual_seed(0)
world, E, k, d_model, d_ff = 4, 8, 2, 16, 32
layer = moe.MoE(d_model, d_ff, E, k)
x_ranks = [torch.randn(n, d_model) for n in (5, 3, 6, 4)]  # each rank's own tokens, uneven
e_local = E // world

with torch.no_grad():
    # 1-2. route and sort on every rank; blocks[r][s] = rows rank r sends to rank s (+ their expert ids)
    plans, blocks = [], []
    for x in x_ranks:
        rt = layer.router(x)
        order, token, counts = moe.sort_by_expert(rt)
        splits = counts.view(world, e_local).sum(1).tolist()  # rows for each destination rank
        expert = rt.indices.reshape(-1)[order]
        blocks.append(list(zip(x[token].split(splits), expert.split(splits))))
        plans.append((rt, order))
    # 3. all-to-all = transpose: rank s receives blocks[r][s] from every r
    received = [[blocks[r][s] for r in range(world)] for s in range(world)]
    # 4. each rank runs its own experts on what it received
    results = []
    for s in range(world):
        outs = []
        for rows, expert in received[s]:
            out = torch.zeros_like(rows)
            for e in expert.unique().tolist():
                m = expert == e
                out[m] = swiglu(rows[m], layer.w_gate[e], layer.w_up[e], layer.w_down[e])
            outs.append(out)
        results.append(outs)
    # 5. all-to-all back (transpose again), then combine with the routing weights
    y_ranks = [moe.combine(torch.cat([results[s][r] for s in range(world)]), order, rt)
               for r, (rt, order) in enumerate(plans)]
    y_single = layer(torch.cat(x_ranks))

torch.testing.assert_close(torch.cat(y_ranks), y_single)
print("rows each rank sends to each rank:")
for r in range(world):
    print(f"  rank {r} ({x_ranks[r].shape[0]} tokens) ->", [len(blocks[r][s][0]) for s in range(world)])
print("simulated expert parallelism == single-process MoE")

# %% [markdown]
# The split sizes differ per rank (the printed matrix), which is why the real all-to-all must be
# told them. `dmcourse.parallel.ExpertParallelMoE` is this simulation with real collectives: the
# counts go first in a small `all_to_all_single`, then the rows in
# `torch.distributed._functional_collectives.all_to_all_single_autograd` — an all-to-all whose
# backward is the reverse all-to-all, so gradients reach the experts wherever they live. Its
# forward, as the package has it:

# %%
print(inspect.getsource(parallel.ExpertParallelMoE.forward))

# %% [markdown]
# The rows a rank receives are grouped by source rank, then by its local expert: it runs them as an
# ordinary MoE dispatch with `k = 1` (`dmcourse.moe`'s dispatch functions), so the expert
# computation is exactly the single-process one.
#
# **For comparison, dense tensor parallelism** (Megatron-LM, [Shoeybi et al. 2019](https://arxiv.org/abs/1909.08053))
# splits *one* FFN: each rank holds a slice of `d_ff` (rows of `w_gate`, `w_up`, the same columns of
# `w_down`), every rank sees *every* token, computes a partial output, and an **all-reduce** sums
# the partials. SwiGLU is elementwise in `d_ff`, so the slices are independent until the final sum:

# %%
torch.manual_seed(1)
wg, wu = torch.randn(2, d_ff, d_model)
wd = torch.randn(d_model, d_ff)
x = torch.randn(5, d_model)
slices = [slice(r * d_ff // world, (r + 1) * d_ff // world) for r in range(world)]
partials = [swiglu(x, wg[s], wu[s], wd[:, s]) for s in slices]  # what each rank computes
torch.testing.assert_close(sum(partials), swiglu(x, wg, wu, wd))  # the all-reduce (sum)
print(f"{world} partial outputs, summed, == the dense SwiGLU")

# %% [markdown]
# `dmcourse.parallel.TensorParallelSwiGLU` is that with `torch.distributed.all_reduce`. The two
# schemes move different amounts. Per token and layer (forward), with `p` ranks, hidden size `d`
# and `s` bytes per number:
#
# * EP sends the token's `k` copies out and `k` results back: `2·k·d·s` bytes
#   (`comm.bytes_per_token`), of which a fraction `(p−1)/p` leaves the rank when routing is
#   uniform;
# * TP all-reduces the token's `d`-vector; a ring all-reduce makes each of the `p` ranks send
#   `2·(p−1)/p·d·s` (`comm.allreduce_bytes`), so `2·(p−1)·d·s` in total per token.

# %%
for name in ("Mixtral-8x7B", "Qwen3-235B-A22B", "DeepSeek-V3"):
    cfg = configs.load_preset(name)
    for p in (8, 64):
        ep = comm.bytes_per_token(cfg.top_k, cfg.d_model, torch.bfloat16) * (p - 1) / p
        tp = p * comm.allreduce_bytes(cfg.d_model, p, torch.bfloat16)
        print(f"{name:>16}, p={p:2d}: EP {ep / 1e3:7.1f} kB, TP {tp / 1e3:7.1f} kB per token and layer "
              f"(k={cfg.top_k}, d={cfg.d_model}, bf16): EP/TP = {ep / tp:.2f}")

# %% [markdown]
# The ratio is `k/p`: EP moves less when a token visits fewer experts than there are ranks. What
# the bytes cost depends on which link they cross; that is the subject of the rest of the chapter.
#
# **What happens to attention.** The two byte counts above are for the FFN only, and the schemes
# treat the rest of the layer differently. Tensor parallelism splits attention too (by heads) and
# pays a second all-reduce per layer for it. Expert parallelism splits only the experts: attention,
# norms, the router, shared experts, dense layers and the embeddings are **replicated** on every
# rank, and each rank runs them on its own tokens — attention is *data-parallel*, with no
# communication at all (each sequence's KV cache lives on the rank that serves it). The price is
# memory: every rank stores a full copy of the non-expert weights. For DeepSeek-V3 in bf16, per GPU:
#
# ## The launcher
#
# Collectives need one process per rank, all running at once; a notebook is one process. So
# `dmcourse.launch` starts them: `launch.run(tasks, nproc)` runs `python -m dmcourse.launch` in a
# subprocess, which starts `nproc` ranks with `torch.multiprocessing`, gives each an initialised
# process group (`gloo` on CPU, NCCL when there is a GPU per rank), runs the named measurements
# (`dmcourse.ep_tasks.TASKS`) on every rank, and prints their results as JSON, which `run` returns. The same
# command runs under `torchrun`. Starting processes costs seconds, so each launch runs several
# measurements.
#
# A distributed run must never hang the notebook. Every collective has a timeout, the whole launch
# a deadline, every rank destroys its process group on the way out, and when a rank fails the
# others are stopped and its traceback is raised here. A deliberate failure (rank 1 raises while
# rank 0 waits in an all-reduce):

# %%
pc = accounting.count_params(ds)
replicated = pc.total - pc.experts  # attention, dense FFNs, shared experts, routers, norms, embedding, head
print(f"{ds.name}: routed experts {pc.experts / 1e9:.1f}B, replicated under EP {replicated / 1e9:.1f}B "
      f"(attention {pc.attention / 1e9:.1f}B, shared experts {pc.shared_experts / 1e9:.1f}B, "
      f"dense FFNs {pc.dense_ffn / 1e9:.1f}B, embedding + head {(pc.embedding + pc.lm_head) / 1e9:.1f}B)")
for p in (8, 32, 64):
    ep_gpu = accounting.weight_bytes(replicated, "bf16") + accounting.weight_bytes(pc.experts, "bf16") / p
    sharded_gpu = accounting.weight_bytes(pc.total, "bf16") / p
    print(f"p={p:2d}: EP {accounting.to_gb(ep_gpu):5.1f} GB of weights per GPU "
          f"(of which {accounting.to_gb(accounting.weight_bytes(replicated, 'bf16')):.1f} GB replicated) vs "
          f"{accounting.to_gb(sharded_gpu):5.1f} GB if everything were split p ways: x{ep_gpu / sharded_gpu:.1f}, "
          f"{accounting.to_gb(ep_gpu) / h100.memory_gb:.0%} of an {h100.name}'s {h100.memory_gb:.0f} GB (datasheet)")

# %% [markdown]
# The replicated share is a few percent of the parameters, but it does not shrink with `p`, so the
# more GPUs, the larger its part of each GPU's weights (the factor printed), and it is memory the
# KV cache cannot use. Deployments therefore mix the schemes; DeepSeek-V3's own serving setup runs
# attention with 4-way tensor parallelism inside data-parallel groups and the experts with expert
# parallelism over 32 (prefill) or 320 (decode) GPUs
# ([DeepSeek-V3 report](https://arxiv.org/abs/2412.19437), section 3.4).

# %%
t0 = time.perf_counter()
try:
    launch.run("crash", 2, params={"crash": {"rank": 1}}, timeout_s=20, deadline_s=60)
except launch.LaunchError as err:
    lines = str(err).splitlines()
    print("\n".join(lines[:2] + ["   ..."] + [line for line in lines if "fails on purpose" in line][-1:]))
print(f"-> reported after {time.perf_counter() - t0:.1f} s (on {info.summary()}, {TODAY})")

# %% [markdown]
# The rank that failed *first* is named (its peers then fail too, with "connection closed"); the
# notebook gets an exception, not a hang.
#
# Now the real runs: one launch with 2 ranks and one with 4, each running several of the
# measurements below. On a CPU the ranks share its cores; with one GPU per rank the same call
# uses NCCL (and, with 4 or more GPUs, larger sizes).

# %%
on_gpus = GPUS >= 4
sizes = [64, 256, 1024, 4096] + ([16384, 65536] if on_gpus else [])
a2a = {"tokens": sizes, "d_model": 1024 if on_gpus else 512, "k": 2}
imbalance = {"tokens": 4096, "d_model": 1024, "d_ff": 4096} if on_gpus else {"tokens": 512, "d_ff": 2048}
runs = {}
for nproc, tasks, params in (
    (2, ["check", "alltoall", "imbalance"], {"check": {"tokens": 24, "n_shared_experts": 1}, "alltoall": a2a,
                                             "imbalance": imbalance}),
    (4, ["check", "check_tp", "alltoall", "node_limited"], {"check": {"tokens": [5, 0, 9, 3], "dead_experts": [6, 7]},
                                                            "alltoall": a2a}),
):
    t0 = time.perf_counter()
    runs[nproc] = launch.run(tasks, nproc, params=params, timeout_s=120, deadline_s=240)
    total = time.perf_counter() - t0
    meta = runs[nproc]["meta"]
    busy = sum(runs[nproc]["task_seconds"].values())
    print(f"{nproc} ranks ({meta['backend']}, {meta['summary']}, {meta['cpu_count']} CPU cores, {meta['date']}): "
          f"{total:.1f} s in all, "
          f"{busy:.1f} s measuring, {total - busy:.1f} s starting and stopping processes")
    print("   per task (s):", {t: round(s, 2) for t, s in runs[nproc]["task_seconds"].items()})


def run_on(nproc: int) -> str:
    """What a launch ran on: the CPU (gloo: ranks share its cores) or one GPU per rank (NCCL)."""
    meta = runs[nproc]["meta"]
    return meta["summary"] if meta["backend"] == "gloo" else f"{nproc} x {info.name}"


RUN_ON = run_on(4)

# %% [markdown]
# ## Correctness: the same outputs and gradients
#
# The `check` task builds the same `MoE` on every rank (same seed), runs the single-process layer
# on the whole batch and `ExpertParallelMoE` on each rank's share, backpropagates the same loss,
# and compares: the outputs, the gradient of the input, each rank's experts' weight gradients, and
# the router's gradient (each rank only sees its own tokens' share of it, so the shares are summed
# over ranks, as data parallelism does). The 4-rank run is deliberately awkward: rank 1 has no
# tokens, and experts 6 and 7 — all of rank 3's — are never chosen, so rank 3 receives nothing.

# %%
keys = ["output", "x_grad", "w_gate_grad", "w_up_grad", "w_down_grad", "router_grad"]
for nproc in (2, 4):
    print(f"{nproc} ranks: max |expert-parallel - single-process|")
    for r, res in enumerate(runs[nproc]["results"]["check"]):
        errs = "  ".join(f"{key} {res[key]:.1e}" for key in keys)
        print(f"  rank {r}: {res['tokens']:2d} tokens, sent {res['send_splits']}, received {res['recv_splits']}: {errs}")
    worst = max(max(res[key] for key in keys + ["shared_grad"] if key in res) for res in runs[nproc]["results"]["check"])
    assert worst < (1e-5 if runs[nproc]["meta"]["backend"] == "gloo" else 1e-4), worst
    print(f"  worst difference {worst:.1e} (float32)")
tp = runs[4]["results"]["check_tp"]
print("tensor-parallel SwiGLU vs dense, 4 ranks, worst:", f"{max(max(r.values()) for r in tp):.1e}")

# %% [markdown]
# The differences are zero or at the level of float32 rounding (the router gradient is a sum over
# ranks, added in a different order). What rank `r` sends to rank `s` is what `s` receives from
# `r`, and empty splits (a rank with no tokens, experts nobody chose) work. `tests/test_parallel.py`
# checks the same on every CI run.
#
# ## Costs
#
# ### Bytes per token
#
# Each token sends `k` copies of its hidden vector and gets `k` results back: `2·k·d·s` bytes per
# MoE layer, forward; the backward pass moves as much again. For the presets, over all MoE layers:

# %%
for name in ("Mixtral-8x7B", "Qwen3-235B-A22B", "DeepSeek-V3"):
    cfg = configs.load_preset(name)
    n_moe = (cfg.n_layers - cfg.first_k_dense) // cfg.moe_layer_freq
    per_layer = comm.bytes_per_token(cfg.top_k, cfg.d_model, torch.bfloat16)
    print(f"{name:>16}: 2 x k={cfg.top_k} x d={cfg.d_model} x 2 B = {per_layer / 1e3:6.1f} kB per MoE layer, "
          f"x {n_moe} MoE layers = {per_layer * n_moe / 1e6:5.2f} MB per token, forward (bf16)")

# %% [markdown]
# A token's whole forward pass sends megabytes, far more than its own size. (DeepSeek-V3 sends the
# dispatch in FP8, one byte per number, and the combine in bf16 — report section 3.3.3 — which cuts
# the total by a quarter.) Our runs sent what the formula says. Every (token, expert) pair is one
# row of `d_model` numbers, and the rows that leave their rank are `k·(p−1)/p` per token on average
# when routing spreads evenly — the `node_limited` run (4 ranks, a random router, its unlimited
# half) had enough tokens to check:

# %%
for nproc in (2, 4):
    res = runs[nproc]["results"]["check"]
    tokens, rows = sum(r["tokens"] for r in res), sum(sum(r["send_splits"]) for r in res)
    print(f"check, {nproc} ranks: {tokens} tokens sent {rows} rows = k x tokens (k={res[0]['k']})")
nl = runs[4]["results"]["node_limited"]
n_tok, k_nl = sum(r["tokens"] for r in nl), nl[0]["k"]
off = sum(r["unlimited"]["offrank_rows"] for r in nl) / n_tok
print(f"node_limited, 4 ranks, k={k_nl}, {n_tok} tokens: {off:.2f} rows per token left their rank; "
      f"k(p-1)/p = {k_nl * 3 / 4:.2f}")

# %% [markdown]
# ### All-to-all time against tokens per rank
#
# The `alltoall` task times one all-to-all of `T·k` rows of `d_model` (uniform splits) for several
# `T`, and — for comparison — one all-reduce of `T × d_model`, what tensor parallelism sends per
# layer. Each time is a median over repeats of the *slowest* rank: a collective is done when the
# last rank is.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for ax, nproc in zip(axes, (2, 4)):
    res = runs[nproc]["results"]["alltoall"][0]
    rows = res["sizes"]
    ax.loglog([r["tokens"] for r in rows], [r["alltoall_s"] * 1e3 for r in rows], "o-",
              color=plot.COLORS["moe"], label="all-to-all of T·k rows (EP)")
    ax.loglog([r["tokens"] for r in rows], [r["allreduce_s"] * 1e3 for r in rows], "s--",
              color=plot.COLORS["dense"], label="all-reduce of T rows (TP)")
    ax.set(xlabel="tokens per rank T", title=f"{nproc} ranks, d_model={res['d_model']}, k={res['k']}, {res['dtype']}")
    plot.stamp(ax, run_on(nproc))
axes[0].set_ylabel("time (ms)")
axes[0].legend()
fig.tight_layout()
plt.show()
for nproc in (2, 4):
    res = runs[nproc]["results"]["alltoall"][0]
    for r in res["sizes"]:
        print(f"{nproc} ranks, T={r['tokens']:6d}: all-to-all {r['alltoall_s'] * 1e3:8.3f} ms for "
              f"{r['offrank_bytes'] / 1e6:7.2f} MB leaving each rank -> {r['offrank_bytes'] / r['alltoall_s'] / 1e9:5.2f} GB/s; "
              f"all-reduce {r['allreduce_s'] * 1e3:8.3f} ms")
where = run_on(4) if run_on(2) == run_on(4) else f"{run_on(2)} (2 ranks) and {run_on(4)} (4 ranks)"
print(f"measured on {where}, {runs[4]['meta']['date']}")

# %% [markdown]
# Small exchanges cost a roughly fixed time (starting the collective, waking the other processes);
# large ones grow with the bytes. The printed GB/s is what one rank achieved on this machine's
# "link" — for CPU processes, copies through the operating system's loopback network. Where the
# time stops being flat is where bandwidth, not latency, starts to matter; we fit both below.
#
# ### Imbalance: the most loaded rank sets the step time
#
# Every rank waits in the combine all-to-all until the slowest rank has sent its results. If the
# router sends most tokens to the experts of one rank, that rank computes while the others wait.
# The `imbalance` task (2 ranks) measures four routers, all DeepSeek-V3-style sigmoid routers:
#
# * `uniform`: a random router, roughly balanced;
# * `skewed`: the same router made to prefer low expert ids for every token (`dmcourse.ep_tasks.skew_router_`),
#   as a collapsing router does — here rank 0 holds the favourites;
# * `aux_loss`: the skewed router after some SGD steps on DeepSeek-V3's sequence-wise balance loss
#   alone (`dmcourse.balance.sequence_wise_balance_loss`; real training adds it, with a small
#   coefficient, to the language-model loss — we train on it alone only to see its effect);
# * `bias`: the skewed router after some steps of auxiliary-loss-free balancing
#   (`dmcourse.balance.bias_update` on the global load, summed over ranks with an all-reduce):
#   a per-expert bias changes which experts are *selected*, never the weights.
#
# Per rank it records the rows its experts received, the time in its experts and of its whole
# forward (its own clock, waiting included), and the same expert work timed once more with the
# ranks taking turns; the step time is the slowest rank's.

# %%
imb = runs[2]["results"]["imbalance"]
names = ["uniform", "skewed", "aux_loss", "bias"]
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3.6))
width = 0.38
for r, res in enumerate(imb):
    pos = [i + (r - 0.5) * width for i in range(4)]
    color = [plot.COLORS["moe"], plot.COLORS["dense"]][r]
    ax1.bar(pos, [res[n]["received"] for n in names], width, label=f"rank {r}", color=color)
    ax2.bar(pos, [res[n]["experts_alone_s"] * 1e3 for n in names], width, color=color)
ax3.bar(range(4), [imb[0][n]["step_s"] * 1e3 for n in names], 0.6, color=plot.COLORS["measured"])
ax1.set(ylabel="rows received", title="load per rank")
ax2.set(ylabel="ms", title="its experts, one rank at a time")
ax3.set(ylabel="ms", title="measured step (ranks at once)")
for ax in (ax1, ax2, ax3):
    ax.set_xticks(range(4), names)
ax1.legend()
ax3.set_ylim(-0.1 * ax3.get_ylim()[1], None)  # room under the bars for the device stamp
ax3.axhline(0, color="k", lw=0.8)
plot.stamp(ax3, runs[2]["meta"]["device"])
fig.tight_layout()
plt.show()
print(f"{imb[0]['tokens']} tokens per rank, {imb[0]['n_experts']} experts, k={imb[0]['k']}, "
      f"d_model={imb[0]['d_model']}, d_ff={imb[0]['d_ff']}, skew {imb[0]['skew']}; aux loss: {imb[0]['aux_steps']} "
      f"SGD steps at lr {imb[0]['aux_lr']}; bias: {imb[0]['bias_steps']} steps of gamma {imb[0]['gamma']}")
print(f"measured on {runs[2]['meta']['summary']}, {runs[2]['meta']['date']}")
for n in names:
    loads = [res[n]["received"] for res in imb]
    print(f"{n:>9}: rows {loads} (max/mean {max(loads) / statistics.mean(loads):.2f}); experts alone "
          f"{[round(res[n]['experts_alone_s'] * 1e3, 1) for res in imb]} ms, during the step "
          f"{[round(res[n]['experts_s'] * 1e3, 1) for res in imb]} ms; each rank's forward "
          f"{[round(res[n]['forward_s'] * 1e3, 1) for res in imb]} ms; step {imb[0][n]['step_s'] * 1e3:.1f} ms")

# %%
skew, uni = imb[0]["skewed"], imb[0]["uniform"]
busiest = max(range(2), key=lambda r: imb[r]["skewed"]["received"])
print(f"With the skewed router rank {busiest} received {imb[busiest]['skewed']['received']} of "
      f"{sum(res['skewed']['received'] for res in imb)} rows; the ranks' forwards took "
      f"{[round(res['skewed']['forward_s'] * 1e3, 1) for res in imb]} ms: all of them as long as the busiest, "
      f"although the other rank's experts worked {imb[1 - busiest]['skewed']['experts_s'] * 1e3:.1f} ms.")
def slowest(name: str, key: str) -> float:
    return max(res[name][key] for res in imb)


print(f"skewed vs uniform: the largest load grew {slowest('skewed', 'received') / slowest('uniform', 'received'):.2f}x, "
      f"the slowest rank's experts (alone) {slowest('skewed', 'experts_alone_s') / slowest('uniform', 'experts_alone_s'):.2f}x, "
      f"the step measured with the ranks sharing this machine {skew['step_s'] / uni['step_s']:.2f}x")
for n in ("aux_loss", "bias"):
    print(f"after {n}: slowest rank's experts alone {slowest(n, 'experts_alone_s') * 1e3:.1f} ms "
          f"(uniform {slowest('uniform', 'experts_alone_s') * 1e3:.1f}, skewed {slowest('skewed', 'experts_alone_s') * 1e3:.1f}); "
          f"measured step {imb[0][n]['step_s'] * 1e3:.1f} ms")

# %% [markdown]
# Read the panels left to right. The load: with the skewed router (nearly) every row goes to
# rank 0's experts, and both balancing methods spread the rows again (the max/mean column). The
# middle panel times each rank's expert work with the machine to itself (the ranks take turns),
# which is what one GPU per rank would give: it follows the load. The printed forwards show the
# waiting: every rank's forward lasts about as long as the busiest rank's, whatever its own experts
# did, because the combine all-to-all cannot finish before the busiest rank sends its results. So
# the step is set by the *maximum* load: with one device per rank, the step can be no shorter than
# the slowest rank's experts, and the others idle meanwhile.
#
# The right panel is the step as measured here, all ranks at once. On a CPU the ranks share the
# machine's cores (the launch cell printed how many) with each other and with whatever else runs,
# so it follows the loads only roughly: when two ranks compute at the same time on a busy machine
# they slow each other down, which a balanced load does and a fully skewed one does not — that is
# a property of this CPU, not of expert parallelism. On one GPU per rank (NCCL) the same cell
# measures the real thing. The balancing chapter trains with both methods; here they matter
# because, in expert parallelism, load balance *is* step time.
#
# ### Node-limited routing: fewer trips between nodes
#
# Inside a node GPUs talk over NVLink; between nodes, over InfiniBand, several times slower (the
# datasheet figures are in the next section). DeepSeek-V3 limits how many nodes a token may
# use: experts are grouped by node, each node is scored by the sum of its best `k/M` expert scores,
# and only the top `M` nodes' experts may be chosen (report section 2.1.2; in its training 8 nodes
# and `M = 4`, section 3.2.2). That is the group-limited routing of `dmcourse.routing.sigmoid_topk`
# with one group per node (it sums each group's best two scores, DeepSeek-V3's `k/M = 8/4`). It
# pays off together with a second trick (section 3.2.2): a token crosses to each node **once**, and
# is forwarded over NVLink to the node's GPUs that hold its experts.
#
# The `node_limited` task treats the 4 ranks as 2 nodes of 2 ranks (16 experts, k=4, at most
# `M = 1` node per token), routes the same tokens with and without the limit, runs the layer, and
# counts rows that leave the node — as our layer sends them (one per token and expert), and as
# DeepSeek's dispatch would (one per token and node):

# %%
nl = runs[4]["results"]["node_limited"]
n_tok = sum(r["tokens"] for r in nl)
crossing = {}
print(f"{nl[0]['n_nodes']} nodes x {nl[0]['ranks_per_node']} ranks, {nl[0]['n_experts']} experts, k={nl[0]['k']}, "
      f"M={nl[0]['max_nodes']}, {n_tok} tokens; measured on {runs[4]['meta']['summary']}, {runs[4]['meta']['date']}")
for name in ("unlimited", "node_limited"):
    per = {key: sum(r[name][key] for r in nl) / n_tok for key in ("cross_node_rows", "cross_node_rows_dedup")}
    nodes = statistics.mean(r[name]["mean_nodes_per_token"] for r in nl)
    assert max(r[name]["max_error"] for r in nl) < 1e-5  # the layer still equals the single-process one
    crossing[name] = per
    print(f"{name:>13}: {nodes:.2f} nodes per token; rows leaving the node per token: "
          f"{per['cross_node_rows']:.2f} one per expert, {per['cross_node_rows_dedup']:.2f} one per node")
for key, label in (("cross_node_rows", "one copy per expert"), ("cross_node_rows_dedup", "one copy per node")):
    print(f"{label}: the node limit leaves {crossing['node_limited'][key] / crossing['unlimited'][key]:.0%} "
          "of the crossings")

# %% [markdown]
# With one copy per expert the limit does not help (the last lines print what it leaves): a token's
# experts are now all on one node, but with two nodes that is the other node about half the time,
# and then all `k` copies cross. With one copy per node it helps a lot: a token crosses at most
# once, instead of almost always. At DeepSeek-V3's scale the same counting needs no processes,
# only routing decisions. With a random router (a trained one is not uniform, so take the numbers
# as an illustration):

# %%
torch.manual_seed(0)
n_nodes, per_node, M = 8, ds.n_experts // 8, 4
logits = torch.randn(8192, ds.n_experts)
home = torch.randint(0, n_nodes, (logits.shape[0],))  # the node each token starts on
ib_rows = {}  # rows per token that cross between nodes
for name, kw in (("unlimited", {}), (f"M = {M} nodes", {"n_groups": n_nodes, "topk_groups": M})):
    idx = routing.sigmoid_topk(logits, ds.top_k, **kw).indices
    for dedup in (False, True):
        crossed = sum(comm.cross_node_rows(idx[home == h], h, per_node, dedup) for h in range(n_nodes))
        ib_rows[name, dedup] = crossed / idx.shape[0]
    print(f"{name:>12}: {comm.nodes_per_token(idx, per_node).float().mean():.2f} nodes per token; crossings "
          f"per token: {ib_rows[name, False]:.2f} one copy per expert, {ib_rows[name, True]:.2f} one copy per node "
          f"(k={ds.top_k}, {ds.n_experts} experts, {n_nodes} nodes, random router)")

# %% [markdown]
# ## A model of communication time
#
# The simplest useful model: a transfer of `b` bytes takes `latency + b / bandwidth`. Fitting it to
# the all-to-all measurements (`comm.fit_link`, least squares on the relative error, since the
# sizes span decades) gives this machine's two numbers:

# %%
fits = {}
for nproc in (2, 4):
    rows = runs[nproc]["results"]["alltoall"][0]["sizes"]
    fits[nproc] = comm.fit_link([r["offrank_bytes"] for r in rows], [r["alltoall_s"] for r in rows])
    lat, bw = fits[nproc]
    print(f"{nproc} ranks: latency {lat * 1e6:7.1f} us, bandwidth {bw / 1e9:5.2f} GB/s per rank "
          f"(fit to {len(rows)} sizes; measured on {runs[nproc]['meta']['summary']}, {runs[nproc]['meta']['date']})")

# %% [markdown]
# And the datasheet figures of real links, per GPU and per direction (an all-to-all sends and
# receives at once, so the per-direction figure is the one that bounds it):

# %%
for link in comm.LINKS.values():
    print(f"{link.name:>24}: {link.bytes_per_s / 1e9:5.0f} GB/s each way -- {link.datasheet} ({link.source})")

# %% [markdown]
# The NVLink figure printed on the H100 datasheet, 900 GB/s, counts both directions: NVIDIA's
# [Hopper architecture page](https://www.nvidia.com/en-us/technologies/hopper-architecture/) calls it
# "900 gigabytes per second (GB/s) bidirectional per GPU", so 450 GB/s each way. PCIe Gen5's
# 128 GB/s likewise counts both directions of an x16 link (64 GB/s each way). InfiniBand NDR's 400 Gb/s is per
# direction, and in bits: 50 GB/s. DeepSeek-V3's report quotes 160 GB/s for NVLink and 50 GB/s for
# InfiniBand on its H800 cluster (section 3.2.2).
#
# The model against the measurements, and what it predicts for the same exchanges on those links
# (bandwidth only: the datasheets give no latency, so these are lower bounds):

# %%
fig, ax = plt.subplots(figsize=(9, 3.8))
rows = runs[4]["results"]["alltoall"][0]["sizes"]
b = [r["offrank_bytes"] for r in rows]
ax.loglog(b, [r["alltoall_s"] for r in rows], "o", color=plot.COLORS["measured"], label="measured, 4 ranks")
lat, bw = fits[4]
ax.loglog(b, [comm.comm_time_s(x, bw, lat) for x in b], "-", color=plot.COLORS["measured"],
          label=f"model: {lat * 1e6:.0f} us + bytes / {bw / 1e9:.2f} GB/s")
for (name, link), ls in zip(comm.LINKS.items(), (":", "-.", "--")):
    ax.loglog(b, [comm.comm_time_s(x, link.bytes_per_s) for x in b], ls, color=plot.COLORS["datasheet"],
              label=f"{name} (datasheet)")
ax.set(xlabel="bytes leaving each rank", ylabel="all-to-all time (s)",
       title="communication time: measured and modelled")
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: clear of the data and the stamp
plot.stamp(ax, RUN_ON)
fig.tight_layout()
plt.show()
worst = max(abs(comm.comm_time_s(r["offrank_bytes"], bw, lat) / r["alltoall_s"] - 1) for r in rows)
print(f"the fitted model is within {worst:.0%} of every 4-rank measurement (measured on {RUN_ON}); "
      f"this machine's ranks exchange at {bw / 1e9:.2f} GB/s, "
      f"{comm.LINKS['NVLink 4 (H100 SXM)'].bytes_per_s / bw:.0f}x below NVLink's datasheet figure")

# %% [markdown]
# ### What the model predicts for a DeepSeek-V3 layer
#
# Take the forward pass of one MoE layer of DeepSeek-V3 in training, with 4096 tokens per GPU (an illustrative batch,
# not the report's), bf16 activations, experts spread evenly. Per GPU the dispatch sends its
# tokens' rows that leave it and the combine brings as many back; the experts' work is
# `T·k` rows of `6·d·d_ff` FLOPs (three matmuls of `d × d_ff`, chapter 2), timed at the H100's
# datasheet bf16 peak — an optimistic compute time, so the comparison errs towards making communication look
# large:

# %%
T = 4096
row = ds.d_model * 2  # bytes of one bf16 row
compute_s = T * ds.top_k * 6 * ds.d_model * ds.d_ff_expert / h100.peak_flops["bf16"]
cases = [  # name, rows leaving each GPU per token (each way), link
    ("8 GPUs in one node", ds.top_k * 7 / 8, "NVLink 4 (H100 SXM)"),
    ("8 nodes, one copy per expert", ib_rows["unlimited", False], "InfiniBand NDR (1 port)"),
    ("8 nodes, one copy per node", ib_rows["unlimited", True], "InfiniBand NDR (1 port)"),
    (f"8 nodes, M={M}, one copy per node", ib_rows[f"M = {M} nodes", True], "InfiniBand NDR (1 port)"),
]
print(f"experts at datasheet peak ({h100.peak_flops['bf16'] / 1e12:.0f} TFLOP/s bf16): {compute_s * 1e3:.2f} ms "
      f"per layer per GPU for T={T} tokens")
print(f"(on 8 GPUs each would hold {expert_bytes / 8 / 1e9:.0f} GB of experts, more than an {h100.name}'s "
      f"{h100.memory_gb:.0f} GB: the one-node row is the best case, not a real deployment)")
ratios = {}
for name, rows_per_token, link in cases:
    comm_s = 2 * comm.comm_time_s(T * rows_per_token * row, comm.LINKS[link].bytes_per_s)
    ratios[name] = comm_s / compute_s
    print(f"{name:>34}: {rows_per_token:.2f} rows per token each way over {link} -> "
          f"{comm_s * 1e3:6.2f} ms (dispatch + combine) = {comm_s / compute_s:.2f}x the expert compute")
first, last = ratios[cases[1][0]], ratios[cases[-1][0]]
print(f"across nodes, one copy per node and the node limit take the exchange from {first:.1f}x to {last:.1f}x "
      f"the expert compute; inside a node it is {ratios[cases[0][0]]:.1f}x")

# %% [markdown]
# The assumptions, named: inside one node every copy for another GPU crosses NVLink, a fraction
# `(p−1)/p = 7/8` of the `k` copies; across nodes only InfiniBand is counted (the crossings per
# token come from the random-router simulation above; the NVLink forwarding inside the destination
# node is left out), at one port of 400 Gb/s per GPU; compute runs at the datasheet peak. The
# printed ratios are what to read: the same exchange that NVLink carries in a fraction of the
# compute time costs a multiple of it over InfiniBand, and one copy per node plus the node limit
# are what bring it down (FP8 dispatch would take off another quarter). The ratios do not depend
# on `T` — bytes and FLOPs both grow with it — except through the latency left out here, which
# makes small batches worse. The backward pass repeats both exchanges (the gradients travel back
# the same way) and does about twice the forward's FLOPs, so over a whole training step each ratio
# is about two thirds of the printed one. That is why DeepSeek-V3 overlaps the communication of one micro-batch
# with the computation of another (DualPipe, report section 3.2.1) instead of waiting for it.
#
# The course's source material claims that all-to-all "can consume ~32% of wall-clock training
# time". It gives no reference, and there is no single such number: the fraction depends on the
# link, the tokens per GPU, `k`, the node limit and how much communication is overlapped, as the
# modelled ratios above show.
#
# ## What we have
#
# | helper | what it does |
# |---|---|
# | `parallel.ExpertParallelMoE.from_moe(moe)` | this rank's shard of a `MoE`; forward = route, counts, dispatch, experts, combine |
# | `parallel.TensorParallelSwiGLU` | a dense SwiGLU split over `d_ff`, one all-reduce |
# | `launch.run(tasks, nproc, params=...)` | run measurements on `nproc` ranks from a notebook; JSON results back |
# | `python -m dmcourse.launch TASK --nproc N` | the same from a shell, or under `torchrun` |
# | `comm.bytes_per_token`, `allreduce_bytes` | bytes per token for EP and TP |
# | `comm.cross_node_rows`, `nodes_per_token` | traffic between nodes, with and without one copy per node |
# | `comm.comm_time_s`, `fit_link`, `LINKS` | the latency + bandwidth model and datasheet link figures |

# %% [markdown]
# Practise it in [Exercise 7](https://colab.research.google.com/github/dmcourse/dmcourse/blob/main/exercises/ex07_expert_parallel/ex07_expert_parallel.ipynb) (`exercises/ex07_expert_parallel`): the send splits, the
# permutation into rank order and the weighted combine, graded on simulated ranks, then run on real gloo
# processes.
