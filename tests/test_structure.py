"""The shape of the package: which module may import which, and how big a teaching module may grow.

The import graph is read from the source with ``ast`` (top-level imports, imports inside functions
and under ``TYPE_CHECKING`` alike), so a lazy import counts as an arrow too. Rules:

* no import cycle;
* no submodule imports the package root (``import dmcourse``, ``from dmcourse import <a name
  of __init__>``): the root re-exports the course's main names and imports half the package, so
  an arrow to it drags all of that under the module (a roofline record once did, for a version);
* every arrow points down :data:`LAYERS` (a module imports only modules of lower layers);
* no teaching module is over :data:`MAX_LINES` lines (``dmcourse/grading/``, the instructor extra,
  is not a teaching module);
* every teaching module's docstring names the chapter that introduces it.

Exceptions are listed in the ``ALLOWED_*`` tables below, each with the issue that removes it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = "dmcourse"
MAX_LINES = 450

#: The layers of the package, lowest first. A module may import only modules of lower layers
#: (never one of its own layer, never a higher one); a subpackage counts as one module. A new
#: module must be placed here (the test says so).
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0 foundations: no dmcourse import at all
    ("_version", "checks"),
    # 1 the machine, datasheets, configurations, plots, the opt-in CPU kernel
    ("device", "timing", "hardware", "configs", "plot", "stream"),
    # 2 counting, building blocks, measuring, launching processes, the generic trainer
    ("accounting", "ffn", "routing", "measure", "comm", "launch", "train"),
    # 3 the matmul seam, balancing, the roofline model, measurement records, does-it-fit
    ("matmul", "balance", "roofline", "records", "fit"),
    # 4 the MoE layer and the cost models
    ("moe", "capacity", "economics", "serving"),
    # 5 what is built on them: models, expert parallelism, MoE training glue, calculator, rules, plots
    ("lm", "parallel", "toy", "moe_train", "calculator", "dense_equivalent", "roofline_plot"),
    # 6 experiments, the GPU check, interactive views
    ("upcycle", "ep_tasks", "gpucheck", "widgets"),
    # 7 the instructor extra
    ("grading",),
    # 8 the package root re-exports the course's main names
    ("",),
)

#: Arrows to the package root allowed for now: importer -> issue.
ALLOWED_ROOT_IMPORTS: dict[str, str] = {
    # the grading guard locates the package directory with dmcourse.__file__; issue 15 (engineer
    # "grading") moves the instructor tools out of the student package
    "dmcourse.grading.guard": "issue 15",
}

#: Upward or same-layer arrows allowed for now: (importer, imported) -> issue.
ALLOWED_ARROWS: dict[tuple[str, str], str] = {}

#: Teaching modules allowed over MAX_LINES for now: module -> issue (and who shrinks it).
ALLOWED_LONG: dict[str, str] = {}

#: Teaching modules whose docstring does not name its chapter yet: module -> issue. (Their owners
#: in issue 15 add the line; the stale-entry test then asks to remove them from here.)
ALLOWED_NO_CHAPTER: dict[str, str] = {}


# ----------------------------------------------------------------------------------------------
# reading the graph


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name a relative ``from ... import`` in ``module`` refers to."""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``module`` imports, anywhere in its source. ``from pkg import name``
    counts as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            source = (
                _absolute(module, path.name == "__init__.py", node.level, node.module)
                if node.level
                else node.module or ""
            )
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in modules else source)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {m: imports_of(m, p, names) for m, p in files.items()}


def layer_of(module: str) -> int:
    """The layer index of ``module`` (its top-level name under the package)."""
    short = module.removeprefix(PACKAGE).removeprefix(".").split(".")[0]
    for i, layer in enumerate(LAYERS):
        if short in layer:
            return i
    raise KeyError(short)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


# ----------------------------------------------------------------------------------------------
# the rules


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The graph reader finds absolute, aliased, relative and function-level imports."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from dmcourse import b as bee\n    import dmcourse.c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import d\nfrom .. import a\nfrom ..b import thing\n")
    modules = {"dmcourse", "dmcourse.a", "dmcourse.b", "dmcourse.c", "dmcourse.sub", "dmcourse.sub.d"}
    assert imports_of("dmcourse.a", pkg / "a.py", modules) == {"dmcourse.b", "dmcourse.c"}
    assert imports_of("dmcourse.sub", pkg / "sub" / "__init__.py", modules) == {
        "dmcourse.sub.d",
        "dmcourse.a",
        "dmcourse.b",
    }
    (pkg / "e.py").write_text("from dmcourse import MoE\nimport dmcourse\n")
    assert imports_of("dmcourse.e", pkg / "e.py", modules) == {"dmcourse"}


def test_cycle_finder() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_no_submodule_imports_the_package_root() -> None:
    offenders = sorted(
        m for m, deps in import_graph().items() if m != PACKAGE and PACKAGE in deps and m not in ALLOWED_ROOT_IMPORTS
    )
    assert not offenders, (
        f"{offenders} import the package root `dmcourse`; import the submodule that "
        "defines the name instead (e.g. dmcourse._version for the version)"
    )


def test_every_module_has_a_layer() -> None:
    missing = sorted({m for m in module_files() if not _has_layer(m)})
    assert not missing, f"place {missing} in LAYERS of tests/test_structure.py (lowest layer first)"


def _has_layer(module: str) -> bool:
    try:
        layer_of(module)
    except KeyError:
        return False
    return True


def test_arrows_point_down_the_layers() -> None:
    graph = import_graph()
    upward = []
    for m, deps in graph.items():
        if not _has_layer(m):
            continue  # reported by test_every_module_has_a_layer
        for d in deps:
            same_unit = layer_of(m) == layer_of(d) and m.split(".")[:2] == d.split(".")[:2]
            if d == PACKAGE or same_unit or not _has_layer(d) or (m, d) in ALLOWED_ARROWS:
                continue  # the root rule, a subpackage's inner imports, unplaced modules: other tests
            if layer_of(d) >= layer_of(m):
                upward.append(f"{m} (layer {layer_of(m)}) -> {d} (layer {layer_of(d)})")
    assert not upward, "imports that do not point down LAYERS:\n" + "\n".join(sorted(upward))


def test_allow_lists_are_still_needed() -> None:
    """An exception that no longer applies must leave its table, so the tables only shrink."""
    graph = import_graph()
    files = module_files()
    stale = [m for m in ALLOWED_ROOT_IMPORTS if PACKAGE not in graph.get(m, set())]
    stale += [f"{m} -> {d}" for m, d in ALLOWED_ARROWS if d not in graph.get(m, set())]
    stale += [m for m in ALLOWED_LONG if m not in files or _lines(files[m]) <= MAX_LINES]
    stale += [m for m in ALLOWED_NO_CHAPTER if m not in files or _names_a_chapter(files[m])]
    assert not stale, f"remove these from the allow-lists of tests/test_structure.py: {stale}"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


@pytest.mark.parametrize("module", sorted(m for m in module_files() if not m.startswith(f"{PACKAGE}.grading")))
def test_teaching_modules_stay_small(module: str) -> None:
    lines = _lines(module_files()[module])
    if module in ALLOWED_LONG:
        pytest.skip(f"{module}: {lines} lines, allowed for now ({ALLOWED_LONG[module]})")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (> {MAX_LINES}): split it by idea, one idea per module"


def _names_a_chapter(path: Path) -> bool:
    return bool(re.search(r"\b[Cc]hapter \d", ast.get_docstring(ast.parse(path.read_text())) or ""))


@pytest.mark.parametrize("module", sorted(m for m in module_files() if not m.startswith(f"{PACKAGE}.grading")))
def test_module_docstring_names_its_chapter(module: str) -> None:
    """A reader who opens a module learns which chapter teaches it ("Chapter 5 (...) introduces it")."""
    if module in ALLOWED_NO_CHAPTER:
        pytest.skip(f"{module}: no chapter named yet ({ALLOWED_NO_CHAPTER[module]})")
    assert _names_a_chapter(module_files()[module]), f"{module}'s docstring names no chapter ('Chapter N ...')"


def test_layer_names_are_modules() -> None:
    """LAYERS names only modules that exist (a stale entry would hide a misplaced new one)."""
    top = {m.removeprefix(PACKAGE).removeprefix(".").split(".")[0] for m in module_files()}
    ghosts = sorted({name for layer in LAYERS for name in layer} - top)
    assert not ghosts, f"LAYERS names modules that do not exist: {ghosts}"


def test_one_source_for_the_version() -> None:
    """pyproject.toml reads the version from dmcourse/_version.py; nothing else writes it down."""
    import tomllib

    import dmcourse
    from dmcourse import _version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dmcourse._version.__version__"}
    assert dmcourse.__version__ is _version.__version__
    writers = [
        m
        for m, p in module_files().items()
        if m != "dmcourse._version"
        and any(
            isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets)
            for node in ast.walk(ast.parse(p.read_text()))
        )
    ]
    assert not writers, f"{writers} assign __version__: import it from dmcourse._version"


def test_importing_the_package_or_the_instructor_cli_does_not_import_torch() -> None:
    """The root re-exports the course's main names lazily (PEP 562): `import dmcourse` and the
    instructor CLI start in a fraction of a second instead of paying torch's import."""
    import subprocess
    import sys

    code = (
        "import sys, dmcourse, dmcourse.grading.cli; assert 'torch' not in sys.modules, 'torch was imported'; "
        "dmcourse.MoE; assert 'torch' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# one place for the argument checks (issue 15)

#: Modules that may test for ``bool`` by hand: module -> why it is not a number check.
ALLOWED_BOOL_TESTS: dict[str, str] = {
    "dmcourse.stream": "enable(on) takes exactly True, False or None: it asks for a bool, it does not refuse one",
}

_NUMBER_TYPES = {"bool", "int", "float"}


def _isinstance_types(node: ast.AST) -> tuple[str, set[str]] | None:
    """``(dump of x, type names)`` for ``isinstance(x, T)`` / ``isinstance(x, (T1, T2))``, else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"):
        return None
    if len(node.args) != 2:
        return None
    types = node.args[1]
    elts = types.elts if isinstance(types, ast.Tuple) else [types]
    return ast.dump(node.args[0]), {t.id for t in elts if isinstance(t, ast.Name)}


def hand_rolled_checks(source: str) -> list[int]:
    """Lines of ``source`` that check a number by hand instead of calling :mod:`dmcourse.checks`:
    an ``isinstance(x, bool)``, or an ``isinstance(x, int/float)`` in the same boolean expression
    as a comparison of ``x`` (``not isinstance(n, int) or n < 1``)."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        found = _isinstance_types(node)
        if found and "bool" in found[1]:
            lines.add(node.lineno)
        if isinstance(node, ast.BoolOp):
            typed = {x for x, types in filter(None, map(_isinstance_types, ast.walk(node))) if types & _NUMBER_TYPES}
            compared = {
                ast.dump(side)
                for cmp in ast.walk(node)
                if isinstance(cmp, ast.Compare)
                for side in (cmp.left, *cmp.comparators)
            }
            if typed & compared:
                lines.add(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("if not isinstance(n, int) or isinstance(n, bool) or n < 1:\n    raise ValueError", [1]),
        ("if not isinstance(n, int) or n < 1:\n    raise ValueError", [1]),
        ("ok = isinstance(x, (int, float)) and not 0 < x <= 1", [1]),
        ("a = 1\nb = isinstance(flag, bool)", [2]),
        ("check_int('n', n)\nx = [n] * 2 if isinstance(n, int) else list(n)", []),
        ("if isinstance(x, torch.Tensor) and x.dim() < 2:\n    pass", []),
    ],
)
def test_the_scan_finds_hand_rolled_checks(source: str, flagged: list[int]) -> None:
    assert hand_rolled_checks(source) == flagged


def test_numbers_are_checked_in_one_place() -> None:
    """Every module checks its int and float arguments through dmcourse.checks (check_int,
    positive_float, ...), which alone says that a bool is not a number; grading/ (the instructor
    extra) is not a teaching module."""
    offenders = {
        module: lines
        for module, path in module_files().items()
        if module not in ("dmcourse.checks", *ALLOWED_BOOL_TESTS) and not module.startswith("dmcourse.grading")
        for lines in [hand_rolled_checks(path.read_text())]
        if lines
    }
    assert not offenders, f"hand-rolled number checks (module: lines), call dmcourse.checks instead: {offenders}"
    for module in ALLOWED_BOOL_TESTS:
        assert module in module_files(), f"{module} is no module: remove it from ALLOWED_BOOL_TESTS"


def test_counting_modules_do_not_import_torch() -> None:
    """dmcourse.checks imports torch only inside check_shape, so the modules that count (chapters 2,
    5, 6) load without it."""
    import subprocess
    import sys

    counting = ("checks", "configs", "accounting", "hardware", "fit", "roofline", "economics", "dense_equivalent")
    code = f"import sys; import {', '.join('dmcourse.' + m for m in counting)}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False", "torch was imported by a counting module"
