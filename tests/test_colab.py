"""Every notebook runs as Colab runs it: the package built as a wheel and installed (not editable) by
the notebook's own setup cell into a fresh virtual environment, the notebook copied ALONE into an
empty folder (no repository around it) and executed there.

The fresh environment reuses this environment's third-party packages (torch, matplotlib, ... as
Colab has them preinstalled) through a folder of links to them that leaves out ``dmcourse`` itself;
``dmcourse`` comes only from the wheel, which the setup cell installs from ``$DMCOURSE_INSTALL``
(tools/notebooks.py). Chapters must run without error and print the same record tables as the book
does (their ``dmcourse-record`` cells, compared with the same cells run against the repository);
exercises must run up to their first ``NotImplementedError`` (the student's part).

Slow: every chapter once, about as long as ``make book``'s execution (all 8 chapters and 6 exercises:
19 min 49 s on the shared, loaded 2-core build machine, 2026-11-30, ``pytest tests/test_colab.py``).
``-k`` selects notebooks (``-k 03_moe``); ``DMCOURSE_COLAB_SHARD=k/n`` runs every n-th notebook, and
``auto/n`` rotates the shard by the day, so that n daily CI runs cover every notebook.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, build_wheel, toc_files

sys.path.insert(0, str(ROOT / "tools"))
import notebooks as nbtool

KERNEL = "dmcourse-colab-test"
RECORD_TAG = "dmcourse-record"
CHAPTERS = [ROOT / f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]
EXERCISES = sorted((ROOT / "exercises").glob("*/*.ipynb"))
SHARD_ENV = "DMCOURSE_COLAB_SHARD"


def shard(paths: list[Path], spec: str | None = None) -> list[Path]:
    """The notebooks one run executes: all of them, or with ``$DMCOURSE_COLAB_SHARD=k/n`` every n-th
    from the k-th (``auto/n``: k is the day of the year mod n, so n daily runs cover every notebook)."""
    spec = os.environ.get(SHARD_ENV, "") if spec is None else spec
    if not spec:
        return paths
    try:
        k_text, n_text = spec.split("/")
        n = int(n_text)
        if n < 1:
            raise ValueError
        k = (datetime.date.today().timetuple().tm_yday % n) if k_text == "auto" else int(k_text)
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise ValueError(f"{SHARD_ENV}={spec!r}: expected k/n with 0 <= k < n, or auto/n") from None
    return paths[k::n]


WIDGET_CALLS = ("calculator(", "explorer(", "interact(", "ipywidgets")


def _overlay(dest: Path) -> Path:
    """A folder of links to this environment's site-packages, without dmcourse and without .pth files
    (the editable install's finder is one): the packages Colab preinstalls, and no dmcourse."""
    dest.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if "dmcourse" in name or name.endswith(".pth"):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(DMCOURSE_PROGRESS="0", MPLBACKEND="Agg", **extra)
    return env


@pytest.fixture(scope="session")
def colab(tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed by a notebook's setup cell; its kernelspec; its paths."""
    base = tmp_path_factory.mktemp("colab")
    wheel, _ = build_wheel(base, env=_clean_env())
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_colab_preinstalled.pth").write_text(str(_overlay(base / "preinstalled")) + "\n")
    env = _clean_env(DMCOURSE_INSTALL=str(wheel))
    empty = base / "empty"
    empty.mkdir()
    probe = [str(python), "-c", "import importlib.util; print(importlib.util.find_spec('dmcourse'))"]
    assert (
        subprocess.run(probe, cwd=empty, env=env, capture_output=True, text=True, check=True).stdout.strip() == "None"
    )
    # the setup cell of a notebook, as Colab runs it: installs the wheel ($DMCOURSE_INSTALL)
    setup = nbformat.read(CHAPTERS[0], as_version=4).cells[0].source
    done = subprocess.run(
        [str(python), "-c", setup], check=False, cwd=empty, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    where = subprocess.run(
        [str(python), "-c", "import dmcourse; print(dmcourse.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site), f"dmcourse imported from {where}, not from the wheel in {site}"
    kernels = base / "jupyter" / "kernels" / KERNEL
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "colab-like",
                "language": "python",
            }
        )
    )
    return {"python": python, "site": site, "wheel": wheel, "env": env, "jupyter_path": str(base / "jupyter")}


def _run_alone(path: Path, colab: dict, tmp_path: Path, monkeypatch) -> tuple[nbformat.NotebookNode, Exception | None]:
    """Copy ``path`` alone into an empty folder and execute it in the fresh venv's kernel."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    work = tmp_path / "alone"
    work.mkdir()
    shutil.copy2(path, work / path.name)
    nb = nbformat.read(work / path.name, as_version=4)
    probe = nbformat.v4.new_code_cell("import dmcourse; print(dmcourse.__file__)")
    nb.cells.append(probe)
    monkeypatch.setenv("JUPYTER_PATH", colab["jupyter_path"])
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=900, resources={"metadata": {"path": str(work)}})
    error = None
    try:
        client.execute(env=colab["env"])
    except CellExecutionError as err:
        error = err
    if error is None:
        where = "".join(o.get("text", "") for o in probe.outputs).strip()
        assert Path(where).is_relative_to(colab["site"]), f"{path.name} imported dmcourse from {where}"
    assert sorted(p.name for p in work.iterdir() if p.suffix == ".ipynb") == [path.name]
    return nb, error


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def record_cell_text(source: str) -> str:
    """What a record cell prints when run against this repository's package (the book's build)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<record cell>", "exec"), {"__name__": "__record__"})  # noqa: S102
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("path", shard(CHAPTERS), ids=lambda p: p.stem)
def test_chapter_runs_alone_from_the_wheel(path: Path, colab: dict, tmp_path: Path, monkeypatch) -> None:
    nb, error = _run_alone(path, colab, tmp_path, monkeypatch)
    assert error is None, f"{path.name} fails when run alone from the wheel:\n{error}"
    printed = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "next to this notebook" not in printed and "no recorded benchmark" not in printed
    for cell in nb.cells:
        if RECORD_TAG in cell.metadata.get("tags", []):
            assert _text(cell) == record_cell_text(cell.source), f"{path.name}: a record table differs from the book's"


@pytest.mark.slow
@pytest.mark.parametrize("path", shard(EXERCISES), ids=lambda p: p.stem)
def test_exercise_runs_alone_to_its_first_todo(path: Path, colab: dict, tmp_path: Path, monkeypatch) -> None:
    _, error = _run_alone(path, colab, tmp_path, monkeypatch)
    assert error is not None, f"{path.name} ran to the end: the release should stop at the student's first part"
    assert error.ename == "NotImplementedError", f"{path.name} stops at {error.ename}, not at a student part:\n{error}"


# ------------------------------------------------------------------ fast checks (no execution)


def test_the_notebooks_read_nothing_next_to_them() -> None:
    """Colab opens a notebook without its folder: no notebook reads files relative to it or the repo."""
    bad = []
    for path in CHAPTERS + EXERCISES + sorted((ROOT / "solutions").glob("*/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and any(
                s in cell.source for s in ('Path("data")', "book/data", "../", 'open("data', "read_csv(")
            ):
                bad.append(f"{path.relative_to(ROOT)}: {cell.source.splitlines()[0]}")
    assert not bad, bad


def test_record_cells_are_self_contained_and_match_the_shipped_records() -> None:
    """The record cells the Colab test compares run on their own and print every shipped record."""
    from dmcourse import records

    tagged = {
        p.stem: [c for c in nbformat.read(p, as_version=4).cells if RECORD_TAG in c.metadata.get("tags", [])]
        for p in CHAPTERS
    }
    assert all(tagged.get(stem) for stem in ("03_moe", "05_roofline", "06_economics")), {
        k: len(v) for k, v in tagged.items()
    }
    moe = record_cell_text(tagged["03_moe"][0].source)
    for rec in records.load("moe_dispatch"):
        assert f"measured {rec['date']}" in moe and rec["command"] in moe
    for stem in ("03_moe", "05_roofline", "06_economics"):
        text = "".join(record_cell_text(c.source) for c in tagged[stem])
        if not records.load("gpucheck", "cuda") and not records.shipped_records():
            assert records.NO_GPU_RECORD in text, stem


def test_live_widgets_are_hidden_in_the_static_book() -> None:
    """A widget needs a kernel: the book hides the output of every cell that shows one (remove-output),
    and a later cell draws its static figures; the browser test checks the built pages."""
    found = 0
    for path in CHAPTERS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and any(s in cell.source for s in WIDGET_CALLS):
                found += 1
                tags = set(cell.metadata.get("tags", []))
                assert tags & {"remove-output", "remove-cell"}, (
                    f"{path.name}: widget cell shown live: {cell.source[:80]}"
                )
    assert found >= 2  # the roofline explorer and the economics calculator


def test_setup_cell_honours_dmcourse_install(monkeypatch) -> None:
    """Run the setup cell with dmcourse missing and a fake pip: it installs $DMCOURSE_INSTALL when set,
    else the repository URL; with dmcourse importable it installs nothing."""
    import importlib
    import types

    url = "dmcourse @ git+https://example.org/x.git@main"
    source = nbtool.setup_source(url)
    imports = "import importlib.util, os, subprocess, sys\n"
    assert nbtool.INSTALL_ENV == "DMCOURSE_INSTALL" and source.count(imports) == 1
    body = source.replace(imports, "")
    calls: list[list[str]] = []
    fake_subprocess = types.SimpleNamespace(run=lambda cmd, check: calls.append(cmd))
    for environ, missing, expected in (
        ({"DMCOURSE_INSTALL": "/tmp/w.whl"}, True, "/tmp/w.whl"),
        ({"DMCOURSE_INSTALL": ""}, True, url),
        ({}, True, url),
        ({}, False, None),
    ):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, missing=missing: None if missing else object())
        calls.clear()
        exec(
            compile(body, "<setup>", "exec"),
            {
                "importlib": importlib,
                "os": types.SimpleNamespace(environ=environ),  # noqa: S102
                "subprocess": fake_subprocess,
                "sys": sys,
            },
        )
        if expected is None:
            assert calls == []
        else:
            assert calls == [[sys.executable, "-m", "pip", "install", "-q", expected]]


def test_shards_cover_every_notebook_once() -> None:
    paths = [Path(f"{i}.ipynb") for i in range(7)]
    assert shard(paths, "") == paths
    for n in (1, 2, 3):
        parts = [shard(paths, f"{k}/{n}") for k in range(n)]
        assert sorted(p for part in parts for p in part) == sorted(paths)
    assert shard(paths, "auto/3") in [shard(paths, f"{k}/3") for k in range(3)]
    for bad in ("3/3", "x", "1/0", "-1/2", "auto/0"):
        with pytest.raises(ValueError, match="DMCOURSE_COLAB_SHARD"):
            shard(paths, bad)
