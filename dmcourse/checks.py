"""Argument checks for the public functions of the package, with one wording everywhere.

Chapter 1 ("Your device and how we measure") is the first to meet them: every function a
chapter calls checks what it is given at its boundary and raises a ``ValueError`` (a bad value) or
a ``TypeError`` (not a tensor) whose message names the argument, what was expected and what came::

    check_int("repeats", 0)             # ValueError: repeats must be a positive int, got 0
    check_int("warmup", -1, minimum=0)  # ValueError: warmup must be a non-negative int, got -1
    positive_float("target_s", nan)     # ValueError: target_s must be a positive finite number, got nan

Booleans are refused where a number is expected (``True`` is an ``int`` to Python, never a count
here). Internal helpers trust their callers and do not check again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an ``int`` (not a bool) ``>= minimum``, else ValueError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def _real(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def positive_float(name: str, value: object) -> float:
    """``float(value)`` if it is a finite int or float ``> 0``, else ValueError naming ``name``."""
    if not _real(value) or value <= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def nonnegative_float(name: str, value: object) -> float:
    """``float(value)`` if it is a finite int or float ``>= 0``, else ValueError naming ``name``."""
    if not _real(value) or value < 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def probability(name: str, value: object, *, allow_zero: bool = True, allow_one: bool = True) -> float:
    """``float(value)`` if it lies in ``[0, 1]`` (ends excluded when ``allow_zero``/``allow_one`` are
    False), else ValueError naming ``name`` and the interval."""
    low_ok = _real(value) and (value >= 0 if allow_zero else value > 0)  # type: ignore[operator]
    high_ok = _real(value) and (value <= 1 if allow_one else value < 1)  # type: ignore[operator]
    if not (low_ok and high_ok):
        interval = f"{'[' if allow_zero else '('}0, 1{']' if allow_one else ')'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def one_of(name: str, value: object, allowed: Sequence[object]) -> object:
    """``value`` if it is one of ``allowed``, else ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_shape(name: str, value: object, shape: Sequence[int | None], expected: str | None = None) -> torch.Tensor:
    """``value`` if it is a tensor of ``len(shape)`` dimensions whose sizes match ``shape`` (``None``:
    any size). TypeError if it is not a tensor; ValueError naming ``name``, the expected shape
    (``expected``, e.g. ``"(tokens, d_model=64)"``; default the pattern, ``?`` for any size) and
    the shape it has."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, value.shape)):
        pattern = expected or "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {pattern}, got {tuple(value.shape)}")
    return value
