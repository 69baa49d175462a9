"""`pip install git+<repo>` gives readers every module and data file of the package."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, build_wheel


@pytest.mark.slow
def test_wheel_carries_every_package_file(tmp_path: Path) -> None:
    wheel, tracked = build_wheel(tmp_path)  # from a copy of the tracked tree, as `pip install git+<repo>` sees it
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p for p in tracked if p.startswith("dmcourse/")}
    missing = sorted(expected - names)
    assert not missing, f"files of the package missing from the wheel (pyproject package-data?): {missing}"
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [
        ln for ln in zipfile.ZipFile(wheel).read(metadata).decode().splitlines() if ln.startswith("Requires-Dist")
    ]
    assert any("torch>=" in r for r in requires) and not any("==" in r.split(";")[0] for r in requires)
    nbgrader = [r for r in requires if "nbgrader" in r]  # the instructor tools: an extra, not the student install
    assert nbgrader and all('extra == "grading"' in r for r in nbgrader), nbgrader


def test_requirement_lower_bounds_are_tested_versions() -> None:
    """requirements.txt's lower bounds are the versions constraints.txt pins (the ones the suite runs
    with), and this environment satisfies them."""
    from importlib.metadata import version

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, pin = line.split("==")
            pins[name.strip().lower()] = pin.strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        assert ">=" in line and "==" not in line and "<" not in line, f"not a plain lower bound: {line!r}"
        name, bound = (s.strip() for s in line.split(">="))
        assert pins.get(name.lower()) == bound, f"{name}>={bound} is not the tested version {pins.get(name.lower())}"
        installed = tuple(int(p) for p in version(name).split("+")[0].split(".")[:3])
        assert installed >= tuple(int(p) for p in bound.split(".")), f"{name} {version(name)} < {bound}"
