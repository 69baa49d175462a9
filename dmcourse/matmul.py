"""The one matmul seam of the MoE layer: ``linear(x, w) = x @ w.T``, its kernel chosen by measuring.

Introduced in chapter 3 (the MoE layer), where every expert matmul goes through :func:`linear`;
chapter 5 (rooflines) times its kernels. :func:`linear` means ``F.linear(x, w)``. On a CPU, when no
gradient is needed, torch ships more than one kernel for it, and which is fastest depends on the
machine: MKL (``F.linear``) packs the weights on every call and is the fastest on some Intel CPUs;
oneDNN (``torch.ops.mkldnn._linear_pointwise``, what ``torch.compile`` emits for CPU linears) is
faster on others. So the kernel is not decided here but *measured where it runs*: the first eligible
call runs :func:`probe` (1.6 s, 2.0 s with the C kernel opted in: ``time.perf_counter`` around
``probe()``, 2 threads, 2-core AMD EPYC VM at load average 4 from other jobs, 2026-11-30; 4.3 s at
load average 6), which times every candidate of :func:`candidates` on one expert of the course's benchmark layer (``d_model`` 1024, ``d_ff`` 2816: a gate and a down
projection) for each regime of :data:`BUCKETS` (decode by rows per expert, and prefill), with the
weights cycled through more than twice the last-level cache as a real model's would be. The ranking
is cached per machine (CPU model and flags, torch version, thread count, candidate set) in
``$DMCOURSE_CACHE/matmul-choices.json`` (default ``~/.cache/dmcourse``); :func:`status` shows it.

Overrides: ``DMCOURSE_MATMUL=<name>`` (one of :data:`KERNELS`, or ``probe``, the default) in the
environment, or ``with dmcourse.matmul.use("F.linear"):`` / :func:`set_choice` in code. The opt-in C
decode kernel (:mod:`dmcourse.stream`) is a candidate only where :func:`dmcourse.stream.enabled`.
GPU tensors, calls that need a gradient, and dtypes other than float32/bfloat16 always use
``F.linear``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dmcourse import stream

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Bucket:
    """A regime: calls whose ``x`` has ``lo`` to ``hi`` rows (``hi=None``: no upper end), probed with
    ``probe_rows`` rows."""

    name: str
    lo: int
    hi: int | None
    probe_rows: int

    def holds(self, rows: int) -> bool:
        return self.lo <= rows and (self.hi is None or rows <= self.hi)


BUCKETS: tuple[Bucket, ...] = (
    Bucket("1", 1, 1, 1),
    Bucket("2-4", 2, 4, 4),
    Bucket("5-16", 5, 16, 16),
    Bucket("17-64", 17, 64, 64),
    Bucket("prefill", 65, None, 256),
)
"""Decode buckets (rows per expert: a batch of B tokens gives each expert about B*k/E) and prefill.
The boundaries only group calls; which kernel serves each group is measured."""

KERNELS: tuple[str, ...] = ("F.linear", "onednn", "stream")
DECODE_ONLY = frozenset({"stream"})  # reads x once per weight row: built for a few rows
PROBE_VERSION = 2
_override: str | None = None
_choices: dict[str, dict[str, dict]] = {}  # machine key -> {"float32": {bucket: {"ranking", "best_s"}}}
_memo: dict[tuple, dict[str, dict]] = {}  # (dtype, threads, kernel enabled) -> choose()'s answer, per call cheap


@functools.cache
def onednn_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear op exists in this torch and gives correct results for ``dtype`` (probed
    once on a small input)."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.randn(3, 16).to(dtype), torch.randn(8, 16).to(dtype)
        got = op(x, w, None, "none", [], "").float()
        return bool(torch.allclose(got, x.float() @ w.float().T, rtol=2e-2, atol=2e-2))
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _onednn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def candidates(dtype: torch.dtype = torch.float32) -> dict[str, Kernel]:
    """The kernels the probe times for CPU tensors of ``dtype``: ``F.linear`` always, oneDNN where
    :func:`onednn_works`, the C kernel for float32 where :func:`dmcourse.stream.enabled`."""
    found: dict[str, Kernel] = {"F.linear": F.linear}
    if onednn_works(dtype):
        found["onednn"] = _onednn
    if dtype == torch.float32 and stream.enabled():
        found["stream"] = stream.linear_stream
    return found


def _kernel(name: str) -> Kernel:
    kernels: dict[str, Kernel] = {"F.linear": F.linear, "onednn": _onednn, "stream": stream.linear_stream}
    return kernels[name]


def _can_run(name: str, x: torch.Tensor, w: torch.Tensor) -> bool:
    if name == "stream":
        return stream.problem(x, w) is None
    if name == "onednn":
        return onednn_works(x.dtype)
    return True


def _eligible(x: torch.Tensor, w: torch.Tensor) -> bool:
    """A call whose kernel is chosen: 2-D CPU float32/bfloat16 operands of one dtype, no gradient."""
    return (
        x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dim() == 2
        and w.dim() == 2
        and x.dtype in (torch.float32, torch.bfloat16)
        and w.dtype == x.dtype
        and x.shape[0] > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
    )


def _check_name(name: str) -> str:
    if name not in KERNELS:
        raise ValueError(f"matmul kernel must be one of {KERNELS} (or 'probe'), got {name!r}")
    if name == "onednn" and not onednn_works(torch.float32):
        raise RuntimeError("matmul kernel 'onednn' is not available in this torch build")
    if name == "stream" and not stream.available():
        raise RuntimeError(f"matmul kernel 'stream': dmcourse.stream kernel {stream.status()}")
    return name


@functools.cache
def _env_forced() -> str | None:
    env = os.environ.get("DMCOURSE_MATMUL", "").strip()
    return None if env in ("", "probe") else _check_name(env)


def forced() -> str | None:
    """The kernel forced by :func:`use`/:func:`set_choice`, else by ``$DMCOURSE_MATMUL`` (read once per
    process: :func:`linear` runs per matmul); None: the probe decides."""
    return _override if _override is not None else _env_forced()


def set_choice(name: str | None) -> None:
    """Force kernel ``name`` (one of :data:`KERNELS`) for every eligible call; None: back to the probe
    (or ``$DMCOURSE_MATMUL``)."""
    global _override
    _override = None if name is None else _check_name(name)


@contextlib.contextmanager
def use(name: str | None) -> Iterator[None]:
    """``with use("onednn"):`` -- :func:`set_choice` for the block, restored afterwards."""
    global _override
    before = _override
    set_choice(name)
    try:
        yield
    finally:
        _override = before


@functools.cache
def _cpu() -> tuple[str, str]:
    from dmcourse.device import _cpu_name

    flags = ""
    with contextlib.suppress(OSError):
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features"))),
            "",
        )
    return _cpu_name(), hashlib.sha256(flags.encode()).hexdigest()[:12]


def machine_key(kernel_names: tuple[str, ...]) -> dict:
    """What a probe's result depends on: CPU model and flags, torch version, threads, candidates."""
    cpu, flags = _cpu()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "candidates": list(kernel_names),
        "probe_version": PROBE_VERSION,
    }


def _key(machine: dict) -> str:
    return hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]


def cache_file() -> Path:
    return stream.cache_dir() / "matmul-choices.json"


def _load() -> dict:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(key: str, entry: dict) -> None:
    path = cache_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load()
        data[key] = entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)  # atomic: a concurrent writer loses at most its own entry


def probe(
    dtype: torch.dtype = torch.float32,
    *,
    kernels: Mapping[str, Kernel] | None = None,
    d_model: int = 1024,
    d_ff: int = 2816,
    rounds: int = 7,
    buckets: tuple[Bucket, ...] = BUCKETS,
) -> dict[str, dict]:
    """Time each kernel on a gate (d_model -> d_ff) and a down (d_ff -> d_model) projection of
    ``bucket.probe_rows`` rows, for each bucket: ``rounds`` calls each, interleaved one by one, each
    call on the next of a set of weight copies larger than twice the last-level cache (so decode
    reads them from memory). Each kernel is scored by its fastest call (on a shared machine the
    slower ones measure the neighbours). Returns ``{bucket name: {"ranking": [fastest first],
    "best_s": {kernel: seconds per gate + down}}}``. Nothing is cached here (see :func:`choose`).
    """
    from dmcourse.measure import rotation_count

    kernels = dict(kernels if kernels is not None else candidates(dtype))
    if not kernels:
        raise ValueError("probe needs at least one kernel")
    sets = rotation_count(2 * d_model * d_ff * torch.tensor([], dtype=dtype).element_size(), "cpu")
    weights = [
        (torch.full((d_ff, d_model), 0.01, dtype=dtype), torch.full((d_model, d_ff), 0.01, dtype=dtype))
        for _ in range(sets)
    ]
    result: dict[str, dict] = {}
    turn = 0
    with torch.inference_mode():
        for bucket in buckets:
            names = [n for n in kernels if not (n in DECODE_ONLY and bucket.hi is None)]
            x = torch.full((bucket.probe_rows, d_model), 0.5, dtype=dtype)
            h = torch.full((bucket.probe_rows, d_ff), 0.5, dtype=dtype)
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(rounds + 1):  # round 0 warms up
                for name in names:
                    w_gate, w_down = weights[turn % sets]
                    turn += 1
                    start = time.perf_counter()
                    kernels[name](x, w_gate)
                    kernels[name](h, w_down)
                    if r:
                        times[name].append(time.perf_counter() - start)
            best = {n: min(t) for n, t in times.items()}
            result[bucket.name] = {"ranking": sorted(names, key=best.__getitem__), "best_s": best}
    return result


def choose(dtype: torch.dtype = torch.float32) -> dict[str, dict]:
    """This machine's choice for ``dtype``, per bucket (see :func:`probe`): from memory, else from the
    cache file, else probed now and saved."""
    fast = (dtype, torch.get_num_threads(), stream.enabled() if dtype == torch.float32 else False)
    if fast in _memo:
        return _memo[fast]
    names = tuple(candidates(dtype))
    machine = machine_key(names)
    key = _key(machine)
    label = str(dtype).removeprefix("torch.")
    cached = _choices.setdefault(key, {})
    if label not in cached:
        on_disk = _load().get(key, {}).get("choices", {})
        if label not in on_disk:
            on_disk = {**on_disk, label: probe(dtype)}
            _save(key, {"machine": machine, "date": datetime.date.today().isoformat(), "choices": on_disk})
        cached[label] = on_disk[label]
    _memo[fast] = cached[label]
    return cached[label]


def reprobe(dtype: torch.dtype = torch.float32) -> dict[str, dict]:
    """Forget this machine's choice for ``dtype`` (in memory and in the cache file) and probe again
    now: for when the probe ran while other programs loaded the machine."""
    key = _key(machine_key(tuple(candidates(dtype))))
    label = str(dtype).removeprefix("torch.")
    _memo.clear()
    _choices.get(key, {}).pop(label, None)
    entry = _load().get(key)
    if entry and label in entry.get("choices", {}):
        del entry["choices"][label]
        _save(key, entry)
    return choose(dtype)


def kernel_for(x: torch.Tensor, w: torch.Tensor) -> str:
    """The name of the kernel :func:`linear` uses for ``x @ w.T`` (probing on the first eligible call)."""
    if not _eligible(x, w):
        return "F.linear"
    name = forced()
    if name is not None:
        return name if _can_run(name, x, w) else "F.linear"
    rows = x.shape[0]
    bucket = next(b for b in BUCKETS if b.holds(rows))
    ranking = choose(x.dtype)[bucket.name]["ranking"]
    return next((n for n in ranking if n in KERNELS and _can_run(n, x, w)), "F.linear")


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T``: x (M, in), w (out, in) -> (M, out), same dtype: ``F.linear(x, w)``, computed by
    the kernel this machine measured fastest for M rows (:func:`kernel_for`)."""
    return _kernel(kernel_for(x, w))(x, w)


_seam_linear = linear


@functools.cache
def onednn_fuses(dtype: torch.dtype) -> bool:
    """Whether oneDNN's post-ops (silu after a GEMM; a product with another tensor after a GEMM) exist
    here and give ``silu(x @ g.T) * (x @ u.T)`` for ``dtype`` (probed once on a small input)."""
    if not onednn_works(dtype):
        return False
    try:
        x, g, u = (torch.randn(*s).to(dtype) for s in ((3, 16), (8, 16), (8, 16)))
        got = _gated_onednn(x, g, u).float()
        want = F.silu(x.float() @ g.float().T) * (x.float() @ u.float().T)
        return bool(torch.allclose(got, want, rtol=3e-2, atol=3e-2))
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return False


def _gated_onednn(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    op = torch.ops.mkldnn._linear_pointwise
    gate = op(x, w_gate, None, "swish", [], "")  # silu applied to each tile while it is in the cache
    return op.binary(x, gate, w_up, None, "mul")  # the up GEMM multiplies its tiles by the gate's


def fuses(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor | None = None) -> bool:
    """Whether :func:`gated` computes ``x``'s hidden state inside oneDNN's GEMMs (the chosen kernel
    for the call is oneDNN and its post-ops work for the dtype)."""
    return (
        kernel_for(x, w_gate) == "onednn"
        and onednn_fuses(x.dtype)
        and (w_up is None or (w_up.dtype == w_gate.dtype and w_up.shape == w_gate.shape))
    )


def gated(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, linear: Kernel = linear) -> torch.Tensor:
    """SwiGLU's hidden state ``silu(x @ w_gate.T) * (x @ w_up.T)``: x (M, in), w_gate and w_up
    (hidden, in) -> (M, hidden), matmuls by ``linear``.

    With the seam's own :func:`linear`, where the kernel chosen for the call is oneDNN, the
    activation runs inside the two GEMMs (oneDNN post-ops: silu on the gate GEMM's output tiles, the
    product on the up GEMM's), which saves four passes over (M, hidden) tensors in memory. Without
    gradients the unfused path works in place (no extra tensor).
    """
    if linear is _seam_linear and fuses(x, w_gate, w_up):
        return _gated_onednn(x, w_gate, w_up)
    gate, up = linear(x, w_gate), linear(x, w_up)
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return F.silu(gate) * up
    return F.silu(gate, inplace=True).mul_(up)  # no autograd: reuse gate's memory


def status() -> str:
    """One line per dtype probed so far and per bucket: which kernel serves it, and why (override or
    probe, with the probe's fastest times); plus the C kernel's status."""
    lines = []
    name = forced()
    if name is not None:
        lines.append(f"forced: {name} (set_choice/use or DMCOURSE_MATMUL) for CPU calls without gradient")
    names = tuple(candidates(torch.float32))
    machine = machine_key(names)
    lines.append(
        f"machine: {machine['cpu']}, torch {machine['torch']}, {machine['threads']} threads, "
        f"candidates {', '.join(names)}; cache {cache_file()}"
    )
    found = {**_load().get(_key(machine), {}).get("choices", {}), **_choices.get(_key(machine), {})}
    if not found:
        lines.append("not probed yet on this machine (the first CPU call without gradient probes)")
    for label, buckets in sorted(found.items()):
        for bucket, entry in buckets.items():
            times = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(entry["best_s"].items(), key=lambda kv: kv[1]))
            lines.append(f"{label} rows {bucket}: {entry['ranking'][0]} ({times})")
    lines.append(
        f"C decode kernel: {stream.status()}"
        if stream.opted_in()
        else "C decode kernel: not a candidate (opt in with DMCOURSE_KERNEL=1 or dmcourse.stream.enable())"
    )
    return "\n".join(lines)
