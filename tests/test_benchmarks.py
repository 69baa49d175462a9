"""The benchmark scripts run end to end: the MoE dispatch benchmark (--quick) records what chapter 3
reads, with its profile and targets; the kernel-by-rows table prints a row per row count."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT, run_benchmark, table_rows

from dmcourse import stream


def test_moe_dispatch_quick_run_records_every_floor(tmp_path):
    out = tmp_path / "record.json"
    stdout = run_benchmark("moe_dispatch.py", "--quick", "--rounds", "1", "--repeats", "1", "--json", str(out))
    rec = json.loads(out.read_text())
    assert [row["tokens"] for row in rec["decode"]] == [1, 4, 16, 64]
    for row in rec["decode"]:
        assert {"moe sorted", "moe sorted, F.linear", "expert matmuls only", "transformers eager"} <= set(
            row["times_s"]
        )
        assert {"copy", "torch.sum"} <= set(row["bandwidths_Bps"]) and min(row["bandwidths_Bps"].values()) > 0
        floor_bw = max(row["bandwidths_Bps"].values())
        # the floor is the roofline of this row's bytes and FLOPs at the fastest bandwidth of its rounds
        expected = max(row["bytes"] / floor_bw, row["flops"] / rec["ceilings"]["matmul_FLOPps"])
        assert abs(row["floor_s"] - expected) <= 1e-9 * expected
        # a faster compute ceiling can only lower the floor; the copy bandwidth alone can only raise it
        assert row["floor_s_linear_ceiling"] <= row["floor_s"] <= row["floor_s_copy_bandwidth"]
    assert "decode kernel" in stdout and "best/floor" in stdout
    assert set(rec["prefill_s"]) >= {"moe sorted", "moe grouped", "moe loop", "transformers eager", "dense SwiGLU"}
    assert rec["cpu_model"] and f"CPU model: {rec['cpu_model']}" in stdout
    assert set(rec["matmul_choice"]) == {"1", "2-4", "5-16", "17-64", "prefill"}
    steps = rec["profile"]["steps_s"]
    assert {
        "routing",
        "sort",
        "gather",
        "GEMM gate+up",
        "activation",
        "GEMM down",
        "unsort rows",
        "combine",
        "layer",
    } <= set(steps)
    assert 0 < rec["profile"]["non_gemm_share"] < 1 and "outside the expert GEMMs" in stdout
    assert [t["target"] for t in rec["targets"]][:2] == [
        "prefill / transformers eager",
        "prefill / dense SwiGLU, same kernel",
    ]
    assert len(rec["targets"]) == 6 and "targets (issue 21)" in stdout
    for t in rec["targets"]:
        assert t["met"] == (t["value"] <= t["limit"]) and bool(t["why"]) != t["met"], t


def _bench():
    spec = importlib.util.spec_from_file_location("moe_dispatch", ROOT / "benchmarks" / "moe_dispatch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_say_why_a_target_is_missed():
    bench = _bench()
    steps = {"routing": 1.0, "GEMM gate+up": 6.0, "activation": 2.0, "GEMM down": 3.0, "layer": 12.5}
    assert bench.non_gemm_share(steps) == pytest.approx(3 / 12)
    record = {
        "settings": {"top_k": 2},
        "matmul_choice": {"1": "stream", "prefill": "onednn"},
        "profile": {"non_gemm_share": 0.25},
        "prefill_s": {"moe sorted": 1.2, "transformers eager": 1.0, "dense SwiGLU, same kernel": 1.2},
        "decode": [
            {
                "tokens": 1,
                "experts_touched": 2,
                "floor_s": 1.0,
                "times_s": {"moe sorted": 2.0, "expert matmuls only": 1.9},
            },
            {
                "tokens": 1,
                "experts_touched": 2,
                "floor_s": 1.0,
                "times_s": {"moe sorted": 1.6, "expert matmuls only": 1.1},
            },
        ],
    }
    t = {row["target"] + str(i): row for i, row in enumerate(bench.targets(record))}
    assert not t["prefill / transformers eager0"]["met"] and "onednn" in t["prefill / transformers eager0"]["why"]
    assert "25%" in t["prefill / transformers eager0"]["why"]
    assert t["prefill / dense SwiGLU, same kernel1"]["met"] and t["prefill / dense SwiGLU, same kernel1"]["why"] == ""
    assert "kernel stream" in t["decode 1 tokens / floor2"]["why"] and "1.90x" in t["decode 1 tokens / floor2"]["why"]
    assert "dispatch" in t["decode 1 tokens / floor3"]["why"] and "500.00 ms" in t["decode 1 tokens / floor3"]["why"]


@pytest.mark.skipif(not stream.available(), reason=f"kernel {stream.status()}")
def test_stream_rows_prints_a_row_per_count():
    out = run_benchmark("stream_rows.py", "--rows", "1", "3", "--repeats", "1")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["1", "3"] and all(float(v) > 0 for r in rows for v in r[1:]), out


def test_ex08_speed_ratios_prints_a_row_per_trial():
    out = run_benchmark("ex08_speed_ratios.py", "--trials", "2")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["0", "1"], out
    assert all(float(v) > 0 for r in rows for v in r[1:]), out
    assert all(float(r[5]) > 1 for r in rows), f"the solution's dispatch is not faster than the per-token loop:\n{out}"


@pytest.mark.slow
def test_ex06_seed_outcomes_prints_a_row_per_seed():
    out = run_benchmark("ex06_seed_outcomes.py", "--seeds", "0")
    rows = table_rows(out)
    assert len(rows) == 1 and rows[0][0] == "0", out
    none_ratio, aux_ratio = float(rows[0][2]), float(rows[0][4])
    assert none_ratio > aux_ratio, f"the aux loss should balance the solution's router:\n{out}"
