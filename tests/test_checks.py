"""dmcourse.checks: the argument checks every public function uses, and their wording."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmcourse import checks


def test_check_int() -> None:
    assert checks.check_int("n", 3) == 3
    assert checks.check_int("n", 0, minimum=0) == 0
    assert checks.check_int("n", 16, minimum=16) == 16
    for value, minimum, words in [
        (0, 1, "n must be a positive int, got 0"),
        (-1, 0, "n must be a non-negative int, got -1"),
        (15, 16, "n must be an int >= 16, got 15"),
        (2.0, 1, "n must be a positive int, got 2.0"),
        (True, 1, "n must be a positive int, got True"),
        ("3", 1, "n must be a positive int, got '3'"),
    ]:
        with pytest.raises(ValueError) as err:
            checks.check_int("n", value, minimum)
        assert str(err.value) == words
    assert checks.check_int("k", 8, maximum=8) == 8
    with pytest.raises(ValueError) as err:
        checks.check_int("k", 9, maximum=8)
    assert str(err.value) == "k must be an int in [1, 8], got 9"
    with pytest.raises(ValueError, match=r"^k must be an int in \[0, 8\], got -1$"):
        checks.check_int("k", -1, 0, 8)


ints = st.integers(min_value=-(2**70), max_value=2**70)


@settings(max_examples=200, deadline=None)
@given(value=ints, minimum=ints, span=st.none() | st.integers(min_value=0, max_value=2**70))
def test_check_int_bounds_are_exact(value: int, minimum: int, span: int | None) -> None:
    """Accepted exactly when minimum <= value <= maximum: both ends in, one past either end out."""
    maximum = None if span is None else minimum + span
    inside = value >= minimum and (maximum is None or value <= maximum)
    if inside:
        assert checks.check_int("n", value, minimum, maximum) == value
    else:
        with pytest.raises(ValueError, match=r"^n must be .*, got -?\d+$"):
            checks.check_int("n", value, minimum, maximum)
    assert checks.check_int("n", minimum, minimum, maximum) == minimum
    with pytest.raises(ValueError):
        checks.check_int("n", minimum - 1, minimum, maximum)
    if maximum is not None:
        assert checks.check_int("n", maximum, minimum, maximum) == maximum
        with pytest.raises(ValueError):
            checks.check_int("n", maximum + 1, minimum, maximum)


@settings(max_examples=50, deadline=None)
@given(flag=st.booleans(), minimum=st.integers(min_value=-2, max_value=2), maximum=st.none() | st.just(5))
def test_bools_are_never_numbers(flag: bool, minimum: int, maximum: int | None) -> None:
    """True and False are ints to Python, never a count or a size to the course."""
    with pytest.raises(ValueError, match=f"got {flag}$"):
        checks.check_int("n", flag, minimum, maximum)
    for check in (checks.positive_float, checks.nonnegative_float, checks.probability):
        with pytest.raises(ValueError, match=f"got {flag}$"):
            check("x", flag)
    assert not checks.is_real(flag)


@pytest.mark.parametrize("bad", [0, -1.5, math.nan, math.inf, True, "1", None])
def test_positive_float_refuses(bad) -> None:
    with pytest.raises(ValueError, match=r"^x must be a positive finite number, got "):
        checks.positive_float("x", bad)


def test_floats() -> None:
    assert checks.positive_float("x", 2) == 2.0 and isinstance(checks.positive_float("x", 2), float)
    assert checks.nonnegative_float("x", 0) == 0.0
    for bad in (-1e-9, math.nan, -math.inf, math.inf, False):
        with pytest.raises(ValueError, match=r"^x must be a finite number >= 0, got "):
            checks.nonnegative_float("x", bad)


def test_probability() -> None:
    assert checks.probability("p", 0) == 0.0 and checks.probability("p", 1) == 1.0
    with pytest.raises(ValueError, match=r"p must be a number in \(0, 1\], got 0"):
        checks.probability("p", 0, allow_zero=False)
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\), got 1"):
        checks.probability("p", 1.0, allow_one=False)
    for bad in (-0.1, 1.1, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
            checks.probability("p", bad)


def test_one_of() -> None:
    assert checks.one_of("kind", "copy", ("copy", "read")) == "copy"
    with pytest.raises(ValueError, match=r"kind must be one of \('copy', 'read'\), got 'write'"):
        checks.one_of("kind", "write", ("copy", "read"))


def test_check_shape() -> None:
    x = torch.zeros(3, 4)
    assert checks.check_shape("x", x, (None, 4)) is x
    with pytest.raises(ValueError, match=r"x must have shape \(\?, 5\), got \(3, 4\)"):
        checks.check_shape("x", x, (None, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(tokens, d_model=4\), got \(3, 4, 1\)"):
        checks.check_shape("x", x.unsqueeze(-1), (None, 4), "(tokens, d_model=4)")
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        checks.check_shape("x", [[0.0] * 4] * 3, (None, 4))


def test_check_shape_leading_dims_and_dtype() -> None:
    x = torch.zeros(2, 3, 4)
    assert checks.check_shape("x", x, (..., None, 4)) is x
    assert checks.check_shape("x", x[0, 0], (..., 4)) is not None
    with pytest.raises(ValueError, match=r"^x must have shape \(\.\.\., \?, 4\), got \(4,\)$"):
        checks.check_shape("x", x[0, 0], (..., None, 4))
    assert checks.check_shape("x", x, (None, 3, 4), dtype="floating") is x
    assert checks.check_shape("i", x.long(), (..., None), dtype="integer") is not None
    assert checks.check_shape("b", x.bool(), (..., None), dtype="bool") is not None
    for value, dtype in ((x.long(), "floating"), (x, "integer"), (x.bool(), "integer"), (x, "bool")):
        with pytest.raises(ValueError) as err:
            checks.check_shape("t", value, (2, 3, 4), "(a, b, c)", dtype=dtype)
        article = "an" if dtype == "integer" else "a"
        assert (
            str(err.value)
            == f"t must be {article} {dtype} tensor of shape (a, b, c), got {value.dtype} of shape (2, 3, 4)"
        )
    with pytest.raises(
        ValueError, match=r"^t must be a floating tensor of shape \(\?, 4\), got torch.float32 of shape"
    ):
        checks.check_shape("t", x, (None, 4), dtype="floating")


@settings(max_examples=100, deadline=None)
@given(
    shape=st.lists(st.integers(min_value=0, max_value=3), max_size=4),
    pattern=st.lists(st.none() | st.integers(min_value=0, max_value=3), max_size=4),
    leading=st.booleans(),
)
def test_check_shape_matches_a_plain_comparison(shape: list[int], pattern: list[int | None], leading: bool) -> None:
    """check_shape accepts exactly the tensors whose trailing sizes match the pattern (all of them
    without a leading ``...``)."""
    x = torch.zeros(shape)
    tail = shape[len(shape) - len(pattern) :] if len(shape) >= len(pattern) else None
    fits = tail is not None and (leading or len(shape) == len(pattern))
    fits = fits and all(p is None or p == n for p, n in zip(pattern, tail or []))
    spec = (..., *pattern) if leading else tuple(pattern)
    if fits:
        assert checks.check_shape("x", x, spec) is x
    else:
        with pytest.raises(ValueError, match=r"^x must have shape "):
            checks.check_shape("x", x, spec)
