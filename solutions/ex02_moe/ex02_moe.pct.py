# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Exercise 2 — the Mixture-of-Experts layer: routing, dispatch, active parameters
#
# This exercise goes with the chapter *The Mixture-of-Experts layer*. You will write, from Python
# and `torch` primitives, the three pieces of an MoE layer the chapter builds: top-k routing, the
# forward pass that sends tokens to their experts and mixes the results, and the count of total
# and active parameters of an MoE model.
#
# **Time and points**: about 75 minutes; 10 points in all: part 1 (3 points), part 2 (4), part 3
# (3). Part 4 is not graded.
#
# **How to work on it**
#
# * Write your code where it says `# YOUR CODE HERE` (delete the `raise NotImplementedError()`
#   line). Do not use the `dmcourse` package in your answers: the point is to write them yourself,
#   and the grader checks that you did.
# * **Check your work**: run the cell of tests under each function. If it prints nothing, the
#   visible tests pass; an `AssertionError` message tells you what to fix. The grader also runs
#   hidden tests with other inputs (random shapes, numbers of experts and `k`), so passing the
#   visible ones is necessary, not sufficient.
# * Before handing in, use *Runtime → Restart and run all* (Colab) or *Kernel → Restart & Run
#   All* (Jupyter) and make sure every cell runs.
#
# **How to hand in**: in Colab, *File → Download → Download .ipynb*; in Jupyter, *File → Download*.
# Keep the file name `ex02_moe.ipynb`, do not delete, split or reorder cells, and upload the file
# where your instructor asks.

# %%
import torch
import torch.nn.functional as F


# %% [markdown]
# ## 1. Top-k routing (3 points)
#
# `logits` has shape `(T, E)`: one router score per token (row) and expert (column). For each
# token keep the `k` experts with the largest logits, and give them weights by a softmax over
# **those `k` logits only** (mask the others to `-inf` before the softmax — equivalently, softmax
# over all experts, keep the top `k`, and renormalise them to sum to 1).
#
# Return `(indices, weights)`: `indices` an int64 tensor `(T, k)` of expert ids, `weights` a
# tensor `(T, k)` of the logits' dtype, where `weights[t, j]` belongs to expert `indices[t, j]`.
# Each row of `weights` sums to 1. Raise `ValueError` unless `1 <= k <= E` (`k = E` is allowed).
# Do not modify `logits`.

# %% nbgrader={"grade": false, "grade_id": "topk_route", "locked": false, "schema_version": 3, "solution": true, "task": false}
def topk_route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing with a softmax over the kept logits: logits (T, E) -> indices (T, k), weights (T, k)."""
    ### BEGIN SOLUTION
    n_experts = logits.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= n_experts:
        raise ValueError(f"k must be an int in [1, {n_experts}], got {k!r}")
    probs = torch.softmax(logits, dim=-1)
    top, indices = torch.topk(probs, k, dim=-1)
    weights = top / top.sum(dim=-1, keepdim=True)
    return indices, weights
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_topk_route", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
_idx, _w = topk_route(torch.tensor([[0.0, 2.0, 1.0, -1.0]]), 2)
assert _idx.shape == (1, 2) and _w.shape == (1, 2), f"shapes {tuple(_idx.shape)}, {tuple(_w.shape)}: expected (T, k) = (1, 2)"
assert sorted(_idx[0].tolist()) == [1, 2], f"experts {_idx[0].tolist()}: the two largest logits are experts 1 and 2"
_e = torch.exp(torch.tensor([2.0, 1.0]))
assert abs(_w[0, _idx[0].tolist().index(1)].item() - (_e[0] / _e.sum()).item()) < 1e-5, \
    "expert 1's weight should be e^2 / (e^2 + e^1): a softmax over the kept logits only"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(2)
_gen = torch.Generator().manual_seed(2)
for _trial in range(12):
    _T, _E = _rng.randint(3, 40), _rng.randint(2, 16)
    while _T == _E:  # tokens != experts, so the wrong dimension shows
        _T = _rng.randint(3, 40)
    _k = _rng.randint(1, _E)
    _k = (1, _E)[_trial] if _trial < 2 else _k  # the two boundaries first: k = 1 and k = E
    _logits = torch.randn(_T, _E, generator=_gen, dtype=torch.float64) * 2
    _before = _logits.clone()
    try:
        _ids, _ws = _own(topk_route, _logits, _k)
    except ValueError as _err:
        raise AssertionError(f"T={_T}, E={_E}, k={_k}: raised {_err!r}; every k with 1 <= k <= E is valid") from None
    assert torch.equal(_logits, _before), (
        "topk_route changed the logits it was given: work on new tensors (logits - m), never logits -= ... in place")
    assert tuple(_ids.shape) == (_T, _k) and tuple(_ws.shape) == (_T, _k), \
        f"T={_T}, E={_E}, k={_k}: got shapes {tuple(_ids.shape)} and {tuple(_ws.shape)}, expected ({_T}, {_k}): top-k over the experts (last dimension)"
    assert _ids.dtype == torch.int64, f"indices must be int64, got {_ids.dtype}"
    _ref_ids = torch.sort(_logits, dim=-1, descending=True).indices[:, :_k]
    assert torch.equal(torch.sort(_ids, -1).values, torch.sort(_ref_ids, -1).values), \
        f"T={_T}, E={_E}, k={_k}: wrong experts chosen; pick, for each token, the k experts with the largest logits"
    _kept = torch.exp(_logits.gather(1, _ids.long()))
    _ref_w = _kept / _kept.sum(-1, keepdim=True)
    assert torch.allclose(_ws.double().sum(-1), torch.ones(_T, dtype=torch.float64), atol=1e-5), \
        f"T={_T}, E={_E}, k={_k}: weights of a token must sum to 1 (renormalise over the k kept experts, per token)"
    assert torch.allclose(_ws.double(), _ref_w, atol=1e-5), \
        f"T={_T}, E={_E}, k={_k}: weights[t, j] must be the softmax over token t's kept logits, for expert indices[t, j]"
for _bad in (0, 5):
    try:
        topk_route(torch.randn(3, 4), _bad)
    except ValueError:
        pass
    else:
        raise AssertionError(f"k={_bad} with 4 experts should raise ValueError")
_ids32, _ws32 = _own(topk_route, torch.randn(5, 6, generator=_gen), 2)
assert _ids32.dtype == torch.int64, f"indices must be int64, got {_ids32.dtype}"
assert _ws32.dtype == torch.float32, (f"float32 logits gave {_ws32.dtype} weights: keep the logits' dtype "
                                      "(no .double() / .float64 inside)")
### END HIDDEN TESTS

# %% [markdown]
# ## 2. The MoE forward (4 points)
#
# Experts are SwiGLU FFNs stored stacked: expert `e` has `w_gate[e]`, `w_up[e]` of shape
# `(d_ff, d_model)` and `w_down[e]` of shape `(d_model, d_ff)`, and computes
# `(silu(x @ w_gate[e].T) * (x @ w_up[e].T)) @ w_down[e].T`. Given the routing of part 1
# (`indices`, `weights` of shape `(T, k)`), return
#
# $$y_t = \sum_{j=0}^{k-1} \text{weights}[t, j]\; \text{Expert}_{\text{indices}[t, j]}(x_t)$$
#
# for `x` of shape `(T, d_model)`, as a `(T, d_model)` tensor. Any correct dispatch is fine (a
# loop over experts, sorting by expert, ...), but run each expert only on the tokens that chose it:
# do not compute every expert for every token. Some experts may receive no token at all. The
# output has `x`'s dtype; do not modify any input.

# %% nbgrader={"grade": false, "grade_id": "moe_forward", "locked": false, "schema_version": 3, "solution": true, "task": false}
def moe_forward(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """MoE forward: x (T, d_model), indices/weights (T, k) -> (T, d_model)."""
    ### BEGIN SOLUTION
    out = torch.zeros_like(x)
    for e in range(w_gate.shape[0]):
        token, slot = torch.where(indices == e)  # tokens that chose e, and in which of their k slots
        if len(token) == 0:
            continue
        xe = x[token]
        y = (F.silu(xe @ w_gate[e].T) * (xe @ w_up[e].T)) @ w_down[e].T
        out.index_add_(0, token, weights[token, slot].unsqueeze(-1) * y)
    return out
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_moe_forward", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
_x = torch.tensor([[1.0], [2.0]])
_wg = torch.tensor([[[1.0]], [[2.0]], [[0.5]]])   # 3 experts, d_model = d_ff = 1
_wu = torch.tensor([[[1.0]], [[1.0]], [[1.0]]])
_wd = torch.tensor([[[1.0]], [[3.0]], [[1.0]]])
_out = moe_forward(_x, torch.tensor([[0], [1]]), torch.tensor([[1.0], [0.5]]), _wg, _wu, _wd)
assert _out.shape == (2, 1), f"shape {tuple(_out.shape)}, expected (T, d_model) = (2, 1)"
assert abs(_out[0, 0].item() - F.silu(torch.tensor(1.0)).item()) < 1e-5, "token 0 goes to expert 0 with weight 1"
assert abs(_out[1, 0].item() - 0.5 * 3 * F.silu(torch.tensor(4.0)).item() * 2) < 1e-5, \
    "token 1: weight 0.5 times expert 1's output, (silu(2 * 2) * 2) * 3"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(3)
_gen = torch.Generator().manual_seed(3)


def _ref_moe(_x, _ids, _ws, _g, _u, _d):
    # every expert on every token, then a (T, E) matrix of combine weights: an independent route to y
    _all = torch.stack([(F.silu(_x @ _g[_e].T) * (_x @ _u[_e].T)) @ _d[_e].T for _e in range(_g.shape[0])], 1)
    _mix = torch.zeros(_x.shape[0], _g.shape[0], dtype=_x.dtype).scatter_add(1, _ids, _ws)
    return torch.einsum("te,ted->td", _mix, _all)


def _check(_T, _E, _k, _ids=None, _what="", _dtype=torch.float64):
    _d, _f = _rng.randint(3, 9), _rng.randint(10, 20)
    _x = torch.randn(_T, _d, generator=_gen, dtype=torch.float64)
    _g = torch.randn(_E, _f, _d, generator=_gen, dtype=torch.float64) / _d**0.5
    _u = torch.randn(_E, _f, _d, generator=_gen, dtype=torch.float64) / _d**0.5
    _w = torch.randn(_E, _d, _f, generator=_gen, dtype=torch.float64) / _f**0.5
    if _ids is None:
        _ids = torch.stack([torch.randperm(_E, generator=_gen)[:_k] for _ in range(_T)])
    _ws = torch.rand(_ids.shape, generator=_gen, dtype=torch.float64) + 0.1  # not summing to 1
    _args = [_a.to(_dtype) if _a.is_floating_point() else _a for _a in (_x, _ids, _ws, _g, _u, _w)]
    _before = [_a.clone() for _a in _args]
    _got = _own(moe_forward, *_args)
    assert all(torch.equal(_a, _b) for _a, _b in zip(_args, _before)), (
        f"{_what}: moe_forward changed one of its inputs; build the output in a new tensor (torch.zeros_like(x)) "
        "and never write into x, indices, weights or the expert weights")
    assert tuple(_got.shape) == (_T, _d), f"{_what}: output shape {tuple(_got.shape)}, expected {(_T, _d)}"
    assert _got.dtype == _dtype, (f"{_what}: {_dtype} inputs gave a {_got.dtype} output; allocate the output "
                                  "with x's dtype (torch.zeros_like(x))")
    _want = _ref_moe(*[_a.double() if _a.is_floating_point() else _a for _a in _args])
    if not torch.allclose(_got.double(), _want, atol=1e-6 if _dtype == torch.float64 else 1e-4,
                          rtol=1e-5 if _dtype == torch.float64 else 1e-3):
        _hint = "check the combine: y_t = sum over the k slots of weights[t, j] * expert_{indices[t, j]}(x_t)"
        _unweighted = _ref_moe(_x, _ids, torch.ones_like(_ws), _g, _u, _w)
        _summed = _ref_moe(_x, _ids, _ws.sum(-1, keepdim=True).expand_as(_ws).contiguous(), _g, _u, _w)
        if torch.allclose(_got.double(), _unweighted, atol=1e-6):
            _hint = "the routing weights are missing: multiply each expert's output by weights[t, j]"
        elif _k > 1 and torch.allclose(_got.double(), _summed, atol=1e-6):
            _hint = "each expert output is multiplied by the sum of the token's k weights: use only weights[t, j] of its own slot"
        raise AssertionError(f"{_what} (T={_T}, E={_E}, k={_k}): wrong output; {_hint}")


for _trial in range(5):
    _E = _rng.randint(2, 10)
    _check(_rng.randint(2, 30), _E, _rng.randint(2, _E), _what="random routing with k > 1")
_check(9, 6, 1, _what="k = 1")
_check(7, 5, 5, _what="k = E (every token uses every expert)")
_check(1, 8, 3, _what="a single token")
_check(6, 7, 2, _ids=torch.tensor([[4, 1], [1, 4], [6, 1], [4, 6], [1, 6], [6, 4]]),
       _what="experts 0, 2, 3 and 5 receive no token")
_check(5, 4, 1, _ids=torch.full((5, 1), 3), _what="all tokens to the last expert")
_check(16, 8, 2, _what="float32 inputs, as in part 4", _dtype=torch.float32)
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Total and active parameters of an MoE model (3 points)
#
# `cfg` is a dict describing a model whose every layer has an MoE FFN:
#
# * `vocab_size`, `d_model`, `n_layers`; `tied_embeddings` (optional, default `False`): an input
#   embedding `(vocab_size, d_model)` and, unless tied, an LM head of the same size;
# * `other_per_layer`: the parameters of one layer outside its FFN (attention and the two norms —
#   exercise 1 counted those); plus one final norm of `d_model` weights after the last layer;
# * `n_experts` routed SwiGLU experts of hidden size `d_ff_expert`, of which `top_k` are used per
#   token, and a router `(n_experts, d_model)` per layer;
# * `n_shared_experts` (optional, default 0) SwiGLU experts of hidden size `d_ff_shared`
#   (optional, default `d_ff_expert`) that every token uses.
#
# Return `(total, active)` as ints: `total` counts every parameter; `active` those one token uses
# (embedding and LM head included, the convention of published figures).

# %% nbgrader={"grade": false, "grade_id": "moe_params", "locked": false, "schema_version": 3, "solution": true, "task": false}
def moe_params(cfg: dict) -> tuple[int, int]:
    """(total, active) parameters of an MoE model described by cfg."""
    ### BEGIN SOLUTION
    d = cfg["d_model"]
    expert = 3 * d * cfg["d_ff_expert"]
    shared = cfg.get("n_shared_experts", 0) * 3 * d * cfg.get("d_ff_shared", cfg["d_ff_expert"])
    router = cfg["n_experts"] * d
    common = cfg["other_per_layer"] + router + shared
    embedding = cfg["vocab_size"] * d
    head = 0 if cfg.get("tied_embeddings", False) else embedding
    outside = embedding + head + d
    total = cfg["n_layers"] * (common + cfg["n_experts"] * expert) + outside
    active = cfg["n_layers"] * (common + cfg["top_k"] * expert) + outside
    return total, active
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_moe_params", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Mixtral-8x7B (https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json):
# attention with 32 query heads and 8 KV heads of width 128, two norms per layer
_mixtral = {"vocab_size": 32000, "d_model": 4096, "n_layers": 32, "n_experts": 8, "top_k": 2,
            "d_ff_expert": 14336, "other_per_layer": 2 * 4096 * 4096 + 2 * 4096 * 1024 + 2 * 4096}
_total, _active = moe_params(_mixtral)
assert round(_total / 1e9, 1) == 46.7, f"total {_total / 1e9:.2f}B, Mistral publishes 46.7B"
assert round(_active / 1e9, 1) == 12.9, f"active {_active / 1e9:.2f}B, Mistral publishes 12.9B"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(4)
for _trial in range(30):
    _c = {"vocab_size": _rng.randint(100, 200000), "d_model": _rng.choice([64, 512, 2048, 7168]),
          "n_layers": _rng.randint(1, 80), "other_per_layer": _rng.randint(10**4, 10**9),
          "n_experts": _rng.randint(2, 300), "d_ff_expert": _rng.choice([96, 768, 2048, 14336])}
    _c["top_k"] = _rng.randint(1, min(8, _c["n_experts"] - 1)) if _trial % 10 else _c["n_experts"]  # k = E too
    if _trial % 3:
        _c["n_shared_experts"] = _rng.randint(1, 2)
        if _trial % 2:
            _c["d_ff_shared"] = _rng.choice([512, 1408, 2048])
    if _trial % 4 == 0:
        _c["tied_embeddings"] = _rng.random() < 0.5
    _c_before = dict(_c)
    _got = _own(moe_params, _c)
    assert _c == _c_before, (f"moe_params changed the cfg it was given to {_c}: read the optional keys with "
                             "cfg.get(key, default), never cfg.setdefault(...) or cfg[key] = ...")
    _d, _L = _c["d_model"], _c["n_layers"]
    _one = 3 * _d * _c["d_ff_expert"]
    _sh = _c.get("n_shared_experts", 0) * 3 * _d * _c.get("d_ff_shared", _c["d_ff_expert"])
    _emb = _c["vocab_size"] * _d * (1 if _c.get("tied_embeddings") else 2)
    _want_total = _L * (_c["other_per_layer"] + _c["n_experts"] * (_d + _one) + _sh) + _emb + _d
    _want_active = _want_total - _L * (_c["n_experts"] - _c["top_k"]) * _one
    assert isinstance(_got, tuple) and len(_got) == 2, "return a tuple (total, active)"
    assert all(isinstance(_v, int) for _v in _got), (f"config {_c}: got {_got!r}; return two ints (no true "
                                                     "division: top_k / n_experts makes a float)")
    assert _got[0] == _want_total, f"config {_c}: total {_got[0]}, expected {_want_total}"
    if _got[1] == _want_total and _c["top_k"] < _c["n_experts"]:
        raise AssertionError(f"config {_c}: active == total; only top_k of the n_experts routed experts are active")
    if _sh and _got[1] == _want_active - _L * _sh:
        raise AssertionError(f"config {_c}: shared experts are used by every token: count them as active")
    assert _got[1] == _want_active, f"config {_c}: active {_got[1]}, expected {_want_active}"
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Put it together
#
# Not graded: a small MoE layer from your functions, on random data.

# %%
torch.manual_seed(0)
_T, _d, _f, _E, _k = 16, 32, 64, 8, 2
_x = torch.randn(_T, _d)
_router = torch.randn(_E, _d) / _d**0.5
_g, _u = torch.randn(_E, _f, _d) / _d**0.5, torch.randn(_E, _f, _d) / _d**0.5
_w = torch.randn(_E, _d, _f) / _f**0.5
try:
    _ids, _ws = topk_route(_x @ _router.T, _k)
    _y = moe_forward(_x, _ids, _ws, _g, _u, _w)
    print("output", tuple(_y.shape), "- tokens per expert:", torch.bincount(_ids.flatten(), minlength=_E).tolist())
except NotImplementedError:
    print("implement the functions above first")
