"""Collect an LMS download folder into nbgrader's ``submitted/<student>/<assignment>/`` layout.

Every file under the folder ends up in the returned list with a status; nothing is dropped
silently. File names are read by :mod:`dmcourse.grading.names`. When one student handed in
several copies of an assignment, the newest readable one is collected (highest LMS copy mark
such as ``-2``/`` (2)``, then the newest modification time) and the others are reported.

:func:`plan` decides, file by file; :func:`collect` then hands the chosen files to nbgrader's
``ZipCollectApp`` (:func:`dmcourse.grading.zipcollect.place`, once per assignment), which copies
them into ``submitted/`` and writes ``timestamp.txt``, and writes down what it collected
(``collected.json``). Introduced in the appendix *For instructors*.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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
#: the file nbgrader's zip_collect writes next to a collected notebook: when it was handed in (UTC)
TIMESTAMP_FILE = "timestamp.txt"
_IGNORED_PARTS = ("__MACOSX", ".ipynb_checkpoints")

#: the course's assignments and the notebook of each (defined in :mod:`names`, used from here)
known_assignments = names.known_assignments
notebook_name = names.notebook_name


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
        for member in z.infolist():
            path = Path(z.extract(member, tmp))  # ZipFile.extract drops absolute paths and '..' from names
            if path.is_file():  # keep the member's time, as unzip does: it orders copies and dates them
                stamp = time.mktime((*member.date_time, 0, 0, -1))
                os.utime(path, (stamp, stamp))
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
        elif _others(dest):
            winner.status = "exists-differs"
            winner.reason = (
                f"{Path(winner.dest).parent} holds other files ({', '.join(_others(dest))}) and nbgrader's "
                "zip_collect only fills an empty folder (--force sets them aside)"
            )
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

    ``download``: the unzipped LMS download folder or its ``.zip``. The files :func:`plan` chose
    are copied by nbgrader's ``ZipCollectApp`` (one per assignment), which also writes
    ``timestamp.txt`` (see :func:`dmcourse.grading.zipcollect.submission_time`). ``force``
    replaces a file of ``submitted/`` that differs from the download's (a new upload); the
    replaced file is kept in ``submitted/.recovered/<student>/<assignment>/replaced/`` and the
    item's reason says so. A file edited by hand after it was collected is never replaced by the
    copy it was collected from. With ``dry_run`` nothing is written and the files that would be
    copied say ``would-collect``."""
    root = Path(root).resolve()
    with opened(download) as folder:
        items = plan(root, folder, only, pattern, assume)
        chosen: dict[str, list[Item]] = {}
        for item in items:
            dest = root / (item.dest or "")  # every collected or differing file has a dest
            if item.status == "exists-differs" and force:
                item.status = "collected"
                item.reason = "replaced a different earlier copy" + (
                    "" if dry_run else f" (kept in {keep_dir(dest).relative_to(root)}/replaced/)"
                )
                if not dry_run:
                    _set_aside(dest)
            if item.status == "collected" and dry_run:
                item.status = "would-collect"
            elif item.status == "collected":
                keep = keep_dir(dest)
                for old in (keep / NOTES_FILE, keep / dest.name):  # recover's notes on the copy being replaced
                    old.unlink(missing_ok=True)
                # the time of a copy that is gone (deleted by hand, set aside) does not date this one
                (dest.parent / TIMESTAMP_FILE).unlink(missing_ok=True)
                chosen.setdefault(item.assignment or "", []).append(item)
        if chosen:  # importing nbgrader's apps takes seconds: only when there is something to place
            from dmcourse.grading import course, zipcollect
        for assignment, group in chosen.items():
            files = {item.source: folder / item.source for item in group}
            said = zipcollect.place(root, assignment, files, pattern, assume)
            due = course.due_date(root, assignment)
            for item in group:
                _check_placed(root / (item.dest or ""), item, folder / item.source, said.get(item.source))
            for item in group:
                dest = root / (item.dest or "")
                late = zipcollect.seconds_late(dest.parent, due) if due is not None else 0.0
                if late > 0:
                    item.late = True
                    note = f"handed in {late / 3600:.1f} h after the due date ({due:%Y-%m-%d %H:%M} UTC, gradebook)"
                    item.reason = f"{item.reason}; {note}" if item.reason else note
                _record(dest, item)
    return items


def _check_placed(dest: Path, item: Item, source: Path, said: dict | None) -> None:
    """Raise ValueError unless nbgrader put ``source`` at ``dest`` for the student collect chose."""
    if (
        said is None
        or said["student_id"] != item.student
        or not dest.exists()
        or dest.read_bytes() != source.read_bytes()
    ):
        raise ValueError(
            f"nbgrader's zip_collect did not put {item.source} at {item.dest} "
            f"(its file-name plugin answered {said}); no record was written for {item.assignment}"
        )


def _record(dest: Path, item: Item) -> None:
    """Write down what was collected at ``dest``: the item, sha256, when, nbgrader's time."""
    stamp = dest.parent / TIMESTAMP_FILE
    record = {
        **asdict(item),
        "sha256": _sha(dest.read_bytes()),
        "collected_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "timestamp": stamp.read_text().strip() if stamp.exists() else "",
    }
    keep = keep_dir(dest)
    keep.mkdir(parents=True, exist_ok=True)
    (keep / RECORD_FILE).write_text(json.dumps(record, indent=1))


def _others(dest: Path) -> list[str]:
    """Files in ``dest``'s folder other than ``dest`` and nbgrader's ``timestamp.txt``."""
    if not dest.parent.is_dir():
        return []
    return sorted(p.name for p in dest.parent.iterdir() if p.name not in (dest.name, TIMESTAMP_FILE))


def _set_aside(dest: Path) -> None:
    """Move what is in the folder of the ``submitted/`` file that --force replaces (the file, its
    ``timestamp.txt``, anything else) into ``.recovered/.../replaced/``, nothing deleted."""
    if dest.parent.is_dir() and any(dest.parent.iterdir()):
        folder = keep_dir(dest) / "replaced"
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(dest.parent.iterdir()):
            path.replace(folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{path.name}")
