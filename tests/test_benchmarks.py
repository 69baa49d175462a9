"""The MoE dispatch benchmark runs end to end (--quick) and records what chapter 3 reads."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


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
