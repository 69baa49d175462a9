"""A weight-streaming matmul for MoE decode on a CPU, built from 120 lines of C at first use.

In decode each expert sees a handful of tokens, so ``x (n, in) @ w (out, in).T`` with small ``n`` is
a matrix-*vector* product in disguise: 2 FLOPs per weight per token, and its time is the time to
read ``w`` once. The GEMM kernels torch ships on CPUs (oneDNN, MKL) are built for large ``n``; for
a few rows they stream weights well below the memory bandwidth (``benchmarks/moe_dispatch.py``).
:func:`linear_stream` reads each 16-float vector of ``w`` once and multiplies it into every row of
``x`` while it sits in a register, keeping ``x`` in the L1 cache (in column blocks when it is too
large); the threads split the rows of ``w`` (``dmcourse/csrc/stream.c``).
:func:`read_sum` is the same kind of loop that only reads: the read bandwidth that kernel can reach.

The C file is compiled with the system C compiler (``$CC``, else ``cc``; ``-O3 -march=native
-fopenmp``, dropping flags the compiler refuses) into ``$DMCOURSE_CACHE`` (default
``~/.cache/dmcourse``) and loaded with ``ctypes``, then checked against ``torch`` on a small input.
Colab and Linux machines have a compiler; where there is none (or ``DMCOURSE_NO_KERNEL=1``),
:func:`available` is False, :func:`status` says why, and :func:`dmcourse.moe.linear` keeps using
oneDNN -- the same arithmetic, slower in decode.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "stream.c"
MAX_ROWS = 16
""":func:`dmcourse.moe.linear` uses the kernel for 1 to ``MAX_ROWS`` rows of ``x``. Measured with
``python benchmarks/stream_rows.py`` (AMD EPYC 2-core VM, fp32, 2 threads, 2026-11-26): the kernel
took 0.62x to 0.76x oneDNN's time at 1 to 8 rows, 0.89x at 16, 1.15x at 24."""
_FLAG_SETS = (("-O3", "-march=native", "-fopenmp"), ("-O3", "-march=native"), ("-O3",))
_status = "not built yet"
_enabled = True


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compile(cache: Path) -> Path:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler: {compiler!r} is not on PATH (set CC)")
    source = SOURCE.read_bytes()
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256(source + " ".join((compiler, *flags, _cpu_id())).encode()).hexdigest()[:16]
        target = cache / f"stream-{key}.so"
        if target.exists():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = Path(tmp) / target.name
            proc = subprocess.run([compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", str(out)],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(out, target)  # atomic: a concurrent build of the same key is harmless
                return target
            errors.append(f"{compiler} {' '.join(flags)}: {proc.stderr.strip()[-300:]}")
    raise RuntimeError("the C compiler failed:\n" + "\n".join(errors))


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    global _status
    if os.environ.get("DMCOURSE_NO_KERNEL", "") not in ("", "0"):
        _status = "switched off by DMCOURSE_NO_KERNEL"
        return None
    try:
        path = _compile(Path(os.environ.get("DMCOURSE_CACHE") or Path.home() / ".cache" / "dmcourse"))
        lib = ctypes.CDLL(str(path))
        lib.linear_stream.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
        lib.linear_stream.restype = None
        lib.read_sum.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        lib.read_sum.restype = ctypes.c_double
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _status = f"not available: {err}"
        return None
    # check it against torch before anyone relies on it
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(7, 48, generator=gen), torch.randn(13, 48, generator=gen)
    got = _call(lib, x, w)
    if not torch.allclose(got, x @ w.T, rtol=1e-4, atol=1e-4):
        _status = f"not available: {path.name} gave wrong results (max error {(got - x @ w.T).abs().max():.3g})"
        return None
    _status = f"available ({path})"
    return lib


def available() -> bool:
    """Whether the kernel compiled, loaded and passed its check on this machine (built on first call)."""
    return _library() is not None


def status() -> str:
    """One line: where the compiled kernel is, or why it is not used."""
    _library()
    return _status


def _call(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)
    lib.linear_stream(x.data_ptr(), w.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], w.shape[0],
                      torch.get_num_threads())
    return y


def _problem(x: torch.Tensor, w: torch.Tensor) -> str | None:
    """Why the kernel cannot compute ``x @ w.T``, or None if it can."""
    for name, t in (("x", x), ("w", w)):
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != 2:
            return f"{name} must be a 2-D float32 CPU tensor, got {t.dim()}-D {t.dtype} on {t.device}"
    if x.shape[1] != w.shape[1]:
        return f"x (n, in) and w (out, in) disagree on in: x {tuple(x.shape)}, w {tuple(w.shape)}"
    if x.shape[1] % 16:
        return f"in = {x.shape[1]} must be a multiple of 16 (the kernel reads 16 floats at a time)"
    return None


def _require() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError(f"dmcourse.stream kernel {_status}")
    return lib


def linear_stream(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T``: x (n, in), w (out, in) -> (n, out), float32 on CPU, ``in`` a multiple of 16.

    Reads ``w`` once whatever ``n`` is (faster than oneDNN for n <= :data:`MAX_ROWS`); uses
    ``torch.get_num_threads()`` threads. Raises ValueError for other shapes or dtypes, RuntimeError
    where the kernel is not available (see :func:`status`).
    """
    problem = _problem(x, w)
    if problem:
        raise ValueError(problem)
    return _call(_require(), x.contiguous(), w.contiguous())


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Inside ``with dmcourse.stream.off():`` :func:`dmcourse.moe.linear` does not use the kernel
    (to time or check the oneDNN path it replaces)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def use_for(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether :func:`dmcourse.moe.linear` should call :func:`linear_stream` for ``x @ w.T``:
    float32 CPU tensors, 1 to :data:`MAX_ROWS` rows, ``in`` a multiple of 16, no gradient needed,
    not inside :func:`off`, kernel available."""
    return (_enabled and x.device.type == "cpu" and _problem(x, w) is None and 1 <= x.shape[0] <= MAX_ROWS
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and available())


def read_sum(x: torch.Tensor) -> float:
    """Sum of a contiguous float32 CPU tensor, by a loop that only reads (16-float vectors, four
    running sums, prefetch): what :func:`dmcourse.measure.measure_bandwidth` times for
    ``kind="read_kernel"``."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous float32 CPU tensor, got {x.dtype} on {x.device}")
    return _require().read_sum(x.data_ptr(), x.numel(), torch.get_num_threads())
