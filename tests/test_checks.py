"""dmcourse.checks: the argument checks every public function uses, and their wording."""

from __future__ import annotations

import math

import pytest
import torch

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
