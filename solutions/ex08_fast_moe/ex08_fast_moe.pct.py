# %% tags=["remove-cell"]
# Setup: makes `dmcourse` importable (Colab or a fresh environment); safe to re-run.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dmcourse") is None:  # $DMCOURSE_INSTALL: another pip target (wheel, path)
    target = os.environ.get("DMCOURSE_INSTALL") or "dmcourse @ git+https://github.com/dmcourse/dmcourse.git@main"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", target], check=True)

# %% [markdown]
# # Exercise 8 — why is my MoE slower than dense, and make it faster
#
# This exercise goes with the chapters *The Mixture-of-Experts layer* (3) and *Rooflines* (5). An
# MoE layer does less arithmetic per token than a dense layer of the same total size, yet a
# straightforward implementation is often much *slower*. You will first write a timer that gives
# honest numbers for work that runs asynchronously on a device, then measure a slow but correct MoE
# layer, and write a dispatch that is fast.
#
# **Expected working time: about 2 hours. Points: 4 (timer) + 4 (correct dispatch) + 2 (fast
# dispatch) = 10.**
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
#   All* (Jupyter) and make sure every cell runs. A CPU is enough; on a GPU runtime the last part
#   also measures the GPU.
#
# **How to hand in**: in Colab, *File → Download → Download .ipynb*; in Jupyter, *File → Download*.
# Keep the file name `ex08_fast_moe.ipynb`, do not delete, split or reorder cells, and upload the
# file where your instructor asks.

# %%
import statistics
import time

import torch
import torch.nn.functional as F


# %% [markdown]
# ## 1. An honest timer (4 points)
#
# On a GPU, `fn()` only *queues* work and returns at once; the device runs it later. A timer that
# reads the clock right after `fn()` returns measures the launch, not the work. The first calls of a
# function are also slower than the rest (memory allocation, caches, compilation), and one sample
# in a series can be hit by something else running on the machine.
#
# Write `time_device(fn, clock, synchronize, warmup=3, repeats=10)` that returns the time of one
# call of `fn()` in seconds:
#
# * call `fn()` `warmup` times without timing it (0 is allowed), and wait for that work to finish;
# * then take `repeats` samples; each sample times **one** call: wait for the device
#   (`synchronize()`), read `clock()`, call `fn()`, wait for the device again, read `clock()`;
# * return the **median** of the samples, as a float (the mean is dragged by outliers).
#
# Use only the `clock` and `synchronize` you are given (on a CPU `synchronize` does nothing; on a
# GPU it is `torch.cuda.synchronize`). Raise `ValueError` unless `warmup` is an int `>= 0` and
# `repeats` an int `>= 1`.

# %% nbgrader={"grade": false, "grade_id": "time_device", "locked": false, "schema_version": 3, "solution": true, "task": false}
def time_device(fn, clock, synchronize, warmup: int = 3, repeats: int = 10) -> float:
    """Median seconds of one call of fn() over `repeats` samples, after `warmup` untimed calls."""
    ### BEGIN SOLUTION
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        synchronize()
        start = clock()
        fn()
        synchronize()
        samples.append(clock() - start)
    return float(statistics.median(samples))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_time_device", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
_calls = []
_t = time_device(lambda: _calls.append(1), time.perf_counter, lambda: None, warmup=2, repeats=5)
assert isinstance(_t, float) and _t >= 0, f"return the median time in seconds as a float, got {_t!r}"
assert len(_calls) == 7, f"fn was called {len(_calls)} times; expected warmup + repeats = 2 + 5 = 7"
_t = time_device(lambda: time.sleep(0.002), time.perf_counter, lambda: None, warmup=1, repeats=3)
assert 0.0015 < _t < 0.5, f"a function that sleeps 2 ms measured {_t * 1e3:.2f} ms"
for _bad in ({"warmup": -1}, {"repeats": 0}):
    try:
        time_device(lambda: None, time.perf_counter, lambda: None, **_bad)
    except ValueError:
        pass
    else:
        raise AssertionError(f"{_bad} should raise ValueError")
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own


class _FakeDevice:
    """A device that runs queued work asynchronously, with a host clock in seconds.

    fn() costs the host `launch` seconds and queues the next duration of `costs` on the device;
    synchronize() waits (moves the host clock) until the device is idle; clock() reads the host
    clock. `log` records every call in order.
    """

    def __init__(self, costs, launch=1e-6):
        self.costs, self.launch = list(costs), launch
        self.host = self.busy_until = 0.0
        self.log = []

    def fn(self):
        n = sum(1 for _e in self.log if _e == "fn")
        cost = self.costs[min(n, len(self.costs) - 1)]
        self.log.append("fn")
        self.host += self.launch
        self.busy_until = max(self.busy_until, self.host) + cost

    def synchronize(self):
        self.log.append("sync")
        self.host = max(self.host, self.busy_until)

    def clock(self):
        self.log.append("clock")
        return self.host


def _check_timer(_warmup, _repeats, _costs, _want, _what):
    _dev = _FakeDevice(_costs)
    _got = _own(time_device, _dev.fn, _dev.clock, _dev.synchronize, warmup=_warmup, repeats=_repeats)
    _n = _dev.log.count("fn")
    assert _n == _warmup + _repeats, f"{_what}: fn called {_n} times, expected warmup + repeats = {_warmup} + {_repeats}"
    assert isinstance(_got, float), f"{_what}: return a float, got {type(_got).__name__}"
    # every timed call: synchronize before the clock read that starts it, synchronize before the clock read that ends it
    _fn_at = [_i for _i, _e in enumerate(_dev.log) if _e == "fn"]
    for _c, _i in enumerate(_fn_at[_warmup:]):
        _before = _dev.log[(_fn_at[_warmup + _c - 1] + 1 if _warmup + _c else 0):_i]
        assert "clock" in _before, f"{_what}: read the clock before every timed call"
        _last_clock = len(_before) - 1 - _before[::-1].index("clock")
        assert "sync" in _before[:_last_clock], \
            f"{_what}: the clock was read before synchronize(): wait for the work already queued (e.g. the warm-up) before starting a sample"
        _after = _dev.log[_i + 1:]
        assert "clock" in _after and "sync" in _after[:_after.index("clock")], \
            f"{_what}: the clock was read after fn() returned but before synchronize(): that times the launch, not the work"
    if abs(_got - _want) > 1e-9:
        _hint = "return the median of one-call samples"
        if _got > 2 * _want:
            _hint = "too slow: did you skip the warm-up, or average over a sample with an outlier (use the median)?"
        raise AssertionError(f"{_what}: measured {_got * 1e3:.4f} ms, expected {_want * 1e3:.4f} ms; {_hint}")


_L = 1e-6  # launch time of one call
# 3 slow warm-up calls (50 ms), then 1 ms calls with one 500 ms outlier among the samples
_check_timer(3, 7, [0.05] * 3 + [0.001, 0.001, 0.5, 0.001, 0.001, 0.001, 0.001], 0.001 + _L, "warmup=3, repeats=7")
_check_timer(2, 5, [0.05] * 2 + [0.5, 0.002, 0.002, 0.002, 0.003], 0.002 + _L, "warmup=2, repeats=5, first sample an outlier")
_check_timer(0, 3, [0.004, 0.001, 0.004], 0.004 + _L, "warmup=0, repeats=3")
_check_timer(1, 1, [0.05, 0.003], 0.003 + _L, "warmup=1, repeats=1")
_check_timer(3, 4, [0.05] * 3 + [0.001, 0.002, 0.004, 0.003], 0.0025 + _L, "an even number of samples (median of the middle two)")
for _bad in ({"warmup": 1.0}, {"repeats": 2.5}, {"repeats": -3}):
    try:
        time_device(lambda: 0, time.perf_counter, lambda: 0, **_bad)
    except ValueError as _err:
        pass
    else:
        raise AssertionError(f"{_bad} should raise ValueError")
### END HIDDEN TESTS

# %% [markdown]
# ## 2. A faster dispatch (4 points for a correct one, 2 more for a fast one)
#
# The cell below gives `slow_moe`, a correct MoE layer (SwiGLU experts stored stacked, as in
# exercise 2: `w_gate[e]`, `w_up[e]` are `(d_ff, d_model)`, `w_down[e]` is `(d_model, d_ff)`):
#
# $$y_t = \sum_{j=0}^{k-1} \text{weights}[t, j]\; \text{Expert}_{\text{indices}[t, j]}(x_t)$$
#
# It loops over the tokens and their `k` slots. Read it and find what makes it slow: how many
# matrix products does it launch for `T` tokens, how large is each, and how many times must Python
# wait for the device (`int(indices[t, j])` copies a number from the device to the host)?

# %% nbgrader={"grade": false, "grade_id": "given_slow", "locked": true, "schema_version": 3, "solution": false, "task": false}
def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert: x (M, d_model) -> (M, d_model)."""
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def slow_moe(x, indices, weights, w_gate, w_up, w_down):
    """Correct but slow: x (T, d_model), indices/weights (T, k) -> (T, d_model)."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(indices.shape[1]):
            e = int(indices[t, j])  # the host waits for the device here
            out[t] += weights[t, j] * swiglu(x[t:t + 1], w_gate[e], w_up[e], w_down[e])[0]
    return out


# %% [markdown]
# Write `fast_moe` with the same arguments and result. Run each expert **once**, on all the
# tokens that chose it (a batched matrix product instead of one product per token), and wait for
# the device as few times as you can — for example sort the `T * k` (token, slot) pairs by expert
# (`torch.argsort`), count the rows per expert (`torch.bincount`, one copy to the host), run each
# expert on its contiguous block, and add the weighted results back into their tokens
# (`index_add_`). Some experts may get no token, `k` may equal the number of experts, `T` may be
# 0; the result has `x`'s dtype; do not modify the inputs. The grader checks your result against
# `slow_moe` on random shapes, and that `fast_moe` is much faster than `slow_moe` on a layer of
# 256 tokens (measured in the same process, with margins that hold on a busy machine).

# %% nbgrader={"grade": false, "grade_id": "fast_moe", "locked": false, "schema_version": 3, "solution": true, "task": false}
def fast_moe(x, indices, weights, w_gate, w_up, w_down):
    """Sorted dispatch: x (T, d_model), indices/weights (T, k) -> (T, d_model)."""
    ### BEGIN SOLUTION
    k = indices.shape[1]
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)  # (T*k,) pairs grouped by expert
    token = order // k
    counts = torch.bincount(flat, minlength=w_gate.shape[0]).tolist()  # the one host sync
    xs = x[token]
    ys = torch.empty_like(xs)
    start = 0
    for e, count in enumerate(counts):
        if count:
            ys[start:start + count] = swiglu(xs[start:start + count], w_gate[e], w_up[e], w_down[e])
            start += count
    out = torch.zeros_like(x)
    out.index_add_(0, token, ys * weights.reshape(-1)[order, None].to(x.dtype))
    return out
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_fast_moe", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
torch.manual_seed(0)
_T, _d, _f, _E, _k = 6, 4, 8, 3, 2
_x = torch.randn(_T, _d)
_ws = [torch.randn(_E, _f, _d), torch.randn(_E, _f, _d), torch.randn(_E, _d, _f)]
_ids = torch.tensor([[0, 2], [2, 0], [0, 2], [2, 0], [0, 2], [2, 0]])  # expert 1 gets nothing
_wts = torch.rand(_T, _k)
_got = fast_moe(_x, _ids, _wts, *_ws)
assert _got.shape == (_T, _d), f"shape {tuple(_got.shape)}, expected (T, d_model) = {(_T, _d)}"
assert torch.allclose(_got, slow_moe(_x, _ids, _wts, *_ws), atol=1e-5), \
    "fast_moe differs from slow_moe: y_t = sum over the k slots of weights[t, j] * expert_{indices[t, j]}(x_t)"
### BEGIN HIDDEN TESTS
from dmcourse.grading.guard import call_without_dmcourse as _own
import random as _random

_rng = _random.Random(8)
_gen = torch.Generator().manual_seed(8)


def _check_fast(_T, _E, _k, _ids=None, _dtype=torch.float64, _what=""):
    _d, _f = _rng.randint(2, 9), _rng.randint(3, 12)
    _x = torch.randn(_T, _d, generator=_gen, dtype=_dtype)
    _w = [torch.randn(_E, _f, _d, generator=_gen, dtype=_dtype) / _d**0.5,
          torch.randn(_E, _f, _d, generator=_gen, dtype=_dtype) / _d**0.5,
          torch.randn(_E, _d, _f, generator=_gen, dtype=_dtype) / _f**0.5]
    if _ids is None:
        _ids = torch.stack([torch.randperm(_E, generator=_gen)[:_k] for _ in range(_T)]) if _T else torch.zeros(0, _k, dtype=torch.int64)
    _wts = torch.rand(_ids.shape, generator=_gen, dtype=_dtype) + 0.1  # not summing to 1
    _keep = [_t.clone() for _t in (_x, _ids, _wts, *_w)]
    _got = _own(fast_moe, _x, _ids, _wts, *_w)
    assert all(torch.equal(_a, _b) for _a, _b in zip((_x, _ids, _wts, *_w), _keep)), f"{_what}: fast_moe modified its inputs in place"
    assert tuple(_got.shape) == (_T, _d), f"{_what}: shape {tuple(_got.shape)}, expected {(_T, _d)}"
    assert _got.dtype == _dtype, f"{_what}: result dtype {_got.dtype}, expected x's {_dtype}"
    _want = slow_moe(_x, _ids, _wts, *_w)
    if not torch.allclose(_got, _want, atol=1e-5 if _dtype == torch.float32 else 1e-9):
        _hint = "each token's k expert outputs must be weighted by its own weights[t, j] and summed"
        if torch.allclose(_got, slow_moe(_x, _ids, torch.ones_like(_wts), *_w), atol=1e-6):
            _hint = "the routing weights are missing"
        raise AssertionError(f"{_what} (T={_T}, E={_E}, k={_k}): fast_moe differs from slow_moe; {_hint}")


for _trial in range(5):
    _E = _rng.randint(2, 9)
    _check_fast(_rng.randint(2, 30), _E, _rng.randint(1, _E), _what="random routing")
_check_fast(7, 5, 5, _what="k = E")
_check_fast(9, 6, 1, _what="k = 1")
_check_fast(5, 6, 2, _ids=torch.tensor([[5, 3], [3, 5], [5, 3], [3, 5], [3, 5]]), _what="experts 0, 1, 2 and 4 get no token")
_check_fast(4, 3, 1, _ids=torch.full((4, 1), 2), _what="every token to the last expert")
_check_fast(6, 4, 2, _dtype=torch.float32, _what="float32")
_check_fast(0, 4, 2, _what="no tokens (T = 0)")
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "test_fast_moe_speed", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# the grader times fast_moe against slow_moe on a layer of 256 tokens (hidden)
### BEGIN HIDDEN TESTS
def _median_s(_fn, _n=5):
    _s = []
    for _ in range(_n):
        _t0 = time.perf_counter()
        _fn()
        _s.append(time.perf_counter() - _t0)
    return statistics.median(_s)


from dmcourse.moe import dispatch_sorted as _course_sorted
from dmcourse.routing import Routing as _Routing

# Thresholds from 10 trials of the solution on a loaded 2-core CPU (benchmarks/ex08_speed_ratios.py,
# 1 thread, 2026-11-30): fast_moe was 41-172x faster than slow_moe and took 0.48-0.74x the time of
# the course's sorted dispatch; the limits below leave a 4x margin on the first and 5x on the
# second. One thread: with two on a busy machine oneDNN's kernels stall (up to 60x slower).
_threads = torch.get_num_threads()
torch.set_num_threads(1)
try:
    torch.manual_seed(1)
    _T, _d, _f, _E, _k = 256, 64, 128, 8, 2
    _x = torch.randn(_T, _d, dtype=torch.float32)
    _w = [torch.randn(_E, _f, _d) / 8, torch.randn(_E, _f, _d) / 8, torch.randn(_E, _d, _f) / 11]
    _ids = torch.stack([torch.randperm(_E)[:_k] for _ in range(_T)])
    _wts = torch.softmax(torch.randn(_T, _k), -1)
    _routing = _Routing(_ids, _wts, torch.zeros(_T, _E), torch.zeros(_T, _E))
    with torch.inference_mode():
        assert torch.allclose(fast_moe(_x, _ids, _wts, *_w), slow_moe(_x, _ids, _wts, *_w), atol=1e-4), "fast_moe is not correct"
        _slow, _fast, _ref = [], [], []
        for _round in range(3):  # interleaved: all three see the same load on the machine
            _slow.append(_median_s(lambda: slow_moe(_x, _ids, _wts, *_w), 1))
            _fast.append(_median_s(lambda: fast_moe(_x, _ids, _wts, *_w), 5))
            _ref.append(_median_s(lambda: _course_sorted(_x, _routing, *_w), 5))
finally:
    torch.set_num_threads(_threads)
_vs_slow = statistics.median(_slow) / statistics.median(_fast)
_vs_ref = statistics.median(_fast) / statistics.median(_ref)
print(f"fast_moe: {_vs_slow:.0f}x faster than slow_moe, {_vs_ref:.2f}x the time of the course's sorted dispatch")
assert _vs_slow > 10, \
    f"fast_moe is only {_vs_slow:.1f}x faster than slow_moe (expected > 10x): run each expert once on all its tokens, with few host syncs"
assert _vs_ref < 4, \
    f"fast_moe takes {_vs_ref:.1f}x the time of a sorted dispatch (expected < 4x): avoid per-token work and host syncs inside loops"
### END HIDDEN TESTS

# %% [markdown]
# ## 3. Where the time goes
#
# Not graded. Time the layers with your timer: the per-token loop, your dispatch, and a dense
# SwiGLU FFN with the same **active** size (`d_ff = k * d_ff_expert`) on the same tokens. With few
# tokens per expert the MoE still pays for `E` small launches where the dense layer pays for three
# large ones, and each expert's weights are read from memory for only a few tokens (chapter 5: low
# arithmetic intensity). On a GPU runtime the same cell measures the GPU, with bf16 or fp16.

# %%
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float32
if device == "cuda":
    dtype = torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
torch.manual_seed(0)
T, d_model, d_ff, E, k = 512, 256, 256, 8, 2
x = torch.randn(T, d_model, device=device, dtype=dtype)
w = [torch.randn(E, d_ff, d_model, device=device, dtype=dtype) / 16, torch.randn(E, d_ff, d_model, device=device, dtype=dtype) / 16,
     torch.randn(E, d_model, d_ff, device=device, dtype=dtype) / 16]
ids = torch.stack([torch.randperm(E, device=device)[:k] for _ in range(T)])
wts = torch.softmax(torch.randn(T, k, device=device), -1).to(dtype)
dense = [torch.randn(k * d_ff, d_model, device=device, dtype=dtype) / 16, torch.randn(k * d_ff, d_model, device=device, dtype=dtype) / 16,
         torch.randn(d_model, k * d_ff, device=device, dtype=dtype) / 16]
try:
    with torch.no_grad():
        rows = [("slow_moe (per token)", lambda: slow_moe(x, ids, wts, *w), 1),
                ("fast_moe (per expert)", lambda: fast_moe(x, ids, wts, *w), 10),
                ("dense SwiGLU, same active size", lambda: swiglu(x, *dense), 10)]
        print(f"{T} tokens, d_model {d_model}, d_ff {d_ff}, {E} experts, k={k}, {device}, {dtype}")
        for name, fn, repeats in rows:
            print(f"{name:>32}: {time_device(fn, time.perf_counter, sync, warmup=1, repeats=repeats) * 1e3:8.2f} ms")
except NotImplementedError:
    print("implement time_device and fast_moe first")
