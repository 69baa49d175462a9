"""Collect an LMS download folder into nbgrader's ``submitted/<student>/<assignment>/`` layout.

Every file under the folder ends up in the returned list with a status; nothing is dropped
silently. File names are read by :mod:`dmcourse.grading.names`. When one student handed in
several copies of an assignment, the newest readable one is collected (highest LMS copy mark
such as ``-2``/`` (2)``, then the newest modification time) and the others are reported.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from dmcourse.grading import names, nbfile
from dmcourse.grading.recover import keep_dir

#: statuses that put a file into submitted/ (or found it there already)
COLLECTED = ("collected", "unchanged")
#: statuses that need a person
FLAGGED = ("unknown-assignment", "unparsable-name", "invalid-notebook", "not-a-notebook", "exists-differs")
_IGNORED_PARTS = ("__MACOSX", ".ipynb_checkpoints")


@dataclass
class Item:
    """One file of the download folder and what collect did with it."""

    source: str
    status: str
    student: str | None = None
    assignment: str | None = None
    dest: str | None = None
    reason: str = ""


def known_assignments(root: Path) -> list[str]:
    """Assignments of the course: the folders of ``solutions/``."""
    src = Path(root) / "solutions"
    if not src.is_dir():
        raise FileNotFoundError(f"{src} not found: {root} is not a course directory")
    return sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))


def notebook_name(root: Path, assignment: str) -> str:
    """File name nbgrader expects for the (single) notebook of ``assignment``."""
    found = sorted(p.name for p in (Path(root) / "solutions" / assignment).glob("*.ipynb"))
    if len(found) != 1:
        raise ValueError(f"solutions/{assignment} has {len(found)} notebooks; collect supports exactly one")
    return found[0]


def _files(download: Path) -> list[Path]:
    return sorted(p for p in download.rglob("*") if p.is_file()
                  and not any(part in _IGNORED_PARTS or part.startswith(".") for part in p.relative_to(download).parts))


def plan(root: Path, download: Path, only: list[str] | None = None, pattern: str | None = None,
         assume: str | None = None) -> list[Item]:
    """What collect would do, file by file (nothing is written). ``assume``: see ``names.parse``."""
    root, download = Path(root).resolve(), Path(download).resolve()
    if not download.is_dir():
        raise FileNotFoundError(f"download folder {download} not found")
    assignments = known_assignments(root)
    for a in [*(only or []), *([assume] if assume else [])]:
        if a not in assignments:
            raise ValueError(f"unknown assignment {a!r}; the course has {', '.join(assignments)}")
    items: list[Item] = []
    candidates: dict[tuple[str, str], list[tuple[tuple, Item]]] = {}
    for path in _files(download):
        rel = path.relative_to(download).as_posix()
        if not rel.lower().endswith(".ipynb"):
            items.append(Item(rel, "not-a-notebook", reason="not an .ipynb file"))
            continue
        try:
            parsed = names.parse(rel, assignments, pattern, assume)
        except names.UnparsableName as e:
            items.append(Item(rel, e.kind, reason=str(e)))
            continue
        item = Item(rel, "collected", parsed.student, parsed.assignment)
        if only and parsed.assignment not in only:
            item.status, item.reason = "other-assignment", "not among the assignments collected this time"
            items.append(item)
            continue
        try:
            nbfile.read(path)
        except nbfile.InvalidNotebook as e:
            item.status, item.reason = "invalid-notebook", str(e)
            items.append(item)
            continue
        key = (parsed.version, path.stat().st_mtime, rel)
        candidates.setdefault((parsed.student, parsed.assignment), []).append((key, item))

    for (student, assignment), group in candidates.items():
        group.sort(key=lambda t: t[0])
        winner = group[-1][1]
        winner.dest = f"submitted/{student}/{assignment}/{notebook_name(root, assignment)}"
        for _, loser in group[:-1]:
            same = (download / loser.source).read_bytes() == (download / winner.source).read_bytes()
            loser.status = "duplicate"
            loser.reason = f"{'identical' if same else 'older'} copy; collected {winner.source}"
        if len(group) > 1:
            winner.reason = f"newest of {len(group)} copies"
        dest = root / winner.dest
        incoming = (download / winner.source).read_bytes()
        earlier = [p for p in (dest, keep_dir(dest) / dest.name) if p.exists()]
        if earlier:
            if any(p.read_bytes() == incoming for p in earlier):
                winner.status = "unchanged"
            else:
                winner.status = "exists-differs"
                winner.reason = f"{winner.dest} already holds a different file (--force replaces it)"
        items += [item for _, item in group]
    flagged_invalid = {(i.student, i.assignment) for i in items if i.status == "invalid-notebook"}
    for item in items:
        if item.status in COLLECTED and (item.student, item.assignment) in flagged_invalid:
            item.reason = (item.reason + "; " if item.reason else "") + "another copy is not a valid notebook"
    return sorted(items, key=lambda i: i.source)


def collect(root: Path, download: Path, only: list[str] | None = None, pattern: str | None = None,
            force: bool = False, dry_run: bool = False, assume: str | None = None) -> list[Item]:
    """Copy each student's newest readable notebook to ``submitted/``; return what happened to every file."""
    items = plan(root, download, only, pattern, assume)
    for item in items:
        if item.status == "exists-differs" and force:
            item.status, item.reason = "collected", "replaced a different earlier copy"
        if item.status == "collected" and not dry_run:
            dest = Path(root) / item.dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(keep_dir(dest), ignore_errors=True)  # recover's notes on the copy being replaced
            shutil.copyfile(Path(download) / item.source, dest)
    return items
