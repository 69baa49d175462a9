"""collect places files through nbgrader's ZipCollectApp (issue 15), with the times nbgrader reads.

What collect decides itself (statuses, duplicates, hand edits) is tested in test_grading.py; here:
the placing goes through ``ZipCollectApp`` and our ``LmsFileNames`` plugin, once per assignment,
``timestamp.txt`` holds the LMS's or the file's time and nbgrader reads it back, a ``.zip`` keeps
its members' times, ``--force`` and a folder nbgrader would refuse to fill lose nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
import synth
from nbgrader.coursedir import CourseDirectory

from dmcourse.grading import collect, course, names, zipcollect

A, B = "ex00_warmup", "ex01_dense"


def _release(root: Path, assignment: str) -> bytes:
    return nbformat.writes(synth.load(root, assignment)[1]).encode()


def _answered(root: Path, assignment: str) -> bytes:
    return nbformat.writes(synth.correct(*synth.load(root, assignment))).encode()


def _at(path: Path, data: bytes, when: datetime.datetime) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def _nbgrader_time(root: Path, student: str, assignment: str) -> datetime.datetime | None:
    """The submission time as nbgrader's autograde reads it (naive UTC)."""
    cd = CourseDirectory(config=course.load_config(root))
    return cd.get_existing_timestamp(str(root / "submitted" / student / assignment))


@pytest.fixture
def apps(monkeypatch) -> list:
    """Every ZipCollectApp collect builds."""
    made: list = []

    class Counted(zipcollect.ZipCollectApp):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(zipcollect, "ZipCollectApp", Counted)
    return made


def test_collect_places_files_through_zipcollectapp_once_per_assignment(
    course_copy: Path, tmp_path: Path, apps: list
) -> None:
    dl = tmp_path / "dl"
    noon = datetime.datetime(2026, 3, 1, 12, 0, 5, tzinfo=datetime.timezone.utc)
    for s in range(3):
        _at(dl / f"stud{s}_10{s}_90{s}_{A}.ipynb", _release(course_copy, A), noon)
        _at(dl / f"stud{s}_10{s}_91{s}_{B}.ipynb", _release(course_copy, B), noon)
    _at(dl / f"Warm up_zoe_attempt_2025-01-31-23-59-58_{A}.ipynb", _release(course_copy, A), noon)
    _at(dl / "Zoë Ray_501_assignsubmission_file_" / f"{A}.ipynb", _release(course_copy, A), noon)  # Moodle folder
    items = collect.collect(course_copy, dl)
    assert sorted(i.status for i in items) == ["collected"] * 8
    assert [app.coursedir.assignment_id for app in apps] == [A, B]  # one app per assignment, not per file
    asked = {rel for app in apps for rel in app.collector_plugin_inst.answers}
    assert asked == {i.source for i in items}  # our plugin named every file nbgrader placed
    for i in items:
        dest = course_copy / (i.dest or "")
        assert dest.read_bytes() == (dl / i.source).read_bytes()
        assert collect.recorded(dest)["timestamp"] == (dest.parent / "timestamp.txt").read_text()
    assert (course_copy / "submitted" / "100" / A / "timestamp.txt").read_text() == "2026-03-01 12:00:05"  # UTC
    assert _nbgrader_time(course_copy, "100", B) == datetime.datetime(2026, 3, 1, 12, 0, 5)
    # Blackboard writes the attempt time in the name: that is the time, not the file's
    assert _nbgrader_time(course_copy, "zoe", A) == datetime.datetime(2025, 1, 31, 23, 59, 58)
    again = collect.collect(course_copy, dl)
    assert {i.status for i in again} == {"unchanged"} and len(apps) == 2  # nothing to place: no app


def test_dry_run_builds_no_app_and_writes_nothing(course_copy: Path, tmp_path: Path, apps: list) -> None:
    _at(tmp_path / "dl" / f"ann_111_{A}.ipynb", _release(course_copy, A), datetime.datetime.now())
    assert [i.status for i in collect.collect(course_copy, tmp_path / "dl", dry_run=True)] == ["would-collect"]
    assert apps == [] and not (course_copy / "submitted").exists()


def test_a_zip_keeps_its_members_times(course_copy: Path, tmp_path: Path) -> None:
    """The newer member is collected even when it is unpacked first, and dated by the zip."""
    new, old = (2026, 2, 2, 10, 30, 0), (2026, 2, 1, 9, 0, 0)
    with zipfile.ZipFile(tmp_path / "dl.zip", "w") as z:
        z.writestr(zipfile.ZipInfo(f"a/ann_111_{A}.ipynb", new), _answered(course_copy, A))
        z.writestr(zipfile.ZipInfo(f"b/ann_111_{A}.ipynb", old), _release(course_copy, A))
    items = {i.source: i for i in collect.collect(course_copy, tmp_path / "dl.zip")}
    assert (items[f"a/ann_111_{A}.ipynb"].status, items[f"b/ann_111_{A}.ipynb"].status) == ("collected", "duplicate")
    local = datetime.datetime.fromtimestamp(time.mktime((*new, 0, 0, -1)))  # zip times are local
    assert _nbgrader_time(course_copy, "111", A) == local.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def test_force_sets_aside_the_old_file_and_its_time(course_copy: Path, tmp_path: Path) -> None:
    dl = tmp_path / "dl"
    _at(dl / f"ann_111_{A}.ipynb", _release(course_copy, A), datetime.datetime(2026, 1, 1, 8, 0))
    collect.collect(course_copy, dl)
    sub = course_copy / "submitted" / "111" / A
    first_time = (sub / "timestamp.txt").read_text()
    _at(dl / f"ann_111_{A}.ipynb", _answered(course_copy, A), datetime.datetime(2026, 1, 2, 8, 0))
    assert [i.status for i in collect.collect(course_copy, dl)] == ["exists-differs"]
    assert [i.status for i in collect.collect(course_copy, dl, force=True)] == ["collected"]
    assert (sub / f"{A}.ipynb").read_bytes() == _answered(course_copy, A)
    assert (sub / "timestamp.txt").read_text() != first_time
    replaced = course_copy / "submitted" / ".recovered" / "111" / A / "replaced"
    kept = {p.name.split("-", 2)[-1]: p for p in replaced.iterdir()}
    assert kept[f"{A}.ipynb"].read_bytes() == _release(course_copy, A)
    assert kept["timestamp.txt"].read_text() == first_time
    assert json.loads((replaced.parent / collect.RECORD_FILE).read_text())["timestamp"] != first_time


def test_a_folder_nbgrader_would_not_fill_is_flagged_then_set_aside(course_copy: Path, tmp_path: Path) -> None:
    """nbgrader's zip_collect fills only an empty folder: a stray file is reported, never deleted."""
    _at(tmp_path / "dl" / f"ann_111_{A}.ipynb", _release(course_copy, A), datetime.datetime(2026, 1, 1))
    sub = course_copy / "submitted" / "111" / A
    sub.mkdir(parents=True)
    (sub / "notes.md").write_text("mine")
    (item,) = collect.collect(course_copy, tmp_path / "dl")
    assert item.status == "exists-differs" and "notes.md" in item.reason
    (item,) = collect.collect(course_copy, tmp_path / "dl", force=True)
    assert item.status == "collected" and not (sub / "notes.md").exists()
    kept = list((course_copy / "submitted" / ".recovered" / "111" / A / "replaced").glob("*notes.md"))
    assert [p.read_text() for p in kept] == ["mine"]
    with pytest.raises(ValueError, match="zip_collect stopped on .*Directory not empty"):
        zipcollect.place(course_copy, A, {f"ann_111_{A}.ipynb": tmp_path / "dl" / f"ann_111_{A}.ipynb"})


def test_a_deleted_hand_edit_is_collected_again_with_a_fresh_time(course_copy: Path, tmp_path: Path) -> None:
    """The guide: delete submitted/... to collect the download's copy again (timestamp.txt stays behind)."""
    _at(tmp_path / "dl" / f"ann_111_{A}.ipynb", _release(course_copy, A), datetime.datetime(2026, 1, 1))
    collect.collect(course_copy, tmp_path / "dl")
    sub = course_copy / "submitted" / "111" / A
    (sub / f"{A}.ipynb").unlink()
    (sub / "timestamp.txt").write_text("2020-01-01 00:00:00")
    assert [i.status for i in collect.collect(course_copy, tmp_path / "dl")] == ["collected"]
    assert _nbgrader_time(course_copy, "111", A) == datetime.datetime(2026, 1, 1).astimezone(
        datetime.timezone.utc
    ).replace(tzinfo=None)


def test_submission_time_prefers_the_lms_time() -> None:
    bb = names.parse(f"HW_bob_attempt_2025-05-06-07-08-09_{A}.ipynb", [A])
    canvas = names.parse(f"bob_LATE_12_34_{A}.ipynb", [A])
    assert (bb.time, canvas.time, canvas.late) == ("2025-05-06 07:08:09", "", True)
    assert zipcollect.submission_time(bb) == "2025-05-06 07:08:09"
    assert zipcollect.submission_time(canvas) == ""  # nbgrader's own zip_collect: no time we can trust


def test_a_time_after_the_gradebooks_due_date_marks_the_file_late(
    course_copy: Path, tmp_path: Path, monkeypatch
) -> None:
    """The time nbgrader writes is compared with the due date nbgrader keeps (its gradebook)."""
    from nbgrader import api

    monkeypatch.setattr(api, "get_alembic_version", lambda: "test")  # a new gradebook asks alembic: seconds
    cfg = course.load_config(course_copy)
    with api.Gradebook(cfg.CourseDirectory.db_url, cfg.CourseDirectory.course_id) as gb:
        gb.update_or_create_assignment(A, duedate=datetime.datetime(2026, 1, 10, 12, 0))  # naive UTC
    utc = datetime.timezone.utc
    dl = tmp_path / "dl"
    _at(dl / f"ann_111_222_{A}.ipynb", _release(course_copy, A), datetime.datetime(2026, 1, 10, 11, 0, tzinfo=utc))
    _at(dl / f"bob_333_444_{A}.ipynb", _release(course_copy, A), datetime.datetime(2026, 1, 10, 15, 0, tzinfo=utc))
    _at(dl / f"cy_LATE_555_666_{A}.ipynb", _release(course_copy, A), datetime.datetime(2026, 1, 9, tzinfo=utc))
    items = {i.student: i for i in collect.collect(course_copy, dl)}
    assert {s: i.late for s, i in items.items()} == {"111": False, "333": True, "555": True}  # 555: Canvas said so
    assert "3.0 h after the due date (2026-01-10 12:00 UTC" in items["333"].reason
    assert collect.recorded(course_copy / (items["333"].dest or ""))["late"] is True
    assert course.due_date(course_copy, B) is None  # not in the gradebook: nothing is late


def test_pattern_and_assume_reach_the_plugin(course_copy: Path, tmp_path: Path, apps: list) -> None:
    """A name only --pattern/--assume can read is placed by nbgrader too (its plugin gets them)."""
    _at(tmp_path / "dl" / "s1234567 homework.ipynb", _release(course_copy, A), datetime.datetime(2026, 1, 1))
    (item,) = collect.collect(course_copy, tmp_path / "dl", [A], pattern=r"^(?P<student>s\d{7})", assume=A)
    assert (item.status, item.student) == ("collected", "s1234567")
    assert list(apps[0].collector_plugin_inst.answers) == ["s1234567 homework.ipynb"]
    assert (course_copy / "submitted" / "s1234567" / A / f"{A}.ipynb").exists()
