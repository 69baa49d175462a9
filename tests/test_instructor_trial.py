"""Issue 17's instructor trial, replayed: a Canvas download of ex02_moe and a Moodle download (a
.zip) of ex03_balance go through the commands of book/appendix/instructors.md as written
(``python -m dmcourse.grading ...``, here ``cli.main`` with the same arguments), then the hand fix
and the re-runs, a manual grade, the error cases, ``export`` and ``lms-export``.

One module-scoped fixture plays the trial and records every command's exit code and output and
every file it wrote; the tests check that record. Every expected score is computed from the
release's points (``Info`` of tests/test_grading.py), never read from the grader.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime
import html
import io
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import synth
from conftest import ROOT
from mutation import mutants_of
from synth import Info

from dmcourse.grading import cli, course, lms

CANVAS, MOODLE = "ex02_moe", "ex03_balance"
TIMEOUT = 20  # seconds per cell: the cells take well under a second, so one infinite loop costs 20 s
HAND_FIX = "# os._exit(1)  commented out by the instructor"
COLUMN = "MoE layer (4321)"  # Canvas's header of the assignment column (the guide's --column)
OUT_OF = 100.0  # the guide's --out-of for Moodle
FAILED_NOTE = r"kernel died.*manual grades only"  # a failed row's notes: why, and what its score counts


# ---------------------------------------------------------------- how each LMS reads our files


def canvas_reupload_target(member: str) -> tuple[str, str] | None:
    """(user id, attachment id) that Canvas reads from the name of a file in a *Re-Upload
    Submissions* zip, or None where Canvas ignores the file. Canvas's rule
    (instructure/canvas-lms, app/models/assignment.rb, ``infer_comment_context_from_filename``):
    the base name split on ``_``, its first two all-digit parts; names starting ``._`` are ignored."""
    base = member.rsplit("/", 1)[-1]
    ids = [part for part in base.split("_") if part.isdigit()][:2]
    return None if len(ids) < 2 or base.startswith("._") else (ids[0], ids[1])


def moodle_feedback_target(member: str) -> tuple[str, str, str] | None:
    """(participant id, plugin, file name) that Moodle reads from a file in an *Upload multiple
    feedback files in a zip*, or None where Moodle skips it. Moodle's rule (moodle/moodle,
    mod/assign/feedback/file/importziplib.php, ``is_valid_filename_for_import``, Moodle >= 4.1):
    hidden names (``.``/``~``) skipped; the first path part that splits on ``_`` (at most 5 pieces)
    into >= 4 pieces with a numeric second piece and a known plugin (3rd_4th) names the participant."""
    base = member.rsplit("/", 1)[-1]
    if base.startswith((".", "~")):
        return None
    parts = member.split("/")
    while parts:
        info = parts.pop(0).split("_", 4)
        if len(info) < 4 or not info[1].isdigit():
            continue
        plugin = f"{info[2]}_{info[3]}"
        if plugin not in ("assignfeedback_file", "assignsubmission_file", "assignsubmission_onlinetext"):
            continue
        return info[1], plugin, "/".join([info[4] if len(info) == 5 else "", *parts])
    return None


def moodle_worksheet_row(row: dict[str, str]) -> tuple[str, str, datetime.datetime | None]:
    """(participant id, grade, grade time) as Moodle's worksheet import reads a row
    (moodle/moodle, mod/assign/feedback/offline/importgradeslib.php: ``Identifier`` minus the
    ``Participant `` prefix, ``Grade``, ``Last modified (grade)`` through ``strtotime``)."""
    when = row["Last modified (grade)"]
    return (
        row["Identifier"].removeprefix("Participant "),
        row["Grade"],
        datetime.datetime.fromisoformat(when) if when else None,
    )


@dataclass
class Expect:
    """One file of a download and the report row it deserves."""

    file: str  # path inside the download
    student: str
    status: str  # graded | review | failed | not collected | ignored
    score: float | None = None  # computed from the release's points
    late: bool = False
    note: str = ""  # a regex the report row's notes must match
    login: str = ""  # the name the LMS put in the file name (Canvas login, Moodle full name)


@dataclass
class Run:
    """One command of the trial: its arguments, exit code and output."""

    argv: list[str]
    code: int
    out: str
    err: str
    seconds: float = 0.0


@dataclass
class Trial:
    root: Path
    canvas: list[Expect]
    moodle: list[Expect]
    runs: dict[str, Run] = field(default_factory=dict)
    reports: dict[str, list[dict]] = field(default_factory=dict)  # report CSV rows after each grade run
    files: dict[str, str] = field(default_factory=dict)  # text of files written along the way
    zips: dict[str, dict[str, str]] = field(default_factory=dict)  # zip -> {member: text}
    manual: float = 0.0  # the manual score entered for the Moodle mutant's test cell
    new_upload: bytes = b""  # 2004's upload in a second download, after the hand fix
    seconds: float = 0.0


def only_in_own_tests(info: Info, answer: str) -> float:
    """Points a wrong ``answer`` loses: those of its own test cells, once we know that no other test
    cell calls a function it defines (test cells score all or nothing)."""
    defined = re.findall(r"^def (\w+)", synth.cell(info.solution, answer).source, re.M)
    later = [info.index(a) for a in info.answers if info.index(a) > info.index(answer)]
    end = min(later, default=len(info.release.cells))
    own = {gid for gid, _, i in synth.test_points(info.release) if info.index(answer) < i < end}
    for c in synth.test_cells(info.solution):
        gid = c.metadata.nbgrader["grade_id"]
        assert gid in own or not any(re.search(rf"\b{d}\(", c.source) for d in defined), (
            f"{gid} calls {defined}: the expected score of a wrong {answer} is not just its own tests' points"
        )
    return info.points_between(answer)


def canvas_download(info: Info) -> list[tuple[Expect, bytes]]:
    """The 12 students of the Canvas download (``login_[LATE_]userid_submissionid_file``)."""
    a, good, full = info.name, info.correct(), info.max
    m_route, m_forward = (next(m for m in mutants_of(a) if m["cell"] == c) for c in ("topk_route", "moe_forward"))
    one = info.correct(info.answers[:1])
    deleted = copy.deepcopy(good)
    deleted.cells = [
        c for c in deleted.cells if (c.metadata.get("nbgrader") or {}).get("grade_id") != "test_moe_forward"
    ]
    calls = synth.edit(
        good,
        "topk_route",
        lambda s: "import dmcourse.routing\n\n\n"
        + s.replace('    probs = torch.softmax(logits, dim=-1)', "    r = dmcourse.routing.topk_softmax(logits, k)\n"
                    "    return r.indices, r.weights\n    probs = torch.softmax(logits, dim=-1)"),
    )  # fmt: skip
    assert "topk_softmax" in synth.cell(calls, "topk_route").source
    loop = synth.edit(good, "moe_params", lambda s: s.replace('    d = cfg["d_model"]', '    while True:\n        pass\n    d = cfg["d_model"]'))  # fmt: skip
    kill = synth.edit(good, "moe_forward", lambda s: "import os\nos._exit(1)\n" + s)

    def f(login: str, uid: int, late: bool = False, copy_mark: str = "") -> str:
        return f"{login}_{'LATE_' if late else ''}{uid}_{uid + 4000}_{a}{copy_mark}.ipynb"

    def e(login, uid, status, score=None, late=False, note="", copy_mark="") -> Expect:
        return Expect(f(login, uid, late, copy_mark), str(uid), status, score, late, note, login)

    return [
        (e("smithann", 1001, "graded", full), synth.to_bytes(good)),
        (
            e("leebo", 1002, "graded", full - only_in_own_tests(info, "topk_route")),
            synth.to_bytes(synth.apply_mutant(info.solution, m_route)),
        ),
        (
            e("garcíamaría", 1003, "graded", full - only_in_own_tests(info, "moe_forward")),
            synth.to_bytes(synth.apply_mutant(info.solution, m_forward)),
        ),
        (e("kimcho", 1004, "graded", 0.0, late=True), synth.to_bytes(info.release)),
        (e("dubois", 1005, "graded", full, note="rebuilt"), synth.to_bytes(deleted)),
        (e("colabuser", 1006, "graded", full), synth.to_bytes(synth.strip_metadata(good, colab=True))),
        (
            e("loops", 1007, "graded", full - only_in_own_tests(info, "moe_params"), note="hit the timeout"),
            synth.to_bytes(loop),
        ),
        (e("patelraj", 1008, "not collected", note="invalid JSON"), synth.to_bytes(good)[:1500]),
        (e("ngtuan", 1009, "ignored", note="duplicate"), synth.to_bytes(one)),
        (e("ngtuan", 1009, "graded", full, copy_mark="-1"), synth.to_bytes(good)),
        (e("núñezzoë", 1010, "graded", info.points_before(info.answers[1])), synth.to_bytes(one)),
        (e("ohara", 1011, "failed", 0.0, late=True, note=FAILED_NOTE), synth.to_bytes(kill)),
        (
            e("usespkg", 1012, "graded", full - only_in_own_tests(info, "topk_route"), note="calls dmcourse"),
            synth.to_bytes(calls),
        ),
    ]


def moodle_download(info: Info) -> list[tuple[Expect, bytes]]:
    """The Moodle download (``Full Name_participantid_assignsubmission_file_/file``, an online text)."""
    a, good, full = info.name, info.correct(), info.max
    mutant = next(m for m in mutants_of(a) if m["cell"] == "aux_loss")
    part = info.correct(info.answers[:3])
    kill = synth.edit(good, "z_loss", lambda s: "import os\nos._exit(1)\n" + s)

    def e(name, pid, status, score=None, note="") -> Expect:
        return Expect(f"{name}_{pid}_assignsubmission_file_/{a}.ipynb", str(pid), status, score, False, note, name)

    return [
        (e("Zoë Ångström", 2001, "graded", full), synth.to_bytes(good)),
        (
            e("José Núñez", 2002, "graded", info.points_before(info.answers[3]), "rebuilt"),
            synth.to_bytes(synth.strip_metadata(part)),
        ),
        (
            e("Bo Lee", 2003, "graded", full - only_in_own_tests(info, "aux_loss")),
            synth.to_bytes(synth.apply_mutant(info.solution, mutant)),
        ),
        (e("Ana Silva", 2004, "failed", 0.0, note=FAILED_NOTE), synth.to_bytes(kill)),
        (
            Expect("Eve Ray_2005_assignsubmission_onlinetext_onlinetext.html", "2005", "ignored", note="online"),
            b"<p>I attached my notebook to the email</p>",
        ),
    ]


def _cli(argv: list[str]) -> Run:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse and _course exit this way
            code = e.code if isinstance(e.code, int) else 2
    return Run(argv, code, out.getvalue(), err.getvalue(), time.perf_counter() - start)


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Trial:
    from mutation import copy_course
    from nbgrader.api import Gradebook

    root = copy_course(ROOT, tmp_path_factory.mktemp("course"))
    canvas_info, moodle_info = Info(CANVAS, *synth.load(root, CANVAS)), Info(MOODLE, *synth.load(root, MOODLE))
    canvas, moodle = canvas_download(canvas_info), moodle_download(moodle_info)
    dl = tmp_path_factory.mktemp("downloads")
    for exp, data in canvas:
        (dl / "canvas" / exp.file).parent.mkdir(parents=True, exist_ok=True)
        (dl / "canvas" / exp.file).write_bytes(data)
    with zipfile.ZipFile(dl / "moodle.zip", "w") as z:
        for exp, data in moodle:
            z.writestr(exp.file, data)
    t = Trial(root, [e for e, _ in canvas], [e for e, _ in moodle])
    start = time.perf_counter()
    course.register(root, "ex00_warmup")  # as after `make release`: the gradebook knows other assignments
    c = ["--course", str(root)]
    run = [*c, "--jobs", "2", "--timeout", str(TIMEOUT)]

    def step(name: str, argv: list[str], report: str | None = None) -> None:
        t.runs[name] = _cli(argv)
        if report:
            with open(root / "autograded" / f"report-{report}.csv", newline="") as f:
                t.reports[name] = list(csv.DictReader(f))

    step("canvas", ["grade", CANVAS, "--from", str(dl / "canvas"), *run], CANVAS)
    step("moodle", ["grade", MOODLE, "--from", str(dl / "moodle.zip"), *run], MOODLE)
    # a manual grade, as formgrader would enter it (the guide's gradebook API snippet)
    t.manual = 1.5
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        gb.find_grade("t_aux_loss", MOODLE, MOODLE, "2003").manual_score = t.manual
        gb.db.commit()
    # the guide's hand fix of a failed submission: comment out the line that exits, regrade that student
    sub = root / "submitted" / "2004" / MOODLE / f"{MOODLE}.ipynb"
    sub.write_text(sub.read_text().replace("os._exit(1)", HAND_FIX))
    step("fix", ["autograde", MOODLE, "--student", "2004", "--timeout", str(TIMEOUT), *c])
    step("moodle again", ["grade", MOODLE, "--from", str(dl / "moodle.zip"), *run], MOODLE)
    step("moodle force", ["grade", MOODLE, "--from", str(dl / "moodle.zip"), *run, "--force"], MOODLE)
    t.files["submitted 2004"] = sub.read_text()
    replaced = root / "submitted" / ".recovered" / "2004" / MOODLE / "replaced"
    t.files["replaced"] = "\n".join(p.name for p in replaced.glob("*"))
    step("canvas again", ["grade", CANVAS, *run], CANVAS)  # no --from: the last download's rows stay
    step("export", ["export", *c])
    t.files["grades.csv"] = (root / "grades.csv").read_text()
    step("export ex00", ["export", "--assignment", "ex00_warmup", "--to", "ex00.csv", *c])
    t.files["ex00.csv"] = (root / "ex00.csv").read_text()
    step("lms canvas", ["lms-export", CANVAS, "--format", "canvas", "--column", COLUMN, *c])
    step("lms moodle", ["lms-export", MOODLE, "--format", "moodle", "--out-of", f"{OUT_OF:g}", *c])
    for fmt, a in (("canvas", CANVAS), ("moodle", MOODLE)):
        t.files[f"lms {fmt}"] = (root / "autograded" / f"lms-{a}-{fmt}.csv").read_text(encoding="utf-8")
        with zipfile.ZipFile(root / "autograded" / f"lms-{a}-{fmt}.zip") as z:
            t.zips[fmt] = {n: z.read(n).decode("utf-8", "replace") for n in z.namelist()}
    # a second download in which 2004 uploaded again: it differs from the hand-fixed file
    t.new_upload = synth.to_bytes(moodle_info.correct())
    with zipfile.ZipFile(dl / "moodle2.zip", "w") as z:
        z.writestr(t.moodle[3].file, t.new_upload)
    step("second download", ["grade", MOODLE, "--from", str(dl / "moodle2.zip"), *run], MOODLE)
    step("second download force", ["grade", MOODLE, "--from", str(dl / "moodle2.zip"), *run, "--force"], MOODLE)
    t.files["submitted 2004 after force"] = sub.read_text()
    t.files["replaced after force"] = "\n".join(p.read_text() for p in replaced.glob("*"))
    # a late hand-in, renamed by the student (no LMS id in the name): collected, not graded yet
    (dl / "late").mkdir()
    (dl / "late" / f"{CANVAS} - Tom Wu.ipynb").write_bytes(synth.to_bytes(canvas_info.release))
    step("late collect", ["collect", str(dl / "late"), *c])
    step("late lms", ["lms-export", CANVAS, "--format", "canvas", "--to", "late-canvas.csv", *c])
    t.files["late-canvas.csv"] = (root / "late-canvas.csv").read_text(encoding="utf-8")
    step("late export", ["export", "--assignment", CANVAS, "--to", "late.csv", *c])
    t.files["late.csv"] = (root / "late.csv").read_text(encoding="utf-8")
    # the error cases of issue 17.3, on the course as the trial left it
    step("unknown assignment", ["grade", "ex02_mo", "--from", str(dl / "canvas"), *c])
    step("unknown student", ["autograde", CANVAS, "--student", "9999", *c])
    step("missing folder", ["grade", CANVAS, "--from", str(dl / "nowhere"), *c])
    step("nothing to grade", ["grade", "ex04_roofline", *c])
    step("nothing to export", ["lms-export", "ex04_roofline", "--format", "moodle", *c])
    step("unknown export", ["export", "--assignment", "ex02_mo", *c])
    t.seconds = time.perf_counter() - start
    print(f"\ninstructor trial: {len(canvas) + len(moodle)} files, {len(t.runs)} commands in {t.seconds:.0f} s")
    print("; ".join(f"{name} {r.seconds:.0f} s" for name, r in t.runs.items() if r.seconds >= 1))
    return t


# ---------------------------------------------------------------- the report of each grade run


def _check_report(rows: list[dict], expected: list[Expect], assignment: str, max_score: float) -> list[str]:
    """Every report row against what its file deserves; returns the mismatches (and rows unaccounted for)."""
    wrong, left = [], list(rows)
    for exp in expected:
        if exp.status in ("not collected", "ignored"):
            found = [r for r in left if r["file"] == exp.file]
        else:
            found = [
                r for r in left if r["student"] == exp.student and r["file"] == f"submitted/{exp.student}/{assignment}"
            ]
        if len(found) != 1:
            wrong.append(f"{exp.file}: {len(found)} report rows")
            continue
        r = found[0]
        left.remove(r)
        got = (r["student"], r["status"], r["late"])
        want = (exp.student, exp.status, str(exp.late))
        if exp.score is not None:  # failed: the manual grades only (none), and the notes say so
            got += (float(r["score"]), float(r["max_score"]))
            want += (exp.score, max_score)
        if got != want or not re.search(exp.note, r["notes"], re.I):
            wrong.append(f"{exp.file}: got {got} [{r['notes']}], expected {want} /{exp.note}/")
    return wrong + [f"unexpected report row {r}" for r in left]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["canvas", "canvas again"])
def test_canvas_download_every_row_and_exit_code(trial: Trial, name: str) -> None:
    """The first `grade --from`, and `grade` again without --from (the download's rows stay)."""
    run = trial.runs[name]
    assert run.code == 1, run.out[-3000:] + run.err[-3000:]  # the truncated file and the dead kernel need you
    info = Info(CANVAS, *synth.load(trial.root, CANVAS))
    wrong = _check_report(trial.reports[name], trial.canvas, CANVAS, info.max)
    assert not wrong, "\n".join(wrong)
    assert "Traceback" not in run.err
    for exp in trial.canvas:  # the printed table names every student who needs a person
        if exp.status in ("failed", "not collected"):
            assert re.search(rf"\| ({exp.student}|`{re.escape(exp.file)}`) \| {exp.status} \|", run.out), exp.file


@pytest.mark.slow
def test_moodle_zip_every_row_and_exit_code(trial: Trial) -> None:
    run = trial.runs["moodle"]
    assert run.code == 1, run.out[-3000:] + run.err[-3000:]  # 2004's kernel died
    info = Info(MOODLE, *synth.load(trial.root, MOODLE))
    wrong = _check_report(trial.reports["moodle"], trial.moodle, MOODLE, info.max)
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_hand_fix_ends_graded_and_the_manual_grade_stands(trial: Trial) -> None:
    """The guide's fix flow: edit submitted/..., `autograde --student`, the next `grade --from`
    (and with --force) keeps the edit, says so, grades it, and exits 0; a manual score survives."""
    info = Info(MOODLE, *synth.load(trial.root, MOODLE))
    fix = trial.runs["fix"]
    assert fix.code == 0 and re.search(rf"graded\s+2004: {info.max:g}/{info.max:g}", fix.out), fix.out + fix.err
    after = []
    for exp in trial.moodle:
        exp = copy.copy(exp)
        if exp.student == "2004" and exp.status == "failed":
            exp.status, exp.score, exp.note = "graded", info.max, "edited after it was collected"
        if exp.student == "2003":
            exp.score = (exp.score or 0) + trial.manual  # t_aux_loss: 0 autograded, 1.5 by hand
        after.append(exp)
    for name in ("moodle again", "moodle force"):
        run = trial.runs[name]
        assert run.code == 0, (name, run.out[-3000:] + run.err[-3000:])
        wrong = _check_report(trial.reports[name], after, MOODLE, info.max)
        assert not wrong, name + "\n" + "\n".join(wrong)
        assert "exists-differs" not in run.out and "review" not in run.out.split("| student |")[-1], name
        assert re.search(
            rf"\| 2004 \| graded \| {info.max:g}/{info.max:g} \| [^|]*edited after it was collected", run.out
        ), run.out
    assert HAND_FIX in trial.files["submitted 2004"] and "\nos._exit(1)" not in trial.files["submitted 2004"]
    assert trial.files["replaced"] == ""  # --force did not bring back the file that kills the kernel


@pytest.mark.slow
def test_a_new_upload_over_a_hand_fix_needs_you_and_force_keeps_the_fix_aside(trial: Trial) -> None:
    info = Info(MOODLE, *synth.load(trial.root, MOODLE))
    run = trial.runs["second download"]
    assert run.code == 1, run.out[-3000:] + run.err[-3000:]
    rows = [r for r in trial.reports["second download"] if r["student"] == "2004"]
    assert sorted((r["status"], r["score"]) for r in rows) == [("graded", f"{info.max}"), ("not collected", "")], rows
    assert "exists-differs" in next(r["notes"] for r in rows if r["status"] == "not collected")
    forced = trial.runs["second download force"]
    assert forced.code == 0, forced.out[-3000:] + forced.err[-3000:]
    rows = [r for r in trial.reports["second download force"] if r["student"] == "2004"]
    assert [(r["status"], r["score"]) for r in rows] == [("graded", f"{info.max}")], rows
    assert trial.files["submitted 2004 after force"].encode() == trial.new_upload
    assert HAND_FIX in trial.files["replaced after force"]  # the hand-fixed file is kept, not lost


# ---------------------------------------------------------------- feedback


@pytest.mark.slow
def test_feedback_for_each_graded_student_and_never_a_hidden_test(trial: Trial) -> None:
    hidden = synth.hidden_lines(trial.root)
    for a, expected in ((CANVAS, trial.canvas), (MOODLE, trial.moodle)):
        assert hidden[a], a
        control = next((trial.root / "autograded").glob(f"*/{a}/*.ipynb"))
        assert synth.leaks_in(control, hidden[a]), "the leak check is blind: autograded notebooks hold the hidden tests"
        graded = {e.student for e in expected if e.status == "graded"}
        if a == MOODLE:
            graded.add("2004")  # hand-fixed
        have = {p.parent.parent.name for p in (trial.root / "feedback").glob(f"*/{a}/*.html")}
        assert have == graded, (a, have ^ graded)
        for path in (trial.root / "feedback").glob(f"*/{a}/*"):
            assert not synth.leaks_in(path, hidden[a]), f"hidden test code in {path}"
        for name in ("canvas", "moodle", "moodle again", "moodle force"):
            assert not [ln for ln in hidden[a] if ln in trial.runs[name].out], name
    for fmt, a in (("canvas", CANVAS), ("moodle", MOODLE)):
        for member, text in trial.zips[fmt].items():
            flat = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", text)))
            assert not [ln for ln in hidden[a] if re.sub(r"\s+", " ", ln) in flat], f"hidden test code in {member}"


# ---------------------------------------------------------------- export and lms-export


def _final(trial: Trial) -> dict[tuple[str, str], tuple[str, float | None, bool]]:
    """(assignment, student) -> (status, score, late) each student deserves at the end of the trial."""
    out: dict[tuple[str, str], tuple[str, float | None, bool]] = {}
    moodle_max = Info(MOODLE, *synth.load(trial.root, MOODLE)).max
    students = {e.student for e in trial.canvas + trial.moodle}
    for a, expected in ((CANVAS, trial.canvas), (MOODLE, trial.moodle)):
        for s in students:
            out[(a, s)] = ("missing", None, False)
        for e in expected:
            if e.status == "ignored":
                continue
            status, score = e.status, e.score if e.status == "graded" else None
            if a == MOODLE and e.student == "2004":
                status, score = "graded", moodle_max
            if a == MOODLE and e.student == "2003":
                score = (score or 0) + trial.manual
            out[(a, e.student)] = (status, score, e.late)
    return out


@pytest.mark.slow
def test_grades_csv_every_row(trial: Trial) -> None:
    assert trial.runs["export"].code == 0 and "wrote" in trial.runs["export"].out, trial.runs["export"]
    rows = list(csv.DictReader(io.StringIO(trial.files["grades.csv"])))
    assert list(rows[0]) == ["assignment", "student_id", "status", "score", "max_score", "late", "notes"]
    got = {(r["assignment"], r["student_id"]): r for r in rows}
    assert len(got) == len(rows)
    want = _final(trial)
    assert set(got) == set(want)  # only the assignments with submissions (not ex00_warmup, registered)
    wrong = []
    for key, (status, score, late) in sorted(want.items()):
        r = got[key]
        ok = r["late"] == ("LATE" if late else "")
        if status == "graded":
            ok &= r["status"] == "graded" and r["score"] != "" and float(r["score"]) == score
        else:  # never a number: the status says why
            ok &= r["score"] == "" and r["status"].split(":")[0] == status
        if status == "not collected":
            ok &= "invalid JSON" in r["status"]
        if not ok:
            wrong.append(f"{key}: {dict(r)}, expected {status} {score} late={late}")
    assert not wrong, "\n".join(wrong)
    # an assignment the gradebook knows (as after `make release`) but nobody handed in: no numbers
    assert trial.runs["export ex00"].code == 0, trial.runs["export ex00"]
    ex00 = list(csv.DictReader(io.StringIO(trial.files["ex00.csv"])))
    graded = {s for (a, s), (status, _, _) in want.items() if status in ("graded", "failed")}
    assert graded <= {r["student_id"] for r in ex00} <= {s for _, s in want}
    assert {(r["assignment"], r["status"], r["score"]) for r in ex00} == {("ex00_warmup", "missing", "")}


@pytest.mark.slow
def test_lms_export_canvas_every_row_and_the_feedback_names(trial: Trial) -> None:
    run = trial.runs["lms canvas"]
    assert run.code == 0, run.out + run.err
    table = list(csv.reader(io.StringIO(trial.files["lms canvas"])))
    assert table[0] == [*lms.CANVAS_FIELDS, COLUMN, lms.LATE_COLUMN]
    want = _final(trial)
    expected = {}
    for e in trial.canvas:
        if e.status == "ignored":
            continue
        _, score, late = want[(CANVAS, e.student)]
        # ID: the Canvas user id of the file name; an empty grade leaves Canvas's grade unchanged
        expected[e.student] = [
            e.login,
            e.student,
            "",
            "",
            "",
            "" if score is None else f"{score:g}",
            "LATE" if late else "",
        ]
    got = {r[1]: r for r in table[1:]}
    assert len(got) == len(table) - 1 and got == expected
    names = {e.file.removesuffix(".ipynb").removesuffix("-1").removesuffix(CANVAS) + f"{CANVAS}_feedback.html"
             for e in trial.canvas if want[(CANVAS, e.student)][0] == "graded" and e.status != "ignored"}  # fmt: skip
    assert set(trial.zips["canvas"]) == names
    # Canvas's re-upload rule finds each file's student and the attachment that student handed in
    handed = {e.student: e.file for e in trial.canvas if e.status != "ignored"}
    for member in trial.zips["canvas"]:
        target = canvas_reupload_target(member)
        assert target is not None and target[0] in handed, member
        assert f"_{target[0]}_{target[1]}_" in handed[target[0]], (member, handed[target[0]])


@pytest.mark.slow
def test_lms_export_moodle_every_row_and_the_feedback_names(trial: Trial) -> None:
    run = trial.runs["lms moodle"]
    assert run.code == 0, run.out + run.err
    table = list(csv.DictReader(io.StringIO(trial.files["lms moodle"])))
    assert list(table[0]) == [*lms.MOODLE_FIELDS, lms.LATE_COLUMN]
    moodle_max = Info(MOODLE, *synth.load(trial.root, MOODLE)).max
    want = _final(trial)
    got = {r["Identifier"]: r for r in table}
    assert len(got) == len(table)
    handed_in = [e for e in trial.moodle if e.file.endswith(".ipynb")]  # 2005 handed in online text only
    assert set(got) == {f"Participant {e.student}" for e in handed_in}
    for e in handed_in:
        r = got[f"Participant {e.student}"]
        status, score, _ = want[(MOODLE, e.student)]
        assert (r["Full name"], r["Status"], r["Grade"], r["Maximum Grade"], r[lms.LATE_COLUMN]) == (
            e.login,
            status,
            f"{score * OUT_OF / moodle_max:g}",  # --out-of rescales the points
            f"{OUT_OF:g}",
            "",
        ), r
        assert r["Last modified (grade)"] and r["Last modified (submission)"], r
        assert f"{score:g}/{moodle_max:g}" in r["Feedback comments"], r
    assert set(trial.zips["moodle"]) == {f"{e.login}_{e.student}_assignfeedback_file_/{MOODLE}.html" for e in handed_in}
    # Moodle's readers: the worksheet row and the feedback file land on the right participant
    for e in handed_in:
        pid, grade, when = moodle_worksheet_row(got[f"Participant {e.student}"])
        assert pid == e.student and (grade == "") == (when is None), (pid, grade, when)
    for member in trial.zips["moodle"]:
        target = moodle_feedback_target(member)
        assert target is not None and target[1] == "assignfeedback_file", member
        assert target[0] in {e.student for e in handed_in} and target[2] == f"/{MOODLE}.html", target


def test_the_lms_rules_replayed_here_refuse_what_the_lms_ignores() -> None:
    """The replicas of Canvas's and Moodle's name rules can fail: names without the ids are ignored."""
    assert canvas_reupload_target("smithann_1001_5001_ex02_moe_feedback.html") == ("1001", "5001")
    assert canvas_reupload_target("smithann_LATE_1001_5001_x.html") == ("1001", "5001")
    assert canvas_reupload_target("ex02_moe_feedback.html") is None
    assert canvas_reupload_target("._smithann_1001_5001_x.html") is None
    assert moodle_feedback_target("Ann Smith_77_assignfeedback_file_/ex03.html") == (
        "77",
        "assignfeedback_file",
        "/ex03.html",
    )
    assert moodle_feedback_target("Ann Smith_77_assignfeedback_file/ex03.html") == (
        "77",
        "assignfeedback_file",
        "/ex03.html",
    )
    assert moodle_feedback_target("Ann_Smith_77_assignfeedback_file_/ex03.html") is None  # '_' in the name
    assert moodle_feedback_target("Ann Smith_77_feedback_/ex03.html") is None


@pytest.mark.slow
def test_a_student_without_an_lms_id_is_not_graded_yet_and_skipped_by_lms_export(trial: Trial) -> None:
    assert trial.runs["late collect"].code == 0 and "tom_wu" in trial.runs["late collect"].out
    late = {r["student_id"]: r for r in csv.DictReader(io.StringIO(trial.files["late.csv"]))}
    assert (late["tom_wu"]["status"], late["tom_wu"]["score"]) == ("not graded yet", "")
    run = trial.runs["late lms"]
    assert run.code == 1 and re.search(r"^skipped tom_wu: not an LMS user id", run.out, re.M), run
    ids = [r[1] for r in csv.reader(io.StringIO(trial.files["late-canvas.csv"]))][1:]
    assert sorted(ids) == sorted({e.student for e in trial.canvas})  # everyone else, and no tom_wu


# ---------------------------------------------------------------- error cases


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, message",
    [
        ("unknown assignment", "unknown assignment 'ex02_mo'"),
        ("unknown student", "unknown student '9999'"),
        ("missing folder", "not found"),
        ("nothing to grade", "nothing to grade"),
        ("nothing to export", "nothing to export"),
        ("unknown export", "unknown assignment 'ex02_mo'"),
    ],
)
def test_each_error_is_one_line_and_a_nonzero_exit(trial: Trial, name: str, message: str) -> None:
    run = trial.runs[name]
    err = run.err.strip()
    assert run.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and message in err, run
