# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Exercise 4 — rooflines: intensity, bounds and decode-step predictions
#
# This exercise goes with the chapter *Rooflines on your own device*. You will write the small
# roofline model the chapter uses: bytes per element, the arithmetic intensity of a GEMM, the
# attainable throughput, memory- vs compute-bound, the experts a batch touches, and the
# predicted time of a decode step of a dense model or an MoE on a given GPU.
#
# **Time and points**: about 60 minutes; 15 points in all: part 1 (2 points), part 2 (3), part 3
# (2), part 4 (1), part 5 (2), part 6 (3), part 7 (2). Part 8 is not graded.
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
# Keep the file name `ex04_roofline.ipynb`, do not delete, split or reorder cells, and upload the
# file where your instructor asks.
#
# Units everywhere: bytes, FLOPs, seconds, FLOP/s, bytes/s; intensity in FLOP/byte.

# %%
import math


# %% [markdown]
# ## 1. Bytes per element (2 points)
#
# Return how many bytes one number takes in `dtype`: `"fp32"` and `"tf32"` (tf32 is stored as
# fp32), `"bf16"`, `"fp16"`, `"fp8"`, `"int8"`, `"int4"` (half a byte). Raise `ValueError` for any
# other name.

# %% nbgrader={"grade": false, "grade_id": "bytes_per_element", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bytes_per_element(dtype: str) -> float:
    """Bytes per element of `dtype`."""
    ### BEGIN SOLUTION
    sizes = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
    if dtype not in sizes:
        raise ValueError(f"unknown dtype {dtype!r}, expected one of {sorted(sizes)}")
    return sizes[dtype]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_bytes_per_element", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
assert bytes_per_element("fp32") == 4, "fp32 is 32 bits = 4 bytes"
assert bytes_per_element("int4") == 0.5, "int4 is 4 bits = half a byte: return 0.5"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

_want = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
assert _own(bytes_per_element, "bf16") == 2, "bf16 is a 16-bit format: 2 bytes per element"
for _name, _size in _want.items():
    _got = _own(bytes_per_element, _name)
    assert _got == _size, f"bytes_per_element({_name!r}) = {_got}, expected {_size}"
for _bad in ("float64", "bfloat", "", "BF 16"):
    try:
        bytes_per_element(_bad)
    except ValueError:
        pass
    else:
        raise AssertionError(f"bytes_per_element({_bad!r}) should raise ValueError")
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Arithmetic intensity of a GEMM (3 points)
#
# `(m, k) @ (k, n) -> (m, n)` in `dtype`. It performs `2 * m * k * n` FLOPs (one multiply and
# one add per term). At the very least it must read A `(m, k)` and B `(k, n)` and write C
# `(m, n)`, each once, every element taking `bytes_per_element(dtype)` bytes. Return FLOPs per
# byte as a `float`.

# %% nbgrader={"grade": false, "grade_id": "gemm_intensity", "locked": false, "schema_version": 3, "solution": true, "task": false}
def gemm_intensity(m: int, k: int, n: int, dtype: str) -> float:
    """FLOP/byte of (m, k) @ (k, n) in dtype, counting A and B read and C written."""
    ### BEGIN SOLUTION
    flops = 2 * m * k * n
    nbytes = bytes_per_element(dtype) * (m * k + k * n + m * n)
    return flops / nbytes
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_gemm_intensity", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
assert math.isclose(gemm_intensity(1, 1, 1, "fp32"), 2 / 12), "2 FLOPs over three 4-byte numbers"
assert math.isclose(gemm_intensity(64, 64, 64, "fp32"), 2 * 64 / 12), \
    "2 * 64**3 FLOPs over 3 * 64**2 fp32 numbers of 4 bytes: 2 * 64 / 12 FLOP/byte"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(4)
_sizes = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
for _ in range(40):
    _m, _k, _n = _rng.randint(1, 5000), _rng.randint(1, 9000), _rng.randint(1, 9000)
    _dt = _rng.choice(list(_sizes))
    _ref = 2 * _m * _k * _n / (_sizes[_dt] * (_m * _k + _k * _n + _m * _n))
    _got = _own(gemm_intensity, _m, _k, _n, _dt)
    _hint = ""
    if math.isclose(_got, _ref / 2, rel_tol=1e-9):
        _hint = " (you count one FLOP per multiply-add: it is 2)"
    elif math.isclose(_got, 2 * _m * _k * _n / (_sizes[_dt] * _k * _n), rel_tol=1e-9):
        _hint = " (count the bytes of A and C too, not only the weights B)"
    assert math.isclose(_got, _ref, rel_tol=1e-9), (
        f"gemm_intensity({_m}, {_k}, {_n}, {_dt!r}) = {_got}, expected {_ref}{_hint}: "
        "every operand (A, B, C) takes bytes_per_element bytes per element")
# a decode-like GEMM: one token through a 4096 x 14336 bf16 weight, about 1 FLOP per byte
_one = _own(gemm_intensity, 1, 4096, 14336, "bf16")
assert math.isclose(_one, 2 * 4096 * 14336 / (2 * (4096 + 4096 * 14336 + 14336)), rel_tol=1e-9), (
    f"one token through a bf16 weight: got {_one}, expected about 1 FLOP/byte (bf16 is 2 bytes)")
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Attainable throughput: the roofline (2 points)
#
# A kernel of arithmetic `intensity` (FLOP/byte) on a device with `peak_flops` (FLOP/s) and
# memory `bandwidth` (bytes/s) can run at most at `intensity * bandwidth` FLOP/s (the memory
# cannot feed it faster) and at most at `peak_flops`. Return the attainable FLOP/s.

# %% nbgrader={"grade": false, "grade_id": "attainable", "locked": false, "schema_version": 3, "solution": true, "task": false}
def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: attainable FLOP/s at this intensity."""
    ### BEGIN SOLUTION
    return min(peak_flops, intensity * bandwidth)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_attainable", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
assert attainable_flops(1.0, 100e12, 2e12) == 2e12, "1 FLOP/byte at 2 TB/s: 2 TFLOP/s"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(41)
for _ in range(30):
    _peak, _bw = 10 ** _rng.uniform(11, 15.5), 10 ** _rng.uniform(10, 12.7)
    for _i in (_peak / _bw / 10, _peak / _bw * 10, _rng.uniform(0.1, 1000)):
        _ref = min(_peak, _i * _bw)
        _got = _own(attainable_flops, _i, _peak, _bw)
        assert math.isclose(_got, _ref, rel_tol=1e-12), (
            f"attainable_flops({_i:.4g}, {_peak:.4g}, {_bw:.4g}) = {_got:.4g}, expected {_ref:.4g}: "
            "the LOWER of the two roofs limits the kernel")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. Memory- or compute-bound? (1 point)
#
# The two roofs meet at the **ridge point** `peak_flops / bandwidth`. Return `"memory"` when the
# intensity lies below the ridge (the bandwidth roof is the lower one) and `"compute"` otherwise
# (exactly at the ridge too: there the kernel already runs at peak).

# %% nbgrader={"grade": false, "grade_id": "bound", "locked": false, "schema_version": 3, "solution": true, "task": false}
def bound(intensity: float, peak_flops: float, bandwidth: float) -> str:
    """'memory' or 'compute'."""
    ### BEGIN SOLUTION
    return "memory" if intensity < peak_flops / bandwidth else "compute"
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_bound", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
assert bound(1.0, 989e12, 3.35e12) == "memory", "1 FLOP/byte is far below an H100's ridge"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

for _i, _peak, _bw, _want in [(1000.0, 989e12, 3.35e12, "compute"), (290.0, 989e12, 3.35e12, "memory"),
                              (300.0, 989e12, 3.35e12, "compute"), (3.0, 1e11, 4e10, "compute"),
                              (2.0, 1e11, 4e10, "memory"), (150.0, 312e12, 2.039e12, "memory"),
                              (2.5, 1e11, 4e10, "compute"), (8.0, 4e12, 5e11, "compute")]:  # exactly at the ridge
    _got = _own(bound, _i, _peak, _bw)
    _hint = " -- exactly at the ridge is 'compute': 'memory' only strictly below it (<, not <=)" if _i == _peak / _bw else ""
    assert _got == _want, (f"bound({_i}, {_peak:.4g}, {_bw:.4g}) = {_got!r}, expected {_want!r} "
                           f"(ridge = peak / bandwidth = {_peak / _bw:.1f} FLOP/byte){_hint}")
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Experts touched by a batch (2 points)
#
# An MoE layer has `n_experts` experts; each token picks `top_k` distinct experts, uniformly at
# random and independently of the other tokens. Return the **expected number of distinct
# experts** that a batch of `batch` tokens touches (a `float`). Hint: the probability that one
# token does not pick a given expert is `1 - top_k / n_experts`. `top_k = n_experts` is allowed
# (every token touches every expert), and so is `batch = 0` (no token touches no expert).

# %% nbgrader={"grade": false, "grade_id": "expected_experts", "locked": false, "schema_version": 3, "solution": true, "task": false}
def expected_experts(n_experts: int, top_k: int, batch: int) -> float:
    """Expected distinct experts touched by `batch` tokens under uniform top-k routing."""
    ### BEGIN SOLUTION
    return n_experts * (1 - (1 - top_k / n_experts) ** batch)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_expected_experts", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
assert math.isclose(expected_experts(8, 2, 1), 2), "one token touches exactly top_k experts"
assert expected_experts(8, 2, 2) < 4, "two tokens may pick the same expert"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(5)
for _e, _k in [(8, 2), (64, 8), (256, 8), (128, 8), (16, 1), (60, 4)]:
    for _b in (1, 2, 3, 7, 16, 100, 1000):
        _ref = _e * (1 - (1 - _k / _e) ** _b)
        _got = _own(expected_experts, _e, _k, _b)
        assert math.isclose(_got, _ref, rel_tol=1e-9), (
            f"expected_experts({_e}, {_k}, {_b}) = {_got}, expected {_ref}: "
            "E * (1 - (1 - k/E) ** B); check which of n_experts and top_k goes where")
assert math.isclose(_own(expected_experts, 256, 8, 10**5), 256, rel_tol=1e-9), "a huge batch touches every expert"
for _e, _k, _b, _ref in [(8, 8, 1, 8.0), (8, 8, 5, 8.0), (1, 1, 3, 1.0), (64, 8, 0, 0.0)]:
    try:
        _got = _own(expected_experts, _e, _k, _b)
    except (ValueError, ZeroDivisionError) as _err:
        raise AssertionError(f"expected_experts({_e}, {_k}, {_b}) raised {_err!r}: top_k = n_experts and batch = 0 "
                             "are valid; (1 - k/E) ** B needs no logarithm") from None
    assert math.isclose(_got, _ref, abs_tol=1e-12), f"expected_experts({_e}, {_k}, {_b}) = {_got}, expected {_ref}"
# a Monte-Carlo check of the same quantity, independent of the formula
_trials, _e, _k, _b = 3000, 16, 3, 5
_mean = sum(len({_x for _ in range(_b) for _x in _rng.sample(range(_e), _k)}) for _ in range(_trials)) / _trials
assert abs(_own(expected_experts, _e, _k, _b) - _mean) < 0.15, f"simulation gives {_mean:.2f} experts for E=16, k=3, B=5"
### END HIDDEN TESTS

# %% [markdown]
# ## 6. A decode step: FLOPs, bytes, intensity (3 points)
#
# One decode step produces one new token for each of `batch` sequences. `model` is a dict:
#
# * `"dense_params"`: parameters every token uses, read once per step (attention, norms, output
#   head, ...);
# * `"expert_params"`: the parameters of all routed experts (all layers); each token uses
#   `top_k` of the `n_experts` experts of each layer. A dense model has `expert_params = 0`,
#   `n_experts = top_k = 1`;
# * `"n_experts"`, `"top_k"`, `"bytes_per_param"`.
#
# Count, for the whole step, weights only (no KV cache):
#
# * FLOPs: 2 per parameter a token uses, for each of the `batch` tokens: each token uses the
#   dense parameters and `top_k / n_experts` of the expert parameters;
# * bytes: every weight the step needs is read **once**, however many tokens use it: the dense
#   parameters, plus the experts the batch touches (use `expected_experts`: on average the
#   fraction `expected_experts(...) / n_experts` of the expert parameters).
#
# Return `{"flops": ..., "bytes": ..., "intensity": ...}`.

# %% nbgrader={"grade": false, "grade_id": "decode_step", "locked": false, "schema_version": 3, "solution": true, "task": false}
def decode_step(model: dict, batch: int) -> dict:
    """FLOPs, bytes and intensity of one decode step of `batch` tokens."""
    ### BEGIN SOLUTION
    e, k = model["n_experts"], model["top_k"]
    active = model["dense_params"] + model["expert_params"] * k / e
    flops = 2 * batch * active
    touched = expected_experts(e, k, batch)
    nbytes = model["bytes_per_param"] * (model["dense_params"] + model["expert_params"] * touched / e)
    return {"flops": flops, "bytes": nbytes, "intensity": flops / nbytes}
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_decode_step", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
_dense = {"dense_params": 8_000_000_000, "expert_params": 0, "n_experts": 1, "top_k": 1, "bytes_per_param": 2}
_step = decode_step(_dense, 1)
assert math.isclose(_step["flops"], 16e9) and math.isclose(_step["bytes"], 16e9), "8B params in bf16, one token"
assert math.isclose(decode_step(_dense, 8)["intensity"], 8.0), "batch 8 shares one read of the weights"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random


def _ref_step(_m, _b):
    _e, _k = _m["n_experts"], _m["top_k"]
    _fl = 2 * _b * (_m["dense_params"] + _m["expert_params"] * _k / _e)
    _by = _m["bytes_per_param"] * (_m["dense_params"] + _m["expert_params"] * (1 - (1 - _k / _e) ** _b))
    return _fl, _by


_rng = _random.Random(6)
for _ in range(25):
    _e = _rng.choice([8, 16, 64, 128, 256])
    _m = {"dense_params": _rng.randint(10**8, 10**10), "expert_params": _rng.randint(10**9, 10**12),
          "n_experts": _e, "top_k": _rng.choice([1, 2, 4, 8]), "bytes_per_param": _rng.choice([4, 2, 1, 0.5])}
    _b = _rng.choice([1, 2, 5, 32, 300, 4096])
    _fl, _by = _ref_step(_m, _b)
    _m_before = dict(_m)
    _got = _own(decode_step, _m, _b)
    assert _m == _m_before, f"decode_step changed the model dict it was given to {_m}: compute in local variables"
    assert math.isclose(_got["flops"], _fl, rel_tol=1e-9), (
        f"flops {_got['flops']:.4g}, expected {_fl:.4g} for {_m}, batch {_b}: "
        "2 FLOPs per active parameter per token")
    assert math.isclose(_got["bytes"], _by, rel_tol=1e-9), (
        f"bytes {_got['bytes']:.4g}, expected {_by:.4g} for {_m}, batch {_b}: each weight is read once per "
        "step; of the experts, only those the batch touches (expected_experts / n_experts of them)")
    assert math.isclose(_got["intensity"], _fl / _by, rel_tol=1e-9), "intensity = flops / bytes"
# batch 1 of an MoE reads exactly its active weights; a huge batch reads all of them
_moe = {"dense_params": 1_600_000_000, "expert_params": 45_000_000_000, "n_experts": 8, "top_k": 2, "bytes_per_param": 2}
assert math.isclose(_own(decode_step, dict(_moe), 1)["bytes"], 2 * (1.6e9 + 45e9 * 2 / 8), rel_tol=1e-9), \
    "at batch 1 an MoE reads only the top_k experts the token picked"
assert math.isclose(_own(decode_step, dict(_moe), 10**4)["bytes"], 2 * (1.6e9 + 45e9), rel_tol=1e-9), \
    "a large batch touches every expert: all weights are read"
### END HIDDEN TESTS

# %% [markdown]
# ## 7. Predicted decode-step time on a GPU (2 points)
#
# `gpu` is a dict `{"peak_flops": ..., "bandwidth": ...}` (FLOP/s, bytes/s). By the roofline, a
# step can be no faster than its FLOPs at peak speed, and no faster than its bytes at full
# bandwidth. Return the predicted (least) time of one decode step in seconds.

# %% nbgrader={"grade": false, "grade_id": "decode_time", "locked": false, "schema_version": 3, "solution": true, "task": false}
def decode_time(model: dict, batch: int, gpu: dict) -> float:
    """Roofline time (s) of one decode step of `batch` tokens of `model` on `gpu`."""
    ### BEGIN SOLUTION
    step = decode_step(model, batch)
    return max(step["flops"] / gpu["peak_flops"], step["bytes"] / gpu["bandwidth"])
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_decode_time", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
_gpu = {"peak_flops": 1e15, "bandwidth": 2e12}
_small = {"dense_params": 8_000_000_000, "expert_params": 0, "n_experts": 1, "top_k": 1, "bytes_per_param": 2}
assert math.isclose(decode_time(_small, 1, _gpu), 16e9 / 2e12), "batch 1 is memory-bound: bytes / bandwidth"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(7)
# H100 SXM and T4 datasheet figures (T4: 65 TFLOP/s fp16; 320 GB/s, NVIDIA T4 board spec: 256-bit GDDR6 at 10 Gb/s per pin)
_gpus = [{"peak_flops": 989.5e12, "bandwidth": 3.35e12}, {"peak_flops": 65e12, "bandwidth": 320e9},
         {"peak_flops": 1e11, "bandwidth": 5e10}]
for _ in range(30):
    _e = _rng.choice([1, 8, 64])
    _m = {"dense_params": _rng.randint(10**8, 10**10), "expert_params": 0 if _e == 1 else _rng.randint(10**9, 10**11),
          "n_experts": _e, "top_k": 1 if _e == 1 else _rng.choice([1, 2, 8]), "bytes_per_param": _rng.choice([2, 4])}
    _b, _g = _rng.choice([1, 4, 64, 512, 8192, 65536]), _rng.choice(_gpus)
    _k = _m["top_k"]
    _fl = 2 * _b * (_m["dense_params"] + _m["expert_params"] * _k / _e)
    _by = _m["bytes_per_param"] * (_m["dense_params"] + _m["expert_params"] * (1 - (1 - _k / _e) ** _b))
    _ref = max(_fl / _g["peak_flops"], _by / _g["bandwidth"])
    _before = (dict(_m), dict(_g))
    _got = _own(decode_time, _m, _b, _g)
    assert (_m, _g) == _before, "decode_time changed the model or gpu dict it was given: read them, never write into them"
    assert math.isclose(_got, _ref, rel_tol=1e-9), (
        f"decode_time = {_got:.4g} s, expected {_ref:.4g} s (batch {_b}, {_m}, {_g}): the step takes at least "
        "flops / peak AND at least bytes / bandwidth: the larger of the two")
### END HIDDEN TESTS

# %% [markdown]
# ## 8. Try it (not graded)
#
# Mixtral-8x7B in bf16 on an H100 SXM, using datasheet figures (989.5 TFLOP/s dense bf16,
# half the "with sparsity" 1,979; 3.35 TB/s; <https://www.nvidia.com/en-us/data-center/h100/>).
# The parameter split below is the chapter's accounting of the Mixtral-8x7B preset
# (`dmcourse.roofline.decode_counts`): parameters read every step (attention, router, norms,
# output head; not the embedding lookup) and all expert parameters. Compare the MoE with a dense
# model of the same active size as the batch grows.

# %%
_h100 = {"peak_flops": 989.5e12, "bandwidth": 3.35e12}
_mixtral = {"dense_params": 1_474_564_096, "expert_params": 45_097_156_608, "n_experts": 8, "top_k": 2,
            "bytes_per_param": 2}
_dense_active = {"dense_params": 1_474_564_096 + 45_097_156_608 * 2 // 8, "expert_params": 0, "n_experts": 1,
                 "top_k": 1, "bytes_per_param": 2}
try:
    for _b in (1, 4, 32, 256, 2048):
        _t_moe, _t_dense = decode_time(_mixtral, _b, _h100), decode_time(_dense_active, _b, _h100)
        print(f"batch {_b:5d}: MoE {_t_moe * 1e3:6.2f} ms, dense of equal active size {_t_dense * 1e3:6.2f} ms "
              f"({bound(decode_step(_mixtral, _b)['intensity'], 989.5e12, 3.35e12)}-bound MoE)")
except NotImplementedError:
    print("implement the functions above first")
