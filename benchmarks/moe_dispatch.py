"""MoE dispatch benchmark: the course's MoE layer vs transformers' Mixtral block vs an equal-FLOPs dense
SwiGLU (prefill), and each MoE time against its roofline floor (decode).

    python benchmarks/moe_dispatch.py                       # full run, prints the tables
    python benchmarks/moe_dispatch.py --json dmcourse/data/records/moe_dispatch_cpu.json   # ... and records them
    python benchmarks/moe_dispatch.py --quick               # small layer, seconds (smoke test)

Settings (issue 4): on CPU fp32, 2 threads, 4096 tokens, d_model 1024, expert d_ff 2816, 8 experts,
top-2; on a GPU bf16 (fp16 below compute capability 8.0), 16384 tokens. All strategies share one set
of weights (copied from the transformers block with ``dmcourse.moe.from_mixtral_block``), so they
route identically. Timings are medians of calls interleaved one by one (every method once per
round), so a noisy neighbour slows all of them alike; ratios are of medians measured in this one run.

Prefill rows:
* ``moe sorted|grouped|loop`` -- ``dmcourse.MoE`` with that dispatch (matmuls through the seam
  ``dmcourse.matmul.linear``, whose kernel this machine's probe chose; the run opts in the C decode
  kernel, ``dmcourse.stream``, as a candidate), ``moe sorted, F.linear`` / ``moe sorted, oneDNN`` --
  sorted dispatch with that kernel forced (``dmcourse.matmul.use``), to separate kernel and dispatch;
* ``transformers eager`` -- ``MixtralSparseMoeBlock`` as a standalone block runs (loop over experts),
  ``transformers grouped_mm`` -- the experts implementation a full transformers 5 model picks by default;
* ``dense SwiGLU`` -- ``dmcourse.ffn.SwiGLU`` with d_ff = top_k * expert d_ff (same FLOPs per token,
  minus the router's 2 * d_model * E), and ``dense SwiGLU, same kernel`` -- the same three matmuls
  through ``dmcourse.matmul.linear`` (the probe's prefill kernel).

Profile (CPU): the sorted dispatch's steps timed one by one at the prefill size (routing, sort,
gather, gate+up GEMMs, activation, down GEMM, rows back to (token, slot) order, combine), and the share of the layer's
time outside the expert GEMMs. Targets (issue 21): prefill <= 1.0x transformers' block and <= 1.1x
the dense SwiGLU with the same kernel; decode <= 1.5x the floor at 1, 4, 16 and 64 tokens. A missed
target is printed with the reason the run measured.

Decode rows (1, 4, 16, 64 tokens): floor = max(bytes of the experts the batch touches / memory
bandwidth, expert FLOPs / matmul throughput), both ceilings measured in this run. The memory
bandwidth is measured in the same interleaved rounds as the decode calls of each token count (a
shared VM's bandwidth drifts by tens of percent within minutes), as the fastest of three ways of
moving bytes through buffers larger than the cache: a copy (bytes read + written), a read-only
``torch.sum``, and on CPU the read-only loop ``dmcourse.stream.read_sum``. The matmul throughput is
a large square ``torch.matmul`` (the roofline chapter's ceiling) with ``dmcourse.measure``, the
median of three measurements spread over the run. Also recorded per row: the floor with the copy
bandwidth alone; a stricter one whose compute ceiling is the faster of ``torch.matmul`` and the same
GEMM through ``dmcourse.matmul.linear``; and one with the bandwidths measured apart from
the decode calls (start, middle and end of the run, as the roofline chapter measures them). The
decode rows ``moe sorted, <kernel>`` force each candidate kernel. The row ``expert matmuls only`` times just the
touched experts' SwiGLUs on pre-sorted tokens: the gap between it and ``moe sorted`` is what
routing, dispatch and combine cost. Before every timed decode call the script reads twice the
last-level cache: all strategies share one set of weights, and without that a call would find
part of them left in the cache by the one before (in a real model the other layers evict them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dmcourse import matmul, stream
from dmcourse.device import _cpu_name, device_info, pick_device
from dmcourse.ffn import SwiGLU
from dmcourse.matmul import linear
from dmcourse.measure import (
    default_buffer_bytes,
    last_level_cache_bytes,
    measure_bandwidth,
    measure_matmul,
    rotating,
    rotation_count,
)
from dmcourse.moe import MoE, expert_swiglu, from_mixtral_block, mix, sort_by_expert
from dmcourse.roofline import roofline_time
from dmcourse.timing import time_fn

DECODE_TOKENS = (1, 4, 16, 64)


def _mixtral_block(d_model: int, d_ff: int, n_experts: int, top_k: int, dtype: torch.dtype, device: torch.device):
    import transformers
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    transformers.logging.set_verbosity_error()
    config = transformers.MixtralConfig(
        hidden_size=d_model, intermediate_size=d_ff, num_local_experts=n_experts, num_experts_per_tok=top_k
    )
    block = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        for p in block.parameters():  # transformers leaves them uninitialised
            torch.nn.init.normal_(p, std=d_model**-0.5)
    return block.to(device=device, dtype=dtype)


def _hf_call(block, x: torch.Tensor, implementation: str):
    def call():
        block.experts.config._experts_implementation = implementation
        return block(x)

    return call


def _interleaved(
    fns: dict,
    *,
    rounds: int,
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    before: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """``rounds * repeats`` timed calls of every function, round-robin one call at a time (after
    ``warmup`` untimed calls each), so that a busy moment on a shared machine hits all alike.
    ``before`` (untimed) runs before every timed call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds * repeats):
        for name, fn in fns.items():
            if before is not None:
                before()
            samples[name].append(time_fn(fn, device=device, warmup=0, repeats=1).times_s[0])
    return samples


def _bandwidth_probes(dev: torch.device) -> tuple[dict, dict]:
    """Calls that move a known number of bytes, to time in the same rounds as the decode calls:
    ``{name: fn}`` and ``{name: bytes per call}`` (copy counts read + write). Each call takes the next
    of a set of fp32 buffers that together exceed twice the last-level cache."""
    numel = default_buffer_bytes(dev) // 4
    bufs = [(torch.ones(numel, device=dev),) for _ in range(rotation_count(4 * numel, dev))]
    dst = torch.empty(numel, device=dev)
    fns = {"bandwidth: copy": rotating(dst.copy_, bufs), "bandwidth: torch.sum": rotating(torch.sum, bufs)}
    if dev.type == "cpu" and stream.available():
        fns["bandwidth: stream.read_sum"] = rotating(stream.read_sum, bufs)
    nbytes = {name: (8 if "copy" in name else 4) * numel for name in fns}
    return fns, nbytes


def _ceilings(dev: torch.device, dtype: torch.dtype) -> dict:
    """Memory bandwidth (B/s: copy, torch.sum, and on CPU dmcourse.stream.read_sum) and large-GEMM
    throughput (FLOP/s: torch.matmul as dmcourse.measure measures it, and the same square GEMM
    through dmcourse.moe.linear)."""
    bw = measure_bandwidth(dev, kind="copy")
    read = measure_bandwidth(dev, kind="read")
    kernel = dev.type == "cpu" and stream.available()
    read_kernel = measure_bandwidth(dev, kind="read_kernel").value if kernel else 0.0
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    mm = measure_matmul(dev, precision=precision)
    size = int(mm.settings["size"])
    with torch.inference_mode():
        mm_linear = measure_matmul(dev, precision=precision, size=size, matmul=linear)
    return {
        "copy_bandwidth_Bps": bw.value,
        "read_bandwidth_Bps": read.value,
        "read_kernel_bandwidth_Bps": read_kernel,
        "matmul_FLOPps": mm.value,
        "matmul_size": size,
        "matmul_linear_FLOPps": mm_linear.value,
    }


KERNEL_LABEL = {"F.linear": "F.linear", "onednn": "oneDNN", "stream": "stream"}


def _forced(moe: MoE, x: torch.Tensor, kernel: str) -> Callable[[], torch.Tensor]:
    def call():
        moe.dispatch = "sorted"
        with matmul.use(kernel):
            return moe(x)

    return call


def profile_steps(moe: MoE, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """The sorted dispatch (:func:`dmcourse.moe.dispatch_sorted`) step by step, each step timed on its
    own: ``{step: median seconds per layer call}``, plus ``"layer"`` (the whole ``moe(x)``, timed in
    the same rounds). Where :func:`dmcourse.matmul.gated` fuses the activation into the GEMMs
    (oneDNN post-ops) it is timed as part of ``GEMM gate+up`` and ``activation`` is 0.
    x (T, d_model); CPU only (no synchronisation)."""
    steps: dict[str, list[float]] = {}

    def timed(r, name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        steps.setdefault(name, [0.0] * rounds)[r] += time.perf_counter() - start
        return out

    def gate_up(block, w_gate, w_up):
        return linear(block, w_gate), linear(block, w_up)

    def activation(gate, up):
        return F.silu(gate, inplace=True).mul_(up)

    moe.dispatch = "sorted"
    with torch.inference_mode():
        moe(x)
        for r in range(rounds):
            routing = timed(r, "routing", moe.router, x)
            order, token, counts = timed(r, "sort", sort_by_expert, routing)
            xs = timed(r, "gather", x.index_select, 0, token)
            unsorted, start = torch.empty_like(xs), 0
            for e, count in enumerate(counts.tolist()):
                if count:
                    block, w_gate, w_up = xs[start : start + count], moe.w_gate[e], moe.w_up[e]
                    if matmul.fuses(block, w_gate, w_up):  # the activation runs inside the GEMMs
                        h = timed(r, "GEMM gate+up", matmul.gated, block, w_gate, w_up)
                        steps.setdefault("activation", [0.0] * rounds)
                    else:
                        h = timed(r, "activation", activation, *timed(r, "GEMM gate+up", gate_up, block, w_gate, w_up))
                    y = timed(r, "GEMM down", linear, h, moe.w_down[e])
                    timed(r, "unsort rows", unsorted.index_copy_, 0, order[start : start + count], y)
                    start += count
            y = timed(r, "combine", mix, unsorted, routing)
            timed(r, "layer", moe, x)
    torch.testing.assert_close(y, moe(x).float(), rtol=1e-4, atol=1e-4)  # the steps are the layer
    return {name: statistics.median(v) for name, v in steps.items()}


def non_gemm_share(profile: dict[str, float]) -> float:
    """Share of the profiled steps' time outside the expert GEMMs."""
    parts = {k: v for k, v in profile.items() if k != "layer"}
    return sum(v for k, v in parts.items() if not k.startswith("GEMM")) / sum(parts.values())


def targets(r: dict) -> list[dict]:
    """Issue 21's targets against this record: ``[{"target", "value", "limit", "met", "why"}]``."""
    p, rows = r["prefill_s"], []
    share = r.get("profile", {}).get("non_gemm_share")
    kernels = r.get("matmul_choice") or {}
    why_prefill = (
        f"prefill kernel {kernels.get('prefill', '?')}; time outside the expert GEMMs {share:.0%} of the layer"
        if share is not None
        else f"prefill kernel {kernels.get('prefill', '?')}"
    )
    for name, ref, limit in (
        ("prefill / transformers eager", "transformers eager", 1.0),
        ("prefill / dense SwiGLU, same kernel", "dense SwiGLU, same kernel", 1.1),
    ):
        value = p["moe sorted"] / p[ref]
        rows.append(
            {
                "target": name,
                "value": value,
                "limit": limit,
                "met": value <= limit,
                "why": "" if value <= limit else why_prefill,
            }
        )
    buckets = {b.name: b for b in matmul.BUCKETS}
    for row in r["decode"]:
        value = row["times_s"]["moe sorted"] / row["floor_s"]
        experts = row["times_s"]["expert matmuls only"] / row["floor_s"]
        per_expert = max(1, round(row["tokens"] * r["settings"]["top_k"] / max(1, row["experts_touched"])))
        bucket = next((b.name for b in buckets.values() if b.holds(per_expert)), "?")
        why = (
            ""
            if value <= 1.5
            else (
                f"~{per_expert} rows per expert -> kernel {kernels.get(bucket, '?')}: the expert matmuls alone take "
                f"{experts:.2f}x the floor"
                + (
                    ""
                    if experts > 1.5
                    else f"; routing/dispatch/combine add "
                    f"{(row['times_s']['moe sorted'] - row['times_s']['expert matmuls only']) * 1e3:.2f} ms"
                )
            )
        )
        rows.append(
            {
                "target": f"decode {row['tokens']} tokens / floor",
                "value": value,
                "limit": 1.5,
                "met": value <= 1.5,
                "why": why,
            }
        )
    return rows


def run(quick: bool = False, rounds: int = 5, repeats: int = 3, device: str | None = None) -> dict:
    dev = pick_device(device)
    info = device_info(dev)
    if dev.type == "cpu":
        torch.set_num_threads(2)
        stream.enable()  # the benchmark opts in the C decode kernel: the probe decides whether it is used
    dtype = info.dtype
    if quick:
        d_model, d_ff, n_experts, top_k, tokens = 256, 704, 8, 2, 512
    else:
        d_model, d_ff, n_experts, top_k = 1024, 2816, 8, 2
        tokens = 4096 if dev.type == "cpu" else 16384
    torch.manual_seed(0)
    block = _mixtral_block(d_model, d_ff, n_experts, top_k, dtype, dev)
    moe = from_mixtral_block(block).eval()
    dense = SwiGLU(d_model, top_k * d_ff, dtype=dtype, device=dev).eval()
    dw = (dense.w_gate.weight, dense.w_up.weight, dense.w_down.weight)
    x = torch.randn(1, tokens, d_model, device=dev, dtype=dtype)

    def moe_with(dispatch: str):
        def call():
            moe.dispatch = dispatch
            return moe(x)

        return call

    forced = (
        [k for k in matmul.candidates(dtype) if k in KERNEL_LABEL and k not in matmul.DECODE_ONLY]
        if dev.type == "cpu"
        else []
    )
    prefill_fns = {
        "moe sorted": moe_with("sorted"),
        "moe grouped": moe_with("grouped"),
        "moe loop": moe_with("loop"),
        **{f"moe sorted, {KERNEL_LABEL[k]}": _forced(moe, x, k) for k in forced},
        "transformers eager": _hf_call(block, x, "eager"),
        "transformers grouped_mm": _hf_call(block, x, "grouped_mm"),
        "dense SwiGLU": lambda: dense(x),
        "dense SwiGLU, same kernel": lambda: expert_swiglu(x.view(-1, d_model), *dw),
    }
    ceilings0 = _ceilings(dev, dtype)
    choice = {}
    if dev.type == "cpu":
        with torch.inference_mode():  # the probe's choice for this machine (probing now if not cached)
            choice = (
                {b: e["ranking"][0] for b, e in matmul.choose(dtype).items()}
                if matmul.forced() is None
                else {b.name: matmul.forced() for b in matmul.BUCKETS}
            )
    with torch.inference_mode():
        ref = block(x)
        for name in [n for n in prefill_fns if n.startswith("moe")]:
            err = (prefill_fns[name]().float() - ref.float()).abs().max().item()
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            if err > tol * max(1.0, ref.float().abs().max().item()):
                raise RuntimeError(f"{name} disagrees with transformers: max abs error {err:.3g}")
        samples = _interleaved(prefill_fns, rounds=rounds, repeats=repeats, device=dev)
    prefill = {name: statistics.median(s) for name, s in samples.items()}
    profile = {}
    if dev.type == "cpu":
        steps = profile_steps(moe, x.view(-1, d_model), rounds=max(2, rounds))
        profile = {"steps_s": steps, "non_gemm_share": non_gemm_share(steps)}

    # ceilings, measured in this run: the median of three measurements (start, after prefill, end)
    ceilings = [ceilings0, _ceilings(dev, dtype)]
    element = torch.tensor([], dtype=dtype).element_size()
    expert_bytes = 3 * d_model * d_ff * element
    decode = []
    probes, probe_bytes = _bandwidth_probes(dev)
    # read twice the last-level cache before every timed decode call: the strategies share one set of
    # weights, and in a real model the other layers' weights evict this one's between two steps
    evict = torch.ones(2 * last_level_cache_bytes(dev) // 4, device=dev)
    for t in DECODE_TOKENS:
        xt = torch.randn(1, t, d_model, device=dev, dtype=dtype, generator=None)
        with torch.inference_mode():
            moe(xt)
            touched = int((moe.last_routing.tokens_per_expert() > 0).sum())
            # the expert matmuls alone, on tokens already sorted: what dispatch and routing add on top
            _, token, counts = sort_by_expert(moe.last_routing)
            xs = xt.view(-1, d_model).index_select(0, token)
            ends = counts.cumsum(0).tolist()
            segments = [(e, end - c, end) for e, (c, end) in enumerate(zip(counts.tolist(), ends)) if c]
            fns = {
                "expert matmuls only": (
                    lambda xs=xs, segments=segments: [
                        expert_swiglu(xs[a:b], moe.w_gate[e], moe.w_up[e], moe.w_down[e]) for e, a, b in segments
                    ]
                ),
                "moe sorted": (lambda xt=xt: (setattr(moe, "dispatch", "sorted"), moe(xt))),
                "moe grouped": (lambda xt=xt: (setattr(moe, "dispatch", "grouped"), moe(xt))),
                "moe loop": (lambda xt=xt: (setattr(moe, "dispatch", "loop"), moe(xt))),
                **(
                    {
                        f"moe sorted, {KERNEL_LABEL[k]}": _forced(moe, xt, k)
                        for k in matmul.candidates(dtype)
                        if k in KERNEL_LABEL
                    }
                    if dev.type == "cpu"
                    else {}
                ),
                "transformers eager": _hf_call(block, xt, "eager"),
                "transformers grouped_mm": _hf_call(block, xt, "grouped_mm"),
            }
            s = _interleaved(
                {**fns, **probes}, rounds=rounds, repeats=5 * repeats, device=dev, warmup=2, before=evict.sum
            )
        bandwidths = {
            name.removeprefix("bandwidth: "): probe_bytes[name] / statistics.median(s.pop(name)) for name in probes
        }
        decode.append(
            {
                "tokens": t,
                "experts_touched": touched,
                "bytes": touched * expert_bytes,
                "flops": 2 * t * top_k * 3 * d_model * d_ff,
                "times_s": {name: statistics.median(v) for name, v in s.items()},
                "bandwidths_Bps": bandwidths,
            }
        )
    ceilings.append(_ceilings(dev, dtype))
    copy, read, read_kernel, mm, mm_linear = (
        statistics.median(c[key] for c in ceilings)
        for key in (
            "copy_bandwidth_Bps",
            "read_bandwidth_Bps",
            "read_kernel_bandwidth_Bps",
            "matmul_FLOPps",
            "matmul_linear_FLOPps",
        )
    )
    bw = max(copy, read, read_kernel)
    for row in decode:
        row_bw = max(row["bandwidths_Bps"].values())
        row["floor_s"] = roofline_time(row["flops"], row["bytes"], mm, row_bw)
        row["floor_s_copy_bandwidth"] = roofline_time(row["flops"], row["bytes"], mm, row["bandwidths_Bps"]["copy"])
        row["floor_s_linear_ceiling"] = roofline_time(row["flops"], row["bytes"], max(mm, mm_linear), row_bw)
        row["floor_s_separate_ceilings"] = roofline_time(row["flops"], row["bytes"], mm, bw)

    record = {
        "device": info.summary(),
        "device_type": dev.type,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_model": _cpu_name() if dev.type == "cpu" else None,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "decode_kernel": stream.status() if dev.type == "cpu" else None,
        "matmul_choice": choice,
        "matmul_status": matmul.status() if dev.type == "cpu" else None,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "settings": {
            "tokens": tokens,
            "d_model": d_model,
            "d_ff": d_ff,
            "n_experts": n_experts,
            "top_k": top_k,
            "rounds": rounds,
            "repeats": repeats,
            "quick": quick,
        },
        "prefill_s": prefill,
        "ceilings": {
            "bandwidth_Bps": bw,
            "copy_bandwidth_Bps": copy,
            "read_bandwidth_Bps": read,
            "read_kernel_bandwidth_Bps": read_kernel,
            "matmul_FLOPps": mm,
            "matmul_size": ceilings[0]["matmul_size"],
            "matmul_linear_FLOPps": mm_linear,
            "measurements": ceilings,
        },
        "decode": decode,
        "profile": profile,
    }
    record["targets"] = targets(record)
    return record


def format_tables(r: dict) -> str:
    s, p = r["settings"], r["prefill_s"]
    lines = [
        f"device: {r['device']}, {r['dtype']}, threads={r['threads']}, torch {r['torch']}, {r['date']}",
        f"CPU model: {r.get('cpu_model')}" if r.get("cpu_model") else f"device: {r['device']}",
        f"command: {r['command']}",
        "matmul kernel chosen by this machine's probe (dmcourse.matmul.status()):",
        *(f"  {line}" for line in (r.get("matmul_status") or "not a CPU run: F.linear").splitlines()),
        "",
        (
            f"prefill: {s['tokens']} tokens, d_model {s['d_model']}, expert d_ff {s['d_ff']}, "
            f"{s['n_experts']} experts, top-{s['top_k']} (medians of {s['rounds'] * s['repeats']} calls each, interleaved)"
        ),
        f"{'method':28s} {'time ms':>9s} {'/ tf eager':>10s} {'/ tf grouped':>12s} {'/ dense':>8s} {'/ dense same kernel':>20s}",
    ]
    for name, t in sorted(p.items(), key=lambda kv: kv[1]):
        lines.append(
            f"{name:28s} {t * 1e3:9.1f} {t / p['transformers eager']:10.2f} {t / p['transformers grouped_mm']:12.2f} "
            f"{t / p['dense SwiGLU']:8.2f} {t / p['dense SwiGLU, same kernel']:20.2f}"
        )
    if r.get("profile"):
        steps = r["profile"]["steps_s"]
        parts = sum(v for k, v in steps.items() if k != "layer")
        lines += [
            "",
            (
                f"profile of moe sorted at {s['tokens']} tokens (each step timed on its own, medians; "
                f"the whole layer took {steps['layer'] * 1e3:.1f} ms in the same rounds):"
            ),
            f"{'step':14s} {'ms':>9s} {'share':>6s}",
        ]
        lines += [f"{k:14s} {v * 1e3:9.1f} {v / parts:6.1%}" for k, v in steps.items() if k != "layer"]
        lines.append(f"outside the expert GEMMs: {r['profile']['non_gemm_share']:.1%} (target < 10%)")
    c = r["ceilings"]
    lines += [
        "",
        (
            f"decode: floor = max(touched expert bytes / bandwidth (the fastest of copy, torch.sum and stream.read_sum, "
            f"measured with each row's calls), FLOPs / {c['matmul_FLOPps'] / 1e9:.0f} GFLOP/s torch.matmul {c['matmul_size']}^3) "
            f"[same GEMM via dmcourse.moe.linear: {c['matmul_linear_FLOPps'] / 1e9:.0f} GFLOP/s; bandwidths measured apart: "
            f"copy {c['copy_bandwidth_Bps'] / 1e9:.1f}, torch.sum {c['read_bandwidth_Bps'] / 1e9:.1f}, "
            f"stream.read_sum {c['read_kernel_bandwidth_Bps'] / 1e9:.1f} GB/s]"
        ),
        f"C decode kernel: {r.get('decode_kernel')}",
        f"{'tokens':>6s} {'experts':>7s} {'GB/s':>5s} {'floor ms':>9s} "
        + " ".join(f"{n:>24s}" for n in r["decode"][0]["times_s"])
        + f" {'best/floor':>10s} {'[copy bw]':>9s} {'[linear]':>8s} {'[apart]':>7s}",
    ]
    for row in r["decode"]:
        best = min(v for k, v in row["times_s"].items() if k.startswith("moe"))
        cells = " ".join(f"{v * 1e3:9.2f} ms ({v / row['floor_s']:4.2f}x)".rjust(24) for v in row["times_s"].values())
        bw = max(row["bandwidths_Bps"].values())
        lines.append(
            f"{row['tokens']:6d} {row['experts_touched']:7d} {bw / 1e9:5.1f} {row['floor_s'] * 1e3:9.2f} {cells} "
            f"{best / row['floor_s']:10.2f} {best / row['floor_s_copy_bandwidth']:9.2f} "
            f"{best / row['floor_s_linear_ceiling']:8.2f} {best / row['floor_s_separate_ceilings']:7.2f}"
        )
    if r.get("targets"):
        lines += ["", "targets (issue 21):", f"{'target':40s} {'value':>7s} {'limit':>6s}  met  why missed"]
        lines += [
            f"{t['target']:40s} {t['value']:7.2f} {t['limit']:6.2f}  {'yes' if t['met'] else 'NO ':3s}  {t['why']}"
            for t in r["targets"]
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small layer, for a smoke test")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, rounds=args.rounds, repeats=args.repeats, device=args.device)
    print(format_tables(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
