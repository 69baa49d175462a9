# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # The Mixture-of-Experts layer
#
# In a dense transformer every token goes through the same feed-forward network (FFN). A
# **Mixture-of-Experts (MoE)** layer replaces that one FFN by `E` FFNs, the **experts**, and a
# small **router** that sends each token to `k` of them. The layer stores `E` experts' worth of
# parameters but each token only *uses* `k` of them: total capacity and per-token compute come
# apart.
#
# This chapter builds the layer piece by piece, each small and inline first, then checked against
# `dmcourse.routing` and `dmcourse.moe`:
#
# 1. what "sparse" means here, and the router;
# 2. the ways to turn router scores into a choice of `k` experts and their weights (softmax top-k
#    in three variants, DeepSeek-V3's sigmoid scoring, noisy top-k);
# 3. dispatch and combine: getting each token to its experts and the results back, three ways;
# 4. shared and fine-grained experts, and how many parameters real MoE models have and use;
# 5. what it costs: an MoE layer against a dense FFN doing the same FLOPs, timed on your device.

# %%
import datetime
import itertools
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import dmcourse
from dmcourse import moe, plot, roofline, routing
from dmcourse.ffn import swiglu

plot.use_style()
info = dmcourse.device_info()
device, dtype = info.device, info.dtype
TODAY = datetime.date.today().isoformat()
print(info.summary(), TODAY)

# %% [markdown]
# ## From dense to sparse
#
# "Sparse" is used for two different things:
#
# * **Unstructured sparsity**: many *weights* of a matrix are zero (e.g. after pruning). The
#   matrix is the same for every token; the savings need special kernels and rarely show up on GPUs.
# * **MoE (conditional computation)**: all weights are ordinary dense matrices, but *which*
#   matrices a token uses depends on the token. Each expert is a normal dense SwiGLU FFN; what is
#   sparse is the token-to-expert assignment. Every matmul stays dense and fast.
#
# The **router** is a linear map from a token's hidden state `x` (size `d_model`) to one score per
# expert: `logits = x @ W_r.T` with `W_r` of shape `(E, d_model)` — for Mixtral-8x7B an `(8, 4096)`
# matrix per layer ([config](https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json):
# `num_local_experts`, `hidden_size`), tiny next to its experts. Here is a toy layer we will use
# for a while:

# %%
torch.manual_seed(0)
T, d_model, d_ff, E, k = 6, 16, 32, 4, 2   # tokens, model width, expert width, experts, experts per token
x = torch.randn(T, d_model)
w_router = torch.randn(E, d_model) / d_model**0.5
w_gate, w_up = (torch.randn(E, d_ff, d_model) / d_model**0.5 for _ in range(2))
w_down = torch.randn(E, d_model, d_ff) / d_ff**0.5

logits = x @ w_router.T                      # (T, E): one score per token and expert
torch.testing.assert_close(logits, routing.router_logits(x, w_router))
print("router logits (tokens x experts):")
print(logits)

# %% [markdown]
# The course stores the `E` experts **stacked**: `w_gate` and `w_up` of shape `(E, d_ff, d_model)`,
# `w_down` of shape `(E, d_model, d_ff)`; expert `e` is the SwiGLU of chapter 2 with weights
# `w_gate[e], w_up[e], w_down[e]`. Every MoE module of the course (and `transformers` 5, for its
# Mixtral) keeps the experts this way.
#
# ## Top-k routing: three softmax variants
#
# Each token keeps its `k` best experts; their outputs are mixed with **routing weights**. The
# ways to get those weights differ in where the softmax goes.
#
# **(a) Mask before the softmax** (Mixtral's description): set every logit outside the top-k to
# `-inf`, then softmax. The `k` weights sum to 1.

# %%
top_logits, top_idx = logits.topk(k, dim=-1)                     # (T, k) each
masked = torch.full_like(logits, float("-inf")).scatter(1, top_idx, top_logits)
w_a = masked.softmax(dim=-1).gather(1, top_idx)                 # softmax over the survivors only
print("chosen experts:", top_idx.tolist())
print("weights (a):", w_a)

# %% [markdown]
# **(b) Softmax over all experts, then top-k, then renormalise** to sum 1 (what `transformers`'
# Mixtral code does, and Qwen3-MoE with `norm_topk_prob: true`). **(c) Softmax, then top-k, no
# renormalisation** ([Switch Transformer](https://arxiv.org/abs/2101.03961), and
# [Qwen1.5-MoE](https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B/blob/main/config.json) with
# `norm_topk_prob: false`): the kept probabilities sum to less than 1.

# %%
probs = logits.softmax(dim=-1)                                  # (T, E), rows sum to 1
p_top, idx_b = probs.topk(k, dim=-1)
w_b = p_top / p_top.sum(dim=-1, keepdim=True)
w_c = p_top

assert torch.equal(idx_b, top_idx), "softmax is monotonic: the same experts win either way"
print("max |(a) - (b)| =", (w_a - w_b).abs().max().item())
print("max |(a) - (c)| =", (w_a - w_c).abs().max().item())
print("row sums of (c):", w_c.sum(-1))

# %% [markdown]
# (a) and (b) agree to rounding: `exp(l_i) / sum_{j in top-k} exp(l_j)` is what both compute — the
# full softmax's denominator cancels when (b) renormalises. (c) is different: its weights are
# smaller by the probability mass of the dropped experts (the printed row sums), which scales each
# token's MoE output down by a token-dependent factor.
#
# All three run only `k` experts per token. A widely shared blog post on dense vs MoE inference
# claims that "if you softmaxed first, every expert would get some weight and you would lose the
# computational savings". That is wrong: softmax-then-top-k (b, c) keeps exactly `k` experts too;
# the choice between (a)/(b) and (c) changes the *weights*, not the sparsity.
#
# `dmcourse.routing` has them as `topk_softmax` (a, = b) and `softmax_topk` (c, or b with
# `renormalize=True`). Each returns a `Routing`: `indices (T, k)`, `weights (T, k)`, and the
# full `logits` and `scores (T, E)` that load balancing (next chapter) needs.

# %%
r_a = routing.topk_softmax(logits, k)
r_b = routing.softmax_topk(logits, k, renormalize=True)
r_c = routing.softmax_topk(logits, k)
for r, w in ((r_a, w_a), (r_b, w_b), (r_c, w_c)):
    assert torch.equal(r.indices, top_idx)
    torch.testing.assert_close(r.weights, w)
print("inline (a), (b), (c) == dmcourse.routing.topk_softmax / softmax_topk")
print(r_a.indices.dtype, tuple(r_a.indices.shape), tuple(r_a.weights.shape), tuple(r_a.scores.shape))

# %% [markdown]
# ### Which rule lets the router learn, at top-1?
#
# The router is trained by the gradient of the loss through the weights `w`. With `k = 1`, (a) and
# (b) give every token `w = exp(l_i) / exp(l_i) = 1`: the weight no longer depends on the logits, so
# the task loss sends the router *no* gradient, and only a balancing loss (next chapter) moves it. (c)
# keeps `w = p_i`, the chosen expert's softmax probability, which depends on every logit. The cell
# backpropagates a task loss (squared error against a random target) through the toy layer, for
# each rule at `k = 1` and `k = 2`, and prints the size of the gradient that reaches `W_r`:

# %%
target = torch.randn(T, d_model)
rules = {
    "(a) mask, then softmax": routing.topk_softmax,
    "(b) softmax, top-k, renormalise": lambda l, kk: routing.softmax_topk(l, kk, renormalize=True),
    "(c) softmax, top-k (Switch)": routing.softmax_topk,
    "sigmoid, normalised (DeepSeek-V3)": routing.sigmoid_topk,
}
router_grad = {}
for name, rule in rules.items():
    for kk in (1, 2):
        w_r = w_router.clone().requires_grad_(True)
        r_g = rule(x @ w_r.T, kk)
        y = moe.dispatch_sorted(x, r_g, w_gate, w_up, w_down)
        F.mse_loss(y, target).backward()
        router_grad[name, kk] = w_r.grad.norm().item()
        print(f"{name:34s} top-{kk}: |dL/dW_r| = {router_grad[name, kk]:.2e}")
dead = [name for name in rules if router_grad[name, 1] < 1e-6 * router_grad["(c) softmax, top-k (Switch)", 1]]
print("at top-1 the task loss cannot reach the router under:", ", ".join(dead) or "none of the rules")
print("at top-2 every rule passes a gradient:", all(router_grad[name, 2] > 0 for name in rules))
print("dmcourse.MoE(..., top_k=1) uses the rule", repr(dmcourse.MoE(d_model, d_ff, E, 1).router.method),
      "and top_k=2 the rule", repr(dmcourse.MoE(d_model, d_ff, E, 2).router.method))

# %% [markdown]
# That is why [Switch Transformer](https://arxiv.org/abs/2101.03961) (§2.1) gates its single expert
# by the router probability `p_i` rather than by 1: Shazeer et al. had conjectured that routing to
# `k > 1` experts was needed for the router to get non-trivial gradients, and scaling the one
# expert's output by `p_i` is what keeps the router differentiable with `k = 1`. `dmcourse` follows
# it: `MoE` and `Router` pick (c) for `top_k = 1` and (a) for `top_k >= 2`
# (`dmcourse.routing.default_router`), and refuse a top-1 rule whose weight is a constant unless
# asked for it (`allow_constant_gate=True`, as when copying a trained Mixtral block for inference).
# Gradients of order `1e-8` or less in the table are float32 rounding of `w = p / p`, not a signal.

# %% [markdown]
# ## Sigmoid scoring (DeepSeek-V3)
#
# DeepSeek-V3 ([report, §2.1.2](https://arxiv.org/abs/2412.19437)) scores each expert
# *independently* with a sigmoid, `s = sigmoid(logits)`, picks the top-k, and normalises over the
# selected ones only: `w_i = s_i / sum_{j in top-k} s_j`, then multiplies by a constant
# (`routed_scaling_factor`, 2.5 in its
# [config](https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json)). Two more
# details:
#
# * **Selection bias.** Its auxiliary-loss-free load balancing adds a per-expert bias `b` to the
#   scores *for choosing only*: top-k of `s + b`, but the weights use `s`. (The next chapter
#   updates `b`.)
# * **Group-limited routing.** The 256 experts are in 8 groups; each group is scored by the sum of
#   its two best biased scores, and a token may only use experts from its 4 best groups (on a
#   cluster, a group lives on one node, so this bounds the traffic per token).

# %%
bias = torch.tensor([0.0, 0.0, 0.0, 0.3])     # expert 3 is nudged up (as if it had been underused)
s = torch.sigmoid(logits)
pick = (s + bias).topk(k, dim=-1).indices      # choose with the bias ...
w_sig = s.gather(1, pick)                      # ... weigh without it
w_sig = w_sig / w_sig.sum(-1, keepdim=True)
r_sig = routing.sigmoid_topk(logits, k, bias=bias)
assert torch.equal(r_sig.indices, pick)
torch.testing.assert_close(r_sig.weights, w_sig)
changed = (pick.sort(-1).values != s.topk(k, -1).indices.sort(-1).values).any(-1)
print(f"tokens whose experts the bias changed: {int(changed.sum())} of {T}")
print("inline sigmoid top-k == dmcourse.routing.sigmoid_topk; weights sum to", r_sig.weights.sum(-1))

# %% [markdown]
# Unlike softmax probabilities, the sigmoid scores of different experts do not compete: raising
# one expert's score does not lower the others'. The group rule is `n_groups` / `topk_groups` in
# `sigmoid_topk`; here on 16 toy experts in 4 groups, keeping 2 groups:

# %%
g_logits = torch.randn(5, 16)
r_grp = routing.sigmoid_topk(g_logits, 4, n_groups=4, topk_groups=2, scale=2.5)
print("chosen experts per token:", r_grp.indices.tolist())
print("groups used per token:   ", [sorted({e // 4 for e in row}) for row in r_grp.indices.tolist()])
print("weights sum to routed_scaling_factor:", r_grp.weights.sum(-1))

# %% [markdown]
# ## Noisy top-k
#
# [Shazeer et al. (2017)](https://arxiv.org/abs/1701.06538) add Gaussian noise to the logits
# during training, with a learned standard deviation `softplus(x @ W_noise.T)` (eq. 4): one value per
# token *and* expert, since it is computed from the token `x`, so the router can learn to explore
# more for some tokens than for others. Then top-k and a softmax over the kept ones. The noise makes the router try experts it would not
# otherwise pick, which helps balance the load early in training; at inference it is switched off.
# How often does noise of a given size change a token's choice? (The cell uses one fixed std for
# every token to isolate the size; `dmcourse.routing.Router(..., "noisy")` computes the per-token std,
# and `tests/test_routing.py` checks that it varies with the token.)

# %%
many = torch.randn(2000, 8) * 1.0      # logits of 2000 tokens over 8 experts
clean = routing.topk_softmax(many, 2).indices.sort(-1).values
gen = torch.Generator().manual_seed(0)
for std in (0.0, 0.1, 0.3, 1.0, 3.0):
    noisy = routing.noisy_topk(many, 2, std, generator=gen)
    moved = (noisy.indices.sort(-1).values != clean).any(-1).float().mean()
    print(f"noise std {std:3.1f}: {100 * moved:5.1f}% of tokens get a different pair of experts")

# inline: the same rule
gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
noisy_logits = many + torch.randn(many.shape, generator=gen_a) * 0.5
mine = routing.topk_softmax(noisy_logits, 2)
theirs = routing.noisy_topk(many, 2, 0.5, generator=gen_b)
assert torch.equal(mine.indices, theirs.indices)
torch.testing.assert_close(mine.weights, theirs.weights)
print("inline noisy top-k == dmcourse.routing.noisy_topk")

# %% [markdown]
# `dmcourse.routing.Router` wraps all of these as a module holding `W_r` (and the selection bias
# or the noise weights): `Router(d_model, E, k, "softmax" | "softmax_topk" | "sigmoid" | "noisy")`;
# without a rule it picks `default_router(k)`, Switch gating for `k = 1` and (a) otherwise.
#
# ## Dispatch and combine, three ways
#
# Routing says token `t` goes to experts `indices[t, 0..k-1]` with weights `weights[t, ...]`. The
# layer's output is
#
# $$y_t = \sum_{j=1}^{k} w_{t,j}\; \text{Expert}_{i_{t,j}}(x_t).$$
#
# The work is to get each token's hidden state to its experts (**dispatch**), run each expert on
# the tokens it got, and add the weighted results back per token (**combine**). First the
# definition, written as literally as possible, as the reference:

# %%
r = routing.topk_softmax(logits, k)
idx, wts = r.indices, r.weights


def expert(e, xs):
    return swiglu(xs, w_gate[e], w_up[e], w_down[e])


reference = torch.stack([
    sum(wts[t, j] * expert(int(idx[t, j]), x[t:t + 1])[0] for j in range(k)) for t in range(T)
])


# %% [markdown]
# ### 1. A loop over experts
#
# For each expert, find the (token, slot) pairs that chose it, run the expert on those tokens
# once, scale by their weights and add into the output. Experts nobody chose are skipped.

# %%
def moe_loop(x, idx, wts):
    out = torch.zeros_like(x)
    for e in range(w_gate.shape[0]):
        token, slot = torch.where(idx == e)       # which tokens chose e, and in which of their k slots
        if len(token) == 0:
            continue
        out.index_add_(0, token, wts[token, slot, None] * expert(e, x[token]))
    return out


torch.testing.assert_close(moe_loop(x, idx, wts), reference)
torch.testing.assert_close(moe.dispatch_loop(x, r, w_gate, w_up, w_down), reference)
print("inline loop == reference == dmcourse.moe.dispatch_loop")

# %% [markdown]
# Simple, and what `transformers`' Mixtral block does by default when used on its own. Its cost is
# `E` Python iterations each with a `torch.where` over all tokens, plus a gather per expert — per
# layer, per forward.
#
# ### 2. Sort by expert
#
# Flatten the `T * k` (token, expert) pairs and **sort them by expert**. Each expert's rows are
# then one contiguous block: gather the tokens once, run every expert on its block (a plain
# slice), and undo the sort with the **inverse permutation**. Step by step:

# %%
flat = idx.reshape(-1)                         # (T*k,) expert of each (token, slot) pair
order = torch.argsort(flat, stable=True)       # sorted position -> pair
token_of = order // k                          # the token each sorted row reads
counts = torch.bincount(flat, minlength=E)     # rows per expert
offsets = torch.cumsum(counts, 0)              # expert e owns rows offsets[e-1]:offsets[e]
print("expert of each pair :", flat.tolist())
print("order               :", order.tolist())
print("sorted experts      :", flat[order].tolist())
print("token of sorted row :", token_of.tolist())
print("counts / offsets    :", counts.tolist(), offsets.tolist())


# %%
def moe_sorted(x, idx, wts):
    T, k = idx.shape
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w_gate.shape[0])
    xs = x[order // k]                          # dispatch: one gather, grouped by expert
    rows = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            rows[start:start + n] = expert(e, xs[start:start + n])
        start += n
    unsorted = torch.empty_like(rows)
    unsorted[order] = rows                      # inverse permutation: row of pair p goes back to p
    return (unsorted.view(T, k, -1) * wts.unsqueeze(-1)).sum(1)   # combine: weighted sum of k rows


torch.testing.assert_close(moe_sorted(x, idx, wts), reference)
torch.testing.assert_close(moe.dispatch_sorted(x, r, w_gate, w_up, w_down), reference)
print("inline sorted == reference == dmcourse.moe.dispatch_sorted")

# %% [markdown]
# The combine needs no scatter-add: after the inverse permutation, `unsorted.view(T, k, d)[t, j]`
# is exactly token `t`'s `j`-th expert output, so the combine is a weighted sum over `j` — and
# deterministic on GPUs, where `index_add_` with repeated indices uses atomics.
#
# ### 3. Grouped GEMM
#
# The sorted layout is what a **grouped GEMM** wants: one kernel that multiplies consecutive
# row-blocks of one matrix by a different weight matrix each, given the block ends (`offsets`).
# PyTorch exposes it as `torch.nn.functional.grouped_mm` (torch 2.10+; `torch._grouped_mm`
# before), on some CUDA GPUs and, in recent versions, on CPUs. Which ones is not something to
# assume: the course uses it where its runtime probe, `dmcourse.moe.grouped_mm_supported`, says
# yes (the probe runs one small grouped GEMM with uneven and empty groups and checks the result;
# the cell below prints its answer for this device). No Python loop
# over experts, and no host synchronisation: the offsets stay on the device.

# %%
gmm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
print("grouped GEMM available here:", moe.grouped_mm_supported(x.device, x.dtype))


def moe_grouped(x, idx, wts):
    T, k = idx.shape
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    offs = torch.bincount(flat, minlength=w_gate.shape[0]).cumsum(0).to(torch.int32)
    xs = x[order // k]
    h = F.silu(gmm(xs, w_gate.transpose(1, 2), offs=offs)) * gmm(xs, w_up.transpose(1, 2), offs=offs)
    rows = gmm(h, w_down.transpose(1, 2), offs=offs)
    unsorted = torch.empty_like(rows)
    unsorted[order] = rows
    return (unsorted.view(T, k, -1) * wts.unsqueeze(-1)).sum(1)


if moe.grouped_mm_supported(x.device, x.dtype):
    torch.testing.assert_close(moe_grouped(x, idx, wts), reference)
    print("inline grouped GEMM == reference")
torch.testing.assert_close(moe.dispatch_grouped(x, r, w_gate, w_up, w_down), reference)
print("dmcourse.moe.dispatch_grouped == reference")

# %% [markdown]
# Where the probe says no (an older torch, a device or dtype without a working kernel; the probe
# is not even tried on GPUs below compute capability 8.0, which this course has not tested),
# `dmcourse.moe.dispatch_grouped` falls back to the sorted dispatch, which computes the same thing.
#
# ### The edge cases
#
# An expert that receives no token, a single token, `k = 1` and `k = E` are where hand-written
# dispatch code breaks (an empty slice, a `view` with the wrong `k`). All three strategies against
# the reference, on routings built to hit each case:

# %%
cases = {
    "experts 0 and 2 get nothing": torch.tensor([[1, 3]] * T),
    "one token": idx[:1],
    "k = 1": idx[:, :1],
    "k = E": torch.stack([torch.randperm(E) for _ in range(T)]),
}
for name, ids in cases.items():
    n, kk = ids.shape
    ws = torch.rand(n, kk)
    rr = routing.Routing(indices=ids, weights=ws, logits=logits[:n], scores=probs[:n])
    want = torch.stack([sum(ws[t, j] * expert(int(ids[t, j]), x[t:t + 1])[0] for j in range(kk)) for t in range(n)])
    for fn in (moe.dispatch_loop, moe.dispatch_sorted, moe.dispatch_grouped):
        torch.testing.assert_close(fn(x[:n], rr, w_gate, w_up, w_down), want)
    print(f"{name:28s}: loop, sorted and grouped agree with the reference")

# %% [markdown]
# ### The layer
#
# `dmcourse.MoE` puts a `Router` and the stacked experts together; `dispatch=` picks the strategy
# and `moe.last_routing` keeps the routing of the last forward. Loaded with our toy weights it
# computes the reference:

# %%
layer = dmcourse.MoE(d_model, d_ff, E, k)
with torch.no_grad():
    layer.router.weight.copy_(w_router)
    layer.w_gate.copy_(w_gate)
    layer.w_up.copy_(w_up)
    layer.w_down.copy_(w_down)
for name in moe.DISPATCHES:
    layer.dispatch = name
    torch.testing.assert_close(layer(x), reference)
print(layer)
print("dmcourse.MoE == reference with every dispatch; last routing:", layer.last_routing.indices.tolist())


# %% [markdown]
# Is it the real thing? `dmcourse.moe.from_mixtral_block(block)` copies the weights of a
# `transformers` Mixtral sparse-MoE block (router `gate.weight`, experts `gate_up_proj` and
# `down_proj`) into a `dmcourse.MoE`; the course's test suite builds a random Mixtral block with
# `transformers` and checks that both give the same outputs in fp32
# (`tests/test_moe.py::test_from_mixtral_block_matches_transformers`). So a real Mixtral
# checkpoint's layer can be loaded and inspected with this chapter's code.
#
# ## Shared experts and fine-grained experts
#
# **Fine-grained experts** ([DeepSeekMoE](https://arxiv.org/abs/2401.06066)): cut each expert into
# `m` narrower ones (`d_ff / m`) and route to `m` times as many. Parameters and FLOPs stay the
# same; the number of different expert *combinations* a token can use grows enormously.
# **Shared experts**: a few experts every token goes through, outside the routing, meant to hold
# what all tokens need so that routed experts can specialise. The bookkeeping, for one layer of
# Mixtral's size:

# %%
def layer_counts(d_model, d_ff, n_experts, top_k, n_shared=0, d_shared=0):
    """(total, active) parameters of one MoE FFN layer (router included) and its FLOPs per token."""
    one = 3 * d_model * d_ff
    shared = n_shared * 3 * d_model * d_shared
    total = n_experts * one + shared + n_experts * d_model
    active = top_k * one + shared + n_experts * d_model
    return total, active, 2 * active


variants = {
    "Mixtral: 8 experts, top-2": (4096, 14336, 8, 2),
    "fine-grained x4: 32 experts, top-8": (4096, 14336 // 4, 32, 8),
    "fine-grained x4, 1 shared + 31, top-7": (4096, 14336 // 4, 31, 7, 1, 14336 // 4),
}
for name, cfg in variants.items():
    total, active, flops = layer_counts(*cfg)
    n_experts, top_k = cfg[2], cfg[3]
    print(f"{name:40s} total {total / 1e6:7.1f}M  active {active / 1e6:6.1f}M  "
          f"{flops / 1e6:6.1f} MFLOP/token  expert sets C({n_experts},{top_k}) = {math.comb(n_experts, top_k):,}")
# the module agrees with the bookkeeping (small sizes, so the check is cheap)
small = dmcourse.MoE(64, 96, 31, 7, n_shared_experts=1, shared_d_ff=96)
assert (small.n_params(), small.n_active_params()) == layer_counts(64, 96, 31, 7, 1, 96)[:2]

# %% [markdown]
# The total and the per-token FLOPs barely move between the three rows (the router grows with the
# number of experts), while the number of expert sets a token can pick grows by orders of magnitude.
# For the real models:

# %%
print(f"Mixtral     C(8, 2)   = {math.comb(8, 2):,}")
print(f"DeepSeek-V3 C(256, 8) = {math.comb(256, 8):,}  (= {math.comb(256, 8):.2e})")
print(f"            C(64, 8)  = {math.comb(64, 8):,}  (= {math.comb(64, 8):.2e})")
print(f"C(256, 8) / 4.3e9 = {math.comb(256, 8) / 4.3e9:.2e}")


def sets_within_groups(n_groups, per_group, k, max_groups):
    """k-subsets of n_groups * per_group experts that use at most max_groups groups (exact)."""
    total = 0
    for j in range(1, max_groups + 1):
        # subsets spread over exactly j given groups: inclusion-exclusion over empty groups
        exactly = sum((-1) ** i * math.comb(j, i) * math.comb(per_group * (j - i), k) for i in range(j + 1))
        total += math.comb(n_groups, j) * exactly
    return total


assert sets_within_groups(8, 32, 8, 8) == math.comb(256, 8)   # no group limit: every 8-subset
reachable = sets_within_groups(8, 32, 8, 4)
print(f"DeepSeek-V3 with group-limited routing (8 groups of 32, at most 4 groups): {reachable:,} "
      f"(= {reachable:.2e}, {reachable / math.comb(256, 8):.1%} of C(256, 8))")
# brute-force check of the formula on a small case
brute = sum(1 for c in itertools.combinations(range(12), 4) if len({e // 3 for e in c}) <= 2)
assert brute == sets_within_groups(4, 3, 4, 2)

# %% [markdown]
# The source text says "C(256,8) ≈ 4.3 billion". The cell above computes C(256, 8) exactly: it is
# about 4.1 × 10¹⁴, roughly 10⁵ times more (the ratio is printed). (C(64, 8), also printed, is the number
# near 4.4 billion — possibly where the figure came from.) Even with DeepSeek-V3's group limit, the
# number of reachable expert sets stays in the same range as C(256, 8), as printed.
#
# ## Total vs active parameters of real MoE models
#
# Chapter 2's accounting counts every parameter of a model from its config. For an MoE model,
# **active** parameters are those one token uses: everything except the routed experts it did not
# pick. Mixtral-8x7B by hand from its
# [config](https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json):

# %%
c = dmcourse.load_preset("Mixtral-8x7B")
head_dim = c.d_model // c.n_heads
attention = 2 * c.d_model * c.n_heads * head_dim + 2 * c.d_model * c.n_kv_heads * head_dim  # q, o + k, v (GQA)
one_expert = 3 * c.d_model * c.d_ff_expert
per_layer_total = attention + c.n_experts * one_expert + c.n_experts * c.d_model + 2 * c.d_model
per_layer_active = attention + c.top_k * one_expert + c.n_experts * c.d_model + 2 * c.d_model
embed = lm_head = c.vocab_size * c.d_model
total = c.n_layers * per_layer_total + embed + lm_head + c.d_model
active = c.n_layers * per_layer_active + embed + lm_head + c.d_model
print(f"one expert: 3 x {c.d_model} x {c.d_ff_expert} = {one_expert / 1e6:.1f}M; "
      f"{c.n_experts} per layer, {c.top_k} active; {c.n_layers} layers")
print(f"total  {total:,} = {total / 1e9:.1f}B")
print(f"active {active:,} = {active / 1e9:.1f}B   ({active / total:.1%} of the total)")
counted = dmcourse.count_params(c)
assert (counted.total, counted.active) == (total, active)
print(f"dmcourse.count_params agrees; published: {c.published.total / 1e9:.1f}B total, "
      f"{c.published.active / 1e9:.1f}B active ({c.published.source})")

# %% [markdown]
# That is where "46.7B total, 12.9B active" comes from (rounded to one decimal in the cell above),
# with the convention that the input embedding and the LM head count as active. The same
# accounting for the other MoE presets of chapter 2:

# %%
print(f"{'model':16s} {'experts':>8s} {'top-k':>5s} {'shared':>6s} {'total':>9s} {'active':>8s} {'active %':>8s}  published")
for name in ("Mixtral-8x7B", "Mixtral-8x22B", "Qwen3-30B-A3B", "Qwen3-235B-A22B", "DeepSeek-V3"):
    c = dmcourse.load_preset(name)
    p = dmcourse.count_params(c)
    print(f"{name:16s} {c.n_experts:8d} {c.top_k:5d} {c.n_shared_experts:6d} {p.total / 1e9:8.1f}B {p.active / 1e9:7.1f}B "
          f"{p.active / p.total:8.1%}  {c.published.total / 1e9:g}B / {c.published.active / 1e9:g}B")
    print(f"{'':16s} config: {c.source}")

# %% [markdown]
# The `shared` column comes from each model's config (the links are printed above): DeepSeek-V3
# has one shared expert, but Qwen3's MoE models have none (their configs have no shared-expert
# field, unlike [Qwen1.5-MoE's](https://huggingface.co/Qwen/Qwen1.5-MoE-A2.7B/blob/main/config.json)
# `shared_expert_intermediate_size`). The source text's table, which lists Qwen3-235B with
# "128 + 1" experts and a shared expert, is wrong on that point.
#
# ## What it costs: MoE vs a dense FFN with the same FLOPs
#
# An MoE layer with `E` experts of width `d_ff` and top-`k` does, per token, the FLOPs of a dense
# SwiGLU of width `k * d_ff` (plus the tiny router). Does it also take the same *time*? Timing
# both on this device over a range of token counts. The layer is large enough that its weights do
# not fit in a CPU's last-level cache (otherwise repeated calls would read the dense layer's weights
# from cache and flatter it). Both do their matmuls through the same function,
# `dmcourse.matmul.linear` (on a GPU the MoE layer uses the grouped GEMM instead), so that what
# differs is only the sparsity:

# %%
d_model_t, d_ff_t, E_t, k_t = 1024, 2816, 8, 2   # the benchmark's layer (below)
token_counts = [1, 4, 16, 64, 256, 1024] + ([4096, 16384] if device.type == "cuda" else [])
torch.manual_seed(0)
moe_layer = dmcourse.MoE(d_model_t, d_ff_t, E_t, k_t, dtype=dtype, device=device).eval()
moe_layer.dispatch = "grouped" if device.type == "cuda" else "sorted"
dense_layer = dmcourse.ffn.SwiGLU(d_model_t, k_t * d_ff_t, dtype=dtype, device=device).eval()
dense_w = (dense_layer.w_gate.weight, dense_layer.w_up.weight, dense_layer.w_down.weight)
times = {"moe": [], "dense": []}
touched = []
threads = torch.get_num_threads()
if device.type == "cpu":
    torch.set_num_threads(1)  # one core, as in chapters 2 and 5: a core busy elsewhere stalls every multi-threaded call
with torch.inference_mode():
    x_warm = torch.randn(token_counts[-1], d_model_t, device=device, dtype=dtype)
    for _ in range(3):  # warm up both layers at full size first (allocations, kernel choice)
        moe_layer(x_warm), moe.expert_swiglu(x_warm, *dense_w)
    for n in token_counts:
        xt = torch.randn(n, d_model_t, device=device, dtype=dtype)
        rounds = [(dmcourse.time_fn(lambda: moe_layer(xt), device=device, repeats=5).median_s,
                   dmcourse.time_fn(lambda: moe.expert_swiglu(xt, *dense_w), device=device, repeats=5).median_s)
                  for _ in range(3)]  # interleaved rounds: the fastest is the one least disturbed by other programs
        times["moe"].append(min(r[0] for r in rounds))
        times["dense"].append(min(r[1] for r in rounds))
        touched.append(int((moe_layer.last_routing.tokens_per_expert() > 0).sum()))
torch.set_num_threads(threads)
print(f"{'tokens':>6s} {'MoE ms':>8s} {'dense ms':>9s} {'MoE/dense':>9s} {'experts touched':>15s} {'expected':>8s}")
for n, tm, td, u in zip(token_counts, times["moe"], times["dense"], touched):
    print(f"{n:6d} {tm * 1e3:8.3f} {td * 1e3:9.3f} {tm / td:9.2f} {u:15d} {roofline.expected_experts_touched(E_t, k_t, n):8.1f}")
print(f"device: {info.summary()}{', 1 thread' if device.type == 'cpu' else ''}, {TODAY}")
for n, tm, td, u in zip(token_counts, times["moe"], times["dense"], touched):
    if n <= 16:  # decode: the weight bytes read should set the ratio
        ratio, bytes_ratio = tm / td, u / k_t
        verdict = ("about the ratio of weight bytes read, as the text predicts" if 0.5 <= ratio / bytes_ratio <= 2
                   else "far from the ratio of weight bytes read: " +
                   ("routing overheads or the kernel dominate here" if ratio > bytes_ratio else
                    "reading weights no longer sets the dense layer's time here (arithmetic or overheads do)"))
        print(f"{n:5d} tokens: MoE/dense {ratio:.2f} vs experts touched / k = {bytes_ratio:.2f} -> {verdict}")
big = times["moe"][-1] / times["dense"][-1]
print(f"{token_counts[-1]:5d} tokens: MoE/dense {big:.2f} -> " +
      ("back near 1: in prefill sparsity costs little" if big < 1.5 else "still well above 1 on this device"))

# %%
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
ax.loglog(token_counts, [t * 1e3 for t in times["dense"]], "o-", color=plot.COLORS["dense"],
          label=f"dense SwiGLU, d_ff = {k_t * d_ff_t}")
ax.loglog(token_counts, [t * 1e3 for t in times["moe"]], "s-", color=plot.COLORS["moe"],
          label=f"MoE, {E_t} experts x d_ff {d_ff_t}, top-{k_t}")
ax.set(xlabel="tokens per forward", ylabel="time (ms, best of 3 medians)",
       title=f"Same FLOPs per token, d_model = {d_model_t} ({str(dtype).removeprefix('torch.')})")
ax.legend()
ax2.semilogx(token_counts, [tm / td for tm, td in zip(times["moe"], times["dense"])], "s-",
             color=plot.COLORS["moe"], label="measured time ratio MoE / dense")
ax2.semilogx(token_counts, [u / k_t for u in touched], "o--", color=plot.COLORS["datasheet"],
             label=f"weight bytes ratio: experts touched / {k_t}")
ax2.axhline(1, color="k", lw=0.8)
ax2.set(xlabel="tokens per forward", ylabel="ratio", title="What sparsity costs")
ax2.legend(loc="center right")
plot.stamp(ax2, info.name)
plt.show()

# %% [markdown]
# Read the ratio column (right panel) against the "experts touched" column. With few tokens, a forward is
# limited by reading the weights, not by arithmetic: the dense layer reads its `k * d_ff` worth of
# weights, the MoE layer reads every expert that at least one token chose — already more than `k`
# experts from a handful of tokens on (the expected count, `E (1 - (1 - k/E)^n)`, is printed next
# to the measured one). So in the *decode* regime an MoE layer should cost more than the dense layer
# of equal FLOPs, by about the ratio of experts touched to `k` (the dashed line), plus the cost of
# routing; the lines under the table say whether this run shows it. With many tokens the matmuls
# become large enough to be limited by arithmetic and the ratio should fall back towards 1; the ratio printed for the largest token count is what sparsity costs
# on this device in the *prefill* regime (each expert's matmuls there still see only `k / E` of
# the rows the dense layer's see; the benchmark below, with more tokens, comes closer to a real
# prefill). The [roofline chapter](05_roofline.ipynb) turns this into a model.
#
# ## The benchmark: how fast is this layer?
#
# `benchmarks/moe_dispatch.py` times a full-size layer chosen for this
# chapter (d_model 1024, expert d_ff 2816, 8 experts, top-2; 4096 tokens, fp32, 2 threads on a CPU;
# 16384 tokens, bf16 on a GPU) with each dispatch strategy, against `transformers`' Mixtral block
# (its default eager loop, and the `grouped_mm` implementation a full `transformers` model picks)
# and against the dense SwiGLU of equal FLOPs. All share one set of weights and are measured in
# interleaved rounds, so the ratios come from one run. In the decode regime (1 to 64 tokens) each
# time is compared with its **floor**, `max(bytes of the experts touched / memory bandwidth,
# FLOPs / matmul throughput)`, both ceilings measured in the same run. The bandwidth is measured in
# the same interleaved rounds as the decode calls of each row (on a shared cloud machine it drifts by
# tens of percent within minutes), as the fastest of three ways to move bytes through buffers larger
# than the cache: a copy (bytes read plus written), a read-only `torch.sum`, and the read-only loop
# `dmcourse.stream.read_sum`; the matmul throughput is a large square `torch.matmul`, as
# `dmcourse.roofline` measures it.
# The column `expert matmuls only` times just the SwiGLUs of the touched experts on tokens already
# sorted: the gap between it and `moe sorted` is all that routing, dispatch and combine cost, and
# the gap between it and the floor is how far the matmul kernel itself stays from the ceilings.
# The numbers below were recorded by that script on the machine and date printed with them; run it
# yourself (`python benchmarks/moe_dispatch.py`) to get your device's. Before every timed decode call
# the script reads twice the last-level cache: all strategies share one set of weights, and a call
# would otherwise find part of them left in the cache by the previous one, which in a real model the
# other layers' weights would have evicted.
#
# Every expert matmul of the layer goes through one function, `dmcourse.matmul.linear(x, w)`, which
# computes `x @ w.T` — that is, `F.linear(x, w)`. On a GPU it *is* `F.linear` (cuBLAS). On a CPU, when
# no gradient is needed, torch ships more than one kernel for it (Intel MKL behind `F.linear`, oneDNN
# behind the op `torch.compile` emits for CPU linear layers), and which is fastest depends on the
# machine and on the number of rows. So the layer does not decide: the first call measures the
# candidates on this machine (a probe of a few seconds, per regime: 1, 2–4, 5–16, 17–64 rows per
# expert, and prefill), caches the ranking per machine, and `dmcourse.matmul.status()` prints it (below).
# The rows `moe sorted, F.linear` and `moe sorted, oneDNN` force one kernel, to separate the kernel
# from the dispatch. How the course measures kernels, and the opt-in C decode kernel the benchmark also
# offers the probe, are in the [roofline chapter](05_roofline.ipynb#measuring-cpu-kernels).
#
# Each record also holds a **profile** of the sorted dispatch at 4096 tokens, step by step (routing,
# sort, gather, the expert GEMMs, the activation, rows back to token order, combine), with the share of the time
# spent outside the expert GEMMs, and the **targets** the course holds the layer to: prefill no slower
# than `transformers`' block and within 1.1x of the dense SwiGLU with the same kernel; decode within
# 1.5x of the floor. Where a target is missed, the record says why. Each record is labelled with the
# machine it was measured on: a conclusion drawn from one CPU is not a conclusion about yours.
#

# %% tags=["dmcourse-record"]
from dmcourse import records


def show_benchmark(rec):
    st, p = rec["settings"], rec["prefill_s"]
    print(f"=== record measured on {rec.get('cpu_model') or rec['device']}, {rec['date'][:10]} ===")
    print(f"device: {rec['device']}, {rec['dtype']}, threads: {rec['threads']}, torch {rec['torch']}, measured {rec['date']}")
    print(f"command: {rec['command']}")
    if rec.get("matmul_choice"):
        print("kernel chosen by that machine's probe, by rows per expert: "
              + ", ".join(f"{b}: {k}" for b, k in rec["matmul_choice"].items()))
    print(f"prefill: {st['tokens']} tokens, d_model {st['d_model']}, expert d_ff {st['d_ff']}, "
          f"{st['n_experts']} experts, top-{st['top_k']}")
    print(f"{'':28s} {'ms':>8s} {'/ tf eager':>10s} {'/ tf grouped_mm':>15s} {'/ dense':>8s}")
    for name, t in sorted(p.items(), key=lambda kv: kv[1]):
        print(f"{name:28s} {t * 1e3:8.1f} {t / p['transformers eager']:10.2f} "
              f"{t / p['transformers grouped_mm']:15.2f} {t / p['dense SwiGLU']:8.2f}")
    if rec.get("profile"):
        steps = rec["profile"]["steps_s"]
        total = sum(v for k, v in steps.items() if k != "layer")
        print("profile of moe sorted: " + ", ".join(f"{k} {v / total:.0%}" for k, v in steps.items() if k != "layer")
              + f"; outside the expert GEMMs: {rec['profile']['non_gemm_share']:.0%}")
    c = rec["ceilings"]
    print(f"\ndecode floor: bandwidth = the fastest of copy, torch.sum and stream.read_sum, measured with "
          f"each row's calls (column GB/s); matmul {c['matmul_FLOPps'] / 1e9:.0f} GFLOP/s with torch.matmul "
          f"({c['matmul_linear_FLOPps'] / 1e9:.0f} GFLOP/s with dmcourse.matmul.linear)")
    names = list(rec["decode"][0]["times_s"])
    print(f"{'tokens':>6s} {'experts':>7s} {'GB/s':>5s} {'floor ms':>8s} " + " ".join(f"{n:>24s}" for n in names))
    for row in rec["decode"]:
        cells = " ".join(f"{v * 1e3:8.2f} ms = {v / row['floor_s']:4.2f}x".rjust(24) for v in row["times_s"].values())
        print(f"{row['tokens']:6d} {row['experts_touched']:7d} {max(row['bandwidths_Bps'].values()) / 1e9:5.1f} "
              f"{row['floor_s'] * 1e3:8.2f} {cells}")
    for t in rec.get("targets", []):
        print(f"target {t['target']}: {t['value']:.2f} (limit {t['limit']:.2f}) "
              + ("met" if t["met"] else f"MISSED: {t['why']}"))

for rec in records.load("moe_dispatch"):  # shipped in the package: dmcourse/data/records/
    show_benchmark(rec)
    print()
print("GPU records (python -m dmcourse.gpucheck):")
print(records.gpu_summary("moe"))

# %%
# This machine's own choice (the probe runs at the first eligible matmul; see chapter 5):
print(dmcourse.matmul.status())

# %% [markdown]
# ## Summary
#
# * An MoE layer is `E` ordinary dense FFNs and a linear router; sparsity is in which experts a
#   token uses, not in the matrices.
# * Mask-then-softmax equals softmax-top-k-renormalise; without renormalisation the weights differ.
#   At top-1 that difference decides whether the router learns: renormalised, the weight is the
#   constant 1 and the task loss sends the router no gradient; Switch's un-renormalised probability
#   keeps it trainable, and is the course's default for `k = 1`.
#   DeepSeek-V3 uses sigmoid scores normalised over the chosen experts, with a selection-only bias.
# * Dispatch: a loop over experts, sort-by-expert with an inverse permutation, or a grouped GEMM
#   on the sorted layout — all equal, including for empty experts, one token, `k = 1` and `k = E`.
# * Fine-grained experts keep parameters and FLOPs but multiply the number of expert combinations;
#   the counts above come from exact arithmetic, not from the source text.
# * Total vs active: Mixtral-8x7B's 46.7B / 12.9B follows from its config.
# * Equal FLOPs is not equal time: in decode the MoE layer reads the weights of every expert its
#   tokens touch.
#
# [Exercise 2](https://colab.research.google.com/github/dmcourse/dmcourse/blob/main/exercises/ex02_moe/ex02_moe.ipynb)
# (`exercises/ex02_moe`) asks you to write top-k routing, an MoE forward and the active-parameter count.
