"""dmcourse.records: shipped records are found with importlib.resources and validated; the roofline
record's command line (python -m dmcourse.records) writes a valid record; no GPU record is invented."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from dmcourse import records


def _check_record_file(out, *, expect_command: str) -> None:
    record = json.loads(out.read_text())
    assert records.read_record(out) == record
    assert record["device_type"] == "cpu" and record["device"] and record["date"][:2] == "20"
    assert record["command"].startswith(expect_command) and "--quick" in record["command"]
    assert record["versions"]["torch"] == torch.__version__
    figures = record["figures"]
    assert set(figures["bandwidth_bytes_per_s"]) == {"copy", "read"} and set(figures["matmul_flops_per_s"]) == {"fp32"}
    assert all(v > 0 and math.isfinite(v) for group in figures.values() for v in group.values())


def test_cli_main_writes_a_valid_record(tmp_path, capsys) -> None:
    out = tmp_path / "rec.json"
    assert (
        records.main(["--device", "cpu", "--quick", "--precisions", "fp32", "--repeats", "2", "--out", str(out)]) == 0
    )
    assert "wrote" in capsys.readouterr().out
    _check_record_file(out, expect_command="python -m dmcourse.records")


@pytest.mark.slow
def test_cli_as_a_module(tmp_path) -> None:
    out = tmp_path / "rec.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmcourse.records",
            "--device",
            "cpu",
            "--quick",
            "--threads",
            "1",
            "--precisions",
            "fp32",
            "--repeats",
            "2",
            "--out",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    _check_record_file(out, expect_command="python -m dmcourse.records")
    assert json.loads(out.read_text())["cpu_threads"] == 1


def test_cli_refuses_nonsense(tmp_path) -> None:
    with pytest.raises(SystemExit):
        records.main(["--device", "cpu", "--precisions", "fp64", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        records.main(["--device", "cpu", "--threads", "0", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


GOOD = {
    "schema": 1,
    "device": "X",
    "device_type": "cuda",
    "date": "2026-01-01",
    "versions": {},
    "command": "python -m dmcourse.records",
    "figures": {"bandwidth_bytes_per_s": {"copy": 1e12}, "matmul_flops_per_s": {"bf16": 1e15}},
}


def test_roofline_records_are_validated() -> None:
    with pytest.raises(ValueError, match="lacks"):
        records.validate_record({"schema": 1})
    assert records.validate_record(GOOD) is GOOD
    bad = {**GOOD, "figures": {"bandwidth_bytes_per_s": {"copy": -1.0}, "matmul_flops_per_s": {"bf16": 1e15}}}
    with pytest.raises(ValueError, match="copy"):
        records.validate_record(bad)
    with pytest.raises(ValueError, match="device_type"):
        records.validate_record({**GOOD, "device_type": "tpu"})
    with pytest.raises(ValueError, match="unknown record kind"):
        records.validate("benchmark", GOOD)


def test_shipped_records_come_from_the_package_and_are_valid() -> None:
    folder = records.records_dir()
    assert folder.is_dir(), "dmcourse/data/records/ is missing"
    names = sorted(e.name for e in folder.iterdir() if e.name.endswith(".json"))
    assert "moe_dispatch_cpu.json" in names  # the CPU benchmark chapter 3 prints
    for name in names:
        kind = records.kind_of(name)
        records.validate(kind, json.loads((folder / name).read_text()))
    by_kind = records.shipped()
    assert set(by_kind) == set(records.KINDS)
    assert sum(map(len, by_kind.values())) == len(names)
    assert [r["device_type"] for r in records.load("moe_dispatch", "cpu")] == ["cpu"]
    for record in records.shipped_records():
        assert record["device_type"] == "cuda"
    with pytest.raises(ValueError, match="device_type"):
        records.load("moe_dispatch", "gpu")
    with pytest.raises(ValueError, match="not a record file name"):
        records.kind_of("notes.txt")
    # no record is kept next to the notebooks any more (a notebook opened alone would not find it)
    tracked = subprocess.run(
        ["git", "ls-files", "book"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [p for p in tracked if p.endswith(".json")], tracked


def test_gpu_summary_says_when_no_gpu_record_is_shipped(monkeypatch) -> None:
    monkeypatch.setattr(records, "load", lambda kind, device_type=None: [])
    for section in ("roofline", "moe", "economics"):
        assert records.gpu_summary(section).startswith(records.NO_GPU_RECORD)
    with pytest.raises(ValueError, match="section"):
        records.gpu_summary("training")


def test_gpu_summary_labels_each_record_with_device_and_date(monkeypatch) -> None:
    moe = json.loads((records.records_dir() / "moe_dispatch_cpu.json").read_text())
    check = {
        "schema": 1,
        "device": "Fake GPU (test)",
        "device_type": "cuda",
        "date": "2031-02-03T00:00:00+00:00",
        "versions": {"torch": "x"},
        "command": "python -m dmcourse.gpucheck",
        "quick": False,
        "roofline": {**GOOD, "device": "Fake GPU (test)", "date": "2031-02-03", "versions": {"torch": "x"}},
        "measurements": {
            "moe_dispatch": {
                "command": "python benchmarks/moe_dispatch.py",
                "seconds": 1.0,
                "result": {**moe, "device_type": "cuda"},
            },
            "roofline": {"command": "python -m dmcourse.records", "seconds": 1.0, "result": {}},
        },
        "notebooks": [],
        "skipped": [],
    }
    records.validate_gpucheck(check)
    monkeypatch.setattr(records, "load", lambda kind, device_type=None: [check] if kind == "gpucheck" else [])
    for section in ("roofline", "moe", "economics"):
        text = records.gpu_summary(section)
        assert "Fake GPU (test)" in text and "2031-02-03" in text, (section, text)
    assert "1.00 TB/s" in records.gpu_summary("roofline")  # copy 1e12 B/s
    assert "decode    1 tokens" in records.gpu_summary("moe")


def test_gpucheck_records_are_validated() -> None:
    base = {
        "schema": 1,
        "device": "cpu",
        "device_type": "cpu",
        "date": "d",
        "versions": {},
        "command": "c",
        "quick": True,
        "measurements": {},
        "notebooks": [],
        "skipped": [],
    }
    assert records.validate_gpucheck(base) is base
    with pytest.raises(ValueError, match="command"):
        records.validate_gpucheck({**base, "measurements": {"x": {"command": "", "seconds": 1, "result": 1}}})
    with pytest.raises(ValueError, match="why"):
        records.validate_gpucheck({**base, "skipped": [{"what": "nccl"}]})
    with pytest.raises(ValueError, match="status"):
        records.validate_gpucheck({**base, "notebooks": [{"path": "x", "status": "maybe"}]})


def test_slug() -> None:
    assert records.slug("NVIDIA H100 80GB  HBM3") == "nvidia-h100-80gb-hbm3"
