"""The C decode kernel, an opt-in exhibit: a weight-streaming matmul for MoE decode on a CPU.

Chapter 5 (rooflines) uses it through the ``linear=`` seam; chapter 3's MoE layer does not depend on
it. In decode each expert sees a handful of tokens, so ``x (n, in) @ w (out, in).T`` with small ``n``
is a matrix-*vector* product in disguise: 2 FLOPs per weight per token, and its time is the time to
read ``w`` once. :func:`linear_stream` reads each 16-float vector of ``w`` once and multiplies it into
every row of ``x`` while it sits in a register, keeping ``x`` in the L1 cache (in column blocks when
it is too large); the threads split the rows of ``w`` (``dmcourse/csrc/stream.c``). :func:`read_sum`
is the same kind of loop that only reads: the read bandwidth that kernel can reach.

The C file is compiled with the system C compiler (``$CC``, else ``cc``; ``-O3 -march=native
-fopenmp``, dropping flags the compiler refuses) into :func:`cache_dir` and loaded with ``ctypes``,
then checked against ``torch`` on a small input; :func:`status` says where it is or why not.
:func:`dmcourse.matmul.linear` considers it (its probe times it against torch's kernels) only where
:func:`enabled`: opted in (``DMCOURSE_KERNEL=1`` or :func:`enable`), built, and built *with* OpenMP
threads. ``DMCOURSE_NO_KERNEL=1`` never builds it; ``DMCOURSE_REQUIRE_KERNEL=1`` (for CI) makes a
failed or thread-less build an error instead of a fallback.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "stream.c"
_FLAG_SETS = (("-O3", "-march=native", "-fopenmp"), ("-O3", "-march=native"), ("-O3",))
_status = "not built yet"
_opted_in: bool | None = None  # None: follow $DMCOURSE_KERNEL


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def cache_dir() -> Path:
    """Where built kernels and measured choices are kept: ``$DMCOURSE_CACHE``, else ``~/.cache/dmcourse``."""
    return Path(os.environ.get("DMCOURSE_CACHE") or Path.home() / ".cache" / "dmcourse")


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
            proc = subprocess.run(
                [compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", str(out)],
                check=False,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if proc.returncode == 0:
                os.replace(out, target)  # atomic: a concurrent build of the same key is harmless
                return target
            errors.append(f"{compiler} {' '.join(flags)}: {proc.stderr.strip()[-300:]}")
    raise RuntimeError("the C compiler failed:\n" + "\n".join(errors))


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = _build()
    if lib is None and _flag("DMCOURSE_REQUIRE_KERNEL"):
        raise RuntimeError(f"DMCOURSE_REQUIRE_KERNEL is set and the dmcourse.stream kernel is {_status}")
    return lib


def _build() -> ctypes.CDLL | None:
    global _status
    if _flag("DMCOURSE_NO_KERNEL"):
        _status = "switched off by DMCOURSE_NO_KERNEL"
        return None
    try:
        path = _compile(cache_dir())
        lib = ctypes.CDLL(str(path))
        lib.linear_stream.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
        lib.linear_stream.restype = None
        lib.read_sum.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        lib.read_sum.restype = ctypes.c_double
        lib.openmp_threads.argtypes = []
        lib.openmp_threads.restype = ctypes.c_int
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
    threads = lib.openmp_threads()
    if threads == 0 and _flag("DMCOURSE_REQUIRE_KERNEL"):
        _status = f"not available: {path.name} was built without OpenMP (the compiler refused -fopenmp)"
        return None
    _status = f"available ({path}, {'OpenMP' if threads else 'no OpenMP: one thread'})"
    return lib


def available() -> bool:
    """Whether the kernel compiled, loaded and passed its check on this machine (built on first call).
    With ``DMCOURSE_REQUIRE_KERNEL=1`` a failed build raises RuntimeError instead."""
    return _library() is not None


def threaded() -> bool:
    """Whether the built kernel runs on OpenMP threads (False where the compiler refused -fopenmp,
    e.g. Apple clang: then it reads memory with one core and is not worth choosing)."""
    lib = _library()
    return lib is not None and lib.openmp_threads() > 0


def enable(on: bool | None = True) -> None:
    """Opt in (or out) of the kernel as a candidate of :func:`dmcourse.matmul.linear`; None: follow
    ``$DMCOURSE_KERNEL``."""
    global _opted_in
    if on is not None and not isinstance(on, bool):
        raise TypeError(f"on must be True, False or None, got {on!r}")
    _opted_in = on


@functools.cache
def _opted_by_env() -> bool:
    return _flag("DMCOURSE_KERNEL")  # read once per process: asked on every matmul


def opted_in() -> bool:
    """Whether the kernel is opted in: :func:`enable`, else ``DMCOURSE_KERNEL=1`` (read once)."""
    return _opted_by_env() if _opted_in is None else _opted_in


def enabled() -> bool:
    """Whether :func:`dmcourse.matmul.linear`'s probe may choose this kernel: opted in
    (:func:`opted_in`), built, and threaded (:func:`threaded`)."""
    return opted_in() and threaded()


def status() -> str:
    """One line: where the compiled kernel is, or why it is not used."""
    _library()
    return _status


def _call(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)
    lib.linear_stream(
        x.data_ptr(), w.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], w.shape[0], torch.get_num_threads()
    )
    return y


def problem(x: torch.Tensor, w: torch.Tensor) -> str | None:
    """Why the kernel cannot compute ``x @ w.T``, or None if it can."""
    for name, t in (("x", x), ("w", w)):
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != 2:
            return f"{name} must be a 2-D float32 CPU tensor, got {t.dim()}-D {t.dtype} on {t.device}"
    if 0 in x.shape or 0 in w.shape:
        return f"x (n, in) and w (out, in) must not be empty, got x {tuple(x.shape)}, w {tuple(w.shape)}"
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

    Reads ``w`` once whatever ``n`` is (built for a few rows: ``benchmarks/stream_rows.py`` times it
    against torch's kernels by row count); uses ``torch.get_num_threads()`` threads. Raises
    ValueError for empty, mis-shaped or non-float32 operands, RuntimeError where the kernel is not
    available (see :func:`status`). No autograd.
    """
    why = problem(x, w)
    if why:
        raise ValueError(why)
    return _call(_require(), x.contiguous(), w.contiguous())


def read_sum(x: torch.Tensor) -> float:
    """Sum of a contiguous float32 CPU tensor, by a loop that only reads (16-float vectors, four
    running sums, prefetch): what :func:`dmcourse.measure.measure_bandwidth` times for
    ``kind="read_kernel"``."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(f"x must be a contiguous float32 CPU tensor, got {x.dtype} on {x.device}")
    return _require().read_sum(x.data_ptr(), x.numel(), torch.get_num_threads())
