"""Argument checks for the public functions of the package, with one wording everywhere.

Chapter 1 ("Your device and how we measure") is the first to meet them: every function a
chapter calls checks what it is given at its boundary and raises a ``ValueError`` (a bad value) or
a ``TypeError`` (not a tensor) whose message names the argument, what was expected and what came::

    check_int("repeats", 0)                # ValueError: repeats must be a positive int, got 0
    check_int("warmup", -1, minimum=0)     # ValueError: warmup must be a non-negative int, got -1
    check_int("top_k", 9, maximum=8)       # ValueError: top_k must be an int in [1, 8], got 9
    positive_float("target_s", nan)        # ValueError: target_s must be a positive finite number, got nan
    check_shape("x", x, (None, 64), "(tokens, d_model=64)")
                                           # ValueError: x must have shape (tokens, d_model=64), got (3, 32)

Booleans are refused where a number is expected (``True`` is an ``int`` to Python, never a count
here): this module is the one place that says so (``tests/test_structure.py`` keeps it that way).
Internal helpers trust their callers and do not check again. torch is imported only by
:func:`check_shape`, so that the modules that only count (accounting, roofline, ...) do not load it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, TypeGuard, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def check_int(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` if it is an ``int`` (not a bool) with ``minimum <= value <= maximum`` (no upper
    bound when ``maximum`` is None), else ValueError naming ``name`` and the bounds."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        if maximum is not None:
            kind = f"an int in [{minimum}, {maximum}]"
        else:
            kind = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def is_real(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is a finite int or float (a bool is not)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def positive_float(name: str, value: object) -> float:
    """``float(value)`` if it is a finite int or float ``> 0``, else ValueError naming ``name``."""
    if not is_real(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def nonnegative_float(name: str, value: object) -> float:
    """``float(value)`` if it is a finite int or float ``>= 0``, else ValueError naming ``name``."""
    if not is_real(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def probability(name: str, value: object, *, allow_zero: bool = True, allow_one: bool = True) -> float:
    """``float(value)`` if it lies in ``[0, 1]`` (ends excluded when ``allow_zero``/``allow_one`` are
    False), else ValueError naming ``name`` and the interval."""
    low_ok = is_real(value) and (value >= 0 if allow_zero else value > 0)
    high_ok = is_real(value) and (value <= 1 if allow_one else value < 1)
    if not (low_ok and high_ok):
        interval = f"{'[' if allow_zero else '('}0, 1{']' if allow_one else ')'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def one_of(name: str, value: T, allowed: Sequence[object]) -> T:
    """``value`` if it is one of ``allowed``, else ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


DTYPE_KINDS: tuple[str, ...] = ("floating", "integer", "bool")
"""The ``dtype`` kinds :func:`check_shape` can ask for."""


def check_shape(
    name: str,
    value: object,
    shape: Sequence[int | None | EllipsisType],
    expected: str | None = None,
    *,
    dtype: str | None = None,
) -> torch.Tensor:
    """``value`` if it is a tensor whose sizes match ``shape`` and whose dtype is of kind ``dtype``.

    shape: one entry per dimension, an int (that size) or ``None`` (any size); a leading ``...``
        allows any number of leading dimensions, e.g. ``(..., None)`` is "at least one dimension".
    expected: how the message writes the shape, e.g. ``"(tokens, d_model=64)"`` (default the
        pattern, ``?`` for any size).
    dtype: ``"floating"``, ``"integer"`` (any int dtype, not bool) or ``"bool"``; None for any.

    TypeError if ``value`` is not a tensor; ValueError naming ``name``, what was expected and what
    it has (its shape, and its dtype when ``dtype`` is asked for).
    """
    import torch  # here, not at the top: see the module docstring

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    leading = len(shape) > 0 and shape[0] is Ellipsis
    sizes = list(shape[1:] if leading else shape)
    n = value.dim()
    fits = (n >= len(sizes) if leading else n == len(sizes)) and all(
        s is None or s == got for s, got in zip(sizes, value.shape[n - len(sizes) :])
    )
    kind = (
        "bool"
        if value.dtype == torch.bool
        else "floating"
        if value.is_floating_point()
        else "complex"
        if value.is_complex()
        else "integer"
    )
    if not fits or dtype not in (None, kind):
        pattern = (
            expected or "(" + ", ".join("..." if s is Ellipsis else "?" if s is None else str(s) for s in shape) + ")"
        )
        if dtype is None:
            raise ValueError(f"{name} must have shape {pattern}, got {tuple(value.shape)}")
        article = "an" if dtype == "integer" else "a"
        raise ValueError(
            f"{name} must be {article} {dtype} tensor of shape {pattern}, got {value.dtype} of shape {tuple(value.shape)}"
        )
    return value
