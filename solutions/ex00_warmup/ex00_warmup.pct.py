# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Exercise 0 — warm-up: FLOPs, dtypes and honest timing
#
# This exercise goes with the chapter *Your device and how we measure*. You will write four small
# functions that the rest of the course relies on.
#
# **Time and points**: about 30 minutes; 8 points in all: part 1 (2 points), part 2 (1), part 3
# (3), part 4 (2). Part 5 is not graded.
#
# **How to work on it**
#
# * Write your code where it says `# YOUR CODE HERE` (delete the `raise NotImplementedError()`
#   line). Do not use the `dmcourse` package in your answers: the point is to write them yourself,
#   and the grader checks that you did.
# * **Check your work**: run the cell of tests under each function. If it prints nothing, the
#   visible tests pass; an `AssertionError` message tells you what to fix. The grader also runs
#   hidden tests with other inputs, so passing the visible ones is necessary, not sufficient.
# * Before handing in, use *Runtime → Restart and run all* (Colab) or *Kernel → Restart & Run
#   All* (Jupyter) and make sure every cell runs.
#
# **How to hand in**: in Colab, *File → Download → Download .ipynb*; in Jupyter, *File → Download*.
# Keep the file name `ex00_warmup.ipynb`, do not delete, split or reorder cells, and upload the file
# where your instructor asks.

# %%
import statistics

import torch


# %% [markdown]
# ## 1. FLOPs of a matrix multiplication (2 points)
#
# Multiplying an `(m, k)` matrix by a `(k, n)` matrix computes `m * n` outputs, each a sum of `k`
# products. Count one multiply and one add as **two** floating-point operations. Return the FLOP
# count as an `int`; raise `ValueError` if any size is not a positive `int` (a float such as `2.0`
# and a bool such as `True` are not sizes).

# %% nbgrader={"grade": false, "grade_id": "matmul_flops", "locked": false, "schema_version": 3, "solution": true, "task": false}
def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of (m, k) @ (k, n)."""
    ### BEGIN SOLUTION
    for name, value in (("m", m), ("k", k), ("n", n)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return 2 * m * k * n
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_matmul_flops", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
assert matmul_flops(1, 1, 1) == 2, "one multiply-add is 2 FLOPs"
assert matmul_flops(2, 3, 4) == 48, "2 * m * k * n"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

import random as _random

_rng = _random.Random(0)
for _ in range(50):
    _m, _k, _n = (_rng.randint(1, 5000) for _ in range(3))
    _got = _own(matmul_flops, _m, _k, _n)
    assert _got == 2 * _m * _k * _n, f"matmul_flops({_m}, {_k}, {_n}) = {_got}, expected 2*m*k*n"
    assert isinstance(_got, int), f"matmul_flops({_m}, {_k}, {_n}) returned {type(_got).__name__}: return an int"
for _ok in [(1, 1, 7), (1, 9, 1), (5, 1, 1)]:  # 1 is a positive size: the boundary is accepted
    try:
        _got = _own(matmul_flops, *_ok)
    except ValueError as _err:
        raise AssertionError(f"matmul_flops{_ok} raised {_err!r}: 1 is a positive size, reject only sizes < 1") from None
    assert _got == 2 * _ok[0] * _ok[1] * _ok[2], f"matmul_flops{_ok} = {_got}, expected {2 * _ok[0] * _ok[1] * _ok[2]}"
for _bad in [(0, 1, 1), (1, -2, 1), (1, 1, 2.5), (2.0, 3, 4), (True, 2, 2)]:
    try:
        matmul_flops(*_bad)
    except ValueError:
        pass
    else:
        raise AssertionError(f"matmul_flops{_bad} should raise ValueError: every size must be an int >= 1 "
                             "(isinstance(value, int), and not a bool)")
### END HIDDEN TESTS

# %% [markdown]
# ## 2. Achieved throughput (1 point)
#
# A multiplication of shape `(m, k) @ (k, n)` took `seconds`. Return the achieved throughput in
# FLOP/s (a `float`). Raise `ValueError` if `seconds` is not positive.

# %% nbgrader={"grade": false, "grade_id": "achieved_flops", "locked": false, "schema_version": 3, "solution": true, "task": false}
def achieved_flops_per_s(m: int, k: int, n: int, seconds: float) -> float:
    """FLOP/s achieved by (m, k) @ (k, n) in `seconds`."""
    ### BEGIN SOLUTION
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    return matmul_flops(m, k, n) / seconds
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_achieved_flops", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
assert abs(achieved_flops_per_s(1000, 1000, 1000, 1.0) - 2e9) < 1, "2e9 FLOPs in one second is 2e9 FLOP/s"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

for _m, _k, _n, _s in [(4096, 4096, 4096, 0.0125), (1, 14336, 4096, 3.1e-5), (7, 3, 5, 2.0), (3, 1, 1, 4.0),
                       (2, 2, 2, 1e-9)]:  # 1.5 FLOP/s: true division; a nanosecond is a positive time
    try:
        _got = _own(achieved_flops_per_s, _m, _k, _n, _s)
    except ValueError as _err:
        raise AssertionError(f"achieved_flops_per_s({_m}, {_k}, {_n}, {_s}) raised {_err!r}: any seconds > 0 is valid") from None
    _want = 2 * _m * _k * _n / _s
    assert isinstance(_got, float), f"achieved_flops_per_s returned {type(_got).__name__}: return a float"
    _hint = " (use true division /, not floor division //)" if _got == 2 * _m * _k * _n // _s else ""
    assert abs(_got - _want) <= 1e-9 * _want, f"achieved_flops_per_s({_m}, {_k}, {_n}, {_s}) = {_got}, expected {_want}{_hint}"
for _s in (0.0, -1.0):
    try:
        achieved_flops_per_s(2, 2, 2, _s)
    except ValueError:
        pass
    else:
        raise AssertionError(f"seconds={_s} should raise ValueError: a time must be > 0")
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Which dtype? (3 points)
#
# Return the compute dtype the course uses: `torch.float32` on `"cpu"`; on `"cuda"`,
# `torch.bfloat16` when the compute capability `(major, minor)` is at least `(8, 0)`, else
# `torch.float16`. Raise `ValueError` for any other device type.

# %% nbgrader={"grade": false, "grade_id": "choose_dtype", "locked": false, "schema_version": 3, "solution": true, "task": false}
def choose_dtype(device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """Compute dtype for a device type and CUDA compute capability."""
    ### BEGIN SOLUTION
    if device_type == "cpu":
        return torch.float32
    if device_type != "cuda":
        raise ValueError(f"unknown device type {device_type!r}")
    return torch.bfloat16 if tuple(capability) >= (8, 0) else torch.float16
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_choose_dtype", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
assert choose_dtype("cpu") == torch.float32, "on the CPU the course computes in fp32 (torch.float32)"
assert choose_dtype("cuda", (9, 0)) == torch.bfloat16, "an H100 (9.0) runs bf16"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

_cases = {(7, 5): torch.float16, (7, 0): torch.float16, (6, 1): torch.float16,
          (8, 0): torch.bfloat16, (8, 6): torch.bfloat16, (8, 9): torch.bfloat16, (10, 0): torch.bfloat16, (12, 1): torch.bfloat16}
for _cap, _want in _cases.items():
    _got = _own(choose_dtype, "cuda", _cap)
    assert _got == _want, f"capability {_cap}: got {_got}, expected {_want} (a T4 is 7.5 and has no bf16 tensor cores)"
assert _own(choose_dtype, "cpu", None) == torch.float32, "on the CPU the course computes in fp32 (torch.float32)"
try:
    choose_dtype("tpu", None)
except ValueError:
    pass
else:
    raise AssertionError("an unknown device type should raise ValueError")
### END HIDDEN TESTS

# %% [markdown]
# ## 4. An honest summary of timing samples (2 points)
#
# `samples` are the times (seconds) of consecutive calls of the same function, the first ones
# including warm-up effects. Drop the first `warmup` samples and return the **median** of the rest.
# Raise `ValueError` when `warmup` is negative (`samples[-1:]` would silently keep the last one)
# or no sample is left; `warmup = 0` keeps every sample. Do not modify `samples`: the caller keeps
# it.

# %% nbgrader={"grade": false, "grade_id": "robust_time", "locked": false, "schema_version": 3, "solution": true, "task": false}
def robust_time(samples: list[float], warmup: int) -> float:
    """Median of samples[warmup:] (seconds)."""
    ### BEGIN SOLUTION
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup!r}")
    kept = list(samples)[warmup:]
    if not kept:
        raise ValueError(f"no samples left after dropping {warmup} warm-up samples of {len(samples)}")
    return statistics.median(kept)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_robust_time", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
assert robust_time([5.0, 1.0, 2.0, 3.0], warmup=1) == 2.0, \
    "drop the first sample (5.0), then the median of [1.0, 2.0, 3.0] is 2.0"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own

assert _own(robust_time, [9.0, 9.0, 1.0, 2.0, 3.0, 4.0], 2) == 2.5, "median of an even count is the mean of the middle two"
assert _own(robust_time, [0.5, 1.0, 1.0, 1.0, 100.0], 1) == 1.0, "the median, not the mean: one outlier must not move it"
assert _own(robust_time, [50.0, 2.0, 1.0, 3.0], 1) == 2.0, "drop the warm-up samples before taking the median"
assert _own(robust_time, [3.0, 1.0, 2.0], 0) == 2.0, "warmup=0 keeps every sample: the median of [3, 1, 2] is 2"
try:
    _one = _own(robust_time, [9.0, 4.0], 1)
except ValueError as _err:
    raise AssertionError(f"robust_time([9.0, 4.0], 1) raised {_err!r}: one sample is left, and the median of one "
                         "sample is that sample; raise only when none is left") from None
assert _one == 4.0, f"robust_time([9.0, 4.0], 1) = {_one}, expected 4.0 (the one sample left)"
_samples = [7.0, 3.0, 5.0, 1.0, 2.0]
_kept = list(_samples)
_got = _own(robust_time, _samples, 2)
assert _samples == _kept, (f"robust_time changed the caller's list to {_samples}: work on a copy "
                           "(sorted(...) or list(...)[warmup:]), never sort or delete in place")
assert _got == 2.0, f"robust_time({_kept}, 2) = {_got}, expected 2.0"
try:
    robust_time([1.0, 2.0], 2)
except ValueError:
    pass
else:
    raise AssertionError("no samples left should raise ValueError")
try:
    _got = robust_time([5.0, 1.0, 2.0], -1)
except ValueError:
    pass
else:
    raise AssertionError(f"warmup=-1 returned {_got!r}: a negative warmup should raise ValueError "
                         "(list[-1:] would silently keep only the last sample)")
### END HIDDEN TESTS

# %% [markdown]
# ## 5. Try it on your device
#
# Not graded: time a matmul with your own functions and see the throughput of your machine.

# %%
import time

_x = torch.randn(512, 512)
_samples = []
for _ in range(8):
    _t0 = time.perf_counter()
    _x @ _x
    _samples.append(time.perf_counter() - _t0)
try:
    print(f"{achieved_flops_per_s(512, 512, 512, robust_time(_samples, warmup=2)) / 1e9:.1f} GFLOP/s on this CPU")
except NotImplementedError:
    print("implement the functions above first")
