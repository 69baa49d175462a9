"""Which student and which assignment an LMS download file belongs to, from its path.

Accepted names (``A`` is an assignment name such as ``ex01_dense``; case, ``-``/``_``/space and a
trailing copy mark such as ``-1``, `` (2)`` or a leading ``Copy of`` do not matter):

========== ================================================================ ==================
LMS        file (path relative to the download folder)                      student id
========== ================================================================ ==================
Canvas     ``<login>_[LATE_]<user id>_<submission id>_A[-N].ipynb``         the user id
Moodle     ``<Full Name>_<id>_assignsubmission_file_A.ipynb``               the id
           (or the folder ``<Full Name>_<id>_assignsubmission_file_/A.ipynb``)
Blackboard ``<Assignment>_<user>_attempt_<YYYY-MM-DD-HH-MM-SS>_A.ipynb``    the user
any        ``alice_12345_A.ipynb``, ``A - alice.ipynb``, ``A_alice.ipynb``, the number when exactly one
           ``alice/A.ipynb``, ``Alice Smith - A.ipynb``                     word is a number (3+
                                                                            digits), else the words in
                                                                            lower case joined by ``_``
========== ================================================================ ==================

Anything else: pass ``pattern``, a regular expression with a named group ``student`` (and
optionally ``assignment``) searched in the relative path without ``.ipynb``.

The course's own names (its assignments, the notebook of each) are read here too. Introduced in
the appendix *For instructors*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
_SEP = re.compile(r"[\s_\-]+")
_CANVAS = re.compile(r"^(?P<name>[^/_]+)_(?P<late>LATE_)?(?P<student>\d+)_(?P<submission>\d+)_(?P<file>[^/]+)$")
_MOODLE = re.compile(r"^(?P<name>[^/]*?)_(?P<student>\d+)_assignsubmission_(?P<plugin>file|onlinetext)_/?(?P<file>.*)$")
_BLACKBOARD = re.compile(
    r"^(?P<assign>[^/]+?)_(?P<student>[^/_]+)_attempt_"
    r"(?P<time>\d{4}-\d{2}-\d{2})-(?P<h>\d{2})-(?P<m>\d{2})-(?P<s>\d{2})_?(?P<file>[^/]*)$"
)
_COPY_PREFIX = re.compile(r"^copy[\s_]+of[\s_]+", re.I)
_COPY_SUFFIX = re.compile(r"(?:\s*\(\d+\)|-\d+)$")


@dataclass(frozen=True)
class Parsed:
    """A file name read as (student, assignment); ``version`` is the LMS copy mark (``-2`` -> 2).

    ``late``: the LMS marked the file late (Canvas ``LATE_``); ``name``: the student's name or
    login as the LMS wrote it (Canvas login, Moodle full name, else empty); ``time``: when the
    LMS says it was handed in, ``YYYY-MM-DD HH:MM:SS`` as written in the name (Blackboard's
    attempt time, no time zone), else empty."""

    student: str
    assignment: str
    version: int
    rule: str
    late: bool = False
    name: str = ""
    time: str = ""


class UnparsableName(ValueError):
    """The file name does not say which student or assignment it is (message says why).

    ``kind`` is ``"unknown-assignment"`` when no known assignment is named, else ``"unparsable-name"``."""

    def __init__(self, message: str, kind: str = "unparsable-name") -> None:
        super().__init__(message)
        self.kind = kind


def _norm(text: str) -> str:
    return _SEP.sub("_", text.strip().lower()).strip("_")


def _version(stem: str) -> tuple[str, int]:
    m = _COPY_SUFFIX.search(stem)
    if not m:
        return stem, 0
    return stem[: m.start()], int(re.sub(r"\D", "", m.group()))


def find_assignment(text: str, assignments: list[str]) -> tuple[str, int, int] | None:
    """The one assignment named in ``text`` as (name, start, end) in ``_norm(text)``.

    Raises UnparsableName when two different assignments are named."""
    norm = _norm(text)
    found: list[tuple[str, int, int]] = []
    for a in sorted(assignments, key=len, reverse=True):
        for m in re.finditer(rf"(?<![a-z0-9]){re.escape(_norm(a))}(?![a-z0-9])", norm):
            if not any(s <= m.start() < e for _, s, e in found):
                found.append((a, m.start(), m.end()))
    names = {a for a, _, _ in found}
    if len(names) > 1:
        raise UnparsableName(f"names more than one assignment ({', '.join(sorted(names))})")
    return found[0] if found else None


def _student_from_words(words: str) -> str:
    tokens = [t for t in _SEP.split(words) if t]
    numbers = [t for t in tokens if t.isdigit() and len(t) >= 3]
    if len(numbers) == 1:
        return numbers[0]
    if len(numbers) > 1:
        raise UnparsableName(f"several numbers could be the student id ({', '.join(numbers)})")
    if not tokens:
        raise UnparsableName("no student id in the name")
    return "_".join(tokens)


def parse(relpath: str, assignments: list[str], pattern: str | None = None, assume: str | None = None) -> Parsed:
    """Read ``relpath`` (``/``-separated, relative to the download folder) as a submission.

    ``assume``: the assignment of a file whose name names none (a download of one assignment
    where a student renamed the file). Raises UnparsableName with the reason when the student or
    the assignment cannot be told."""
    stem = relpath[:-6] if relpath.lower().endswith(".ipynb") else relpath
    if pattern is not None:
        m = re.search(pattern, stem)
        if not m or not m.groupdict().get("student"):
            raise UnparsableName(f"does not match --pattern {pattern!r}")
        student = m["student"]
        named = m.groupdict().get("assignment")
        hit = find_assignment(named if named else stem, assignments) or _assumed(assume)
        if hit is None:
            raise UnparsableName(
                "unknown assignment: the name contains none of " + ", ".join(assignments), "unknown-assignment"
            )
        return _checked(Parsed(student, hit[0], _version(stem)[1], "pattern"))

    for rule, regex in (("canvas", _CANVAS), ("moodle", _MOODLE), ("blackboard", _BLACKBOARD)):
        m = regex.match(stem)
        if m:
            file, version = _version(_COPY_PREFIX.sub("", m["file"]))
            hit = find_assignment(file or stem, assignments) or _assumed(assume)
            if hit is None:
                raise UnparsableName(
                    f"unknown assignment in {m['file'] or stem!r} ({rule} name); known: " + ", ".join(assignments),
                    "unknown-assignment",
                )
            groups = m.groupdict()
            when = f"{m['time']} {m['h']}:{m['m']}:{m['s']}" if groups.get("time") else ""
            late, name = bool(groups.get("late")), groups.get("name") or ""
            return _checked(Parsed(m["student"], hit[0], version, rule, late=late, name=name, time=when))

    base, version = _version(stem)
    hit = find_assignment(base, assignments) or _assumed(assume, len(_norm(base)))
    if hit is None:
        raise UnparsableName(
            "unknown assignment: the name contains none of " + ", ".join(assignments), "unknown-assignment"
        )
    norm = _norm(base)
    rest = _COPY_PREFIX.sub("", norm[: hit[1]].replace("/", " ")) + " " + norm[hit[2] :].replace("/", " ")
    rest = re.sub(r"(?<![a-z0-9])copy_of(?![a-z0-9])", " ", rest)
    return _checked(Parsed(_student_from_words(rest), hit[0], version, "generic"))


def known_assignments(root: Path) -> list[str]:
    """Assignments of the course at ``root``: the folders of ``solutions/``."""
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


def lms_prefix(relpath: str) -> tuple[str, str] | None:
    """(LMS, the prefix the LMS put before the student's file name) of a Canvas or Moodle download
    file, e.g. ``("canvas", "smithalice_LATE_123_456_")``, ``("moodle", "Alice Smith_123_")``; else None."""
    stem = relpath.rsplit("/", 1)[0] if "/" in relpath else relpath
    m = _MOODLE.match(stem) or _MOODLE.match(relpath)
    if m:
        return "moodle", f"{m['name']}_{m['student']}_"
    m = _CANVAS.match(relpath.rsplit("/", 1)[-1])
    if m:
        return "canvas", f"{m['name']}_{m['late'] or ''}{m['student']}_{m['submission']}_"
    return None


def moodle_online_text(relpath: str) -> str | None:
    """The participant id of a Moodle online-text file (``<Name>_<id>_assignsubmission_onlinetext_...``), else None."""
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    m = _MOODLE.match(stem)
    return m["student"] if m and m["plugin"] == "onlinetext" else None


def _assumed(assume: str | None, end: int = 0) -> tuple[str, int, int] | None:
    """``assume`` as a hit that covers no characters of the name (so all of it may name the student)."""
    return (assume, end, end) if assume else None


def _checked(p: Parsed) -> Parsed:
    if not STUDENT_ID.match(p.student):
        raise UnparsableName(f"student id {p.student!r} is not a plain id (letters, digits, _.@+-)")
    return p
