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


def test_publishing_workflow_builds_with_make_book() -> None:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = wf["jobs"]["build"]["steps"]
    runs = [s.get("run") for s in steps if "run" in s]
    assert runs == ["make book"], f"the workflow must only run the README's build command, runs {runs}"
    upload = [s for s in steps if "upload-pages-artifact" in s.get("uses", "")]
    assert upload and upload[0]["with"]["path"] == "_build/html"


def test_constraints_pin_the_tested_stack() -> None:
    pins = dict(ln.split("==", 1) for ln in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in ln and not ln.startswith("#"))
    pins = {k.lower(): v for k, v in pins.items()}
    assert pins["torch"] == "2.13.0" and pins["nbgrader"] == "0.9.6"
    assert pins["jupyter-book"].startswith("1.") and pins["sqlalchemy"] < "2.1"


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
    year = subprocess.run(["date", "+%Y"], capture_output=True, text=True).stdout.strip()
    assert str(cfg["copyright"]) == year
