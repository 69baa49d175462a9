"""The GPU check in one command: every GPU figure the course shows, measured, in one JSON record.

    make gpu-check                       # = python -m dmcourse.gpucheck, on a machine with a CUDA GPU
    python -m dmcourse.gpucheck --quick  # small sizes, no notebooks: the plumbing, on any machine (CI)

On a CUDA machine, from a checkout of the repository, it

* measures copy/read bandwidth and matmul throughput per dtype (:func:`dmcourse.records.measure_ceilings`),
* sweeps GEMMs ``(M, K) @ (K, N)`` from M = 1 to 16384 against the roofline of those ceilings,
* runs ``benchmarks/moe_dispatch.py`` (loop / sorted / grouped dispatch vs the equal-FLOPs dense FFN at
  prefill sizes; decode at 1-256 tokens against the floor set by the experts touched),
* times training steps of chapter 4 (toy MoE) and chapter 7 (TinyLM MoE) with the course's autocast,
* runs the NCCL expert-parallel check (``dmcourse.launch`` ``check``) with 2+ GPUs,
* executes every chapter and every exercise solution on the GPU (``--jobs`` at a time),

and writes ``dmcourse/data/records/gpucheck_<device>.json`` (:mod:`dmcourse.records` reads it; the
roofline, MoE and economics chapters show it). Each measurement carries the command that made it;
whatever is skipped is listed with the reason. Introduced in chapter 5; the record's schema is
:func:`dmcourse.records.validate_gpucheck`. Units: seconds, bytes/s, FLOP/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dmcourse import measure, records
from dmcourse import roofline as rl
from dmcourse.device import device_info, pick_device

#: The issue's targets for a GPU record (reported, never tuned to): name -> (threshold, what).
TARGETS = {
    "copy_bandwidth_vs_datasheet": (0.8, "copy bandwidth / datasheet bandwidth >= 0.8"),
    "moe_vs_dense_prefill_throughput": (0.7, "best MoE / equal-FLOPs dense throughput at prefill >= 0.7"),
    "decode_vs_experts_touched_floor": (1.5, "best MoE decode time / (touched expert bytes / bandwidth) <= 1.5"),
}
GPU_DECODE_TOKENS = (1, 4, 16, 64, 256)


def repo_root(start: Path | None = None) -> Path | None:
    """The repository checkout this package sits in (has ``_toc.yml`` and ``benchmarks/``), else None
    (an installed wheel: notebooks and benchmarks are then skipped, with that reason)."""
    here = (start or Path(__file__).resolve().parents[1]).resolve()
    return here if (here / "_toc.yml").exists() and (here / "benchmarks").is_dir() else None


class Check:
    """Collects measurements, notebook runs and skips into one record."""

    def __init__(self, device: torch.device, quick: bool, command: str) -> None:
        self.device, self.quick, self.command = device, quick, command
        self.measurements: dict[str, dict[str, Any]] = {}
        self.skipped: list[dict[str, str]] = []
        self.notebooks: list[dict[str, Any]] = []

    def skip(self, what: str, why: str) -> None:
        self.skipped.append({"what": what, "why": why})
        print(f"skipped {what}: {why}", flush=True)

    def measure(self, name: str, command: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` and record its result under ``name`` with ``command`` and the seconds it took;
        an exception is recorded as a skip with its message (the other measurements still run)."""
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 -- one failing measurement must not lose the others
            self.skip(name, f"failed: {type(err).__name__}: {err}")
            return None
        seconds = time.perf_counter() - t0
        self.measurements[name] = {"command": command, "seconds": round(seconds, 3), "result": result}
        print(f"{name}: {seconds:.1f} s  [{command}]", flush=True)
        return result


def gemm_sweep(device: torch.device, precision: str, peak: float, bandwidth: float, quick: bool) -> list[dict]:
    """Time ``(M, K) @ (K, N)`` for M = 1 .. 16384 (K = N = 4096; quick: M <= 64, K = N = 256) and
    compare each with the roofline time of the measured ceilings ``peak`` (FLOP/s), ``bandwidth`` (B/s)."""
    k = n = 256 if quick else 4096
    ms = (1, 8, 64) if quick else (1, 4, 16, 64, 256, 1024, 4096, 16384)
    element = torch.tensor([], dtype=measure.PRECISIONS[precision]).element_size()
    rows = []
    for m in ms:
        t = measure.time_gemm(m, k, n, device=device, precision=precision, repeats=3 if quick else 7).median_s
        flops, nbytes = rl.gemm_flops(m, k, n), rl.gemm_bytes(m, k, n, element)
        floor = rl.roofline_time(flops, nbytes, peak, bandwidth)
        rows.append(
            {
                "m": m,
                "k": k,
                "n": n,
                "precision": precision,
                "time_s": t,
                "flops_per_s": flops / t,
                "roofline_s": floor,
                "time_over_roofline": t / floor,
            }
        )
    return rows


def load_benchmark(root: Path) -> Any:
    """``benchmarks/moe_dispatch.py`` of the checkout, as a module (its functions are reused, not copied)."""
    path = root / "benchmarks" / "moe_dispatch.py"
    spec = importlib.util.spec_from_file_location("dmcourse_bench_moe_dispatch", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load the benchmark {path}: expected benchmarks/moe_dispatch.py in the checkout")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def moe_dispatch(root: Path, device: torch.device, quick: bool) -> dict:
    """The MoE dispatch benchmark's record (prefill strategies vs dense; decode vs the floor), with the
    expected number of experts touched (:func:`dmcourse.roofline.expected_experts_touched`) per row."""
    bench = load_benchmark(root)
    if device.type == "cuda" and not quick:
        bench.DECODE_TOKENS = GPU_DECODE_TOKENS
    elif quick:
        bench.DECODE_TOKENS = (1, 4)
    result = bench.run(quick=quick, rounds=1 if quick else 5, repeats=1 if quick else 3, device=str(device))
    s = result["settings"]
    for row in result["decode"]:
        row["experts_touched_expected"] = rl.expected_experts_touched(s["n_experts"], s["top_k"], row["tokens"])
    result["command"] = (
        f"python -m dmcourse.gpucheck (benchmarks/moe_dispatch.py run(quick={quick}), "
        f"decode tokens {list(bench.DECODE_TOKENS)})"
    )
    return result


def training_steps(device: torch.device, quick: bool) -> dict:
    """Seconds per optimiser step of chapter 4's toy MoE and chapter 7's TinyLM MoE, with the course's
    autocast dtype on CUDA (bf16, fp16 + GradScaler below capability 8.0), fp32 on CPU."""
    from dmcourse import lm, moe_train, toy, train

    amp = device_info(device).dtype if device.type == "cuda" else None
    steps = 3 if quick else 20
    out = {}
    task = toy.MixtureTask(seed=0)
    toy_model = toy.toy_moe(task)
    config = train.TrainConfig(steps=steps, device=str(device), amp_dtype=amp, log_every=steps)
    cases = {
        "chapter 4: toy MoE (MixtureTask, 8 experts, top-2)": (
            toy_model,
            task.batch_fn(8 if quick else 64, 16 if quick else 64),
            moe_train.moe_loss_fn(),
        ),
        "chapter 7: TinyLM MoE (8 experts, top-2)": (
            lm.TinyLM(lm.LMConfig(n_experts=8, top_k=2, d_model=64 if quick else 256, seq_len=32 if quick else 128)),
            lm.CharData(lm.make_corpus(20_000)).batch_fn("train", 8 if quick else 64, 32 if quick else 128),
            lambda model, batch: (lm.lm_loss(model(batch.x), batch.y), {}),
        ),
    }
    for name, (model, batch_fn, loss_fn) in cases.items():
        train.train(
            model, batch_fn, loss_fn, train.TrainConfig(steps=1, device=str(device), amp_dtype=amp), progress=False
        )  # warm-up: kernels, allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        history = train.train(model, batch_fn, loss_fn, config, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        loss = history.last("loss")
        if not math.isfinite(loss):
            raise RuntimeError(f"{name}: loss {loss} is not finite")
        out[name] = {
            "seconds_per_step": (time.perf_counter() - t0) / steps,
            "steps": steps,
            "last_loss": loss,
            "amp_dtype": str(amp).removeprefix("torch.") if amp else None,
        }
    return out


def run_notebook(path: Path, root: Path, timeout_s: int) -> dict[str, Any]:
    """Execute one notebook in place of a reader (outputs discarded); -> status, seconds, error."""
    import nbformat
    from nbclient import NotebookClient

    t0 = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    entry: dict[str, Any] = {"path": str(path.relative_to(root))}
    try:
        NotebookClient(
            nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute(env={**os.environ, "DMCOURSE_PROGRESS": "0"})
        entry["status"] = "ok"
    except Exception as err:  # noqa: BLE001 -- record and go on with the next notebook
        entry["status"], entry["error"] = "failed", f"{type(err).__name__}: {str(err)[-2000:]}"
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"notebook {entry['path']}: {entry['status']} in {entry['seconds']} s", flush=True)
    return entry


def notebook_paths(root: Path) -> list[Path]:
    """Every chapter of ``_toc.yml`` that is a notebook, then every exercise solution."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            files.extend([node["file"]] if "file" in node else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    chapters = [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]
    return chapters + sorted((root / "solutions").glob("*/*.ipynb"))


def datasheet_for(device_name: str) -> Any:
    """The datasheet entry (:func:`dmcourse.hardware.gpus`) whose name is in a CUDA device name
    ("NVIDIA H100 80GB HBM3" -> H100: every word of the datasheet name is a word of the device
    name; the longest such name), or None."""
    from dmcourse import hardware

    def words(text: str) -> set[str]:
        return set("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())

    fits = [spec for name, spec in hardware.gpus().items() if words(name) <= words(device_name)]
    return max(fits, key=lambda spec: len(spec.name)) if fits else None


def targets(record: dict[str, Any]) -> dict[str, Any]:
    """The issue's GPU targets against this record: value, threshold, met. Empty on a CPU."""
    if record["device_type"] != "cuda":
        return {}
    out: dict[str, Any] = {}
    m = record["measurements"]
    spec = datasheet_for(record["device"])
    sheet = spec.get("memory_bandwidth_bytes_per_s") if spec else None
    if sheet and "roofline" in record:
        value = record["roofline"]["figures"]["bandwidth_bytes_per_s"]["copy"] / sheet
        out["copy_bandwidth_vs_datasheet"] = {
            "value": value,
            "threshold": 0.8,
            "met": value >= 0.8,
            "datasheet": spec.name,
            "datasheet_bytes_per_s": sheet,
        }
    if "moe_dispatch" in m:
        d = m["moe_dispatch"]["result"]
        p = d["prefill_s"]
        value = p["dense SwiGLU"] / min(t for k, t in p.items() if k.startswith("moe"))
        out["moe_vs_dense_prefill_throughput"] = {
            "value": value,
            "threshold": 0.7,
            "met": value >= 0.7,
            "tokens": d["settings"]["tokens"],
        }
        worst = max(
            min(v for k, v in row["times_s"].items() if k.startswith("moe")) / row["floor_s"] for row in d["decode"]
        )
        out["decode_vs_experts_touched_floor"] = {"value": worst, "threshold": 1.5, "met": worst <= 1.5}
    return out


def check(
    device: str | None = None,
    *,
    quick: bool = False,
    notebooks: bool | None = None,
    jobs: int = 4,
    timeout_s: int = 600,
    root: Path | None = None,
    command: str = "python -m dmcourse.gpucheck",
) -> dict:
    """Run the whole check on ``device`` (default: CUDA if present) and return the record (validated).
    ``notebooks``: execute chapters and solutions (default: on CUDA, not with ``quick``)."""
    dev = pick_device(device)
    root = repo_root() if root is None else root
    c = Check(dev, quick, command)
    if dev.type != "cuda":
        c.skip("GPU figures", f"no CUDA GPU on this machine (device {dev}): CPU figures, plumbing only")
    q = " --quick" if quick else ""
    ceilings = c.measure(
        "roofline",
        f"python -m dmcourse.records --device {dev.type}{q}",
        lambda: records.measure_ceilings(dev, quick=quick),
    )
    roof = (
        records.make_record(ceilings, dev, command=f"python -m dmcourse.records --device {dev.type}{q}", quick=quick)
        if ceilings
        else None
    )
    if roof:
        c.measurements["roofline"]["result"] = roof["figures"]
        precision = (
            "bf16"
            if "bf16" in roof["figures"]["matmul_flops_per_s"] and dev.type == "cuda"
            else ("fp16" if dev.type == "cuda" else "fp32")
        )
        peak = roof["figures"]["matmul_flops_per_s"].get(precision) or max(
            roof["figures"]["matmul_flops_per_s"].values()
        )
        bw = max(roof["figures"]["bandwidth_bytes_per_s"].values())
        c.measure(
            "gemm_sweep",
            f"python -m dmcourse.gpucheck: roofline.time_gemm over M, {precision}",
            lambda: gemm_sweep(dev, precision, peak, bw, quick),
        )
    else:
        c.skip("gemm_sweep", "needs the measured ceilings (roofline) for its roofline times")
    if root is None:
        c.skip("moe_dispatch", "benchmarks/moe_dispatch.py is not here (run from a checkout of the repository)")
    else:
        c.measure(
            "moe_dispatch",
            "python benchmarks/moe_dispatch.py" + (" --quick" if quick else "") + f" --device {dev.type}",
            lambda: moe_dispatch(root, dev, quick),
        )
        if "moe_dispatch" in c.measurements:
            c.measurements["moe_dispatch"]["command"] = c.measurements["moe_dispatch"]["result"]["command"]
    c.measure(
        "training_steps",
        "python -m dmcourse.gpucheck: train.train, chapters 4 and 7 models",
        lambda: training_steps(dev, quick),
    )
    n_gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    if n_gpus >= 2:
        from dmcourse import launch

        c.measure(
            "nccl_expert_parallel",
            f"python -m dmcourse.launch check --nproc {n_gpus} --backend nccl",
            lambda: launch.run("check", nproc=n_gpus, backend="nccl"),
        )
    else:
        c.skip("nccl_expert_parallel", f"needs 2+ CUDA GPUs, this machine has {n_gpus}")
    if notebooks is None:
        notebooks = dev.type == "cuda" and not quick
    if not notebooks:
        c.skip("notebooks", "not asked for (--quick or no GPU; tests/test_colab.py executes them on CPU)")
    elif root is None:
        c.skip("notebooks", "no checkout of the repository here")
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            c.notebooks = list(pool.map(lambda p: run_notebook(p, root, timeout_s), notebook_paths(root)))
    info = device_info(dev)
    record = {
        "schema": records.RECORD_SCHEMA,
        "device": roof["device"] if roof else info.name,
        "device_type": dev.type,
        "capability": list(info.capability) if info.capability else None,
        "memory_bytes": info.memory_bytes,
        "gpus": n_gpus,
        "date": records.utc_now(),
        "versions": records.versions(),
        "command": command,
        "quick": quick,
        "measurements": c.measurements,
        "notebooks": c.notebooks,
        "skipped": c.skipped,
    }
    if roof:
        record["roofline"] = roof
    record["targets"] = targets(record)
    return records.validate_gpucheck(record)


def default_out(record: dict[str, Any]) -> Path:
    """Where the record goes: the package's records folder for a full GPU run (ship it), else the
    current directory (a CPU or quick record is never shipped as a GPU figure)."""
    name = f"gpucheck_{records.slug(record['device'])}.json"
    if record["device_type"] == "cuda" and not record["quick"]:
        return Path(__file__).resolve().parent / "data" / "records" / name
    return Path(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmcourse.gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--quick", action="store_true", help="small sizes, no notebooks: seconds to minutes")
    parser.add_argument(
        "--notebooks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="execute chapters and solutions (default: on a GPU without --quick)",
    )
    parser.add_argument("--jobs", type=int, default=4, help="notebooks executed at once (default 4)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per notebook cell (default 600)")
    parser.add_argument(
        "--out", type=Path, default=None, help="record file (default: see dmcourse.gpucheck.default_out)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.timeout < 1:
        parser.error(f"--jobs and --timeout must be >= 1, got {args.jobs} and {args.timeout}")
    command = " ".join(["python -m dmcourse.gpucheck", *(sys.argv[1:] if argv is None else argv)])
    t0 = time.perf_counter()
    try:
        record = check(
            args.device,
            quick=args.quick,
            notebooks=args.notebooks,
            jobs=args.jobs,
            timeout_s=args.timeout,
            command=command,
        )
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    out = args.out or default_out(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    records.write_record(record, out, kind="gpucheck")
    failed = [nb["path"] for nb in record["notebooks"] if nb["status"] != "ok"]
    for name, t in record["targets"].items():
        print(f"target {name}: {t['value']:.2f} (threshold {t['threshold']}) {'met' if t['met'] else 'NOT met'}")
    for s in record["skipped"]:
        print(f"skipped {s['what']}: {s['why']}")
    print(
        f"wrote {out} ({record['device']}, {record['date']}) in {time.perf_counter() - t0:.0f} s"
        + (f"; notebooks that failed: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
