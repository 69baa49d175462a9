"""Run a function on several processes that talk through ``torch.distributed``, and get results back.

Chapter 8 ("Beyond one device: expert parallelism on torch.distributed") introduces it. A notebook cannot run collectives inline: every
rank is its own process. This module starts them, and knows no experiment: it finds the tasks it
runs by name (:func:`resolve`; the chapter's measurements are in :mod:`dmcourse.ep_tasks`).

* :func:`spawn` -- start ``world_size`` processes with ``torch.multiprocessing``, give each an
  initialised process group, run ``fn(ctx, **kwargs)`` on each, return the per-rank results.
  One launch can run several measurements (process start-up costs seconds; pay it once).
* :func:`run` -- what a notebook calls: runs ``python -m dmcourse.launch`` in a subprocess and
  returns its JSON result (the kernel never holds a process group, so a crash cannot take it down).
* the command line, also usable under ``torchrun``::

      python -m dmcourse.launch check alltoall --nproc 4 --params '{"alltoall": {"tokens": [64, 256]}}'
      torchrun --nproc-per-node 4 -m dmcourse.launch check --out result.json

Failure rules (a distributed run must never hang a notebook or CI):

* ``init_process_group`` and every collective get a timeout (``timeout_s``);
* a rank that raises makes the parent kill the other ranks and raise :class:`LaunchError` carrying
  the failing rank's traceback;
* the whole launch has a deadline (``deadline_s``) after which every rank is killed;
* every rank destroys its process group when it leaves, whatever happened.

Backends: ``gloo`` on CPU (any number of processes on one machine), ``nccl`` when there is one CUDA
GPU per rank (``backend="auto"`` picks it then). Ranks on CPU use ``threads_per_rank`` threads each.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dmcourse.checks import check_int, one_of, positive_float

BACKENDS = ("auto", "gloo", "nccl")
START_METHODS = ("spawn", "fork")


class LaunchError(RuntimeError):
    """A rank failed (its traceback is in the message) or the launch ran past its deadline."""


@dataclass(frozen=True)
class RankContext:
    """What a task running on one rank gets: its rank, the world size, its device and dtype."""

    rank: int
    world_size: int
    backend: str
    device: torch.device
    dtype: torch.dtype
    local_rank: int = 0


def pick_backend(world_size: int, backend: str = "auto") -> str:
    """``"nccl"`` when ``backend="auto"`` and there is one CUDA GPU per rank, else ``"gloo"``."""
    one_of("backend", backend, BACKENDS)
    if backend == "auto":
        usable = torch.cuda.is_available() and torch.cuda.device_count() >= world_size
        return "nccl" if usable and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and not (torch.cuda.is_available() and torch.cuda.device_count() >= world_size):
        raise ValueError(
            f"backend 'nccl' needs one CUDA GPU per rank: world_size={world_size}, "
            f"GPUs={torch.cuda.device_count() if torch.cuda.is_available() else 0}"
        )
    return backend


def free_port() -> int:
    """A TCP port that is free now (bind to port 0 and let the OS choose)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _context(rank: int, world_size: int, backend: str, local_rank: int) -> RankContext:
    from dmcourse.device import pick_dtype

    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return RankContext(rank, world_size, backend, device, pick_dtype(device), local_rank)


def _failure_path(out_path: str, rank: int) -> str:
    return f"{out_path}.rank{rank}.failed"


def _run_on_rank(fn: Callable[..., Any], ctx: RankContext, kwargs: dict, out_path: str | None) -> None:
    """Run ``fn`` on an initialised group, gather the results on rank 0, always destroy the group.

    On an exception the rank writes its traceback and the time *before* leaving the group: leaving
    makes its peers fail too, and the parent must be able to tell which rank failed first.
    """
    try:
        result = fn(ctx, **kwargs)
        gathered: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(gathered, result)
        if ctx.rank == 0 and out_path is not None:
            tmp = out_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(gathered, f)
            os.replace(tmp, out_path)
    except BaseException:
        if out_path is not None:
            with open(_failure_path(out_path, ctx.rank), "w") as f:
                json.dump({"time_ns": time.time_ns(), "traceback": traceback.format_exc()}, f)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawned(
    rank: int, fn, world_size: int, backend: str, port: int, timeout_s: float, threads: int, kwargs: dict, out_path: str
) -> None:
    """Entry point of one spawned rank (module level, so ``spawn`` can pickle it)."""
    if backend == "gloo":
        torch.set_num_threads(threads)
    else:
        torch.cuda.set_device(rank)  # before the group is made, so NCCL binds each rank to its GPU
    timeout = _dt.timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    _run_on_rank(fn, _context(rank, world_size, backend, rank), kwargs, out_path)


def _describe_failure(ctx, err: Exception, world_size: int, out_path: str) -> str:
    """Name the rank that failed *first* and show its traceback.

    When one rank fails, the others fail soon after ("connection closed by peer", a timeout), and
    whichever the parent notices first is not necessarily the cause. Each rank that raised wrote its
    traceback and the time before leaving the group: the earliest is the cause. A rank that died
    without a traceback (killed, ``os._exit``) with a positive exit code comes first: it did not die
    of the others' failure (ranks the parent terminated have negative exit codes).
    """
    failures: list[tuple[int, int, str]] = []
    for rank, proc in enumerate(ctx.processes):
        path = _failure_path(out_path, rank)
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            failures.append((record["time_ns"], rank, record["traceback"].rstrip()))
        elif proc.exitcode is not None and proc.exitcode > 0:
            failures.append((-1, rank, f"process exited with code {proc.exitcode} without a Python traceback"))
    if not failures:
        return f"rank {getattr(err, 'error_index', '?')} of {world_size} failed: {err}"
    failures.sort()
    _, rank, trace = failures[0]
    text = f"rank {rank} of {world_size} failed first:\n{trace}"
    for _, other, other_trace in failures[1:]:
        text += f"\n(then rank {other} failed too: {other_trace.splitlines()[-1]})"
    return text


def spawn(
    fn: Callable[..., Any],
    world_size: int,
    *,
    backend: str = "auto",
    kwargs: dict | None = None,
    timeout_s: float = 60.0,
    deadline_s: float = 300.0,
    threads_per_rank: int = 1,
    start_method: str = "spawn",
) -> list[Any]:
    """Run ``fn(ctx, **kwargs)`` on ``world_size`` new processes; return the results, by rank.

    ``fn`` must be importable by name (defined at module level) and return something JSON can
    encode. ``ctx`` is a :class:`RankContext`. ``timeout_s`` bounds ``init_process_group`` and each
    collective; ``deadline_s`` bounds the whole launch (start-up included). Raises
    :class:`LaunchError` if any rank raises or dies, or on the deadline; the other ranks are killed.

    ``start_method``: ``"spawn"`` (fresh interpreters: safe from any process, each rank pays for
    importing torch) or ``"fork"`` (copies of this process: starts in milliseconds, but only safe
    from a process that has not started threads or CUDA -- the command line uses it on Linux).
    """
    check_int("world_size", world_size)
    positive_float("timeout_s", timeout_s)
    positive_float("deadline_s", deadline_s)
    check_int("threads_per_rank", threads_per_rank)
    if not callable(fn):
        raise TypeError(f"fn must be a callable, got {type(fn).__name__}")
    one_of("start_method", start_method, START_METHODS)
    backend = pick_backend(world_size, backend)
    if start_method == "fork":
        if backend == "nccl" or torch.cuda.is_initialized():
            raise ValueError("start_method='fork' cannot be used with CUDA: use 'spawn'")
        importlib.import_module("torch._dynamo")  # the functional collectives import it on first use: once, here
    start = time.monotonic()
    # The parent hosts the rendezvous store on a port the OS picks: parallel launches cannot collide.
    store = dist.TCPStore(
        "127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False, timeout=_dt.timedelta(seconds=timeout_s)
    )
    with tempfile.TemporaryDirectory(prefix="dmcourse-launch-") as tmp:
        out_path = str(Path(tmp) / "results.json")
        args = (fn, world_size, backend, store.port, float(timeout_s), threads_per_rank, kwargs or {}, out_path)
        ctx = torch.multiprocessing.start_processes(
            _spawned, args=args, nprocs=world_size, join=False, start_method=start_method
        )
        try:
            while not ctx.join(timeout=0.2, grace_period=2.0):
                if time.monotonic() - start > deadline_s:
                    raise LaunchError(
                        f"launch of {getattr(fn, '__name__', fn)} on {world_size} ranks ran past "
                        f"its deadline of {deadline_s:.0f} s; all ranks killed"
                    )
        except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException) as err:
            raise LaunchError(_describe_failure(ctx, err, world_size, out_path)) from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join(timeout=5)
        del store
        if not os.path.exists(out_path):
            raise LaunchError(f"all {world_size} ranks exited without an error but rank 0 wrote no results")
        with open(out_path) as f:
            return json.load(f)


# ----------------------------------------------------------------------------------------------
# Tasks the command line knows, and the subprocess wrapper a notebook uses.


#: Tables of the measurements the command line knows, as ``"module:attribute"`` naming a dict
#: ``{name: function}``. The launcher imports them only when a task is looked up, never at import
#: time, so the experiments may import this module (for :class:`RankContext`) without a loop.
TASK_TABLES: tuple[str, ...] = ("dmcourse.ep_tasks:TASKS",)


def _import(spec: str) -> Any:
    """The object ``"package.module:attribute"`` names (imports the module)."""
    module, sep, attribute = spec.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"expected 'module:attribute', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {spec!r}: {err}") from None


def tasks() -> dict[str, Callable[..., Any]]:
    """The measurements the command line can run by short name (from the tables of :data:`TASK_TABLES`)."""
    found: dict[str, Callable[..., Any]] = {}
    for table in TASK_TABLES:
        found.update(_import(table))
    return found


def resolve(task: str) -> Callable[..., Any]:
    """A task by short name (a key of :func:`tasks`) or as ``"module:function"`` (any importable
    function taking a :class:`RankContext`: a notebook's own measurement in a module of its own)."""
    if ":" in task:
        fn = _import(task)
    else:
        known = tasks()
        if task not in known:
            raise ValueError(f"unknown task {task!r}: expected one of {sorted(known)} or 'module:function'")
        fn = known[task]
    if not callable(fn):
        raise TypeError(f"task {task!r} is not callable: {type(fn).__name__}")
    return fn


def run_tasks(ctx: RankContext, names: list[str], params: dict) -> dict:
    """One rank's part of a launch that runs several tasks in order: ``{name: result}``."""
    out = {}
    for name in names:
        fn = resolve(name)
        t0 = time.perf_counter()
        out[name] = fn(ctx, **params.get(name, {}))
        out[name + ".seconds"] = time.perf_counter() - t0
    return out


def _meta(world_size: int, backend: str) -> dict:
    from dmcourse.device import device_info

    device = "cuda" if backend == "nccl" else "cpu"
    info = device_info(device)
    return {
        "world_size": world_size,
        "backend": backend,
        "device": info.name,
        "summary": info.summary(),
        "dtype": str(info.dtype).removeprefix("torch."),
        "date": _dt.date.today().isoformat(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }


def _collate(names: list[str], per_rank: list[dict], meta: dict, seconds: float) -> dict:
    return {
        "meta": {**meta, "wall_s": seconds},
        "results": {n: [r[n] for r in per_rank] for n in names},
        "task_seconds": {n: max(r[n + ".seconds"] for r in per_rank) for n in names},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmcourse.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "tasks", nargs="+", help=f"tasks to run in order, from: {', '.join(sorted(tasks()))}, or 'module:function'"
    )
    parser.add_argument("--nproc", type=int, default=2, help="number of ranks (ignored under torchrun)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--params", default="{}", help='JSON: {"task": {"argument": value}}')
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for init and each collective")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole launch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU rank")
    parser.add_argument(
        "--start-method",
        default=None,
        choices=START_METHODS,
        help="how to start the ranks (default: fork on Linux with gloo, else spawn)",
    )
    parser.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    a = parser.parse_args(argv)
    for task in a.tasks:
        try:
            resolve(task)
        except (ValueError, TypeError) as err:
            parser.error(str(err))
    params = json.loads(a.params)
    if not isinstance(params, dict) or set(params) - set(a.tasks):
        parser.error(f"--params must be a JSON object keyed by the tasks run ({a.tasks}), got {a.params!r}")
    t0 = time.perf_counter()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun: this process is one rank
        world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        # one GPU per rank *on this node* decides, as torchrun may span several nodes
        backend = pick_backend(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)), a.backend)
        if backend == "gloo":
            torch.set_num_threads(a.threads)
        else:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=a.timeout))
        ctx = _context(rank, world_size, backend, int(os.environ.get("LOCAL_RANK", rank)))
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "r.json")
            _run_on_rank(run_tasks, ctx, {"names": a.tasks, "params": params}, path)
            if rank != 0:
                return 0
            per_rank = json.loads(Path(path).read_text())
    else:
        world_size, backend = a.nproc, pick_backend(a.nproc, a.backend)
        method = a.start_method or ("fork" if sys.platform == "linux" and backend == "gloo" else "spawn")
        per_rank = spawn(
            run_tasks,
            world_size,
            backend=backend,
            kwargs={"names": a.tasks, "params": params},
            timeout_s=a.timeout,
            deadline_s=a.deadline,
            threads_per_rank=a.threads,
            start_method=method,
        )
    text = json.dumps(_collate(a.tasks, per_rank, _meta(world_size, backend), time.perf_counter() - t0))
    if a.out:
        Path(a.out).write_text(text)
    else:
        print(text)
    return 0


def run(
    tasks: str | list[str],
    nproc: int = 2,
    *,
    params: dict | None = None,
    backend: str = "auto",
    timeout_s: float = 60.0,
    deadline_s: float = 300.0,
    threads: int = 1,
) -> dict:
    """Run tasks on ``nproc`` ranks in a fresh ``python -m dmcourse.launch`` subprocess.

    Returns ``{"meta": {...device, date, world_size...}, "results": {task: [rank 0, rank 1, ...]},
    "task_seconds": {task: s}}``. Raises :class:`LaunchError` with the subprocess's error output if
    it fails or runs past ``deadline_s`` (plus a few seconds of grace).
    """
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    cmd = [
        sys.executable,
        "-m",
        "dmcourse.launch",
        *names,
        "--nproc",
        str(nproc),
        "--backend",
        backend,
        "--params",
        json.dumps(params or {}),
        "--timeout",
        str(timeout_s),
        "--deadline",
        str(deadline_s),
        "--threads",
        str(threads),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline_s + 30)
    except subprocess.TimeoutExpired as err:
        raise LaunchError(f"{' '.join(cmd[2:4])}... did not finish within {deadline_s + 30:.0f} s") from err
    if proc.returncode != 0:
        raise LaunchError(
            f"launch of {names} on {nproc} ranks failed (exit {proc.returncode}):\n{proc.stderr.strip()[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LaunchError as err:
        print(f"dmcourse.launch: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception:  # noqa: BLE001 -- report, never hang
        traceback.print_exc()
        sys.exit(1)
