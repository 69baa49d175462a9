"""dmcourse.plot: the style and the stamp on measured figures."""

from __future__ import annotations

import datetime as dt

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from dmcourse import plot  # noqa: E402


@pytest.mark.parametrize(
    "loc,xy,ha,va", [("lower right", (0.99, 0.01), "right", "bottom"), ("upper left", (0.01, 0.99), "left", "top")]
)
def test_stamp_names_device_and_date_in_the_corner_asked_for(loc, xy, ha, va) -> None:
    fig, ax = plt.subplots()
    plot.stamp(ax, "Some GPU", dt.date(2026, 1, 2), loc=loc)
    (text,) = ax.texts
    assert text.get_text() == "measured on Some GPU, 2026-01-02"
    assert text.get_position() == xy and (text.get_ha(), text.get_va()) == (ha, va)
    assert text.get_transform() == ax.transAxes
    plt.close(fig)


def test_stamp_rejects_an_unknown_corner() -> None:
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="loc must be one of"):
        plot.stamp(ax, "cpu", loc="middle")
    plt.close(fig)


def test_use_style_sets_the_course_rcparams() -> None:
    plot.use_style()
    assert matplotlib.rcParams["axes.grid"] is True and matplotlib.rcParams["legend.frameon"] is False
