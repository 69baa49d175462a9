"""The benchmark scripts run end to end: the MoE dispatch benchmark (--quick) records what chapter 3
reads; the kernel-by-rows table prints a row per row count."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from dmcourse import stream


def test_moe_dispatch_quick_run_records_every_floor(tmp_path):
    out = tmp_path / "record.json"
    proc = subprocess.run([sys.executable, "benchmarks/moe_dispatch.py", "--quick", "--rounds", "1", "--repeats", "1",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert [row["tokens"] for row in rec["decode"]] == [1, 4, 16, 64]
    for row in rec["decode"]:
        assert {"moe sorted", "moe sorted, oneDNN", "expert matmuls only", "transformers eager"} <= set(row["times_s"])
        assert {"copy", "torch.sum"} <= set(row["bandwidths_Bps"]) and min(row["bandwidths_Bps"].values()) > 0
        floor_bw = max(row["bandwidths_Bps"].values())
        # the floor is the roofline of this row's bytes and FLOPs at the fastest bandwidth of its rounds
        expected = max(row["bytes"] / floor_bw, row["flops"] / rec["ceilings"]["matmul_FLOPps"])
        assert abs(row["floor_s"] - expected) <= 1e-9 * expected
        # a faster compute ceiling can only lower the floor; the copy bandwidth alone can only raise it
        assert row["floor_s_linear_ceiling"] <= row["floor_s"] <= row["floor_s_copy_bandwidth"]
    assert "decode kernel" in proc.stdout and "best/floor" in proc.stdout
    assert set(rec["prefill_s"]) >= {"moe sorted", "moe grouped", "moe loop", "transformers eager", "dense SwiGLU"}


@pytest.mark.skipif(not stream.available(), reason=f"kernel {stream.status()}")
def test_stream_rows_prints_a_row_per_count():
    proc = subprocess.run([sys.executable, "benchmarks/stream_rows.py", "--rows", "1", "3", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "3"] and all(float(v) > 0 for r in rows for v in r[1:]), proc.stdout


def test_ex08_speed_ratios_prints_a_row_per_trial():
    proc = subprocess.run([sys.executable, "benchmarks/ex08_speed_ratios.py", "--trials", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.strip("|").split("|") for line in proc.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r[0].strip() for r in rows] == ["0", "1"], proc.stdout
    assert all(float(v) > 0 for r in rows for v in r[1:]), proc.stdout
    assert all(float(r[5]) > 1 for r in rows), f"the solution's dispatch is not faster than the per-token loop:\n{proc.stdout}"


@pytest.mark.slow
def test_ex06_seed_outcomes_prints_a_row_per_seed():
    proc = subprocess.run([sys.executable, "benchmarks/ex06_seed_outcomes.py", "--seeds", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.strip("|").split("|") for line in proc.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 1 and rows[0][0].strip() == "0", proc.stdout
    none_ratio, aux_ratio = float(rows[0][2]), float(rows[0][4])
    assert none_ratio > aux_ratio, f"the aux loss should balance the solution's router:\n{proc.stdout}"
