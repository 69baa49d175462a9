# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Exercise 5 — inference economics: memory, GPUs, cost per token, dense or MoE?
#
# This exercise goes with the chapter *Inference economics and the decision: dense or MoE?*. You
# will write the small serving model the chapter uses: the bytes of the weights and of the KV
# cache, how many GPUs hold them, the roofline time of a decode step with its KV-cache reads, the
# cost of a generated token, and finally the choice between a dense model and an MoE for a
# workload.
#
# **Time and points**: about 90 minutes; 15 points in all: part 1 (2 points), part 2 (3), part 3
# (2), part 4 (3), part 5 (2), part 6 (3). Part 7 is not graded.
#
# **How to work on it**
#
# * Write your code where it says `# YOUR CODE HERE` (delete the `raise NotImplementedError()`
#   line). Do not use the `dmcourse` package in your answers: the point is to write them yourself,
#   and the grader checks that you did. Plain Python is enough (no torch needed).
# * **Check your work**: run the cell of tests under each function. If it prints nothing, the
#   visible tests pass; an `AssertionError` message tells you what to fix. The grader also runs
#   hidden tests with other inputs, so passing the visible ones is necessary, not sufficient.
# * Later functions may call earlier ones: make those right first.
# * Before handing in, use *Runtime → Restart and run all* (Colab) or *Kernel → Restart & Run
#   All* (Jupyter) and make sure every cell runs.
#
# **How to hand in**: in Colab, *File → Download → Download .ipynb*; in Jupyter, *File → Download*.
# Keep the file name `ex05_economics.ipynb`, do not delete, split or reorder cells, and upload the
# file where your instructor asks.
#
# **The inputs are plain dicts.** A model:
#
# ```python
# {"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "d_model": 4096,
#  "shared_params": 1_474_564_096,    # parameters every token uses (attention, norms, router, output head)
#  "expert_params": 45_097_156_608,   # ALL routed experts of all layers together
#  "n_experts": 8, "top_k": 2}        # each token uses top_k of the n_experts experts of each layer
# ```
#
# A dense model has `expert_params = 0` and `n_experts = top_k = 1`. A GPU (datasheet figures):
# `{"name": "H100", "memory_gb": 80, "peak_flops": 989.5e12, "bandwidth": 3.35e12}` (GB = 10⁹
# bytes, FLOP/s, bytes/s). Units everywhere: bytes, seconds, dollars. Your functions read these
# dicts and never modify them.

# %%
import math


# %% [markdown]
# ## 1. Weight memory (2 points)
#
# Return the bytes the model's weights take when every parameter is stored in `bytes_per_param`
# bytes (2 for bf16, 1 for fp8, 0.5 for int4). Serving keeps the model's weights in GPU memory —
# think about which ones.

# %% nbgrader={"grade": false, "grade_id": "weight_bytes", "locked": false, "schema_version": 3, "solution": true, "task": false}
def weight_bytes(model: dict, bytes_per_param: float) -> float:
    """Bytes of all weights that must be resident in GPU memory."""
    ### BEGIN SOLUTION
    return (model["shared_params"] + model["expert_params"]) * bytes_per_param
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_weight_bytes", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_dense8 = {"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "d_model": 4096,
           "shared_params": 8_000_000_000, "expert_params": 0, "n_experts": 1, "top_k": 1}
assert weight_bytes(_dense8, 2) == 16e9, "8B parameters in bf16 are 16 GB"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(50)
for _ in range(40):
    _e = _rng.choice([1, 8, 16, 64, 128, 256])
    _k = 1 if _e == 1 else _rng.choice([1, 2, 4, 8])
    _m = {"n_layers": _rng.randint(2, 100), "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "d_model": 4096,
          "shared_params": _rng.randint(10**8, 10**11), "expert_params": 0 if _e == 1 else _rng.randint(10**9, 10**12),
          "n_experts": _e, "top_k": _k}
    _bpp = _rng.choice([4, 2, 1, 0.5])
    _ref = (_m["shared_params"] + _m["expert_params"]) * _bpp
    _got = _own(weight_bytes, dict(_m), _bpp)
    _hint = ""
    if _e > 1 and math.isclose(_got, (_m["shared_params"] + _m["expert_params"] * _k / _e) * _bpp, rel_tol=1e-9):
        _hint = (" -- you stored only the active experts: a router may send the next token to ANY expert, so all "
                 "of them must be resident")
    elif math.isclose(_got, _ref / _bpp, rel_tol=1e-9):
        _hint = " -- multiply by bytes_per_param"
    assert math.isclose(_got, _ref, rel_tol=1e-9), f"weight_bytes = {_got:.6g}, expected {_ref:.6g} for {_m}{_hint}"
### END HIDDEN TESTS

# %% [markdown]
# ## 2. KV-cache memory (3 points)
#
# To generate a token, attention needs the keys and values of all earlier tokens of its sequence,
# kept in the **KV cache**. With grouped-query attention each layer caches, per token, a key vector
# and a value vector of `head_dim` numbers for each of its `n_kv_heads` key/value heads (not for
# each of the `n_heads` query heads). Return the bytes of the cache for `batch` sequences of
# `context` tokens each, every number taking `bytes_per_value` bytes.

# %% nbgrader={"grade": false, "grade_id": "kv_cache_bytes", "locked": false, "schema_version": 3, "solution": true, "task": false}
def kv_cache_bytes(model: dict, context: int, batch: int, bytes_per_value: float) -> float:
    """Bytes of the KV cache of `batch` sequences of `context` tokens."""
    ### BEGIN SOLUTION
    per_token = 2 * model["n_layers"] * model["n_kv_heads"] * model["head_dim"] * bytes_per_value
    return per_token * context * batch
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_kv_cache_bytes", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
assert kv_cache_bytes(_dense8, 1, 1, 2) == 2 * 32 * 8 * 128 * 2, "one token: K and V, every layer, every KV head"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(51)
for _ in range(40):
    _h = _rng.choice([16, 32, 64, 128])
    _m = {"n_layers": _rng.randint(2, 120), "n_heads": _h, "n_kv_heads": _rng.choice([1, 2, 4, 8]),
          "head_dim": _rng.choice([64, 128, 256]), "d_model": _h * 128, "shared_params": 10**9,
          "expert_params": 0, "n_experts": 1, "top_k": 1}
    _ctx, _b, _bpv = _rng.randint(2, 131072), _rng.randint(2, 512), _rng.choice([2, 1, 4])
    _per = _m["n_layers"] * _m["n_kv_heads"] * _m["head_dim"] * _bpv
    _ref = 2 * _per * _ctx * _b
    _got = _own(kv_cache_bytes, dict(_m), _ctx, _b, _bpv)
    _hint = ""
    if math.isclose(_got, _ref / 2, rel_tol=1e-9):
        _hint = " -- each token caches a key AND a value: the factor 2"
    elif math.isclose(_got, _ref * _m["n_heads"] / _m["n_kv_heads"], rel_tol=1e-9):
        _hint = " -- grouped-query attention caches only the n_kv_heads key/value heads, not one per query head"
    elif math.isclose(_got, _ref / _b, rel_tol=1e-9):
        _hint = " -- that is one sequence: the cache holds batch sequences"
    elif math.isclose(_got, _ref / _ctx, rel_tol=1e-9) or math.isclose(_got, _ref / _ctx / _b, rel_tol=1e-9):
        _hint = " -- the cache grows with every token of the context"
    assert math.isclose(_got, _ref, rel_tol=1e-9), (
        f"kv_cache_bytes = {_got:.6g}, expected {_ref:.6g} (context {_ctx}, batch {_b}, {_bpv} bytes, {_m}){_hint}")
for _ctx, _b, _ref in [(0, 4, 0), (1, 1, 2 * 32 * 8 * 128 * 2), (5, 1, 5 * 2 * 32 * 8 * 128 * 2)]:
    try:
        _got = _own(kv_cache_bytes, dict(_dense8), _ctx, _b, 2)
    except ValueError as _err:
        raise AssertionError(f"kv_cache_bytes(context={_ctx}, batch={_b}) raised {_err!r}: an empty context is "
                             "valid (a prompt not yet read) and holds 0 bytes") from None
    assert math.isclose(_got, _ref, abs_tol=1e-9), (
        f"kv_cache_bytes(context={_ctx}, batch={_b}) = {_got}, expected {_ref}: the cache holds exactly context "
        "tokens per sequence")
### END HIDDEN TESTS

# %% [markdown]
# ## 3. GPUs needed (2 points)
#
# Return the smallest number of GPUs of kind `gpu` whose memory together holds `total_bytes`.
# The GPU's memory is given as its datasheet figure in **GB** (10⁹ bytes; `nvidia-smi` shows
# GiB, 2³⁰ bytes: not the same). Use the full datasheet memory, nothing reserved. A model needs
# at least one GPU, even with `total_bytes = 0`. Raise `ValueError` when `total_bytes` is negative.

# %% nbgrader={"grade": false, "grade_id": "gpus_needed", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gpus_needed(total_bytes: float, gpu: dict) -> int:
    """Fewest GPUs whose datasheet memory holds total_bytes."""
    ### BEGIN SOLUTION
    if total_bytes < 0:
        raise ValueError(f"total_bytes must be >= 0, got {total_bytes!r}")
    return max(1, math.ceil(total_bytes / (gpu["memory_gb"] * 1e9)))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_gpus_needed", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_h100 = {"name": "H100", "memory_gb": 80, "peak_flops": 989.5e12, "bandwidth": 3.35e12}
assert gpus_needed(16e9, _h100) == 1, "16 GB fit one 80 GB GPU"
assert gpus_needed(141e9, _h100) == 2, "141 GB need two 80 GB GPUs"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

_cases = [
    (165e9, {"memory_gb": 80}, 3, "165 GB do not fit two 80 GB GPUs (160 GB)"),
    (160e9, {"memory_gb": 80}, 2, "exactly 160 GB fit two 80 GB GPUs"),
    (170e9, {"memory_gb": 85}, 2, "exactly full GPUs: no extra GPU"),
    (1.0, {"memory_gb": 16}, 1, "one byte needs one GPU"),
    (93.4e9, {"memory_gb": 141}, 1, ""),
    (1342e9, {"memory_gb": 80}, 17, ""),
    (33e9, {"memory_gb": 16}, 3, "33 GB on 16 GB cards"),
    (82e9, {"memory_gb": 40}, 3, "82 GB on 40 GB cards: two hold only 80 GB"),
    (47e9, {"memory_gb": 24}, 2, ""),
]
for _total, _gpu, _want, _why in _cases:
    _got = _own(gpus_needed, _total, dict(_gpu, name="x", peak_flops=1e12, bandwidth=1e11))
    _hint = ""
    if _got == math.ceil(_total / (_gpu["memory_gb"] * 2**30)) != _want:
        _hint = " -- memory_gb is in GB (10**9 bytes), not GiB (2**30 bytes)"
    assert _got == _want, (f"gpus_needed({_total:.4g} bytes, {_gpu['memory_gb']} GB) = {_got}, expected {_want} "
                           f"{_why}{_hint}")
    assert isinstance(_got, int), "return an int: you cannot buy a fraction of a GPU"
try:
    _got = _own(gpus_needed, 0.0, {"name": "x", "memory_gb": 80, "peak_flops": 1e12, "bandwidth": 1e11})
except ValueError as _err:
    raise AssertionError(f"gpus_needed(0 bytes) raised {_err!r}: only negative totals are invalid") from None
assert _got == 1, f"gpus_needed(0 bytes) = {_got}, expected 1: a model runs on at least one GPU"
try:
    gpus_needed(-1.0, {"name": "x", "memory_gb": 80, "peak_flops": 1e12, "bandwidth": 1e11})
except ValueError:
    pass
else:
    raise AssertionError("negative total_bytes should raise ValueError")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Time of a decode step (3 points)
#
# A **decode step** produces one new token for each of `batch` sequences, each having `context`
# tokens in its KV cache. By the roofline it takes at least `flops / peak_flops` and at least
# `bytes / bandwidth` seconds (`gpu`'s figures), so the larger of the two. Count:
#
# * **FLOPs**: 2 per parameter a token uses, for each of the `batch` tokens: each token uses the
#   shared parameters and `top_k / n_experts` of the expert parameters. (Ignore the attention
#   FLOPs over the context: they are small next to the KV-cache reads.)
# * **bytes**: every weight the step needs is read **once**, however many tokens use it: the
#   shared parameters, plus the experts the batch touches — on average the fraction
#   `1 - (1 - top_k / n_experts) ** batch` of the expert parameters (the expected-experts formula
#   of the rooflines exercise) — in `bytes_per_param` bytes each; plus the KV cache of **every**
#   sequence, read once per step (`bytes_per_value` bytes per number).
#
# The step time is also the time between two tokens of one sequence.

# %% nbgrader={"grade": false, "grade_id": "decode_step_time", "locked": false, "schema_version": 3, "solution": true, "task": false}
def decode_step_time(model: dict, gpu: dict, batch: int, context: int, bytes_per_param: float,
                     bytes_per_value: float = 2) -> float:
    """Roofline time (s) of one decode step of `batch` sequences with `context` cached tokens each."""
    ### BEGIN SOLUTION
    e, k = model["n_experts"], model["top_k"]
    active = model["shared_params"] + model["expert_params"] * k / e
    flops = 2 * batch * active
    touched = 1 - (1 - k / e) ** batch
    nbytes = (model["shared_params"] + model["expert_params"] * touched) * bytes_per_param
    nbytes += kv_cache_bytes(model, context, batch, bytes_per_value)
    return max(flops / gpu["peak_flops"], nbytes / gpu["bandwidth"])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_decode_step_time", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
assert math.isclose(decode_step_time(_dense8, _h100, 1, 0, 2), 16e9 / 3.35e12), "batch 1: read 16 GB of weights"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random


def _ref_time(_m, _g, _b, _ctx, _bpp, _bpv=2):
    _e, _k = _m["n_experts"], _m["top_k"]
    _fl = 2 * _b * (_m["shared_params"] + _m["expert_params"] * _k / _e)
    _kv = 2 * _m["n_layers"] * _m["n_kv_heads"] * _m["head_dim"] * _bpv * _ctx * _b
    _by = (_m["shared_params"] + _m["expert_params"] * (1 - (1 - _k / _e) ** _b)) * _bpp + _kv
    return max(_fl / _g["peak_flops"], _by / _g["bandwidth"]), _fl, _by, _kv


_rng = _random.Random(52)
_gpus = [{"name": "H100", "memory_gb": 80, "peak_flops": 989.5e12, "bandwidth": 3.35e12},
         {"name": "T4", "memory_gb": 16, "peak_flops": 65e12, "bandwidth": 320e9},  # NVIDIA T4 board spec: 256-bit GDDR6 at 10 Gb/s, up to 320 GB/s
         {"name": "slow", "memory_gb": 8, "peak_flops": 1e11, "bandwidth": 5e10}]
for _ in range(40):
    _e = _rng.choice([1, 8, 64, 256])
    _m = {"n_layers": _rng.randint(8, 96), "n_heads": 64, "n_kv_heads": _rng.choice([1, 4, 8]), "head_dim": 128,
          "d_model": 8192, "shared_params": _rng.randint(10**8, 10**10),
          "expert_params": 0 if _e == 1 else _rng.randint(10**9, 10**12), "n_experts": _e,
          "top_k": 1 if _e == 1 else _rng.choice([1, 2, 8])}
    _b, _ctx = _rng.choice([1, 2, 7, 64, 512, 8192, 65536]), _rng.choice([0, 128, 4096, 32768])
    _g, _bpp = _rng.choice(_gpus), _rng.choice([2, 1, 0.5])
    _bpv = (2, 1, 4)[_ % 3]  # the KV cache in bf16, fp8 and fp32
    _ref, _fl, _by, _kv = _ref_time(_m, _g, _b, _ctx, _bpp, _bpv)
    _m_before, _g_before = dict(_m), dict(_g)
    _got = _own(decode_step_time, _m, _g, _b, _ctx, _bpp) if _bpv == 2 else _own(decode_step_time, _m, _g, _b, _ctx, _bpp, _bpv)
    assert _m == _m_before and _g == _g_before, (
        "decode_step_time changed the model or gpu dict it was given: compute in local variables, never "
        "write into model[...] or gpu[...]")
    _hint = ""
    if _ctx and math.isclose(_got, max(_fl / _g["peak_flops"], (_by - _kv + _kv / _b) / _g["bandwidth"]), rel_tol=1e-9):
        _hint = " -- every sequence reads its OWN KV cache: batch caches per step"
    elif _ctx and _bpv != 2 and math.isclose(_got, _ref_time(_m, _g, _b, _ctx, _bpp, 2)[0], rel_tol=1e-9):
        _hint = f" -- the KV cache takes bytes_per_value = {_bpv} bytes per number: do not assume 2"
    elif _e > 1 and math.isclose(_got, max(_fl / _g["peak_flops"],
                                           ((_m["shared_params"] + _m["expert_params"]) * _bpp + _kv) / _g["bandwidth"]),
                                 rel_tol=1e-9):
        _hint = " -- a step reads only the experts its tokens touch, not all of them"
    elif math.isclose(_got, _fl / _g["peak_flops"] + _by / _g["bandwidth"], rel_tol=1e-9):
        _hint = " -- the roofline takes the larger of the two times, not their sum"
    assert math.isclose(_got, _ref, rel_tol=1e-9), (
        f"decode_step_time = {_got:.6g} s, expected {_ref:.6g} s (batch {_b}, context {_ctx}, {_bpp} bytes/param, "
        f"{_bpv} bytes/KV value, "
        f"{_g['name']}, {_m}){_hint}")
# an MoE at batch 1 reads its shared weights and exactly top_k of n_experts; at a huge batch, all experts
_moe = {"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "d_model": 4096,
        "shared_params": 1_474_564_096, "expert_params": 45_097_156_608, "n_experts": 8, "top_k": 2}
assert math.isclose(_own(decode_step_time, dict(_moe), dict(_gpus[0]), 1, 0, 2),
                    (1_474_564_096 + 45_097_156_608 / 4) * 2 / 3.35e12, rel_tol=1e-9), \
    "batch 1 of an MoE reads the shared weights and top_k / n_experts of the experts"
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Cost per generated token (2 points)
#
# A step of `step_seconds` on `n_gpus` GPUs, each rented at `usd_per_gpu_hour` dollars per hour
# (an assumed price: it is not a datasheet figure), produces one token for each of the `batch`
# sequences. Return the cost in dollars of **one million generated tokens**.

# %% nbgrader={"grade": false, "grade_id": "cost_per_million", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cost_per_million_tokens(step_seconds: float, batch: int, n_gpus: int, usd_per_gpu_hour: float) -> float:
    """Dollars per million generated tokens."""
    ### BEGIN SOLUTION
    usd_per_step = n_gpus * usd_per_gpu_hour / 3600 * step_seconds
    return usd_per_step / batch * 1e6
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_cost_per_million", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
assert math.isclose(cost_per_million_tokens(3.6, 1, 1, 1.0), 1e6 * 1e-3), "3.6 s of one $1/h GPU cost $0.001"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(53)
for _ in range(40):
    _t, _b, _n, _p = 10 ** _rng.uniform(-4, -1), _rng.choice([2, 3, 16, 64, 1000]), _rng.choice([2, 3, 8, 17]), _rng.uniform(0.5, 10)
    _ref = _n * _p / 3600 * _t / _b * 1e6
    _got = _own(cost_per_million_tokens, _t, _b, _n, _p)
    _hint = ""
    if math.isclose(_got, _ref * _b, rel_tol=1e-9):
        _hint = " -- one step makes batch tokens (one per sequence): divide the step's cost by the batch"
    elif math.isclose(_got, _ref / _b / _b, rel_tol=1e-9) or math.isclose(_got, _ref / _n, rel_tol=1e-9):
        _hint = " -- every one of the n_gpus GPUs is paid for the whole step"
    elif math.isclose(_got, _ref * 60, rel_tol=1e-9):
        _hint = " -- an hour has 3600 seconds"
    assert math.isclose(_got, _ref, rel_tol=1e-9), (
        f"cost_per_million_tokens({_t:.4g} s, batch {_b}, {_n} GPUs, ${_p:.2f}/h) = {_got:.6g}, expected {_ref:.6g}{_hint}")
### END HIDDEN TESTS

# %% [markdown]
# ## 6. Dense or MoE? (3 points)
#
# A team must serve a workload, a dict
# `{"batch": ..., "context": ..., "bytes_per_param": ..., "max_gpus": ..., "usd_per_gpu_hour": ...}`:
# `batch` sequences decoded together, each with `context` tokens of KV cache (16-bit: 2 bytes per
# value), weights in `bytes_per_param` bytes, at most `max_gpus` GPUs of kind `gpu`, at the given
# (assumed) price. For each candidate model:
#
# * its memory is its weights plus the KV cache of the workload; it runs on the fewest GPUs that
#   hold them (`gpus_needed`), and only if that is at most `max_gpus`;
# * on `n` GPUs it has `n` times the peak and the bandwidth of one (ideal scaling);
# * its cost is the cost per million tokens of its decode step on those `n` GPUs.
#
# Return `"dense"` or `"moe"`: the cheaper of the models that can run (`"dense"` on a tie: it is
# the simpler one to operate). Raise `ValueError` when neither fits.

# %% nbgrader={"grade": false, "grade_id": "choose", "locked": false, "schema_version": 3, "solution": true, "task": false}
def choose(workload: dict, dense: dict, moe: dict, gpu: dict) -> str:
    """'dense' or 'moe': the cheaper per token of the models that fit in max_gpus GPUs."""
    ### BEGIN SOLUTION
    costs = {}
    for name, model in (("dense", dense), ("moe", moe)):
        memory = (weight_bytes(model, workload["bytes_per_param"])
                  + kv_cache_bytes(model, workload["context"], workload["batch"], 2))
        n = gpus_needed(memory, gpu)
        if n > workload["max_gpus"]:
            continue
        scaled = dict(gpu, peak_flops=n * gpu["peak_flops"], bandwidth=n * gpu["bandwidth"])
        step = decode_step_time(model, scaled, workload["batch"], workload["context"], workload["bytes_per_param"])
        costs[name] = cost_per_million_tokens(step, workload["batch"], n, workload["usd_per_gpu_hour"])
    if not costs:
        raise ValueError(f"neither model fits in {workload['max_gpus']} x {gpu.get('name', 'GPU')}")
    return min(costs, key=lambda name: (costs[name], name != "dense"))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_choose", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
_mixtral = {"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "d_model": 4096,
            "shared_params": 1_474_564_096, "expert_params": 45_097_156_608, "n_experts": 8, "top_k": 2}
_llama70 = {"n_layers": 80, "n_heads": 64, "n_kv_heads": 8, "head_dim": 128, "d_model": 8192,
            "shared_params": 69_503_033_344, "expert_params": 0, "n_experts": 1, "top_k": 1}
_work = {"batch": 1, "context": 4096, "bytes_per_param": 2, "max_gpus": 8, "usd_per_gpu_hour": 2.0}
assert choose(_work, _llama70, _mixtral, _h100) == "moe", "at batch 1 Mixtral reads far fewer bytes than a dense 70B"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own


def _ref_choose(_w, _d, _m, _g):
    _costs = {}
    for _name, _mod in (("dense", _d), ("moe", _m)):
        _kv = 2 * _mod["n_layers"] * _mod["n_kv_heads"] * _mod["head_dim"] * 2 * _w["context"] * _w["batch"]
        _mem = (_mod["shared_params"] + _mod["expert_params"]) * _w["bytes_per_param"] + _kv
        _n = max(1, math.ceil(_mem / (_g["memory_gb"] * 1e9)))
        if _n > _w["max_gpus"]:
            continue
        _e, _k, _b = _mod["n_experts"], _mod["top_k"], _w["batch"]
        _fl = 2 * _b * (_mod["shared_params"] + _mod["expert_params"] * _k / _e)
        _by = (_mod["shared_params"] + _mod["expert_params"] * (1 - (1 - _k / _e) ** _b)) * _w["bytes_per_param"] + _kv
        _t = max(_fl / (_n * _g["peak_flops"]), _by / (_n * _g["bandwidth"]))
        _costs[_name] = _n * _t / _b
    if not _costs:
        return None
    return "moe" if _costs.get("moe", math.inf) < _costs.get("dense", math.inf) else "dense"


_h100 = {"name": "H100", "memory_gb": 80, "peak_flops": 989.5e12, "bandwidth": 3.35e12}
_h200 = {"name": "H200", "memory_gb": 141, "peak_flops": 989.5e12, "bandwidth": 4.8e12}
_a40 = {"name": "A100-40GB", "memory_gb": 40, "peak_flops": 312e12, "bandwidth": 1.555e12}
_llama8 = {"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "d_model": 4096,
           "shared_params": 7_504_924_672, "expert_params": 0, "n_experts": 1, "top_k": 1}
_dense13 = dict(_llama8, shared_params=1_474_564_096 + 45_097_156_608 // 4)  # dense of Mixtral's active size
_qwen = {"n_layers": 48, "n_heads": 32, "n_kv_heads": 4, "head_dim": 128, "d_model": 2048,
         "shared_params": 1_229_928_448, "expert_params": 28_991_029_248, "n_experts": 128, "top_k": 8}
_l4 = {"name": "L4", "memory_gb": 24, "peak_flops": 121e12, "bandwidth": 300e9}
_cases = [
    ({"batch": 1, "context": 2048, "bytes_per_param": 2, "max_gpus": 1, "usd_per_gpu_hour": 0.8}, _llama8, _qwen, _l4,
     "the 30B-total MoE would be cheaper per token, but its 61 GB of experts (all resident) do not fit one 24 GB L4"),
    ({"batch": 1, "context": 2048, "bytes_per_param": 2, "max_gpus": 4, "usd_per_gpu_hour": 0.8}, _llama8, _qwen, _l4,
     "on enough L4s the MoE, which reads only 8 of its 128 experts per token, is cheaper"),
    ({"batch": 1, "context": 131072, "bytes_per_param": 2, "max_gpus": 3, "usd_per_gpu_hour": 0.8}, _llama8, _qwen, _l4,
     "the MoE's weights fit three L4s, but not together with the KV cache of a 131k-token context"),
    ({"batch": 8, "context": 1024, "bytes_per_param": 1, "max_gpus": 1, "usd_per_gpu_hour": 2.0}, _llama70, _mixtral, _h100,
     "in fp8 both fit one H100; Mixtral reads fewer bytes"),
    # (workload, dense, moe, gpu, why)
    ({"batch": 1, "context": 4096, "bytes_per_param": 2, "max_gpus": 1, "usd_per_gpu_hour": 2.0}, _dense13, _mixtral, _h100,
     "Mixtral's 93 GB of experts (all resident) do not fit one 80 GB GPU"),
    ({"batch": 1, "context": 0, "bytes_per_param": 2, "max_gpus": 1, "usd_per_gpu_hour": 2.0}, _llama8, _mixtral, _h200,
     "both fit one H200; at batch 1 the 8B dense model reads fewer bytes"),
    ({"batch": 1, "context": 0, "bytes_per_param": 2, "max_gpus": 4, "usd_per_gpu_hour": 2.0}, _llama8, _mixtral, _h100,
     "Mixtral on 2 GPUs has a lower latency than the 8B model on 1, but costs more GPU-time per token"),
    ({"batch": 2048, "context": 0, "bytes_per_param": 2, "max_gpus": 8, "usd_per_gpu_hour": 3.0}, _llama70, _mixtral, _h100,
     "compute-bound: the MoE does a fifth of the dense 70B's FLOPs per token"),
    ({"batch": 64, "context": 2048, "bytes_per_param": 2, "max_gpus": 2, "usd_per_gpu_hour": 3.0}, _llama70, _mixtral, _h100,
     "the dense 70B plus its KV cache needs more than 2 GPUs"),
    ({"batch": 16, "context": 8192, "bytes_per_param": 1, "max_gpus": 8, "usd_per_gpu_hour": 1.0}, _dense13, _mixtral, _a40,
     ""),
    ({"batch": 256, "context": 1024, "bytes_per_param": 0.5, "max_gpus": 4, "usd_per_gpu_hour": 1.0}, _dense13, _mixtral, _a40,
     ""),
    ({"batch": 64, "context": 8192, "bytes_per_param": 0.5, "max_gpus": 1, "usd_per_gpu_hour": 1.0}, _llama8, _qwen, _h100,
     "in int4 the weights are small next to 64 x 8192 tokens of KV cache, and the MoE's cache (4 KV heads) is the "
     "smaller; the step reads the weights in bytes_per_param bytes, not 2"),
]
for _w, _d, _m, _g, _why in _cases:
    _want = _ref_choose(_w, _d, _m, _g)
    _args = (dict(_w), dict(_d), dict(_m), dict(_g))
    _got = _own(choose, *_args)
    assert _got == _want, f"choose({_w}, on {_g['name']}) = {_got!r}, expected {_want!r}: {_why}"
    assert _args == (_w, _d, _m, _g), (
        f"choose({_w}, on {_g['name']}) changed its arguments: scale a copy of the gpu (dict(gpu, ...)), never "
        "gpu[...] *= n")
# neither fits
try:
    choose({"batch": 1, "context": 0, "bytes_per_param": 2, "max_gpus": 1, "usd_per_gpu_hour": 1.0}, _llama70, _mixtral, _a40)
except ValueError:
    pass
else:
    raise AssertionError("when neither model fits in max_gpus GPUs, raise ValueError")
# a tie goes to the dense model
_twin = dict(_llama8)
assert _own(choose, {"batch": 4, "context": 0, "bytes_per_param": 2, "max_gpus": 1, "usd_per_gpu_hour": 1.0},
            dict(_twin), dict(_twin), dict(_h100)) == "dense", "on a tie, choose the dense model"
### END HIDDEN TESTS

# %% [markdown]
# ## 7. Try it (not graded)
#
# Mixtral-8x7B against a dense 70B (Llama-3-70B) and against a dense model of Mixtral's active size,
# on H100s (datasheet figures), at an assumed $2 per GPU-hour, as the batch grows. Which wins
# where, and why?

# %%
_dense13 = dict(_dense8, shared_params=1_474_564_096 + 45_097_156_608 // 4)  # a dense model of Mixtral's active size
try:
    for _b in (1, 8, 64, 512, 4096):
        _w = {"batch": _b, "context": 2048, "bytes_per_param": 2, "max_gpus": 64, "usd_per_gpu_hour": 2.0}
        _row = []
        for _name, _mod in (("dense 70B", _llama70), ("dense 13B", _dense13), ("Mixtral", _mixtral)):
            _mem = weight_bytes(_mod, 2) + kv_cache_bytes(_mod, 2048, _b, 2)
            _n = gpus_needed(_mem, _h100)
            _scaled = dict(_h100, peak_flops=_n * _h100["peak_flops"], bandwidth=_n * _h100["bandwidth"])
            _t = decode_step_time(_mod, _scaled, _b, 2048, 2)
            _row.append(f"{_name} {_n:2d} GPUs ${cost_per_million_tokens(_t, _b, _n, 2.0):6.3f}/M")
        print(f"batch {_b:4d}: " + " | ".join(_row)
              + f" -> vs 70B: {choose(_w, _llama70, _mixtral, _h100)}, vs 13B: {choose(_w, _dense13, _mixtral, _h100)}")
except NotImplementedError:
    print("implement the functions above first")
