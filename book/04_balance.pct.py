# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Routing collapse and load balancing
#
# A Mixture-of-Experts layer only pays off if its experts share the work. Nothing in the task loss
# asks for that: left alone, a router tends to send more and more tokens to the few experts that
# happened to be useful early, and the others starve. This chapter trains a small MoE on a toy
# task where experts *can* specialise, watches its router collapse, and then fixes it the ways
# real models do, each small and inline first, then with `dmcourse.balance`:
#
# 1. the **collapse** itself, and the rich-get-richer loop behind it;
# 2. the **Switch auxiliary loss** `alpha * N * sum_i f_i P_i`, its conventions, and the effect of `alpha`;
# 3. the **router z-loss**, which keeps router logits small;
# 4. **capacity factors and token dropping**: which tokens drop, and how many;
# 5. DeepSeek-V3's **auxiliary-loss-free** balancing with a selection-only bias, plus its small
#    sequence-wise loss;
# 6. **shared and fine-grained experts** in the same experiment;
#
# and closes with one table of every run's task loss and balance figures.
#
# Every training run here is small enough for a laptop CPU (a few seconds each); with a GPU the
# notebook trains longer on bigger batches. The numbers printed are from the machine that ran the
# notebook: the figures name it.

# %%
import copy
import datetime
import math
import time

import matplotlib.pyplot as plt
import torch

import dmcourse
from dmcourse import balance, capacity, moe_train, plot, routing, toy
from dmcourse import train as T

plot.use_style()
TODAY = datetime.date.today().isoformat()
CHAPTER_START = time.perf_counter()
info = dmcourse.device_info()
device = info.device
ON_GPU = device.type == "cuda"
print(info.summary(), "|", TODAY)

# Run sizes: CPU settings keep each run to seconds; a GPU trains longer on bigger batches.
if not ON_GPU:
    torch.set_num_threads(1)  # these matrices are tiny: one thread beats two that wait for each other
STEPS, BATCH, SEQ, LOG_EVERY = (1000, 64, 64, 10) if ON_GPU else (400, 16, 32, 5)
AMP = info.dtype if ON_GPU else None  # bf16 (fp16 on a T4) autocast on a GPU, fp32 on the CPU
print(f"{STEPS} steps of {BATCH} sequences x {SEQ} tokens = {BATCH * SEQ} tokens per step")

# %% [markdown]
# ## A task on which experts can specialise
#
# `dmcourse.toy.MixtureTask` is a regression problem made of 8 sub-tasks. Every token belongs to
# one of 8 **clusters**: its input `x` (16 numbers) lies near that cluster's centre, and its target
# (8 numbers) is that cluster's own random teacher network applied to the offset from the centre,
# plus (with weight `shared`) one teacher common to all clusters. A router that recognises the
# cluster and an expert that learns its teacher solve the task; one small network for everything
# does not. Each sequence draws its tokens from only 2 of the 8 clusters.
#
# One detail makes the task realistic for balancing: all centres share a large common component
# (`common`), the way hidden states of a real model share directions (contextual embeddings of
# unrelated words have a high cosine similarity, [Ethayarajh 2019](https://arxiv.org/abs/1909.00512)).
# To a fresh router all tokens then look alike:

# %%
task = toy.MixtureTask(shared=0.5)
print(task)
gen = torch.Generator().manual_seed(0)
sample = task.sample(BATCH, SEQ, gen)
print("x", tuple(sample.x.shape), " y", tuple(sample.y.shape), " cluster", tuple(sample.cluster.shape))
print("clusters of the first 3 sequences:", [sorted(set(row.tolist())) for row in sample.cluster[:3]])

flat = sample.x.reshape(-1, task.d_in)
cos = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1)
centred = flat - flat.mean(0)
cos_c = torch.nn.functional.cosine_similarity(centred[:, None], centred[None], dim=-1)
print(f"mean cosine similarity between two tokens' inputs: {cos.mean():.2f} "
      f"(after removing the mean input: {cos_c.mean():.2f})")

# %% [markdown]
# The model (`dmcourse.toy.toy_moe`) embeds the 16 inputs into `d_model = 32`, applies two
# residual blocks `h + MoE(RMSNorm(h))` and a linear head. Each MoE layer is the course's
# `dmcourse.moe.MoE` with 8 SwiGLU experts of hidden size 16 and top-2 routing, so a token uses
# as many FFN parameters as a dense SwiGLU of hidden size 32 (`toy_dense`), the dense baseline of
# this chapter.

# %%
BASE = dict(d_model=32, n_layers=2, n_experts=8, top_k=2, d_ff=16)
moe_model = toy.toy_moe(task, **BASE)
dense_model = toy.toy_dense(task, d_model=32, n_layers=2, d_ff=32)
moe0 = moe_train.moe_layers(moe_model)[0]
print(moe0)
print(f"MoE layer: {moe0.n_params():,} parameters, {moe0.n_active_params():,} used per token")
print(f"dense FFN: {sum(p.numel() for p in dense_model.ffns[0].parameters()):,} parameters, all used per token")

# %% [markdown]
# ## The trainer
#
# `dmcourse.train.train` is a plain AdamW loop that knows nothing about MoE; later chapters reuse
# it. It takes a model, a `batch_fn(step, generator)`, a `loss_fn(model, batch) -> (loss, metrics)`,
# a `TrainConfig`, and **hooks**: functions called after every optimiser step that may return
# numbers to record. It returns a `History` of the logged steps. The MoE pieces are a loss function
# and hooks:
#
# * `moe_loss_fn(Balancing(...))`: the task loss plus the balancing losses of this chapter, with
#   their coefficients; it always records each term, so runs can be compared;
# * `routing_stats_hook()`: per-expert load, max/mean, entropy, coefficient of variation and the
#   size of the router logits, from the routing each MoE layer kept of the step
#   (`moe.last_routing`);
# * `bias_update_hook(gamma)`: DeepSeek-V3's bias update (section 5).
#
# `run` below trains one configuration, evaluates it on held-out batches (the same for every run)
# and keeps everything in `RESULTS` for the closing table.

# %%
RESULTS: dict[str, dict] = {}
TRAIN_SECONDS = 0.0
STATS = moe_train.routing_stats_hook()


def run(name, balancing=moe_train.Balancing(), *, seed=0, dense=False, **arch):
    """Train one configuration from seed `seed`, evaluate it, store it in RESULTS[name]."""
    global TRAIN_SECONDS
    arch = {**BASE, **arch}
    dmcourse.seed_everything(seed)
    if dense:
        model, loss_fn, hooks = toy.toy_dense(task, d_model=32, n_layers=2, d_ff=32), T.task_loss_fn(), []
    else:
        model, loss_fn, hooks = toy.toy_moe(task, **arch), moe_train.moe_loss_fn(balancing), balancing.hooks() + [STATS]
    model.to(device)
    init = copy.deepcopy(model.state_dict())
    config = T.TrainConfig(steps=STEPS, lr=3e-3, log_every=LOG_EVERY, seed=seed, amp_dtype=AMP)
    t0 = time.perf_counter()
    history = T.train(model, task.batch_fn(BATCH, SEQ), loss_fn, config, hooks=hooks, desc=name)
    seconds = time.perf_counter() - t0
    TRAIN_SECONDS += seconds
    ev = T.evaluate(model, task.batch_fn(BATCH, SEQ), loss_fn, hooks=[] if dense else [STATS])
    if not dense:
        with moe_train.capacity_limited(model, 1.25):
            capped = T.evaluate(model, task.batch_fn(BATCH, SEQ), loss_fn, hooks=[STATS])
        ev["drop@1.25"], ev["task@1.25"] = capped["drop_rate"], capped["task"]
    RESULTS[name] = dict(model=model, history=history, eval=ev, arch=arch, dense=dense,
                         balancing=balancing, init=init, seconds=seconds)
    extra = "" if dense else f", max/mean load {ev['max_over_mean']:.2f}, dead experts {ev['dead']:.1f}"
    print(f"{name}: task loss {ev['task']:.3f}{extra} ({seconds:.1f} s)")
    return RESULTS[name]


# %% [markdown]
# ## 1. Collapse
#
# Two routers without any balancing: **Switch**-style top-1 (softmax over the experts, the token
# goes to the most probable one and its output is scaled by that probability), and
# **Mixtral**-style top-2 (the two largest logits, softmax over those two).

# %%
run("Switch top-1, none", router="softmax_topk", top_k=1)
run("Mixtral top-2, none", router="softmax")
run("dense, same active size", dense=True);


# %%
def load_over_steps(name, layer=0):
    h = RESULTS[name]["history"]
    return h.steps(f"load/{layer}"), torch.tensor(h[f"load/{layer}"])  # (logged steps, E)


fig, axes = plt.subplots(2, 2, figsize=(10, 6.2), sharex=True)
for col, name in enumerate(["Switch top-1, none", "Mixtral top-2, none"]):
    steps, load = load_over_steps(name)
    axes[0, col].stackplot(steps, load.T.numpy(), colors=plt.cm.tab10.colors[:load.shape[1]])
    axes[0, col].set(title=f"{name}: share of layer 0's assignments", ylim=(0, 1), ylabel="share per expert")
    h = RESULTS[name]["history"]
    axes[1, 0].plot(h.steps("max_over_mean"), h["max_over_mean"], label=name)
    axes[1, 1].plot(h.steps("entropy"), [e / math.log(8) for e in h["entropy"]], label=name)
axes[1, 0].set(xlabel="step", ylabel="max / mean load (1 = balanced)", title="busiest expert vs the mean")
axes[1, 1].set(xlabel="step", ylabel="entropy / ln E (1 = balanced)", title="load entropy", ylim=(0, 1.05))
axes[1, 0].legend()
for ax in axes.flat:
    plot.stamp(ax, info.name)
fig.tight_layout()
plt.show()


# %% [markdown]
# Read the top row left to right. The collapse is there within the first few steps: because all
# tokens look alike, whichever expert's router row happens to point along the shared direction wins for
# every token (top-1), or the same two do (top-2). What matters is what training does next: for a
# long stretch, nothing. The other experts come back only slowly and partly, as the task gradient
# teaches the router to tell the clusters apart. The bottom row says the same in two numbers that
# the rest of the chapter uses: **max/mean load** (how much more the busiest expert gets than a fair
# share; `E = 8` for top-1, `E / 2 = 4` for top-2, means everything goes to as few experts as
# possible) and the **entropy** of the load shares divided by `ln E` (1 for perfect balance, 0 for
# total collapse).
# `dmcourse.balance.load_stats` computes these (and the coefficient of variation, std/mean); here
# they are by hand on the final held-out routing:

# %%
def my_load_stats(indices, n_experts):
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts).double()
    share = counts / counts.sum()
    nz = share[share > 0]
    return {"share": share, "max_over_mean": float(share.max() * n_experts),
            "entropy": float(-(nz * nz.log()).sum()), "cv": float(share.std(unbiased=False) / share.mean())}


def eval_routings(name, batch=None):
    """Forward one held-out batch; return (batch, [routing of each MoE layer])."""
    model = RESULTS[name]["model"].eval()
    batch = batch or task.sample(BATCH, SEQ, torch.Generator().manual_seed(12345)).to(device)
    with torch.no_grad():
        model(batch.x)
    return batch, [m.last_routing for m in moe_train.moe_layers(model)]


for name in ["Switch top-1, none", "Mixtral top-2, none"]:
    _, routings = eval_routings(name)
    for layer, r in enumerate(routings):
        mine, ours = my_load_stats(r.indices.cpu(), 8), balance.load_stats(r.indices, 8)
        assert math.isclose(mine["max_over_mean"], ours.max_over_mean, rel_tol=1e-6)
        assert math.isclose(mine["entropy"], ours.entropy, rel_tol=1e-6, abs_tol=1e-9)
        assert math.isclose(mine["cv"], ours.cv, rel_tol=1e-6)
        top = ours.fraction.sort(descending=True).values
        print(f"{name}, layer {layer}: shares {[round(v, 2) for v in ours.fraction.tolist()]}; "
              f"top expert {top[0]:.0%}, top two {top[:2].sum():.0%}, "
              f"{ours.dead} of 8 experts get nothing")


# %% [markdown]
# ### Why it stays collapsed: the rich get richer
#
# The router only learns from the experts it picked. Say expert 3 gets most tokens early on:
#
# 1. expert 3 trains on those tokens and becomes better at them; the experts that were not picked
#    get **no gradient at all** from those tokens;
# 2. the router's gradient only compares the experts it picked, so nothing tells it that an idle
#    expert could do better (with top-1, the output is multiplied by expert 3's probability, and
#    raising it is the only move that helps when expert 3 is useful);
# 3. next step expert 3 is both more likely to be picked and more useful when picked.
#
# [Shazeer et al. (2017)](https://arxiv.org/abs/1701.06538) describe it as "self-reinforcing, as
# the favored experts are trained more rapidly and thus are selected even more". Whatever starts
# the imbalance (here the shared input direction; in general any early luck), the loop keeps it.
# The weights show who learned: how far each expert moved from its initialisation, next to the
# share of tokens it ended up with.

# %%
def expert_drift(name, layer=0):
    """Relative change of each expert's weights since initialisation: (E,)."""
    res = RESULTS[name]
    moe = moe_train.moe_layers(res["model"])[layer]
    prefix = f"ffns.{layer}."
    moved, start = torch.zeros(moe.n_experts), torch.zeros(moe.n_experts)
    for w in ("w_gate", "w_up", "w_down"):
        now, then = getattr(moe, w).detach().cpu(), res["init"][prefix + w].cpu()
        moved += (now - then).flatten(1).pow(2).sum(1)
        start += then.flatten(1).pow(2).sum(1)
    return (moved / start).sqrt()


name = "Switch top-1, none"
_, routings = eval_routings(name)
share = balance.load_stats(routings[0].indices, 8).fraction
drift = expert_drift(name)
fig, ax = plt.subplots(figsize=(7, 3.2))
x = torch.arange(8)
ax.bar(x - 0.2, share, 0.4, label="share of held-out tokens", color=plot.COLORS["moe"])
ax.bar(x + 0.2, drift, 0.4, label="relative weight change since init", color=plot.COLORS["dense"])
ax.set(xlabel="expert (layer 0)", title=f"{name}: who got tokens, who learned", xticks=x.tolist())
ax.legend()
plot.stamp(ax, info.name)
plt.show()
busy, idle = share > 0.05, share < 0.01
if busy.any() and idle.any():
    print(f"experts with > 5% of the tokens moved {drift[busy].mean():.2f} on average, "
          f"experts with < 1% moved {drift[idle].mean():.2f}")

# %% [markdown]
# A widely shared blog post on dense vs MoE inference says that without intervention "a feedback
# loop collapses almost all tokens onto one or two 'star' experts while the rest atrophy". The
# cell below checks that against the two runs above.

# %%
for name in ["Switch top-1, none", "Mixtral top-2, none"]:
    _, routings = eval_routings(name)
    two = [float(balance.load_stats(r.indices, 8).fraction.sort(descending=True).values[:2].sum()) for r in routings]
    dead = [balance.load_stats(r.indices, 8).dead for r in routings]
    verdict = "holds" if min(two) > 0.8 else "holds only in part"
    print(f"{name}: the two busiest experts take {', '.join(f'{t:.0%}' for t in two)} of layer 0, 1's "
          f"assignments; dead experts per layer: {dead} -> the claim {verdict} here")
print(f"task loss (held out): Switch top-1 {RESULTS['Switch top-1, none']['eval']['task']:.3f}, "
      f"Mixtral top-2 {RESULTS['Mixtral top-2, none']['eval']['task']:.3f}, "
      f"dense FFN of the same active size {RESULTS['dense, same active size']['eval']['task']:.3f}")


# %% [markdown]
# Whether "one or two experts" is literally true depends on the router and the layer, as printed:
# our top-1 router keeps most tokens on very few experts, the top-2 router spreads them over more
# but still leaves experts idle. The source also presents the feedback loop as what *causes* the
# collapse; in our runs it is what *keeps* an imbalance that the input geometry created at step 0.
# Either way the model wastes experts, and the printed task losses show what that costs next to a
# dense FFN of the same active size.
#
# ## 2. The Switch auxiliary loss
#
# [Switch Transformer](https://arxiv.org/abs/2101.03961) (Fedus et al., eq. 4-6) adds to the task
# loss
#
# $$\text{loss}_\text{aux} = \alpha \cdot N \cdot \sum_{i=1}^{N} f_i \, P_i$$
#
# over `N` experts, where `f_i` is the fraction of tokens **assigned** to expert `i` (counted from
# the top-1 choice: no gradient) and `P_i` the **mean router probability** of expert `i` over the
# batch (differentiable). The gradient lowers `P_i` in proportion to `f_i`: busy experts get less
# probability. At perfect balance `f_i = P_i = 1/N` and the sum is `N * N * (1/N^2) = 1`.
#
# With top-k routing `f_i` can be normalised two ways, and both are in use:
#
# | convention | `f_i` | value at perfect balance | used by |
# |---|---|---|---|
# | `"switch"` | share of tokens whose one expert is `i` (k = 1) | 1 | the Switch paper |
# | `"hf"` | assignments to `i` / tokens (sums to `k`) | `k` | `transformers`' `load_balancing_loss_func` (Mixtral, Qwen-MoE, OLMoE, ...) |
# | `"divide_by_k"` | assignments to `i` / (`k` x tokens) (sums to 1) | 1 | e.g. DeepSeek's `f_i` (section 5) |
#
# The factor `k` matters because it rescales `alpha`: a coefficient tuned under one convention is
# `k` times too strong or too weak under the other. `transformers` also **pools layers**: given
# the logits of every MoE layer it concatenates their tokens into one `f` and one `P`, which is not
# the mean of per-layer losses, and it leaves padding tokens (attention mask 0) out of both.
# `dmcourse.balance.load_balancing_loss` takes the convention as a required argument; inline:

# %%
def my_aux_loss(logits, k, convention):
    """N * sum_i f_i P_i for logits (T, N), top-k of the softmax."""
    n_tokens, n_experts = logits.shape
    probs = torch.softmax(logits.float(), dim=-1)
    chosen = probs.topk(k, dim=-1).indices
    f = torch.bincount(chosen.reshape(-1), minlength=n_experts).float() / n_tokens  # sums to k
    if convention == "divide_by_k":
        f = f / k
    return n_experts * (f * probs.mean(0)).sum()


logits = 2 * torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
for k, conventions in [(1, ["switch", "hf", "divide_by_k"]), (2, ["hf", "divide_by_k"])]:
    for conv in conventions:
        mine = my_aux_loss(logits, k, "hf" if conv == "switch" else conv)
        ours = balance.load_balancing_loss(logits, k, convention=conv)
        assert torch.allclose(mine, ours), (k, conv)
        print(f"k={k} {conv:>12}: {float(ours):.4f}")

uniform = torch.zeros(64, 8)  # P_i = 1/8 for every expert...
balanced = (torch.arange(64)[:, None] * 2 + torch.arange(2)) % 8  # ...and every expert gets 16 of 128 slots
for conv in ["hf", "divide_by_k"]:
    print(f"perfect balance, k=2, {conv}: {float(balance.load_balancing_loss(uniform, convention=conv, indices=balanced)):.3f}")
collapsed = torch.full((64, 8), -20.0)
collapsed[:, 0] = 20.0
print(f"total collapse, k=1, switch: {float(balance.load_balancing_loss(collapsed, 1, convention='switch')):.3f} (= N)")

try:  # transformers is not needed to read the course; when it is installed, compare with it
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    layers = tuple(2 * torch.randn(3 * 10, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 6:] = 0  # padding
    hf = load_balancing_loss_func(layers, 8, 2, mask)
    ours = balance.load_balancing_loss(layers, 2, convention="hf", attention_mask=mask)
    assert torch.allclose(hf, ours)
    print(f"transformers' Mixtral loss on 3 layers with padding: {float(hf):.5f}, ours: {float(ours):.5f}")
    from transformers import MixtralConfig, OlmoeConfig, Qwen3MoeConfig

    print("transformers' default coefficient (router_aux_loss_coef): " + ", ".join(
        f"{cfg.model_type} {cfg().router_aux_loss_coef:g}" for cfg in (MixtralConfig, Qwen3MoeConfig, OlmoeConfig)))
except ImportError:
    print("transformers is not installed: tests/test_balance.py checks the equality")

# %% [markdown]
# `tests/test_balance.py` checks all of this against the `transformers` functions for Mixtral,
# Qwen3-MoE, OLMoE and Switch Transformers on random logits, with and without padding.
#
# Now the cure. The Switch top-1 run again with the paper's `alpha = 0.01`, and the Mixtral top-2
# model with `alpha` from 0.001 to 1 under the `"hf"` convention (the one `transformers` trains
# with; its default coefficients, printed above from its config classes, are 0.001 for Mixtral and
# Qwen3-MoE and 0.01 for OLMoE):

# %% [markdown]
# **Two `transformers` pitfalls.** `MixtralForCausalLM` (and the other MoE models built the same
# way) computes the aux loss only when the forward is called with `output_router_logits=True`, and
# adds it to the returned loss only when `labels` are passed too; the flag defaults to the config's
# `output_router_logits`, which is `false` in
# [Mixtral-8x7B's released config](https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json).
# Fine-tune it with the defaults and nothing balances its routers. And the coefficient: that config
# sets `router_aux_loss_coef` to 0.02, not the class default printed above (read from the installed
# `transformers` in the cell below), so a model built from `MixtralConfig()` is not trained like the
# released one. The cell checks both on a tiny random Mixtral:

# %%
try:
    from transformers import MixtralConfig, MixtralForCausalLM

    default = MixtralConfig()
    print(f"MixtralConfig() defaults: router_aux_loss_coef = {default.router_aux_loss_coef:g}, "
          f"output_router_logits = {default.output_router_logits}")
    tiny_cfg = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
                             num_experts_per_tok=2, router_aux_loss_coef=0.02)
    torch.manual_seed(0)
    tiny = MixtralForCausalLM(tiny_cfg).eval()
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        plain = tiny(ids, labels=ids)
        with_aux = tiny(ids, labels=ids, output_router_logits=True)
        no_labels = tiny(ids, output_router_logits=True)
    print(f"loss with labels only: {float(plain.loss):.4f} (aux_loss: {plain.aux_loss})")
    print(f"with output_router_logits=True: {float(with_aux.loss):.4f} = {float(plain.loss):.4f} + "
          f"{tiny_cfg.router_aux_loss_coef:g} x aux {float(with_aux.aux_loss):.4f}")
    assert torch.allclose(with_aux.loss, plain.loss + tiny_cfg.router_aux_loss_coef * with_aux.aux_loss)
    print(f"without labels: loss {no_labels.loss}, aux_loss {float(no_labels.aux_loss):.4f} computed but added to nothing")
except ImportError:
    print("transformers is not installed: see the text above")

# %%
run("Switch top-1, aux 0.01", moe_train.Balancing(aux_alpha=0.01, aux_convention="switch"), router="softmax_topk", top_k=1)
ALPHAS = [0.001, 0.01, 0.1, 1.0]
for alpha in ALPHAS:
    run(f"Mixtral top-2, aux {alpha:g}", moe_train.Balancing(aux_alpha=alpha, aux_convention="hf"), router="softmax")

# %%
names = ["Mixtral top-2, none"] + [f"Mixtral top-2, aux {a:g}" for a in ALPHAS]
xs = [ALPHAS[0] / 10] + ALPHAS  # alpha = 0 drawn one decade left of the smallest alpha, labelled "0"
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
ax1.plot(xs, [RESULTS[n]["eval"]["max_over_mean"] for n in names], "o-", color=plot.COLORS["moe"])
ax1.set(xscale="log", xlabel="alpha", ylabel="max / mean load",
        title="balance vs alpha (held out)")
ax2.plot(xs, [RESULTS[n]["eval"]["task"] for n in names], "o-", color=plot.COLORS["moe"], label="MoE top-2")
ax2.axhline(RESULTS["dense, same active size"]["eval"]["task"], color=plot.COLORS["dense"], ls="--",
            label="dense, same active size")
ax2.set(xscale="log", xlabel="alpha", ylabel="task loss (held out)",
        title="task loss vs alpha")
ax2.legend()
for ax in (ax1, ax2):
    ax.set_xticks(xs, ["0"] + [f"{a:g}" for a in ALPHAS])
    ax.minorticks_off()
    plot.stamp(ax, info.name)
fig.tight_layout()
plt.show()
best = min(names, key=lambda n: RESULTS[n]["eval"]["task"])
print(f"best task loss: {best} ({RESULTS[best]['eval']['task']:.3f}); "
      f"largest alpha: {RESULTS[names[-1]]['eval']['task']:.3f}; no aux loss: {RESULTS[names[0]]['eval']['task']:.3f}")
print(f"Switch top-1: task loss {RESULTS['Switch top-1, none']['eval']['task']:.3f} -> "
      f"{RESULTS['Switch top-1, aux 0.01']['eval']['task']:.3f} with alpha = 0.01, max/mean load "
      f"{RESULTS['Switch top-1, none']['eval']['max_over_mean']:.2f} -> {RESULTS['Switch top-1, aux 0.01']['eval']['max_over_mean']:.2f}")


# %% [markdown]
# The aux loss is a second objective pulling on the same router weights as the task. A very small
# `alpha` hardly moves the collapse; a large one buys balance whatever the tokens need, and the
# task pays (compare the printed losses of the best and the largest `alpha`). The useful range sits
# in between, and it depends on the convention (`"hf"` counts `k` times more than
# `"divide_by_k"`), on `k` and on the model, which is why papers quote it with their own
# normalisation.
#
# ## 3. Router z-loss
#
# [ST-MoE](https://arxiv.org/abs/2202.08906) (Zoph et al.) adds
#
# $$\text{loss}_z = \frac{1}{T}\sum_{t=1}^{T}\Big(\log\sum_{i=1}^{N} e^{\ell_{t,i}}\Big)^2$$
#
# on the router **logits** `l` (probabilities always sum to 1 and carry no scale), with
# coefficient 0.001. It does not balance anything: it keeps the logits' log-sum-exp near 0, so
# the logits stay small. Small logits matter because the router's softmax is computed in limited
# precision: a logit rounded to bf16 (8 significant bits) is off by up to `|l| * 2^-8`, and
# `exp` turns that absolute error into a relative error of the probability. Measured here:

# %%
def my_z_loss(logits):
    return (torch.logsumexp(logits.float(), dim=-1) ** 2).mean()


assert torch.allclose(my_z_loss(logits), balance.router_z_loss(logits))
scales = [1, 3, 10, 30, 100]
errors = []
for s in scales:
    l64 = (s * torch.randn(4096, 8, generator=torch.Generator().manual_seed(1))).double()
    p_exact = torch.softmax(l64, dim=-1)
    p_bf16 = torch.softmax(l64.to(torch.bfloat16).double(), dim=-1)  # logits stored in bf16
    errors.append(float((p_bf16 - p_exact).abs().max()))
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.loglog(scales, errors, "o-", color=plot.COLORS["measured"])
ax.set(xlabel="logit scale (std)", ylabel="max |error| of a probability",
       title="router probabilities from bf16 logits")
plot.stamp(ax, info.name)
plt.show()

# %% [markdown]
# Our routers compute the softmax in float32 (`dmcourse.routing` casts the logits first; Switch
# calls this "selective precision"), so the toy is not at risk. What the z-loss does to training is
# still visible: the Mixtral model with `alpha = 0.01` again, now with ST-MoE's z-loss coefficient
# 0.001.

# %%
run("Mixtral top-2, aux 0.01 + z 0.001", moe_train.Balancing(aux_alpha=0.01, aux_convention="hf", z_coef=1e-3), router="softmax")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
for name, color in [("Mixtral top-2, aux 0.01", plot.COLORS["moe"]),
                    ("Mixtral top-2, aux 0.01 + z 0.001", plot.COLORS["dense"])]:
    h = RESULTS[name]["history"]
    ax1.plot(h.steps("z"), [math.sqrt(v) for v in h["z"]], color=color, label=name)
    ax2.plot(h.steps("logit_max"), h["logit_max"], color=color, label=name)
ax1.set(xlabel="step", ylabel="rms of log-sum-exp of the logits", title="what the z-loss penalises")
ax2.set(xlabel="step", ylabel="mean of each token's largest logit", title="router logits")
ax1.legend()
for ax in (ax1, ax2):
    plot.stamp(ax, info.name)
fig.tight_layout()
plt.show()
for name in ["Mixtral top-2, aux 0.01", "Mixtral top-2, aux 0.01 + z 0.001"]:
    ev = RESULTS[name]["eval"]
    print(f"{name}: z-loss {ev['z']:.2f}, largest logit {ev['logit_max']:+.2f}, task loss {ev['task']:.3f}, "
          f"max/mean load {ev['max_over_mean']:.2f}")


# %% [markdown]
# Without the z-loss the log-sum-exp drifts up as the router grows more confident; with it both
# curves stay lower. Because softmax ignores a constant added to all logits, the cheapest way to
# lower the log-sum-exp is to shift every logit down, which the right panel shows early in
# training. In a toy trained in float32 for a few hundred steps the growth is mild; ST-MoE
# introduced the loss for large sparse models, where it reports that the z-loss stabilised training
# without degrading quality.
#
# ## 4. Capacity factor and token dropping
#
# Hardware likes fixed shapes. Switch and GShard give every expert a fixed buffer of
#
# $$C = \Big\lceil \text{capacity factor} \cdot \frac{T \cdot k}{E} \Big\rceil$$
#
# slots for a batch of `T` tokens (`dmcourse.capacity.expert_capacity`); capacity factor 1 is exactly
# the fair share. Assignments beyond an expert's `C` are **dropped**: the token loses that expert's
# term of `y_t = sum_j w_j Expert_j(x_t)`, and nothing else. With top-2, a token whose second choice
# drops still gets its first expert's output (with its weight, not renormalised); only a token whose
# *all* `k` assignments drop leaves the layer with nothing added, carried to the next layer by the
# residual connection alone. (`tests/test_capacity_drop.py` checks both on `dmcourse.moe.MoE`.)
#
# **Per batch or per sequence?** `T` is whatever set of tokens shares the slots. Here it is every
# token of one forward, the batch flattened, because that is what an expert's buffer holds when the
# layer runs once per batch: a sequence heavy on one expert can then use slots that other sequences
# left free. `transformers`' Switch Transformers router counts per *sequence*
# (`expert_capacity` slots per sequence: its cumulative sum runs along each sequence), and GShard per
# "group" of tokens. Counting per sequence is stricter when sequences are not individually balanced,
# as here (each uses 2 of the 8 clusters); the cell after the next prints both.
# *Which* assignments drop is a choice of order (`dmcourse.capacity.capacity_mask`):
#
# * `"position"`: first come, first served in token order (Switch; `transformers`'
#   `SwitchTransformersTop1Router` does this with a cumulative sum over the sequence; its
#   docstring says tokens are "sorted by router_probs", but the code keeps them in position order,
#   which the tests check);
# * `"choice"`: all first choices before any second choice (GShard's top-2);
# * `"score"`: the highest routing weights first (Megatron-LM's `drop_policy="probs"`).
#
# Inline, the position order is a counter per expert:

# %%
def my_capacity_keep(indices, n_experts, capacity):
    """Position order: each expert keeps the first `capacity` (token, slot) pairs that chose it."""
    used = [0] * n_experts
    keep = torch.zeros(indices.shape, dtype=torch.bool)
    for t in range(indices.shape[0]):
        for j in range(indices.shape[1]):
            e = int(indices[t, j])
            keep[t, j] = used[e] < capacity
            used[e] += 1
    return keep


batch, routings = eval_routings("Mixtral top-2, none")
r0 = routings[0]
cap = capacity.expert_capacity(r0.n_tokens, 8, 2, 1.0)
keep = capacity.capacity_mask(r0.indices, 8, cap, order="position")
assert torch.equal(keep.cpu(), my_capacity_keep(r0.indices.cpu(), 8, cap))
print(f"T = {r0.n_tokens} tokens, k = 2, E = 8, capacity factor 1 -> C = {cap} slots per expert; "
      f"collapsed model, layer 0: {capacity.drop_rate(keep):.0%} of assignments dropped")

# %%
per_token = (~keep).sum(-1)  # dropped assignments of each token: 0, 1 or 2
print(f"capacity factor 1, collapsed model, layer 0: {capacity.drop_rate(keep):.0%} of assignments dropped; "
      f"{float((per_token == 1).float().mean()):.0%} of tokens lose one of their 2 experts (the other still "
      f"contributes), {float((per_token == 2).float().mean()):.0%} lose both and ride the residual alone")
seq_cap = capacity.expert_capacity(SEQ, 8, 2, 1.0)  # the same factor, counted per sequence of SEQ tokens
keep_seq = torch.cat([capacity.capacity_mask(rows, 8, seq_cap) for rows in r0.indices.view(BATCH, SEQ, 2)])
print(f"counted per sequence ({seq_cap} slots per expert per sequence of {SEQ} tokens) instead of per batch "
      f"({cap} per batch of {r0.n_tokens}): {capacity.drop_rate(keep_seq):.0%} dropped instead of "
      f"{capacity.drop_rate(keep):.0%}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for ax, order in zip(axes, ["position", "score"]):
    k_mask = capacity.capacity_mask(r0.indices, 8, cap, order=order, weights=r0.weights)
    dropped = (~k_mask).sum(-1).view(BATCH, SEQ).cpu()
    im = ax.imshow(dropped, aspect="auto", cmap="Reds", vmin=0, vmax=2, interpolation="nearest")
    ax.set(title=f'order="{order}"', xlabel="position in sequence")
    ax.grid(False)
    plot.stamp(ax, info.name)
axes[0].set_ylabel("sequence in the batch")
fig.colorbar(im, ax=axes, ticks=[0, 1, 2], shrink=0.8, label="dropped assignments of the token")
plt.show()

# %% [markdown]
# With position order the drops pile up at the end of the batch: a token's fate depends on where it
# sits, not on how much it needs the expert (and in a causal model the last positions of a batch
# are no less important). Score order spreads the drops over the tokens the router was least
# sure about. How many assignments drop depends on the capacity factor and above all on balance:

# %%
CFS = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0]
COMPARE = ["Mixtral top-2, none", "Mixtral top-2, aux 0.01"]
fig, ax = plt.subplots(figsize=(6.4, 3.6))
for name, color in zip(COMPARE, [plot.COLORS["moe"], plot.COLORS["dense"]]):
    _, rs = eval_routings(name)
    rates = [sum(capacity.drop_rate(capacity.capacity_mask(r.indices, 8, capacity.expert_capacity(r.n_tokens, 8, 2, cf)))
                 for r in rs) / len(rs) for cf in CFS]
    ax.plot(CFS, rates, "o-", color=color, label=name)
ax.set(xlabel="capacity factor", ylabel="share of assignments dropped", title="drop rate vs capacity factor (held out)")
ax.legend()
plot.stamp(ax, info.name)
plt.show()

for name in COMPARE:
    model = RESULTS[name]["model"]
    row = []
    for cf in [1.0, 1.25, 2.0]:
        with moe_train.capacity_limited(model, cf):
            ev = T.evaluate(model, task.batch_fn(BATCH, SEQ), moe_train.moe_loss_fn(), hooks=[STATS])
        row.append(f"CF {cf:g}: {ev['task']:.3f} ({ev['drop_rate']:.0%} dropped)")
    print(f"{name}: task loss dropless {RESULTS[name]['eval']['task']:.3f} | " + " | ".join(row))


# %% [markdown]
# The better balanced router drops fewer assignments at every capacity factor, and its task loss
# suffers less from a fixed capacity; the collapsed one overflows its busiest experts at any
# practical factor.
#
# The alternative is not to drop at all. [The MoE chapter](03_moe.ipynb)'s dispatch (sort the
# assignments by expert, then one grouped GEMM or one matmul per expert) handles any number of
# tokens per expert; this is what "dropless" MoE implementations
# ([MegaBlocks](https://arxiv.org/abs/2211.15841), and the MoE layers of `transformers` and of this
# course) do. Dropless does not make imbalance free: when experts run in parallel, on different
# GPUs or as blocks of one kernel, the step waits for the busiest expert, so its time grows with
# max/mean load ([the expert-parallel chapter](08_parallel.ipynb) measures this). DeepSeek-V3 is
# dropless too: its report (§2.1.2, "No Token-Dropping") says it drops no tokens in training, thanks
# to its balancing, and none in inference, thanks to how it deploys the experts.
#
# ## 5. Auxiliary-loss-free balancing (DeepSeek-V3)
#
# [DeepSeek-V3](https://arxiv.org/abs/2412.19437) (§2.1.2) scores experts with a sigmoid,
# `s_i = sigmoid(l_i)`, and adds a per-expert **bias** `b_i` *only to choose* them:
#
# * selection: the top-k of `s_i + b_i`;
# * gating weights: the **unbiased** `s_i` of the chosen experts, normalised over them;
# * after each step: `b_i += gamma * sign(mean load - load_i)` (overloaded experts become less
#   attractive, idle ones more).
#
# The bias gets no gradient and never enters the output, so the task gradient is the one the
# unbiased router would see for those experts. The paper (§4.2) uses `gamma = 0.001` for the first
# 14.3T training tokens and `gamma = 0` for the last 500B: the bias is frozen for the end of
# training. Our runs are a few hundred steps, so we use `gamma = 0.01` throughout. Inline, one update and the
# biased selection (`dmcourse.routing.sigmoid_topk` is the course's router):

# %%
def my_bias_update(bias, load, gamma):
    return bias + gamma * torch.sign(load.float().mean() - load.float())


def my_biased_topk(logits, bias, k):
    s = torch.sigmoid(logits.float())
    chosen = (s + bias).topk(k, dim=-1).indices  # the bias picks...
    w = s.gather(1, chosen)  # ...the unbiased scores weigh
    return chosen, w / w.sum(-1, keepdim=True)


bias = torch.tensor([0.0, 0.1, -0.1, 0.0])
load = torch.tensor([40, 10, 20, 30])
assert torch.equal(my_bias_update(bias, load, 0.01), balance.bias_update(bias, load, 0.01))
print("loads", load.tolist(), "-> bias", [round(v, 3) for v in my_bias_update(bias, load, 0.01).tolist()])
lg = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
chosen, w = my_biased_topk(lg, bias, 2)
ours = routing.sigmoid_topk(lg, 2, bias=bias)
assert torch.equal(chosen, ours.indices) and torch.allclose(w, ours.weights)

# %% [markdown]
# Training: the sigmoid router without balancing, with the bias, and with the bias plus
# DeepSeek-V3's small sequence-wise loss (below).

# %%
SIG = dict(router="sigmoid")
run("DeepSeek sigmoid, none", **SIG)
run("DeepSeek sigmoid, bias 0.01", moe_train.Balancing(bias_gamma=0.01), **SIG)
run("DeepSeek sigmoid, bias 0.01 + seq 1e-4", moe_train.Balancing(bias_gamma=0.01, seq_alpha=1e-4), **SIG)

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for ax, name in zip(axes[:2], ["DeepSeek sigmoid, none", "DeepSeek sigmoid, bias 0.01"]):
    steps, load = load_over_steps(name)
    ax.stackplot(steps, load.T.numpy(), colors=plt.cm.tab10.colors[:8])
    ax.set(title=f"{name}\nshare of layer 0's assignments", ylim=(0, 1), xlabel="step")
h = RESULTS["DeepSeek sigmoid, bias 0.01"]["history"]
bias_steps, biases = h.steps("bias/0"), torch.tensor(h["bias/0"])
for e in range(8):
    axes[2].plot(bias_steps, biases[:, e], color=plt.cm.tab10.colors[e])
axes[2].set(title="the bias of each expert (layer 0)", xlabel="step", ylabel="b_i")
for ax in axes:
    plot.stamp(ax, info.name)
fig.tight_layout()
plt.show()
for name in ["DeepSeek sigmoid, none", "DeepSeek sigmoid, bias 0.01"]:
    ev = RESULTS[name]["eval"]
    print(f"{name}: task loss {ev['task']:.3f}, max/mean load {ev['max_over_mean']:.2f}, entropy/ln E "
          f"{ev['entropy'] / math.log(8):.2f}")

# %% [markdown]
# The biases spread out within the first steps and then hover: each step moves every bias by
# exactly `gamma`, up or down, so they never settle; balance is only as good as a step of size
# `gamma` allows, and per batch it is limited by how many tokens of each kind the batch holds.
#
# **How much does the bias change the routing?** It changes *which* experts some tokens get:

# %%
batch, rs = eval_routings("DeepSeek sigmoid, bias 0.01")
for layer, (m, r) in enumerate(zip(moe_train.moe_layers(RESULTS["DeepSeek sigmoid, bias 0.01"]["model"]), rs)):
    unbiased = routing.sigmoid_topk(r.logits, 2)
    changed = (r.indices.sort(-1).values != unbiased.indices.sort(-1).values).any(-1).float().mean()
    s = r.scores.gather(1, r.indices)
    assert torch.allclose(r.weights, s / s.sum(-1, keepdim=True)), "weights from the unbiased scores"
    print(f"layer {layer}: bias range {float(m.router.bias.min()):+.3f} .. {float(m.router.bias.max()):+.3f}; "
          f"{float(changed):.0%} of tokens get a different expert pair than the unbiased top-2 would give")

# %% [markdown]
# So the bias does steer tokens; what it never does is add a gradient that trades task loss for
# balance, or change the weights the chosen experts are mixed with.
#
# ### "A primal-dual optimization in disguise"?
#
# The source text calls the bias update "a primal-dual optimization in disguise". For the
# *selection* step this can be made exact. Take one batch of fixed scores `s` and ask for the
# assignment that maximises the total score of the chosen experts subject to every expert
# getting its fair share `C = T k / E`. Relax the constraint with one multiplier per expert,
# written as `-b_i`: for fixed `b` the best assignment is, token by token, the top-k of `s + b`,
# exactly the biased selection. The dual function
#
# $$D(b) = \sum_t \text{top-}k\text{-sum}(s_t + b) - C \sum_i b_i$$
#
# is an upper bound on the best balanced total for **every** `b`, its subgradient in `b_i` is
# `load_i - C`, and `b_i += gamma * sign(C - load_i)` is a sign-subgradient step that lowers it.
# When the loads are exactly balanced the biased assignment is feasible and its total equals
# `D(b)`: it is then the optimal balanced assignment. Checked on the scores of the unbalanced
# sigmoid router:

# %%
_, rs = eval_routings("DeepSeek sigmoid, none")
scores = rs[0].scores.double().cpu()  # (T, E) sigmoid scores of layer 0, held fixed
n_tok, n_exp, k = scores.shape[0], 8, 2
C = n_tok * k / n_exp
b = torch.zeros(n_exp, dtype=torch.float64)
dual, primal, ratio = [], [], []
for it in range(300):
    chosen = (scores + b).topk(k, dim=-1).indices
    load = torch.bincount(chosen.reshape(-1), minlength=n_exp).double()
    dual.append(float((scores + b).topk(k, dim=-1).values.sum() - C * b.sum()))
    primal.append(float(scores.gather(1, chosen).sum()))
    ratio.append(float(load.max() / C))
    b = balance.bias_update(b, load, 0.002)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
ax1.plot(dual, label="dual bound D(b)", color=plot.COLORS["dense"])
ax1.plot(primal, label="total score of the biased choice", color=plot.COLORS["moe"])
ax1.set(xlabel="bias update", ylabel="sum of chosen scores", title="fixed scores: dual bound and choice meet")
ax1.legend()
ax2.plot(ratio, color=plot.COLORS["measured"])
ax2.set(xlabel="bias update", ylabel="max load / C", title="balance of the biased choice")
for ax in (ax1, ax2):
    plot.stamp(ax, info.name)
fig.tight_layout()
plt.show()
print(f"unbiased top-2: total score {primal[0]:.1f}, max load / C {ratio[0]:.2f}")
print(f"after {len(dual)} updates: total score {primal[-1]:.1f}, max load / C {ratio[-1]:.2f}; lowest dual "
      f"bound {min(dual):.1f} (no balanced assignment can score more); they differ by "
      f"{abs(primal[-1] - min(dual)) / min(dual):.2%}")


# %% [markdown]
# The description fits the selection: the bias is the vector of (negated) dual variables of the
# balanced-assignment problem, updated by sign-subgradient steps. Two qualifications: during
# training the scores move every step (the router is trained by the task loss, not by this
# problem), so the bias tracks a moving target; and a constant-size sign step never converges, it
# oscillates within about `gamma` of the dual optimum. The source's next sentence, that this "is
# one reason DeepSeek trains stably at extreme scale", we cannot check: the DeepSeek-V3 report
# says its training had no irrecoverable loss spikes but does not attribute that to the bias
# balancer, and a toy cannot test it.
#
# ### The sequence-wise balance loss
#
# DeepSeek-V3 keeps a small "complementary" loss against imbalance *within one sequence* (§2.1.2): per sequence
# of `S` tokens, `sum_i f_i P_i` with `f_i = N / (k S) * count_i` and `P_i` the mean over the
# sequence of the scores normalised per token, `s_ti / sum_j s_tj`; averaged over sequences and
# multiplied by `alpha = 0.0001`. It is 1 when every sequence spreads its tokens evenly. Which
# experts `count_i` counts is a convention: the paper's eq. 18 counts the top-k of the *unbiased*
# scores `s` (`dmcourse.balance.unbiased_topk`), while the experts actually used are the top-k of
# `s + b`. `dmcourse.balance.sequence_wise_balance_loss` counts exactly the `indices` it is given, and
# the course's trainer (`dmcourse.moe_train.moe_loss_fn`) gives it the experts actually chosen. The two
# differ only for the tokens whose choice the bias changed (printed above); the cell below prints
# the loss both ways.

# %%
def my_seq_loss(scores, indices):
    """scores (B, S, E) >= 0, indices (B, S, k) -> mean over sequences of sum_i f_i P_i."""
    b_, s_, e_ = scores.shape
    k_ = indices.shape[-1]
    counts = torch.zeros(b_, e_).scatter_add_(1, indices.reshape(b_, -1), torch.ones(b_, s_ * k_))
    f = e_ / (k_ * s_) * counts
    p = (scores / scores.sum(-1, keepdim=True)).mean(1)
    return (f * p).sum(-1).mean()


r = eval_routings("DeepSeek sigmoid, bias 0.01")[1][0]
sc, ix = r.scores.view(BATCH, SEQ, 8).cpu(), r.indices.view(BATCH, SEQ, 2).cpu()
assert torch.allclose(my_seq_loss(sc, ix), balance.sequence_wise_balance_loss(sc, ix))
for name in ["DeepSeek sigmoid, none", "DeepSeek sigmoid, bias 0.01", "DeepSeek sigmoid, bias 0.01 + seq 1e-4"]:
    ev = RESULTS[name]["eval"]
    print(f"{name}: sequence-wise loss {ev['seq']:.2f} (1 = every sequence balanced), task loss {ev['task']:.3f}")
paper_ix = balance.unbiased_topk(sc, 2)
print(f"bias 0.01 run, layer 0, one held-out batch: {float(balance.sequence_wise_balance_loss(sc, ix)):.3f} counting "
      f"the experts chosen (s + b, the trainer's convention), {float(balance.sequence_wise_balance_loss(sc, paper_ix)):.3f} "
      "counting the unbiased top-k (the paper's)")

# %% [markdown]
# Our sequences are unbalanced by construction (each uses 2 of the 8 clusters), so a router that
# specialises *must* be unbalanced within a sequence; the bias balances the batch, not the
# sequence. That is why the sequence-wise coefficient has to be tiny: a large one fights the very
# specialisation we want. One more run shows the price of a large coefficient:

# %%
run("DeepSeek sigmoid, bias 0.01 + seq 0.1", moe_train.Balancing(bias_gamma=0.01, seq_alpha=0.1), **SIG)
for name in ["DeepSeek sigmoid, bias 0.01 + seq 1e-4", "DeepSeek sigmoid, bias 0.01 + seq 0.1"]:
    ev = RESULTS[name]["eval"]
    print(f"{name}: sequence-wise loss {ev['seq']:.2f}, task loss {ev['task']:.3f}")

# %% [markdown]
# ## 6. Shared and fine-grained experts
#
# [DeepSeekMoE](https://arxiv.org/abs/2401.06066) adds two ideas that DeepSeek-V3 keeps:
#
# * **fine-grained experts**: split each expert into `m` smaller ones and route to `m` times as many,
#   same parameters and FLOPs, many more combinations;
# * **shared experts**: one or more experts every token always uses, meant to hold what all tokens
#   need so the routed experts can specialise.
#
# Same experiment, same total and active expert parameters as the 8 x 16, top-2 layer (the printed
# counts differ only by the router, one row per routed expert): 16 experts of hidden size 8 with
# top-4; and 1 shared expert of size 8 plus 15 routed experts of size 8 with top-3. Both use the sigmoid router with the bias balancer. Our task has a part common to all
# clusters (`shared=0.5`), which a shared expert can learn once.

# %%
FINE = dict(router="sigmoid", n_experts=16, top_k=4, d_ff=8)
FINE_SHARED = dict(router="sigmoid", n_experts=15, top_k=3, d_ff=8, n_shared_experts=1)
for label, arch in [("8 x 16, top-2", BASE), ("16 x 8, top-4", FINE), ("1 shared + 15 x 8, top-3", FINE_SHARED)]:
    m = moe_train.moe_layers(toy.toy_moe(task, **{**BASE, **arch}))[0]
    print(f"{label:>26}: {m.n_params():,} parameters, {m.n_active_params():,} active per token")
run("fine-grained 16 x 8 top-4, bias 0.01", moe_train.Balancing(bias_gamma=0.01), **FINE)
run("shared + fine 1 + 15 x 8 top-3, bias 0.01", moe_train.Balancing(bias_gamma=0.01), **FINE_SHARED);

# %% [markdown]
# The source text motivates fine-grained experts by counting combinations: "With 8 active out of
# 256, you have C(256,8) ≈ 4.3 billion possible combinations — compared to C(8,2) = 28 for
# Mixtral". The counts:

# %%
print(f"C(256, 8) = {math.comb(256, 8):.3e}   C(8, 2) = {math.comb(8, 2)}   C(64, 8) = {math.comb(64, 8):.3e}   "
      f"C(256, 8) / C(64, 8) = {math.comb(256, 8) / math.comb(64, 8):.2e}")
print(f"our layers: C(8, 2) = {math.comb(8, 2)}, C(16, 4) = {math.comb(16, 4)}, C(15, 3) = {math.comb(15, 3)}")

# %% [markdown]
# C(8, 2) = 28 is right, but C(256, 8) is about 4 x 10^14, not 4.3 billion: the quoted figure is
# close to C(64, 8), about a hundred thousand times smaller (the ratio is printed). (DeepSeek-V3
# also restricts each token to experts in at most 4 of 8 groups, which lowers the count, though not
# to billions: [the MoE chapter](03_moe.ipynb) counts the reachable sets exactly.) More
# combinations are a possibility, not a guarantee; whether the split helps is measured in the table
# below.
#
# ## Is a difference real? Seeds
#
# Everything above is one seed per configuration. To see how much a result moves with the seed
# alone, four configurations run again with seed 1:

# %%
SEED_CHECK = {
    "Mixtral top-2, none": (moe_train.Balancing(), dict(router="softmax")),
    "Mixtral top-2, aux 0.01": (moe_train.Balancing(aux_alpha=0.01, aux_convention="hf"), dict(router="softmax")),
    "DeepSeek sigmoid, bias 0.01": (moe_train.Balancing(bias_gamma=0.01), SIG),
    "shared + fine 1 + 15 x 8 top-3, bias 0.01": (moe_train.Balancing(bias_gamma=0.01), FINE_SHARED),
}
diffs = {}
for name, (bal, arch) in SEED_CHECK.items():
    again = run(f"{name} [seed 1]", bal, seed=1, **arch)
    diffs[name] = abs(again["eval"]["task"] - RESULTS[name]["eval"]["task"])
    print(f"  seed 0: {RESULTS[name]['eval']['task']:.3f}, seed 1: {again['eval']['task']:.3f} "
          f"(difference {diffs[name]:.3f})")
spread = max(d for n, d in diffs.items() if "none" not in n)  # among balanced runs
print(f"unbalanced run: the seed moves the task loss by {diffs['Mixtral top-2, none']:.3f}; "
      f"balanced runs: by at most {spread:.3f}")

# %% [markdown]
# Which experts die in an unbalanced run is luck, and so is its final loss: compare its seed
# difference with the balanced ones printed above. Below, differences between balanced runs
# smaller than their seed spread (`spread`) are treated as noise. Three pairs of runs give only a
# rough estimate of that noise; line 7 of the summary below checks it on two runs that differ by a
# term too small to matter.

# %% [markdown]
# ## All runs in one table
#
# Every figure below comes from the runs above, evaluated on the same held-out batches: the task
# loss (mean squared error, targets of unit variance), and the balance of the routing on those
# batches averaged over the two layers: max/mean load, entropy / ln E, coefficient of variation,
# experts that received nothing, and the share of assignments that a capacity factor of 1.25 would
# drop (with the task loss the model then gets).

# %%
header = f"{'run':<44}{'task loss':>10}{'max/mean':>9}{'H/lnE':>7}{'CV':>6}{'dead':>6}{'drop@1.25':>10}{'loss@1.25':>10}"
print(header)
print("-" * len(header))
for name, res in RESULTS.items():
    if "[seed 1]" in name:
        continue
    ev = res["eval"]
    if res["dense"]:
        print(f"{name:<44}{ev['task']:>10.3f}{'-':>9}{'-':>7}{'-':>6}{'-':>6}{'-':>10}{'-':>10}")
        continue
    n_e = res["arch"]["n_experts"]
    print(f"{name:<44}{ev['task']:>10.3f}{ev['max_over_mean']:>9.2f}{ev['entropy'] / math.log(n_e):>7.2f}"
          f"{ev['cv']:>6.2f}{ev['dead']:>6.1f}{ev['drop@1.25']:>10.0%}{ev['task@1.25']:>10.3f}")
print(f"\nseed-to-seed spread of the task loss of balanced runs (section above): {spread:.3f}; "
      f"{info.name}, {TODAY}, {STEPS} steps x {BATCH * SEQ} tokens per run")

# %%
moe_runs = {n: r for n, r in RESULTS.items() if not r["dense"] and "[seed 1]" not in n}
best = min(moe_runs, key=lambda n: moe_runs[n]["eval"]["task"])
worst = max(moe_runs, key=lambda n: moe_runs[n]["eval"]["task"])
dense_loss = RESULTS["dense, same active size"]["eval"]["task"]
print(f"best MoE run: {best} ({moe_runs[best]['eval']['task']:.3f}); worst: {worst} "
      f"({moe_runs[worst]['eval']['task']:.3f}); dense FFN of the same active size: {dense_loss:.3f}")
close = [n for n in moe_runs if moe_runs[n]["eval"]["task"] - moe_runs[best]["eval"]["task"] <= spread]
print(f"runs within the balanced runs' seed spread of the best: {close}")
print(f"all training runs took {TRAIN_SECONDS:.0f} s on {info.name}; the whole notebook so far "
      f"{time.perf_counter() - CHAPTER_START:.0f} s")

# %% [markdown]
# What the table says, each line computed from its rows:

# %%
E = {n: r["eval"] for n, r in RESULTS.items()}


def compare(a, b, key="task"):
    return f"{E[a][key]:.3f} vs {E[b][key]:.3f}"


print("1. unbalanced vs balanced, share dropped at capacity factor 1.25:",
      f"Mixtral none {E['Mixtral top-2, none']['drop@1.25']:.0%}, aux 0.01 {E['Mixtral top-2, aux 0.01']['drop@1.25']:.0%};",
      f"sigmoid none {E['DeepSeek sigmoid, none']['drop@1.25']:.0%}, bias {E['DeepSeek sigmoid, bias 0.01']['drop@1.25']:.0%}")
aux_names = [f"Mixtral top-2, aux {a:g}" for a in ALPHAS]
best_aux = min(aux_names, key=lambda n: E[n]["task"])
print(f"2. best aux-loss run {best_aux!r} vs the largest alpha: task loss {compare(best_aux, aux_names[-1])}")
print(f"3. bias vs best aux: task loss {compare('DeepSeek sigmoid, bias 0.01', best_aux)}, max/mean load "
      f"{compare('DeepSeek sigmoid, bias 0.01', best_aux, 'max_over_mean')}")
print(f"4. sequence-wise alpha 1e-4 vs 0.1: task loss {compare('DeepSeek sigmoid, bias 0.01 + seq 1e-4', 'DeepSeek sigmoid, bias 0.01 + seq 0.1')}")
print(f"5. z-loss on vs off: task loss {compare('Mixtral top-2, aux 0.01 + z 0.001', 'Mixtral top-2, aux 0.01')}, "
      f"z {compare('Mixtral top-2, aux 0.01 + z 0.001', 'Mixtral top-2, aux 0.01', 'z')}")
print(f"6. fine-grained / shared + fine vs 8 x 16 (all with the bias): task loss "
      f"{E['fine-grained 16 x 8 top-4, bias 0.01']['task']:.3f} / {E['shared + fine 1 + 15 x 8 top-3, bias 0.01']['task']:.3f} "
      f"vs {E['DeepSeek sigmoid, bias 0.01']['task']:.3f}")
a, b = "DeepSeek sigmoid, bias 0.01", "DeepSeek sigmoid, bias 0.01 + seq 1e-4"
gap = abs(E[a]["task"] - E[b]["task"])
print(f"7. noise check, bias alone vs bias + seq 1e-4 (a term of {1e-4 * E[b]['seq']:.1e} next to a task loss of "
      f"{E[b]['task']:.2f}): task loss {compare(a, b)}, a gap of {gap:.3f}, "
      + (f"above the seed spread: read {spread:.3f} as a lower bound on the noise" if gap > spread
         else "within the seed spread"))
print(f"   differences below the seed spread ({spread:.3f}) are not evidence either way")

# %% [markdown]
# How to read it:
#
# * **Unbalanced** routers waste experts (dead experts, high max/mean) and lose far more when a
#   fixed capacity makes their busiest experts overflow (line 1).
# * The **aux loss** works only in a range of `alpha` that depends on its convention (line 2).
# * The **bias** balances by selection alone, with no gradient that trades task loss for balance
#   (line 3 compares it with the best aux loss); the tiny **sequence-wise** term is a safety net (too
#   small to matter in this toy: line 7), a large one fights specialisation (line 4).
# * The **z-loss** is about the size of the logits, not balance (line 5).
# * **Shared and fine-grained** experts (line 6): in this toy the task has exactly 8 sub-tasks,
#   which 8 coarse experts match; whether splitting helps is only meaningful where the difference
#   beats the seed spread. The DeepSeekMoE paper reports gains at scale, which a toy neither
#   confirms nor refutes.
#
# ## Summary
#
# * Without balancing, routers collapse: experts picked early get the gradient and get picked more.
#   Measure it with the load share per expert, max/mean load, entropy and CV
#   (`dmcourse.balance.load_stats`).
# * Switch's aux loss `alpha N sum f_i P_i` has three conventions for `f` under top-k (`"switch"`,
#   `"hf"` = k at balance with layers pooled, `"divide_by_k"` = 1); `alpha` only means something
#   with its convention (`dmcourse.balance.load_balancing_loss`, matched to `transformers` in the
#   tests).
# * The z-loss `mean (log sum exp l)^2` keeps logits small (`router_z_loss`).
# * Fixed capacity drops assignments, in an order you choose (`capacity_mask`); the better the
#   balance, the fewer drops. Dropless dispatch avoids drops but still waits for the busiest expert.
# * DeepSeek-V3's bias `b_i += gamma sign(mean - load_i)` balances by selection only; for the
#   selection it is dual sign-subgradient descent on the balanced-assignment problem (`bias_update`,
#   `routing.sigmoid_topk`).
# * `dmcourse.train` (task, models, `train` with hooks) is what the training chapter builds on.
#
# [Exercise 3](https://colab.research.google.com/github/dmcourse/dmcourse/blob/main/exercises/ex03_balance/ex03_balance.ipynb)
# (`exercises/ex03_balance`) asks you to write the aux loss, the z-loss, capacity-limited assignment
# and one bias step yourself.
# [Exercise 6](https://colab.research.google.com/github/dmcourse/dmcourse/blob/main/exercises/ex06_router/ex06_router.ipynb)
# (`exercises/ex06_router`) has you train a router that learns and balances: the Switch top-1 gate,
# the aux-loss term inside a training loop, and the bias balancer, on this chapter's toy task.
