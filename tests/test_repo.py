"""The README's commands are the ones the Makefile, CI and the publishing workflow run."""

from __future__ import annotations

import re
import subprocess

import yaml
from conftest import ROOT


def test_readme_commands_exist_in_makefile() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    assert {"book", "test", "env", "release", "browser-deps"} <= targets


def test_ci_runs_the_readme_test_command() -> None:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in lines
    assert "export DMCOURSE_REQUIRE_KERNEL=1" in lines, "CI must fail when the C decode kernel does not build"


def test_publishing_workflow_builds_with_make_book() -> None:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = wf["jobs"]["build"]["steps"]
    runs = [s.get("run") for s in steps if "run" in s]
    assert runs == ["make book"], f"the workflow must only run the README's build command, runs {runs}"
    upload = [s for s in steps if "upload-pages-artifact" in s.get("uses", "")]
    assert upload and upload[0]["with"]["path"] == "_build/html"


def test_constraints_pin_the_tested_stack() -> None:
    pins = dict(
        ln.split("==", 1)
        for ln in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in ln and not ln.startswith("#")
    )
    pins = {k.lower(): v for k, v in pins.items()}
    # Every direct requirement is pinned exactly, and the pin satisfies the requirement's bounds
    # (checked with packaging's specifiers, so a version bump in either file cannot slip past).
    from packaging.requirements import Requirement

    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line or line.startswith("-"):
                continue
            req = Requirement(line)
            key = req.name.lower()
            assert key in pins, f"constraints.txt does not pin {req.name} ({name}); run `make constraints`"
            assert req.specifier.contains(pins[key], prereleases=True), (
                f"constraints.txt pins {req.name}=={pins[key]}, outside {name}'s {req.specifier}"
            )
    # The installed environment is the pinned one (what `make env` promises).
    from importlib.metadata import version

    for key in ("torch", "nbgrader", "jupyter-book"):
        assert version(key).split("+")[0] == pins[key], (
            f"{key} {version(key)} is installed, constraints pin {pins[key]}"
        )


def test_requirements_do_not_pin_what_colab_ships() -> None:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        assert "==" not in line and "<" not in line, f"requirements.txt must use lower bounds only: {line}"


def test_config_has_what_the_book_needs() -> None:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "cache" and cfg["execute"]["allow_errors"] is False
    assert cfg["execute"]["timeout"] > 0 and cfg["only_build_toc_files"] is True
    assert cfg["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert cfg["html"]["use_repository_button"] is True and cfg["repository"]["branch"] == "main"
    # "2026" or "2026-2027": a year range that has started (a new year does not break it).
    years = [int(y) for y in re.fullmatch(r"(\d{4})(?:-(\d{4}))?", str(cfg["copyright"])).groups() if y]
    assert years == sorted(years) and years[0] <= int(
        subprocess.run(["date", "+%Y"], capture_output=True, text=True).stdout
    ), f"copyright {cfg['copyright']!r} is not a year range"
