"""Collect an LMS download folder into nbgrader's ``submitted/<student>/<assignment>/`` layout.

Every file under the folder ends up in the returned list with a status; nothing is dropped
silently. File names are read by :mod:`dmcourse.grading.names`. When one student handed in
several copies of an assignment, the newest readable one is collected (highest LMS copy mark
such as ``-2``/`` (2)``, then the newest modification time) and the others are reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from dmcourse.grading import names, nbfile
from dmcourse.grading.recover import NOTES_FILE, keep_dir

#: statuses that put a file into submitted/ (or found it there already)
COLLECTED = ("collected", "unchanged", "would-collect")
#: statuses of files that are not submissions and need nobody (older copies, Moodle's online text)
IGNORED = ("duplicate", "online-text")
#: statuses that need a person
FLAGGED = ("unknown-assignment", "unparsable-name", "invalid-notebook", "not-a-notebook", "exists-differs")
#: what collect remembers of each collected file, in submitted/.recovered/<student>/<assignment>/
RECORD_FILE = "collected.json"
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
    late: bool = False
    name: str = ""  # the student's name or login as the LMS wrote it


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
    return sorted(
        p
        for p in download.rglob("*")
        if p.is_file()
        and not any(part in _IGNORED_PARTS or part.startswith(".") for part in p.relative_to(download).parts)
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded(dest: Path) -> dict | None:
    """What collect wrote down when it copied ``dest`` (source, sha256, late, name), or None."""
    f = keep_dir(dest) / RECORD_FILE
    return json.loads(f.read_text()) if f.exists() else None


@contextlib.contextmanager
def opened(download: Path) -> Iterator[Path]:
    """The download as a folder: the folder itself, or a ``.zip`` unpacked into a temporary one."""
    download = Path(download).expanduser().resolve()
    if download.is_dir():
        yield download
        return
    if not download.exists():
        raise FileNotFoundError(f"download folder {download} not found (give the unzipped folder or the .zip)")
    if not zipfile.is_zipfile(download):
        raise ValueError(f"{download} is neither a folder nor a .zip file")
    with tempfile.TemporaryDirectory(prefix="dmcourse-download-") as tmp, zipfile.ZipFile(download) as z:
        z.extractall(tmp)  # ZipFile.extractall drops absolute paths and '..' from member names
        yield Path(tmp)


def plan(
    root: Path, download: Path, only: list[str] | None = None, pattern: str | None = None, assume: str | None = None
) -> list[Item]:
    """What collect would do, file by file (nothing is written). ``download``: an unzipped folder
    (a ``.zip`` goes through :func:`opened` first); ``assume``: see ``names.parse``."""
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
            moodle = names.moodle_online_text(rel)
            if moodle:
                items.append(Item(rel, "online-text", moodle, reason="Moodle's online text, not a file submission"))
            else:
                items.append(Item(rel, "not-a-notebook", reason="not an .ipynb file"))
            continue
        try:
            parsed = names.parse(rel, assignments, pattern, assume)
        except names.UnparsableName as e:
            items.append(Item(rel, e.kind, reason=str(e)))
            continue
        item = Item(rel, "collected", parsed.student, parsed.assignment, late=parsed.late, name=parsed.name)
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
        record = recorded(dest) if dest.exists() else None
        if earlier:
            if any(p.read_bytes() == incoming for p in earlier):
                winner.status = "unchanged"
            elif record and record.get("sha256") == _sha(incoming):
                winner.status = "unchanged"
                winner.reason = (
                    f"{winner.dest} was edited after it was collected: your edit is kept "
                    "(delete the file to collect the download's copy again)"
                )
            else:
                winner.status = "exists-differs"
                winner.reason = f"{winner.dest} already holds a different file (--force replaces it)"
        items += [item for _, item in group]
    flagged_invalid = {(i.student, i.assignment) for i in items if i.status == "invalid-notebook"}
    for item in items:
        if item.status in COLLECTED and (item.student, item.assignment) in flagged_invalid:
            item.reason = (item.reason + "; " if item.reason else "") + "another copy is not a valid notebook"
    return sorted(items, key=lambda i: i.source)


def collect(
    root: Path,
    download: Path,
    only: list[str] | None = None,
    pattern: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    assume: str | None = None,
) -> list[Item]:
    """Copy each student's newest readable notebook to ``submitted/``; return what happened to every file.

    ``download``: the unzipped LMS download folder or its ``.zip``. ``force`` replaces a file of
    ``submitted/`` that differs from the download's (a new upload); the replaced file is kept in
    ``submitted/.recovered/<student>/<assignment>/replaced/`` and the item's reason says so. A file
    edited by hand after it was collected is never replaced by the copy it was collected from.
    With ``dry_run`` nothing is written and the files that would be copied say ``would-collect``."""
    with opened(download) as folder:
        items = plan(root, folder, only, pattern, assume)
        for item in items:
            dest = Path(root) / (item.dest or "")  # every collected or differing file has a dest
            if item.status == "exists-differs" and force:
                item.status = "collected"
                item.reason = "replaced a different earlier copy" + (
                    "" if dry_run else f" (kept in {keep_dir(dest).relative_to(Path(root).resolve())}/replaced/)"
                )
                if not dry_run:
                    _set_aside(dest)
            if item.status == "collected" and dry_run:
                item.status = "would-collect"
            elif item.status == "collected":
                dest.parent.mkdir(parents=True, exist_ok=True)
                data = (folder / item.source).read_bytes()
                keep = keep_dir(dest)
                for old in (keep / NOTES_FILE, keep / dest.name):  # recover's notes on the copy being replaced
                    old.unlink(missing_ok=True)
                dest.write_bytes(data)
                keep.mkdir(parents=True, exist_ok=True)
                record = {**asdict(item), "sha256": _sha(data), "collected_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                (keep / RECORD_FILE).write_text(json.dumps(record, indent=1))
    return items


def _set_aside(dest: Path) -> None:
    """Move the file of ``submitted/`` that --force replaces into ``.recovered/.../replaced/``."""
    if dest.exists():
        folder = keep_dir(dest) / "replaced"
        folder.mkdir(parents=True, exist_ok=True)
        dest.replace(folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{dest.name}")
