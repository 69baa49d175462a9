# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Dense models: the FFN, and what "every parameter, every token" costs
#
# A transformer is **dense** when every weight takes part in the computation for every token:
# whatever the input, the same matrices are read and multiplied. A Mixture-of-Experts model (the
# next chapter) breaks that rule for one part of the block. Before we break it, we need to be
# able to say, for any real model, four things — and check each by code:
#
# 1. how many **parameters** it has, and how many are **active** for one token;
# 2. how many **FLOPs** one token costs;
# 3. how many **bytes** its weights and its KV cache take;
# 4. whether it **fits** on a given GPU.
#
# We build the feed-forward network (FFN) small and inline, check it against `dmcourse.ffn`,
# count the parameters of nine real models from their published configurations, reproduce the
# totals their authors announce, and finish with a measurement on your device.

# %%
import datetime
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import HTML, display

import dmcourse
from dmcourse import accounting, ffn, fit, hardware, plot
from dmcourse.configs import PRESETS, ModelConfig

plot.use_style()
info = dmcourse.device_info()
device, dtype = info.device, info.dtype
TODAY = datetime.date.today().isoformat()
print(info.summary(), TODAY)


def show_table(header: list[str], rows: list[list]) -> None:
    """Display a table (HTML: renders in Jupyter, Colab and the static book); cells may hold links."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    display(HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"))


def link(text: str, url: str) -> str:
    return f'<a href="{url}">{text}</a>'


# %% [markdown]
# ## The transformer block, and where its parameters live
#
# Every model in this chapter is a stack of identical **decoder blocks** between an input
# embedding and an output projection (the *LM head*):
#
# ```
# tokens -> embedding (vocab x d_model)
#        -> n_layers x [ h = h + Attention(RMSNorm(h));  h = h + FFN(RMSNorm(h)) ]
#        -> RMSNorm -> LM head (d_model x vocab) -> next-token logits
# ```
#
# * **Attention** mixes information *between* tokens. Its parameters are four projections:
#   queries, keys, values and the output.
# * The **FFN** works on each token *on its own*: a small two-layer network applied to every
#   position. In today's models it holds most of the parameters, and it is the part that MoE
#   replaces with experts.
# * **RMSNorm** layers have one weight vector of length `d_model` each: negligible.
# * The **embedding** and **LM head** are `vocab x d_model` matrices each (one shared matrix when
#   they are *tied*).
#
# ## The FFN, step by step
#
# ### The classic MLP: up, nonlinearity, down
#
# The original transformer and GPT-2 use two matrices: project `d_model` up to a wider `d_ff`
# (usually `4 * d_model`: 512 up to 2048 in
# [the original transformer](https://arxiv.org/abs/1706.03762)), apply a nonlinearity, project
# back down. With weights stored the `nn.Linear` way, `(out_features, in_features)`:

# %%
torch.manual_seed(0)
d_model, d_ff, tokens = 64, 256, 10
x = torch.randn(tokens, d_model)
w_up = torch.randn(d_ff, d_model) / d_model**0.5
w_down = torch.randn(d_model, d_ff) / d_ff**0.5

h = x @ w_up.T                       # (tokens, d_ff)
relu_out = h.clamp(min=0) @ w_down.T  # ReLU: max(h, 0)
gelu_out = (0.5 * h * (1 + torch.erf(h / math.sqrt(2)))) @ w_down.T  # GELU: h * Phi(h)
print(relu_out.shape, gelu_out.shape)

torch.testing.assert_close(relu_out, ffn.mlp(x, w_up, w_down, "relu"))
torch.testing.assert_close(gelu_out, ffn.mlp(x, w_up, w_down, "gelu"))
print("inline ReLU and GELU MLPs == dmcourse.ffn.mlp")

# %% [markdown]
# ### SwiGLU: a gate, an up projection, a down projection
#
# Llama, Mistral, Mixtral, Qwen3, DeepSeek-V3 and OLMoE all use **SwiGLU**
# ([Shazeer 2020](https://arxiv.org/abs/2002.05202)): a *second* up projection, passed through
# SiLU (`silu(z) = z * sigmoid(z)`), multiplies the first elementwise and decides, per hidden
# unit, how much of it passes:
#
# $$\text{FFN}(x) = \big(\text{silu}(x W_\text{gate}^\top) \odot x W_\text{up}^\top\big)\, W_\text{down}^\top$$
#
# Three matrices instead of two. Here it is inline, then checked against the functional
# `dmcourse.ffn.swiglu` and the module `dmcourse.ffn.SwiGLU` (whose three `nn.Linear` layers we
# load with the same weights):

# %%
w_gate = torch.randn(d_ff, d_model) / d_model**0.5
gate = x @ w_gate.T
swiglu_out = (gate * torch.sigmoid(gate) * (x @ w_up.T)) @ w_down.T

torch.testing.assert_close(swiglu_out, ffn.swiglu(x, w_gate, w_up, w_down))
layer = ffn.SwiGLU(d_model, d_ff)
with torch.no_grad():
    layer.w_gate.weight.copy_(w_gate)
    layer.w_up.weight.copy_(w_up)
    layer.w_down.weight.copy_(w_down)
torch.testing.assert_close(swiglu_out, layer(x))
print("inline SwiGLU == dmcourse.ffn.swiglu == dmcourse.ffn.SwiGLU")
print(layer)

# %% [markdown]
# **Parameters and FLOPs of an FFN.** Each matrix has `d_model * d_ff` weights, and each weight
# does one multiply-add (2 FLOPs) per token. So an MLP has `2 * d_model * d_ff` weights and costs
# `2 * 2 * d_model * d_ff` FLOPs per token; SwiGLU has `3 * d_model * d_ff` weights and costs
# `2 * 3 * d_model * d_ff`. To keep the parameter count of a `4 * d_model` MLP, SwiGLU models
# shrink `d_ff` to about `8/3 * d_model`:

# %%
mlp = ffn.MLP(d_model, 4 * d_model)
swi = ffn.SwiGLU(d_model, 8 * d_model // 3)
n_mlp, n_swi = (sum(p.numel() for p in m.parameters()) for m in (mlp, swi))
print(f"MLP    d_ff = {mlp.d_ff:4d}: {n_mlp:,} parameters, {mlp.flops_per_token():,} FLOPs/token")
print(f"SwiGLU d_ff = {swi.d_ff:4d}: {n_swi:,} parameters, {swi.flops_per_token():,} FLOPs/token")
for name in ("Llama-3-8B", "Llama-3-70B", "Mistral-7B"):
    c = PRESETS[name]
    print(f"{name:12s}: d_ff / d_model = {c.d_ff} / {c.d_model} = {c.d_ff / c.d_model:.2f}")

# %% [markdown]
# Real models round `d_ff` to hardware-friendly sizes and often go a bit wider than 8/3: the
# cell above prints their ratios.
#
# From here on the chapter uses `dmcourse.ffn`.
#
# ## Counting the parameters of a real model
#
# ### A dense model by hand: Llama-3-8B
#
# Its [config.json](https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json)
# gives everything we need. `dmcourse.load_preset` holds the same values, named as in this
# course (`hidden_size` is `d_model`, `intermediate_size` is `d_ff`, ...):

# %%
llama = dmcourse.load_preset("Llama-3-8B")
print(llama.source)
print({k: getattr(llama, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "tied_embeddings")})

# %% [markdown]
# **Grouped-query attention (GQA).** Llama-3-8B has 32 query heads of width
# `d_model / n_heads = 128`, but only 8 key/value heads: each K/V head serves a group of 4 query
# heads. So the query and output projections are `d_model x d_model`, while the key and value
# projections are only `d_model x (n_kv_heads * head_dim)`. Counting one block, then the model:

# %%
c = llama
head_dim = c.d_model // c.n_heads
attn = (c.d_model * c.n_heads * head_dim          # W_q
        + 2 * c.d_model * c.n_kv_heads * head_dim  # W_k, W_v: only the KV heads
        + c.n_heads * head_dim * c.d_model)        # W_o
ffn_params = 3 * c.d_model * c.d_ff                # SwiGLU: gate, up, down
norms = 2 * c.d_model                              # two RMSNorms per block
block = attn + ffn_params + norms
embedding = lm_head = c.vocab_size * c.d_model     # untied
total = c.n_layers * block + c.d_model + embedding + lm_head  # + final norm
print(f"attention {attn / 1e6:.1f}M + FFN {ffn_params / 1e6:.1f}M + norms {norms / 1e3:.1f}k per block")
print(f"{c.n_layers} blocks: {c.n_layers * block / 1e9:.3f}B, embedding and LM head: {2 * embedding / 1e9:.3f}B")
print(f"total: {total:,} = {total / 1e9:.2f}B")

counted = dmcourse.count_params(llama)
assert counted.total == total
print("dmcourse.count_params agrees:", counted)

# %% [markdown]
# Without GQA (8 → 32 KV heads) the attention of each block would be larger by the cell below;
# the saving matters even more for the KV cache, as we will see.

# %%
mha = llama.replace(n_kv_heads=llama.n_heads)
extra = dmcourse.count_params(mha).attention - counted.attention
print(f"full multi-head K/V would add {extra / 1e9:.2f}B parameters ({extra / counted.total:.1%} of the model)")

# %% [markdown]
# The tests of `dmcourse` build each of the nine models below with the `transformers` library's
# own model classes (on PyTorch's *meta* device: shapes only, no memory) and check that the
# counts agree parameter for parameter, component by component.
#
# ### Multi-head latent attention: DeepSeek-V3
#
# DeepSeek-V3 ([config](https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json))
# replaces GQA by **multi-head latent attention** (MLA,
# [DeepSeek-V2 paper](https://arxiv.org/abs/2405.04434)): keys and values are compressed into a
# small latent vector (`kv_lora_rank = 512`) and expanded per head on the fly; queries pass
# through a low-rank bottleneck (`q_lora_rank = 1536`), and a separate slice of each head
# (`qk_rope_head_dim = 64`) carries the rotary position encoding. Inline, one layer:

# %%
ds = dmcourse.load_preset("DeepSeek-V3")
qk = ds.qk_nope_head_dim + ds.qk_rope_head_dim
mla = (ds.d_model * ds.q_lora_rank + ds.q_lora_rank * ds.n_heads * qk          # q down, q up
       + ds.d_model * (ds.kv_lora_rank + ds.qk_rope_head_dim)                  # kv down (+ shared rope key)
       + ds.kv_lora_rank * ds.n_heads * (ds.qk_nope_head_dim + ds.v_head_dim)  # k and v up
       + ds.n_heads * ds.v_head_dim * ds.d_model)                               # output
assert mla == accounting.attention_params(ds)
print(f"MLA attention per layer: {mla / 1e6:.1f}M parameters "
      f"(plain multi-head attention with {ds.n_heads} heads of {qk}/{ds.v_head_dim} would be "
      f"{(ds.d_model * ds.n_heads * (2 * qk + 2 * ds.v_head_dim)) / 1e6:.1f}M)")

# %% [markdown]
# ### Total versus active: Mixtral-8x7B
#
# In an MoE layer the FFN is replaced by `n_experts` SwiGLU experts and a router (a
# `n_experts x d_model` matrix) that sends each token to `top_k` of them. *All* experts must be
# stored; each token *uses* only `top_k`. Mixtral-8x7B
# ([config](https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json)) has 8
# experts with `d_ff = 14336` and top-2 routing:

# %%
mx = dmcourse.load_preset("Mixtral-8x7B")
expert = 3 * mx.d_model * mx.d_ff_expert
shared = mx.n_layers * (accounting.attention_params(mx) + 2 * mx.d_model + mx.n_experts * mx.d_model) \
    + mx.d_model + 2 * mx.vocab_size * mx.d_model                # everything but the experts
total = shared + mx.n_layers * mx.n_experts * expert
active = shared + mx.n_layers * mx.top_k * expert
print(f"one expert: {expert / 1e6:.1f}M; all experts: {mx.n_layers * mx.n_experts * expert / 1e9:.2f}B")
print(f"total {total / 1e9:.2f}B, active per token {active / 1e9:.2f}B")
p = dmcourse.count_params(mx)
assert (p.total, p.active) == (total, active)
print(f"Mistral AI publishes {mx.published.total / 1e9:.1f}B total and {mx.published.active / 1e9:.1f}B active "
      f"({mx.published.source})")


# %% [markdown]
# ### The conventions behind "active parameters"
#
# The count above includes the **input embedding** in the active parameters. Strictly, a token
# does not *compute* with the embedding matrix — it reads one row of it — but published figures
# count it. `dmcourse.count_params` returns a `ParamCount` with every convention:
#
# | field | what it counts |
# |---|---|
# | `total` | every parameter of the main model (a tied LM head once) |
# | `active` | total minus the routed experts a token is not sent to; embedding and LM head included |
# | `active_without_embedding` | `active` minus the input embedding (what the token multiplies with, plus norms) |
# | `non_embedding` | total minus embedding and LM head ([Kaplan et al.](https://arxiv.org/abs/2001.08361)'s *N*, Qwen's "non-embedding") |
# | `embedding`, `attention`, `dense_ffn`, `experts`, `shared_experts`, `router`, `norms`, `lm_head` | the breakdown |
# | `mtp` | DeepSeek-V3's multi-token-prediction module (stored with the weights, not part of `total`) |
#
# ### Nine models, reproduced from their configs
#
# The table is computed from the presets; each model name links to the `config.json` the preset
# was taken from, and each published figure to where its authors state it.

# %%
def fmt(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e9:.2f}B"


rows, counts = [], {}
for name, c in PRESETS.items():
    p = counts[name] = dmcourse.count_params(c)
    pub = c.published
    rows.append([link(name, c.source), fmt(p.total), link(f"{pub.total / 1e9:g}B", pub.source),
                 fmt(p.active) if c.is_moe else "= total", fmt(p.active_without_embedding),
                 "—" if pub.active is None else link(f"{pub.active / 1e9:g}B", pub.source)])
show_table(["model (link: its config.json)", "total (ours)", "published total", "active (ours)",
            "active without input embedding", "published active"], rows)

# %% [markdown]
# Which convention do the published "active" figures use? For each MoE model, the cell below
# prints how far each of our two counts is from the published figure, and which one is closer:

# %%
for name, c in PRESETS.items():
    if not c.is_moe:
        continue
    p, pub = counts[name], c.published.active
    rel = {conv: getattr(p, conv) / pub - 1 for conv in ("active", "active_without_embedding")}
    closest = min(rel, key=lambda k: abs(rel[k]))
    print(f"{name:16s} published {pub / 1e9:5.1f}B | with embedding {rel['active']:+6.1%} | "
          f"without {rel['active_without_embedding']:+6.1%} -> closest: {closest}")

# %% [markdown]
# For Mixtral-8x7B, both Qwen3 models and OLMoE the published figure is the count **with** the
# input embedding (Qwen rounds down: the cell prints how far each is); Mixtral-8x22B's "39B" is
# within rounding of both counts. DeepSeek-V3 is the odd one: its
# [README_WEIGHTS.md](https://github.com/deepseek-ai/DeepSeek-V3/blob/main/README_WEIGHTS.md) says
# 36.7B activated "including 0.9B for Embedding and 0.9B for the output Head", yet our count with
# both matrices is further from it than the count *without* the input embedding:

# %%
p = counts["DeepSeek-V3"]
print(f"embedding {p.embedding / 1e9:.2f}B, output head {p.lm_head / 1e9:.2f}B")
print(f"active with both: {p.active / 1e9:.2f}B ({p.active / 36.7e9 - 1:+.1%} from 36.7B); "
      f"without the input embedding: {p.active_without_embedding / 1e9:.2f}B ({p.active_without_embedding / 36.7e9 - 1:+.1%})")

# %% [markdown]
# So one of the two 0.9B matrices is not in DeepSeek's 36.7B, whatever the parenthesis says; the
# headline "37B" is closer to the count without the input embedding. When you compare active
# parameters across models, say which convention you use.
#
# **Why the hub says 685B for DeepSeek-V3.** The checkpoint also holds one
# **multi-token-prediction (MTP)** module, used in training to predict a second token ahead
# (and usable for speculative decoding): one more transformer layer, a projection
# `eh_proj` (`2*d_model -> d_model`), two norms, and a second copy of the embedding and output
# head (README_WEIGHTS calls them shared with the main model; the checkpoint stores them again).
# `transformers` does not build it; `count_params` reports it separately:

# %%
print(f"main model {p.total / 1e9:.1f}B + MTP module {p.mtp / 1e9:.1f}B = {p.total_with_mtp / 1e9:.1f}B stored")
mtp_unique = p.mtp - p.embedding - p.lm_head
print(f"MTP without its copies of embedding and head: {mtp_unique / 1e9:.2f}B")
deepseek = {"stored": (p.total_with_mtp, 685e9), "MTP module": (p.mtp, 14e9), "MTP unique": (mtp_unique, 11.5e9)}
for what, (ours, published) in deepseek.items():
    print(f"{what:>10}: ours {ours / 1e9:6.2f}B, DeepSeek {published / 1e9:g}B ({ours / published - 1:+.1%})")

# %% [markdown]
# DeepSeek's [README](https://github.com/deepseek-ai/DeepSeek-V3) states "685B, which includes
# 671B of the Main Model weights and 14B of the Multi-Token Prediction (MTP) Module weights" and
# README_WEIGHTS "11.5B unique parameters" for the MTP module: our counts, printed above, are
# within 1% of the 685B and of the 11.5B. The 14B equals 685B − 671B, a difference of two
# rounded figures; our MTP module is 13.5B.
#
# ### Where the parameters live
#
# The same breakdown for all nine models, as fractions of the total (the hatched part of each
# bar is what one token uses):

# %%
parts = [("embedding", "embedding + LM head", plot.COLORS["accent"]), ("attention", "attention", plot.COLORS["dense"]),
         ("ffn", "FFN / experts", plot.COLORS["moe"]), ("router", "router + norms", plot.COLORS["datasheet"])]
fig, ax = plt.subplots(figsize=(9, 4))
names = list(PRESETS)
for i, name in enumerate(names):
    p = counts[name]
    values = {"embedding": p.embedding + p.lm_head, "attention": p.attention, "ffn": p.ffn, "router": p.router + p.norms}
    left = 0.0
    for key, label, color in parts:
        share = values[key] / p.total
        ax.barh(i, share, left=left, color=color, label=label if i == 0 else None)
        left += share
    ax.barh(i, p.active / p.total, color="none", edgecolor="k", hatch="//", lw=0.6, label="active share" if i == 0 else None)
    ax.text(1.01, i, f"{p.total / 1e9:.1f}B, {p.active / p.total:.0%} active", va="center", fontsize=8)
ax.set_yticks(range(len(names)), names)
ax.invert_yaxis()
ax.set(xlim=(0, 1.3), xlabel="fraction of total parameters", title="Where the parameters live (computed from the configs)")
ax.legend(loc="upper center", bbox_to_anchor=(0.45, -0.15), ncol=5, fontsize=8)
fig.tight_layout()
plt.show()
share = {n: (counts[n].embedding + counts[n].lm_head) / counts[n].total for n in names}
top = max(share, key=share.get)
print(f"embedding + LM head: largest share {share[top]:.1%} ({top}), smallest {min(share.values()):.1%} "
      f"({min(share, key=share.get)})")


# %% [markdown]
# In the dense models the FFN holds most of the weights; in the MoE models the experts hold
# nearly all of them, and only a small slice is active. The embedding and LM head matter where a
# large vocabulary meets a small model: the cell prints which model spends the largest share of its
# parameters on them.
#
# ## FLOPs per token
#
# Every weight used in a matrix multiply costs one multiply-add, **2 FLOPs**, per token. The
# input embedding is a lookup (no FLOPs); the LM head is a matrix multiply (even when tied). So a
# forward pass costs about **2N** FLOPs per token, with N the active parameters that are
# multiplied. Training costs about **6N**: the backward pass computes two matrix products per
# forward one (gradients with respect to the activations and to the weights).
#
# Attention adds a term that the parameter count does not see: each token's query is compared
# with the keys of all `context` tokens before it (a dot product of width `d_score` per head) and
# takes a weighted sum of their values (width `d_mix`), `2 * n_layers * n_heads * (d_score + d_mix)
# * context` FLOPs. For GQA both widths are the head dimension. MLA (DeepSeek-V3) can be computed
# in two forms, and each goes with its own cache:
#
# * **absorbed** (the form DeepSeek serves): the keys' up-projection is folded into the query and
#   the values' into the output, so every head scores the *cached latent* directly (`kv_lora_rank
#   + qk_rope_head_dim` = 512 + 64 wide) and sums it (512 wide). The cache stays compressed;
# * **explicit**: the latent is decompressed into per-head keys (128 + 64) and values (128), and
#   those are what is cached — 128 heads of them per token and layer.
#
# The folded up-projections cost, per token, exactly the FLOPs the explicit form spends
# decompressing the new token, so 2N is the same in both forms; only the per-context term
# differs. The course counts MLA in the absorbed form with the compressed cache, and never mixes
# the explicit form's FLOPs with the compressed cache's bytes. The term grows with the context:

# %%
def forward_flops(c: ModelConfig, context: int) -> int:
    p = dmcourse.count_params(c)
    n_matmul = p.active - p.embedding - p.norms - p.lm_head + c.vocab_size * c.d_model
    window = min(context, c.sliding_window or context)
    if c.attention == "mla":  # absorbed form: score the cached latent (+ rope key), sum the latent
        d_score, d_mix = c.kv_lora_rank + c.qk_rope_head_dim, c.kv_lora_rank
    else:
        d_score, d_mix = c.qk_head_dim, c.v_head_size
    return 2 * n_matmul + 2 * c.n_layers * c.n_heads * (d_score + d_mix) * window


for name in ("Llama-3-8B", "Mixtral-8x7B", "DeepSeek-V3"):
    c = PRESETS[name]
    assert forward_flops(c, 4096) == accounting.forward_flops_per_token(c, 4096)
    two_n = 2 * accounting.matmul_params_per_token(c)
    per_ctx = accounting.attention_flops_per_token(c, 1)
    print(f"{name}: forward 2N = {two_n / 1e9:.1f} GFLOP/token, training ~6N = {3 * two_n / 1e9:.1f} GFLOP/token")
    print(f"    attention: +{per_ctx / 1e6:.2f} MFLOP per token of context, equal to 2N at {two_n / per_ctx:,.0f} tokens")

ds = PRESETS["DeepSeek-V3"]
for form in accounting.MLA_FORMS:
    flops = accounting.attention_flops_per_token(ds, 1, form)
    cached = accounting.kv_cache_bytes_per_token(ds, "bf16", mla_compressed=accounting.mla_cache_compressed(form))
    print(f"DeepSeek-V3, {form:8s} MLA: {flops / 1e6:5.2f} MFLOP per token of context over {cached / 1024:7,.1f} KiB "
          f"of bf16 cache per token = {flops / cached:5.1f} FLOP per cached byte")

# %%
contexts = [2**k for k in range(8, 18)]
fig, ax = plt.subplots()
for name, color in (("Llama-3-8B", plot.COLORS["dense"]), ("Llama-3-70B", "#5b8fd1"),
                    ("Mixtral-8x7B", plot.COLORS["moe"]), ("DeepSeek-V3", "#8c2d3a")):
    c = PRESETS[name]
    ax.loglog(contexts, [accounting.forward_flops_per_token(c, L) / 1e9 for L in contexts], "o-", ms=3, color=color, label=name)
    ax.axhline(2 * accounting.matmul_params_per_token(c) / 1e9, color=color, ls=":", lw=0.8)
ax.set(xlabel="context (tokens attended to)", ylabel="forward GFLOP per token",
       title="Forward FLOPs per token: 2N (dotted) + attention")
ax.legend()
plt.show()

# %% [markdown]
# For short contexts the 2N term dominates; the attention term takes over at the context the
# cell above printed for each model. (Mistral-7B's sliding window would cap its attention term at
# 4096 tokens.) The last two lines compare DeepSeek-V3's two forms: the absorbed form does more
# FLOPs per token of context than the explicit one, over a cache many times smaller, so it does
# far more work per byte it reads — the reason DeepSeek serves it, and the reason the roofline
# chapters cost MLA this way (`mla_form="explicit"` gives the other). For MoE models, N is the
# *active* count: that is the whole point of MoE.

# %%
print(f"1 GiB = {accounting.GiB:,} bytes = {accounting.GiB / accounting.GB:.4f} GB")
dtypes = ("fp32", "bf16", "fp8", "int4")
rows = []
for name, c in PRESETS.items():
    w = {d: accounting.weight_bytes(c, d) for d in dtypes}
    rows.append([name] + [f"{accounting.to_gb(w[d]):,.1f}" for d in dtypes] + [f"{accounting.to_gib(w['bf16']):,.1f}"])
show_table(["model"] + [f"{d} (GB)" for d in dtypes] + ["bf16 (GiB)"], rows)

l70 = PRESETS["Llama-3-70B"]
w70 = accounting.weight_bytes(l70, "bf16")
assert w70 == 2 * counts["Llama-3-70B"].total
print(f"a dense 70B in 16-bit: {counts['Llama-3-70B'].total / 1e9:.1f}B parameters x 2 bytes = "
      f"{accounting.to_gb(w70):.1f} GB = {accounting.to_gib(w70):.1f} GiB")

# %% [markdown]
# That is the "~140 GB" you will read for a 16-bit 70B model, computed — and the same bytes are
# a smaller number of GiB, the binary unit of `nvidia-smi` and `torch.cuda` (the cell prints
# both).
#
# **The KV cache.** To generate token `t`, attention needs the keys and values of all earlier
# tokens; they are cached. Per token, GQA caches `2 * n_layers * n_kv_heads * head_dim` numbers —
# only the KV heads, which is why GQA exists. MLA caches the compressed latent and the shared
# rotary key, `n_layers * (kv_lora_rank + qk_rope_head_dim)`:

# %%
c = llama
inline = 2 * c.n_layers * c.n_kv_heads * (c.d_model // c.n_heads) * 2  # K and V, bf16
assert inline == accounting.kv_cache_bytes_per_token(c, "bf16")
rows = []
for name, c in PRESETS.items():
    per = accounting.kv_cache_bytes_per_token(c, "bf16")
    full = (accounting.kv_cache_bytes_per_token(c, "bf16", mla_compressed=False) if c.attention == "mla"
            else accounting.kv_cache_bytes_per_token(c.replace(n_kv_heads=c.n_heads), "bf16"))
    at32k = accounting.kv_cache_bytes(c, 32768, dtype="bf16")
    window = f" (window {c.sliding_window})" if c.sliding_window else ""
    rows.append([name, f"{per / 1024:,.0f} KiB", f"{accounting.to_gb(at32k):.2f} GB{window}", f"{full / 1024:,.0f} KiB"])
show_table(["model", "KV cache per token (bf16)", "one sequence of 32,768 tokens", "with full multi-head K/V"], rows)
per_token = {n: accounting.kv_cache_bytes_per_token(c, "bf16") for n, c in PRESETS.items()}
rank = sorted(per_token, key=per_token.get).index("DeepSeek-V3") + 1
ordinal = {1: "the smallest", 2: "the second smallest", 3: "the third smallest"}.get(rank, f"number {rank} from the smallest")
print(f"DeepSeek-V3 has the most parameters of the nine, and {ordinal} KV cache per token (bf16)")

# %% [markdown]
# (KiB = 1024 bytes.) The last column is what the cache would be with one K/V head per query head
# (for DeepSeek-V3: the decompressed per-head keys and values, which is what a naive MLA
# implementation such as `transformers`' caches). Compare DeepSeek-V3's compressed cache with the
# others: the cell prints where it ranks.
#
# ## Does it fit on one GPU?
#
# Datasheet memory of six common GPUs (`dmcourse/data/gpus.json`, each with its source link;
# the memory a program can actually allocate is a little lower):

# %%
for g in hardware.gpus().values():
    print(f"{g.name:10s} {g.memory_label:14s} (datasheet) = {g.memory_gib:6.1f} GiB   {g.source}")


# %% [markdown]
# Weights alone, no KV cache, no activations — a lower bound on what serving needs. Each cell says
# how many of that GPU the weights need (✓ = fits on one):

# %%
def fits_table(dtype_name: str) -> None:
    gpu_names = list(hardware.gpus())
    rows = []
    for name, c in PRESETS.items():
        cells = []
        for g in gpu_names:
            f = fit.fits_on_gpu(c, g, dtype_name)
            cells.append("✓" if f.fits else f"{f.gpus_needed}")
        rows.append([name, f"{accounting.to_gb(accounting.weight_bytes(c, dtype_name)):,.0f}"] + cells)
    show_table([f"model ({dtype_name} weights)", "GB"] + [f"{g} ({hardware.gpu(g).memory_label.split(' ')[0]} GB)" for g in gpu_names], rows)


fits_table("bf16")
fits_table("int4")

# %% [markdown]
# The `fits_on_gpu` helper also adds the KV cache when given a context and batch size; for
# example, Llama-3-8B on an L4:

# %%
for ctx, batch in ((0, 1), (8192, 1), (8192, 16)):
    print(f"context {ctx:5d} x batch {batch:2d}: {fit.fits_on_gpu(llama, 'L4', 'bf16', context=ctx, batch=batch)}")


# %% [markdown]
# ## Checking what you may have read
#
# Widely shared explainers and blog posts about dense models and MoEs make several claims about size and memory.
# Each is checked below against the computed numbers.

# %%
def check(claim: str, holds: bool, why: str) -> None:
    print(f"[{'holds' if holds else 'does not hold'}] {claim}\n    {why}\n")


mx_p, l70_p = counts["Mixtral-8x7B"], counts["Llama-3-70B"]
check('"Mixtral 8x7B ... 46.7B parameters, but only 12.9B active"',
      round(mx_p.total / 1e8) == 467 and round(mx_p.active / 1e8) == 129,
      f"we count {mx_p.total / 1e9:.2f}B total, {mx_p.active / 1e9:.2f}B active (embedding included)")
table = (("Mixtral-8x7B", 47, 13), ("Mixtral-8x22B", 141, 39), ("DeepSeek-V3", 671, 37), ("Qwen3-235B-A22B", 235, 22))
worst = max(max(abs(counts[n].total / 1e9 / t - 1), abs(counts[n].active / 1e9 / a - 1)) for n, t, a in table)
check('Table: "Mixtral 8x7B 47B / 13B", "Mixtral 8x22B 141B / 39B", "DeepSeek-V3 671B / 37B", "Qwen3-235B 235B / 22B"',
      worst < 0.02, f"every figure within {worst:.1%} of our counts (active with embedding): "
      + ", ".join(f"{n} {counts[n].total / 1e9:.1f}B / {counts[n].active / 1e9:.1f}B" for n, _, _ in table))
q = PRESETS["Qwen3-235B-A22B"]
check('Table: "Qwen3-235B ... Experts 128 + 1 ... Shared Expert: Yes"', q.n_shared_experts > 0,
      f"its config has {q.n_experts} routed experts, top-{q.top_k}, and n_shared_experts = {q.n_shared_experts}: "
      "Qwen3-MoE has no shared expert (transformers' Qwen3MoeSparseMoeBlock has none either)")
d3 = PRESETS["DeepSeek-V3"]
check('Table: "DeepSeek-V3 256 + 1 experts, top-8, shared expert: Yes"', d3.n_experts == 256 and d3.n_shared_experts == 1 and d3.top_k == 8,
      f"n_routed_experts = {d3.n_experts}, n_shared_experts = {d3.n_shared_experts}, top-{d3.top_k}")
w7 = accounting.weight_bytes(PRESETS["Mistral-7B"], "bf16")
fits7 = [g for g in hardware.gpus() if fit.fits_on_gpu(PRESETS["Mistral-7B"], g, "bf16").fits]
check('"A 7B model fits on one GPU."', len(fits7) == len(hardware.gpus()),
      f"Mistral-7B in bf16 is {accounting.to_gb(w7):.1f} GB of weights: it fits one {', '.join(fits7)} (datasheet memory); "
      f"on a {fits7[0]} only {accounting.to_gb(fit.fits_on_gpu(PRESETS['Mistral-7B'], fits7[0], 'bf16').headroom_bytes):.1f} GB "
      f"would be left for the KV cache, and Llama-3-8B ({accounting.to_gb(accounting.weight_bytes(llama, 'bf16')):.2f} GB) "
      f"{'fits' if fit.fits_on_gpu(llama, 'T4', 'bf16').fits else 'does not fit'} a T4 in 16-bit")
n70 = fit.fits_on_gpu(l70, "H100", "bf16").gpus_needed
check('"A 70B model needs eight [GPUs]."', n70 == 8,
      f"a 70B model in bf16 is {accounting.to_gb(w70):.0f} GB: {n70} x 80 GB GPUs hold its weights. Eight are a common "
      f"serving choice for speed and batch size, not a memory requirement; in int4 "
      f"({accounting.to_gb(accounting.weight_bytes(l70, 'int4')):.0f} GB) one 80 GB GPU holds the weights")
check('"Dense 70B in FP16: ~140 GB VRAM. Mixtral 8x7B (47B total, 13B active): ~94 GB VRAM"', round(accounting.to_gb(w70), -1) == 140
      and round(accounting.to_gb(accounting.weight_bytes(PRESETS["Mixtral-8x7B"], "bf16"))) in (93, 94),
      f"{accounting.to_gb(w70):.1f} GB and {accounting.to_gb(accounting.weight_bytes(PRESETS['Mixtral-8x7B'], 'bf16')):.1f} GB of weights")
f2 = fit.fits_on_gpu(l70, "A100-80GB", "bf16", n_gpus=2)
check('"A Dense 70B model barely fits on two A100 80GB GPUs"', f2.fits and f2.headroom_bytes < 0.15 * f2.available_bytes,
      f"{accounting.to_gb(f2.needed_bytes):.0f} GB of weights in {accounting.to_gb(f2.available_bytes):.0f} GB: "
      f"{accounting.to_gb(f2.headroom_bytes):.0f} GB left for KV cache and activations")
mxf = fit.fits_on_gpu(PRESETS["Mixtral-8x7B"], "A100-80GB", "bf16")
check('"a MoE model with 13B active parameters can run on a single card"', mxf.fits,
      f"Mixtral-8x7B must hold all {mx_p.total / 1e9:.1f}B parameters: {accounting.to_gb(mxf.needed_bytes):.0f} GB in bf16 needs "
      f"{mxf.gpus_needed} x 80 GB; one card only in fp8/int4 or on an H200 "
      f"({'fits' if fit.fits_on_gpu(PRESETS['Mixtral-8x7B'], 'H200', 'bf16').fits else 'does not fit'} in bf16)")
moe_names = [name for name, c in PRESETS.items() if c.is_moe]
top_ks = {name: PRESETS[name].top_k for name in moe_names}
check('"a router assigns each input token to a small number of experts (typically 2–4)" (a glossary)',
      sum(2 <= k <= 4 for k in top_ks.values()) > len(top_ks) / 2,
      "routed experts per token in the MoE presets (config.json, num_experts_per_tok): "
      + ", ".join(f"{n} {k}" for n, k in top_ks.items())
      + "; Mixtral uses 2, every fine-grained MoE here uses 8 (DeepSeek-V3 plus one shared expert)")
shares = {name: counts[name].active / counts[name].total for name in moe_names}
check('"Parameters activated: subset (e.g., 10-20%)" (an explainer)',
      sum(0.10 <= s <= 0.20 for s in shares.values()) > len(shares) / 2,
      "active / total in the presets: " + ", ".join(f"{n} {s:.1%}" for n, s in shares.items())
      + f"; from {min(shares.values()):.1%} to {max(shares.values()):.1%}: the fraction is a design choice, not a constant")
v4_total, v4_active = 1.6e12, 49e9  # DeepSeek's model card: https://huggingface.co/deepseek-ai/DeepSeek-V4-Pro
check('"DeepSeek-V4-Pro ... 1.6T total parameters, 49B active, ~3.1% sparsity" (a blog post)',
      round(100 * v4_active / v4_total, 1) == 3.1,
      f"DeepSeek's model card states 1.6T parameters, 49B activated; 49 / 1600 = {v4_active / v4_total:.2%}. "
      "The course has no V4 preset, so these two counts are cited, not recomputed")
check('"A 70B dense model performs 70B parameter worth of computation per token"', True,
      f"forward ≈ 2N = {2 * accounting.matmul_params_per_token(l70) / 1e9:.0f} GFLOP per token at short context, "
      "plus the attention term that grows with the context")

# %% [markdown]
# ## A measurement: the cost of a SwiGLU FFN on your device
#
# The accounting says a SwiGLU FFN costs `6 * d_model * d_ff` FLOPs per token. We time
# `dmcourse.ffn.SwiGLU` on this device for a range of token counts, and plot the time and the
# achieved FLOP/s. (Larger sizes run on a GPU.) One refinement of chapter 1's recipe: we
# **interleave** the cases — every case is timed once per round, for several rounds, and each
# case reports the median over rounds — so that a burst of background load hits all cases alike
# instead of spoiling one of them. On a CPU we also time on **one thread**
# (`torch.set_num_threads(1)`, restored afterwards): PyTorch splits each CPU matmul over all
# cores and waits for the slowest, so a single core busy with another program stalls every call;
# one thread is immune to that, and one core's behaviour is all this comparison needs.

# %%
if device.type == "cuda":
    D_MODEL, D_FF, TOKENS = 4096, 14336, [1, 4, 16, 64, 256, 1024, 4096, 16384]
    D_FFS, T_FIXED = [1024, 2048, 4096, 8192, 14336, 28672], 4096
else:
    D_MODEL, D_FF, TOKENS = 512, 1536, [1, 4, 16, 64, 256, 1024]
    D_FFS, T_FIXED = [256, 512, 1024, 2048, 4096], 256
ROUNDS = 5 if device.type == "cuda" else 3
torch.manual_seed(0)


def interleaved(cases: dict, rounds: int = ROUNDS) -> dict:
    """cases: {key: (module, n_tokens)} -> {key: median seconds per forward over `rounds` rounds}."""
    inputs = {k: torch.randn(n, m.d_model, device=device, dtype=dtype) for k, (m, n) in cases.items()}
    samples = {k: [] for k in cases}
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for k, (m, n) in cases.items():
                    xs = inputs[k]
                    t = dmcourse.time_fn(lambda: m(xs), device=device, warmup=1, repeats=3, inner=10 if n <= 16 else 1)
                    samples[k].append(t.median_s)
    finally:
        torch.set_num_threads(threads)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


swiglu_ffn = ffn.SwiGLU(D_MODEL, D_FF, device=device, dtype=dtype)
times = interleaved({n: (swiglu_ffn, n) for n in TOKENS})
rows = []
for n, t in times.items():
    flops = n * swiglu_ffn.flops_per_token()
    rows.append((n, t, flops / t))
    print(f"{n:6d} tokens: {t * 1e3:8.3f} ms, {flops / t / 1e9:8.1f} GFLOP/s")
print(f"SwiGLU d_model={D_MODEL}, d_ff={D_FF}, {str(dtype).removeprefix('torch.')}; measured on {info.summary()}"
      f"{', 1 thread' if device.type == 'cpu' else ''}, {TODAY}")

# %%
ns, ts, fs = zip(*rows)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
ax1.loglog(ns, [t * 1e3 for t in ts], "o-", color=plot.COLORS["measured"], label="measured")
ax1.loglog(ns, [ts[-1] * 1e3 * n / ns[-1] for n in ns], ":", color=plot.COLORS["datasheet"], label=r"$\propto$ tokens")
ax1.set(xlabel="tokens", ylabel="time (ms)", title=f"SwiGLU FFN forward, d_model={D_MODEL}, d_ff={D_FF}")
ax1.legend()
ax2.semilogx(ns, [f / 1e9 for f in fs], "o-", color=plot.COLORS["measured"])
ax2.set(xlabel="tokens", ylabel="achieved GFLOP/s", title="throughput")
ax2.set_ylim(bottom=0)
plot.stamp(ax2, info.name)
fig.tight_layout()
plt.show()
growth = ts[-1] / ts[-2] / (ns[-1] / ns[-2])
print(f"{ns[-1]} tokens take {ts[-1] / ts[-2]:.1f}x the time of {ns[-2]} ({ns[-1] // ns[-2]}x the tokens); "
      f"{ns[0]} token reaches {fs[0] / max(fs):.0%} of the best throughput measured here")
if not 0.6 < growth < 1.5:
    print("-> the last points are not proportional on this run: the machine may have been busy; rerun this cell")

# %% [markdown]
# With many tokens, the time should grow in proportion to the token count (the dotted line; the
# cell compares the last two points): the device is busy computing, and every token costs the
# same FLOPs. With few tokens, the achieved FLOP/s drops (the cell prints by how much on your
# device): every weight must still be read once per call, however few tokens use it, and there is
# too little arithmetic to hide that. How deep the drop is depends on the device — a GPU does far
# more arithmetic per byte it reads than a CPU, so it needs many more tokens to be kept busy. That
# regime, few tokens per weight matrix, is where every MoE expert lives; the roofline chapter
# makes it quantitative.
#
# **Cost grows with the parameters a token touches.** Now fix the number of tokens and vary
# `d_ff`, which sets the parameter count `3 * d_model * d_ff`:

# %%
modules = {f: ffn.SwiGLU(D_MODEL, f, device=device, dtype=dtype) for f in D_FFS}
times_ff = interleaved({f: (m, T_FIXED) for f, m in modules.items()})
params = [3 * D_MODEL * f for f in D_FFS]
times = [times_ff[f] for f in D_FFS]
for f, p_, t in zip(D_FFS, params, times):
    print(f"d_ff={f:6d}: {p_ / 1e6:7.2f}M parameters, {t * 1e3:8.3f} ms for {T_FIXED} tokens, "
          f"{6 * D_MODEL * f * T_FIXED / t / 1e9:7.1f} GFLOP/s")
del modules
slope = sum(p_ * t for p_, t in zip(params, times)) / sum(p_ * p_ for p_ in params)  # least squares through 0
mean_t = sum(times) / len(times)
r2 = 1 - sum((t - slope * p_) ** 2 for p_, t in zip(params, times)) / sum((t - mean_t) ** 2 for t in times)
fig, ax = plt.subplots()
ax.plot([p_ / 1e6 for p_ in params], [t * 1e3 for t in times], "o", color=plot.COLORS["measured"], label="measured")
ax.plot([0, params[-1] / 1e6], [0, slope * params[-1] * 1e3], ":", color=plot.COLORS["datasheet"],
        label=f"time ∝ parameters (R² = {r2:.3f})")
ax.set(xlabel="FFN parameters (millions)", ylabel="time (ms)", title=f"SwiGLU forward, {T_FIXED} tokens, d_model={D_MODEL}")
ax.legend()
plot.stamp(ax, info.name)
plt.show()
print(f"least-squares line through the origin: {slope * 1e9:.3f} ns per parameter per {T_FIXED} tokens, R² = {r2:.3f}; "
      f"measured on {info.summary()}{', 1 thread' if device.type == 'cpu' else ''}, {TODAY}")
print("-> close to proportional on this run" if r2 > 0.9 else
      "-> far from a line on this run: other work on the machine disturbs the timings; rerun this cell")

# %% [markdown]
# R² measures how close the points lie to the straight line through the origin (1 would be
# exact; the cell prints it and says whether this run is close). At a fixed number of tokens, a
# dense FFN's cost grows in proportion to the weights it touches: twice the `d_ff`, twice the
# FLOPs, twice the time once the device is busy. That is the bill a dense model pays on every
# token for every weight — and what an MoE layer avoids by touching only `top_k` experts'
# weights.
#
# ## What we have
#
# | helper | what it does |
# |---|---|
# | `dmcourse.ffn.swiglu`, `ffn.SwiGLU`, `ffn.mlp`, `ffn.MLP` | the FFNs: SwiGLU (3 matrices) and the classic MLP (2) |
# | `dmcourse.load_preset(name)`, `configs.PRESETS` | the nine model configurations, with their sources |
# | `dmcourse.count_params(config)` | `total`, `active`, `active_without_embedding`, `non_embedding`, and the breakdown |
# | `accounting.forward_flops_per_token(config, context)`, `training_flops_per_token` | ~2N and ~6N plus the attention term |
# | `accounting.weight_bytes`, `kv_cache_bytes_per_token`, `kv_cache_bytes`, `to_gb`, `to_gib` | bytes, in both units |
# | `fit.fits_on_gpu(config, gpu, dtype, ...)`, `hardware.gpus()` | does it fit (datasheet memory) |
#
# Practise all of it in
# [Exercise 1](https://colab.research.google.com/github/dmcourse/dmcourse/blob/main/exercises/ex01_dense/ex01_dense.ipynb)
# (`exercises/ex01_dense`): a SwiGLU from primitives, the parameters of a block with grouped-query
# attention, FLOPs, weight and KV-cache bytes, and whether a model fits a GPU.
#
# Next: the MoE layer — a router, `n_experts` of these FFNs, and what "active" costs in practice.
