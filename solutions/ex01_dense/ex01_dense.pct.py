# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Exercise 1 — dense models: SwiGLU, parameters, FLOPs, bytes, and does it fit?
#
# This exercise goes with the chapter *Dense models*. You will write, from Python and `torch`
# primitives, the functions that answer the chapter's four questions for any model: how many
# parameters, how many FLOPs per token, how many bytes, and whether it fits on a GPU.
#
# **Time and points**: about 75 minutes; 16 points in all: part 1 (3 points), part 2 (4), part 3
# (3), part 4 (3), part 5 (3). Part 6 is not graded.
#
# **How to work on it**
#
# * Write your code where it says `# YOUR CODE HERE` (delete the `raise NotImplementedError()`
#   line). Do not use the `dmcourse` package in your answers: the point is to write them yourself,
#   and the grader checks that you did.
# * **Check your work**: run the cell of tests under each function. If it prints nothing, the
#   visible tests pass; an `AssertionError` message tells you what to fix. The grader also runs
#   hidden tests with other inputs (random shapes and configurations), so passing the visible ones
#   is necessary, not sufficient.
# * Before handing in, use *Runtime → Restart and run all* (Colab) or *Kernel → Restart & Run
#   All* (Jupyter) and make sure every cell runs.
#
# **How to hand in**: in Colab, *File → Download → Download .ipynb*; in Jupyter, *File → Download*.
# Keep the file name `ex01_dense.ipynb`, do not delete, split or reorder cells, and upload the file
# where your instructor asks.
#
# **Conventions used throughout**: weights are stored like `nn.Linear`'s, `(out_features,
# in_features)`; one multiply-add is **2 FLOPs**; **GB = 10⁹ bytes**, **GiB = 2³⁰ bytes**.

# %%
import math

import torch


# %% [markdown]
# ## 1. A SwiGLU feed-forward network (3 points)
#
# Implement
#
# $$\text{FFN}(x) = \big(\text{silu}(x W_\text{gate}^\top) \odot x W_\text{up}^\top\big)\, W_\text{down}^\top,
# \qquad \text{silu}(z) = z \cdot \sigma(z)$$
#
# for `x` of shape `(..., d_model)` (any number of leading dimensions), `w_gate` and `w_up` of shape
# `(d_ff, d_model)` and `w_down` of shape `(d_model, d_ff)`. Return a tensor of shape
# `(..., d_model)`. Use only tensor operations (`@`, `*`, `torch.sigmoid`, ...): no `torch.nn`
# modules and no `torch.nn.functional`.

# %% nbgrader={"grade": false, "grade_id": "swiglu", "locked": false, "schema_version": 3, "solution": true, "task": false}
def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """SwiGLU FFN: x (..., d_model) -> (..., d_model)."""
    ### BEGIN SOLUTION
    gate = x @ w_gate.T
    h = gate * torch.sigmoid(gate) * (x @ w_up.T)
    return h @ w_down.T
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_swiglu", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
_x = torch.tensor([[2.0]])
_out = swiglu(_x, torch.tensor([[1.0], [0.0]]), torch.tensor([[3.0], [5.0]]), torch.tensor([[1.0, 1.0]]))
assert _out.shape == (1, 1), f"output shape {tuple(_out.shape)}, expected (1, 1): project back down with w_down"
assert abs(_out.item() - 2 * torch.sigmoid(torch.tensor(2.0)).item() * 6) < 1e-5, "silu(2) * 6 + silu(0) * 10"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(1)
_gen = torch.Generator().manual_seed(1)
for _shape in [(5,), (3, 4), (2, 3, 2)]:
    _d, _f = _rng.randint(3, 12), _rng.randint(13, 40)  # d_ff != d_model: transposes must be right
    _xs = torch.randn(*_shape, _d, generator=_gen, dtype=torch.float64)
    _g = torch.randn(_f, _d, generator=_gen, dtype=torch.float64)
    _u = torch.randn(_f, _d, generator=_gen, dtype=torch.float64)
    _w = torch.randn(_d, _f, generator=_gen, dtype=torch.float64)
    _before = [_t.clone() for _t in (_xs, _g, _u, _w)]
    _got = _own(swiglu, _xs, _g, _u, _w)
    assert all(torch.equal(_a, _b) for _a, _b in zip(_before, (_xs, _g, _u, _w))), \
        "swiglu changed one of its inputs: compute new tensors, never modify x or the weights in place (x *= ..., .mul_)"
    assert tuple(_got.shape) == (*_shape, _d), f"shape {tuple(_got.shape)} for x {(*_shape, _d)}: expected {(*_shape, _d)}"
    _a = torch.einsum("...d,fd->...f", _xs, _g)
    _b = torch.einsum("...d,fd->...f", _xs, _u)
    _want = torch.einsum("...f,df->...d", _a / (1 + torch.exp(-_a)) * _b, _w)
    _no_up = torch.einsum("...f,df->...d", _a / (1 + torch.exp(-_a)), _w)
    assert not torch.allclose(_got, _no_up), "the up projection is missing: SwiGLU multiplies silu(x W_gate^T) by x W_up^T"
    assert torch.allclose(_got, _want, rtol=1e-6, atol=1e-8), (
        "wrong values: silu goes on the gate branch (x @ w_gate.T), multiplies the up branch elementwise, "
        "then w_down projects back; silu(z) = z * sigmoid(z)")
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Parameters of a transformer block (4 points)
#
# A block is grouped-query attention plus a SwiGLU FFN, with two RMSNorm weight vectors (length
# `d_model` each) and no biases. The attention has `n_heads` query heads and `n_kv_heads`
# key/value heads, each of width `head_dim`: the query projection maps `d_model` to
# `n_heads * head_dim`, the key and value projections map `d_model` to `n_kv_heads * head_dim`
# each, and the output projection maps `n_heads * head_dim` back to `d_model`. `cfg` is a dict
# with the keys `d_model`, `n_heads`, `n_kv_heads`, `d_ff` and, optionally, `head_dim` (when it
# is absent, `head_dim = d_model // n_heads`).
#
# `model_params(cfg)` counts the whole model: `n_layers` blocks, a final RMSNorm, an input
# embedding `(vocab_size, d_model)` and an LM head of the same size unless
# `cfg["tied_embeddings"]` is true (then the embedding matrix is reused and counted once).

# %% nbgrader={"grade": false, "grade_id": "block_params", "locked": false, "schema_version": 3, "solution": true, "task": false}
def block_params(cfg: dict) -> int:
    """Parameters of one attention + SwiGLU block (two RMSNorms, no biases)."""
    ### BEGIN SOLUTION
    d = cfg["d_model"]
    head_dim = cfg.get("head_dim", d // cfg["n_heads"])
    q = d * cfg["n_heads"] * head_dim
    kv = 2 * d * cfg["n_kv_heads"] * head_dim
    o = cfg["n_heads"] * head_dim * d
    ffn = 3 * d * cfg["d_ff"]
    norms = 2 * d
    return q + kv + o + ffn + norms
    ### END SOLUTION


def model_params(cfg: dict) -> int:
    """Parameters of the model: blocks, final norm, embedding, LM head (unless tied)."""
    ### BEGIN SOLUTION
    embedding = cfg["vocab_size"] * cfg["d_model"]
    head = 0 if cfg.get("tied_embeddings", False) else embedding
    return cfg["n_layers"] * block_params(cfg) + cfg["d_model"] + embedding + head
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_block_params", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
_llama3_8b = {"vocab_size": 128256, "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8,
              "d_ff": 14336, "tied_embeddings": False}  # its config.json on the Hugging Face hub
assert block_params({"d_model": 8, "n_heads": 2, "n_kv_heads": 2, "d_ff": 16}) == 4 * 64 + 3 * 128 + 16, \
    "d_model 8, 2 heads of width 4: Q, K, V, O are 8 x 8 each (4 * 64), the FFN 3 x 8 x 16, the norms 2 x 8"
assert model_params(_llama3_8b) == 8_030_261_248, "Llama-3-8B has 8,030,261,248 parameters"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random


def _ref_block(c):
    _hd = c.get("head_dim", c["d_model"] // c["n_heads"])
    return (2 * c["d_model"] * c["n_heads"] * _hd + 2 * c["d_model"] * c["n_kv_heads"] * _hd
            + 3 * c["d_model"] * c["d_ff"] + 2 * c["d_model"])


_rng = _random.Random(2)
for _i in range(40):
    _kv = _rng.choice([1, 2, 4, 8])
    _h = _kv * _rng.choice([2, 4, 8])  # grouped-query: fewer KV heads than query heads
    _c = {"d_model": _h * _rng.choice([16, 64, 128]), "n_heads": _h, "n_kv_heads": _kv, "d_ff": _rng.randint(8, 5000)}
    if _i % 3 == 0:
        _c["head_dim"] = _rng.choice([32, 96, 128])  # decoupled from d_model // n_heads (Qwen3 does this)
    _c_before = dict(_c)
    _got = _own(block_params, _c)
    assert _c == _c_before, (f"block_params changed the cfg it was given to {_c}: read defaults with cfg.get(...), "
                             "never cfg.setdefault(...) or cfg[...] = ...")
    _want = _ref_block(_c)
    assert isinstance(_got, int), (f"block_params({_c}) returned {type(_got).__name__} {_got!r}: return an int "
                                   "(head_dim = d_model // n_heads, floor division)")
    _full = _want + 2 * _c["d_model"] * (_c["n_heads"] - _c["n_kv_heads"]) * _c.get("head_dim", _c["d_model"] // _c["n_heads"])
    assert _got != _full, f"block_params({_c}): K and V have n_kv_heads heads, not n_heads (grouped-query attention)"
    assert _got != _want - _c["d_model"] * _c["d_ff"], f"block_params({_c}): SwiGLU has three matrices (gate, up, down)"
    assert _got != _want - 2 * _c["d_model"], f"block_params({_c}): count the two RMSNorm weight vectors"
    assert _got == _want, f"block_params({_c}) = {_got}, expected {_want}"
    _m = dict(_c, vocab_size=_rng.randint(100, 200000), n_layers=_rng.randint(1, 100), tied_embeddings=_i % 2 == 0)
    _emb = _m["vocab_size"] * _m["d_model"]
    _want_m = _m["n_layers"] * _want + _m["d_model"] + _emb * (1 if _m["tied_embeddings"] else 2)
    _m_before = dict(_m)
    _got_m = _own(model_params, _m)
    assert _m == _m_before, f"model_params changed the cfg it was given to {_m}: read it, never write into it"
    assert isinstance(_got_m, int), f"model_params returned {type(_got_m).__name__} {_got_m!r}: return an int"
    assert _got_m == _want_m, (f"model_params({_m}) = {_got_m}, expected {_want_m}: n_layers blocks + final norm + "
                               "embedding + LM head (counted once when tied)")
### END HIDDEN TESTS

# %% [markdown]
# ## 3. FLOPs per token (3 points)
#
# A forward pass costs 2 FLOPs per weight used in a matrix multiply (`n_matmul_params`), plus the
# attention scores and weighted sum: for a token attending to `context` earlier tokens, each of
# `n_layers` layers computes, per query head, `context` dot products of width `head_dim` with the
# keys and a weighted sum of `context` value vectors of width `head_dim`. Count 2 FLOPs per
# multiply-add there too. Training (forward + backward) costs **3 times** the forward pass.

# %% nbgrader={"grade": false, "grade_id": "flops", "locked": false, "schema_version": 3, "solution": true, "task": false}
def forward_flops_per_token(n_matmul_params: int, n_layers: int, n_heads: int, head_dim: int, context: int) -> int:
    """Forward FLOPs for one token attending to `context` tokens."""
    ### BEGIN SOLUTION
    return 2 * n_matmul_params + 2 * 2 * n_layers * n_heads * head_dim * context
    ### END SOLUTION


def training_flops_per_token(n_matmul_params: int, n_layers: int, n_heads: int, head_dim: int, context: int) -> int:
    """Forward + backward FLOPs for one token."""
    ### BEGIN SOLUTION
    return 3 * forward_flops_per_token(n_matmul_params, n_layers, n_heads, head_dim, context)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_flops", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
assert forward_flops_per_token(1_000, 1, 1, 1, 0) == 2_000, "2 FLOPs per weight per token"
assert training_flops_per_token(1_000, 1, 1, 1, 0) == 6_000, "training is about 6N"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(3)
for _ in range(30):
    _n, _l, _h, _hd, _ctx = _rng.randint(10**6, 10**11), _rng.randint(1, 100), _rng.randint(1, 128), _rng.choice([64, 128]), _rng.randint(1, 10**5)
    _attn = 4 * _l * _h * _hd * _ctx
    _got = _own(forward_flops_per_token, _n, _l, _h, _hd, _ctx)
    assert _got != _n + _attn // 2, "FLOPs count a multiply-add as 2 FLOPs: 2N for the weights"
    assert _got != _n + _attn, "the weights cost 2 FLOPs each (one multiply, one add): 2N, not N"
    assert _got != 2 * _n + _attn // 2, "attention: Q.K (head_dim multiply-adds per key) AND the weighted sum of values, 2 FLOPs each"
    assert _got != 2 * _n, "the attention term (grows with the context) is missing"
    assert _got == 2 * _n + _attn, f"forward_flops_per_token{(_n, _l, _h, _hd, _ctx)} = {_got}, expected {2 * _n + _attn}"
    assert isinstance(_got, int), f"forward_flops_per_token returned {type(_got).__name__} {_got!r}: return an int"
    _t = _own(training_flops_per_token, _n, _l, _h, _hd, _ctx)
    assert isinstance(_t, int), (f"training_flops_per_token returned {type(_t).__name__} {_t!r}: return an int "
                                 "(3 * forward, no division)")
    assert _t == 3 * (2 * _n + _attn), f"training = 3 x forward (backward is about 2 x forward), got {_t}"
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Bytes: weights and KV cache (3 points)
#
# `weight_bytes(n_params, dtype)` returns the bytes the weights take in `dtype`, one of `"fp32"`,
# `"bf16"`, `"fp16"`, `"fp8"`, `"int4"` (raise `ValueError` for anything else).
# `kv_cache_bytes_per_token(cfg, dtype)` returns what one token adds to the KV cache of a
# grouped-query model (`cfg` as in part 2, plus `n_layers`): every layer stores one key and one
# value vector per **KV head**. `bytes_to_gb` and `bytes_to_gib` convert bytes to GB and to GiB.

# %% nbgrader={"grade": false, "grade_id": "bytes", "locked": false, "schema_version": 3, "solution": true, "task": false}
def weight_bytes(n_params: int, dtype: str) -> float:
    """Bytes of `n_params` weights stored in `dtype`."""
    ### BEGIN SOLUTION
    per = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int4": 0.5}
    if dtype not in per:
        raise ValueError(f"unknown dtype {dtype!r}")
    return n_params * per[dtype]
    ### END SOLUTION


def kv_cache_bytes_per_token(cfg: dict, dtype: str) -> float:
    """KV-cache bytes added by one token, all layers."""
    ### BEGIN SOLUTION
    head_dim = cfg.get("head_dim", cfg["d_model"] // cfg["n_heads"])
    return weight_bytes(2 * cfg["n_layers"] * cfg["n_kv_heads"] * head_dim, dtype)
    ### END SOLUTION


def bytes_to_gb(n_bytes: float) -> float:
    """Bytes -> GB (1e9 bytes)."""
    ### BEGIN SOLUTION
    return n_bytes / 1e9
    ### END SOLUTION


def bytes_to_gib(n_bytes: float) -> float:
    """Bytes -> GiB (2**30 bytes)."""
    ### BEGIN SOLUTION
    return n_bytes / 2**30
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_bytes", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
_llama3_8b = {"vocab_size": 128256, "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8,
              "d_ff": 14336, "tied_embeddings": False}
assert weight_bytes(10, "fp32") == 40, "fp32 takes 4 bytes per parameter: 10 parameters are 40 bytes"
assert kv_cache_bytes_per_token(_llama3_8b, "bf16") == 131072, "Llama-3-8B: 128 KiB per token in bf16"
assert bytes_to_gb(1e9) == 1.0, "bytes_to_gb divides by 1e9 (GB = 10**9 bytes)"
assert bytes_to_gib(2**30) == 1.0, "bytes_to_gib divides by 2**30 (GiB = 2**30 bytes)"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(4)
_per = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int4": 0.5}
for _dt, _b in _per.items():
    _n = _rng.randint(10**6, 10**12)
    _got = _own(weight_bytes, _n, _dt)
    assert _got != _n * _b * 2 and _got != _n * _b / 2, f"weight_bytes({_n}, {_dt!r}) is off by 2x: {_dt} takes {_b} bytes per parameter"
    assert _got == _n * _b, f"weight_bytes({_n}, {_dt!r}) = {_got}, expected {_n * _b} ({_b} bytes per parameter)"
for _bad in ("fp12", "float"):
    try:
        weight_bytes(10, _bad)
    except ValueError:
        pass
    else:
        raise AssertionError(f"weight_bytes(10, {_bad!r}) should raise ValueError")
for _i in range(20):
    _kv = _rng.choice([1, 2, 4, 8])
    _h = _kv * _rng.choice([2, 4, 8])
    _c = {"d_model": _h * 64, "n_heads": _h, "n_kv_heads": _kv, "d_ff": 100, "n_layers": _rng.randint(1, 100)}
    if _i % 2:
        _c["head_dim"] = 128
    _dt = _rng.choice(list(_per))
    _hd = _c.get("head_dim", _c["d_model"] // _c["n_heads"])
    _want = 2 * _c["n_layers"] * _kv * _hd * _per[_dt]
    _c_before = dict(_c)
    _got = _own(kv_cache_bytes_per_token, _c, _dt)
    assert _c == _c_before, (f"kv_cache_bytes_per_token changed the cfg it was given to {_c}: use cfg.get(...) "
                             "for head_dim, never cfg.setdefault(...)")
    assert _got != _want // _kv * _h, f"kv_cache_bytes_per_token({_c}): cache the n_kv_heads key/value heads, not n_heads"
    assert _got != _want / 2, f"kv_cache_bytes_per_token({_c}): both a key AND a value vector per KV head"
    assert _got == _want, f"kv_cache_bytes_per_token({_c}, {_dt!r}) = {_got}, expected {_want}"
for _n in (1, 141_106_823_168, 7 * 2**30):
    assert abs(_own(bytes_to_gb, _n) - _n / 1e9) < 1e-9 * max(1, _n / 1e9), "GB = 1e9 bytes"
    assert abs(_own(bytes_to_gib, _n) - _n / 2**30) < 1e-9 * max(1, _n / 2**30), "GiB = 2**30 bytes"
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Does it fit? (3 points)
#
# GPU datasheets give memory in **GB** (an "80 GB" H100 has `80e9` bytes by that label).
# `fits(n_params, dtype, gpu_memory_gb, n_gpus=1, extra_bytes=0)` returns whether the weights
# plus `extra_bytes` (KV cache, activations) fit in `n_gpus` GPUs of `gpu_memory_gb` GB each.
# `gpus_needed(n_params, dtype, gpu_memory_gb, extra_bytes=0)` returns the smallest number of such
# GPUs whose memory adds up to what is needed (ignore how the model would be split).

# %% nbgrader={"grade": false, "grade_id": "fits", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fits(n_params: int, dtype: str, gpu_memory_gb: float, n_gpus: int = 1, extra_bytes: float = 0) -> bool:
    """Whether weights + extra bytes fit in n_gpus x gpu_memory_gb (datasheet GB)."""
    ### BEGIN SOLUTION
    return weight_bytes(n_params, dtype) + extra_bytes <= n_gpus * gpu_memory_gb * 1e9
    ### END SOLUTION


def gpus_needed(n_params: int, dtype: str, gpu_memory_gb: float, extra_bytes: float = 0) -> int:
    """Fewest GPUs of gpu_memory_gb GB whose memory holds weights + extra bytes."""
    ### BEGIN SOLUTION
    return max(1, math.ceil((weight_bytes(n_params, dtype) + extra_bytes) / (gpu_memory_gb * 1e9)))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_fits", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
assert fits(7_000_000_000, "bf16", 16), "a 7B model in bf16 (14 GB) fits a 16 GB T4"
assert not fits(70_000_000_000, "bf16", 80), "a 70B model in bf16 (140 GB) does not fit one 80 GB GPU"
assert gpus_needed(70_000_000_000, "bf16", 80) == 2, "140 GB on 80 GB GPUs: 1.75 GPUs' worth, rounded up to 2"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

# needs between G*1e9 and G*2**30 bytes: the answer flips if GB and GiB are mixed
for _need_gb, _gpu in ((82.0, 80), (16.5, 16), (42.0, 40), (145.0, 141), (24.9, 24)):
    _params = int(_need_gb * 1e9 / 2)
    assert not _own(fits, _params, "bf16", _gpu), (
        f"{_need_gb} GB of weights on a {_gpu} GB GPU: datasheet GB are 1e9 bytes, do not mix in GiB (2**30)")
    assert _own(gpus_needed, _params, "bf16", _gpu) == 2, f"{_need_gb} GB on {_gpu} GB GPUs needs 2 (GB = 1e9 bytes)"
for _need_gb, _gpu in ((79.0, 80), (15.5, 16), (140.0, 141)):
    _params = int(_need_gb * 1e9 / 2)
    assert _own(fits, _params, "bf16", _gpu), f"{_need_gb} GB of weights fit a {_gpu} GB GPU"
    assert _own(gpus_needed, _params, "bf16", _gpu) == 1, f"{_need_gb} GB of weights need one {_gpu} GB GPU"
# exactly full: 40 GB of weights on a 40 GB GPU fit (<=, not <); one byte more does not
assert _own(fits, 20_000_000_000, "bf16", 40), "exactly 40 GB fit a 40 GB GPU: compare with <=, not <"
assert _own(fits, 20_000_000_000, "bf16", 20, 2), "exactly 40 GB fit two 20 GB GPUs: compare with <=, not <"
assert not _own(fits, 20_000_000_000, "bf16", 40, 1, 1), "40 GB + 1 byte do not fit a 40 GB GPU"
assert _own(gpus_needed, 20_000_000_000, "bf16", 40) == 1, "exactly 40 GB fill one 40 GB GPU: no second GPU"
assert _own(fits, 70_000_000_000, "int4", 40), "int4 is half a byte per parameter: 35 GB"
assert not _own(fits, 70_000_000_000, "fp8", 40), "fp8 is one byte per parameter: 70 GB do not fit 40 GB"
assert _own(fits, 70_000_000_000, "bf16", 80, 2), "n_gpus multiplies the memory"
assert not _own(fits, 7_000_000_000, "bf16", 16, 1, 3e9), "extra_bytes (KV cache) counts too"
assert _own(gpus_needed, 70_000_000_000, "bf16", 40, 20e9) == 4, "(140 + 20) GB / 40 GB = 4"
assert _own(gpus_needed, 70_000_000_000, "bf16", 40, 30e9) == 5, \
    "(140 + 30) GB on 40 GB GPUs need 5: add extra_bytes (KV cache) to the weights before dividing"
assert _own(gpus_needed, 7_000_000_000, "bf16", 16, 3e9) == 2, "14 GB of weights + 3 GB of KV cache need two 16 GB GPUs"
assert _own(gpus_needed, 70_000_000_001, "bf16", 40) == 4, "round up: 3.5 GPUs' worth of memory needs 4 GPUs"
assert _own(gpus_needed, 671_000_000_000, "fp8", 80) == 9, "671 GB on 80 GB GPUs: 9 (round up)"
assert _own(gpus_needed, 1_000, "bf16", 80) == 1, "a tiny model still needs one GPU"
for _args in ((70_000_000_000, "bf16", 80), (671_000_000_000, "fp8", 80), (1_000, "bf16", 80), (7 * 10**9, "bf16", 16, 3e9)):
    _got = _own(gpus_needed, *_args)
    assert isinstance(_got, int), (f"gpus_needed{_args} returned {type(_got).__name__} {_got!r}: return an int "
                                   "(math.ceil gives one; -(-a // b) on floats gives a float)")
### END HIDDEN TESTS

# %% [markdown]
# ## 6. Put it together (not graded)
#
# Use your functions on a model of your choice: parameters, forward FLOPs per token at a 4096-token
# context, weights in bf16 and int4, the KV cache of a 32k-token conversation, and how many 80 GB
# GPUs it needs. Compare with the chapter's tables.

# %%
_cfg = {"vocab_size": 128256, "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8,
        "d_ff": 14336, "tied_embeddings": False}  # Llama-3-8B; try another model's config.json
try:
    _n = model_params(_cfg)
    _hd = _cfg["d_model"] // _cfg["n_heads"]
    _matmul = _n - _cfg["vocab_size"] * _cfg["d_model"]  # the embedding lookup does no matmul
    print(f"parameters: {_n / 1e9:.2f}B")
    print(f"forward FLOPs/token at 4096 context: {forward_flops_per_token(_matmul, _cfg['n_layers'], _cfg['n_heads'], _hd, 4096) / 1e9:.1f} GFLOP")
    for _dt in ("bf16", "int4"):
        print(f"weights in {_dt}: {bytes_to_gb(weight_bytes(_n, _dt)):.1f} GB = {bytes_to_gib(weight_bytes(_n, _dt)):.1f} GiB")
    _kv = 32768 * kv_cache_bytes_per_token(_cfg, "bf16")
    print(f"KV cache of 32768 tokens: {bytes_to_gb(_kv):.2f} GB; 80 GB GPUs needed: {gpus_needed(_n, 'bf16', 80, _kv)}")
except NotImplementedError:
    print("implement the functions above first")
