"""dmcourse.gpucheck on CPU (its plumbing: the record, the skips, the targets), the T4 paths simulated
on CPU (capability 7.5: fp16 never bf16, no grouped_mm, GradScaler with fp16 autocast, 15 GB), and the
fallbacks where the package uses newer or private torch APIs (removed by monkeypatch)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT

from dmcourse import device as dev_module
from dmcourse import gpucheck, records

T4 = (7, 5)


@pytest.mark.slow
def test_quick_check_on_cpu_writes_a_valid_record(tmp_path) -> None:
    out = tmp_path / "check.json"
    before = sorted(e.name for e in records.records_dir().iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "dmcourse.gpucheck", "--quick", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = records.read_record(out, kind="gpucheck")
    assert record == json.loads(out.read_text())
    assert record["device_type"] == "cpu" and record["quick"] is True and record["targets"] == {}
    assert record["command"].startswith("python -m dmcourse.gpucheck --quick")
    assert set(record["measurements"]) == {"roofline", "gemm_sweep", "moe_dispatch", "training_steps"}
    for name, m in record["measurements"].items():
        assert m["command"] and m["seconds"] > 0, name
    records.validate_record(record["roofline"])
    assert [r["m"] for r in record["measurements"]["gemm_sweep"]["result"]] == [1, 8, 64]
    decode = record["measurements"]["moe_dispatch"]["result"]["decode"]
    assert [r["tokens"] for r in decode] == [1, 4]
    assert all(0 < r["experts_touched_expected"] <= 8 for r in decode)
    steps = record["measurements"]["training_steps"]["result"]
    assert len(steps) == 2 and all(s["seconds_per_step"] > 0 for s in steps.values())
    skipped = {s["what"]: s["why"] for s in record["skipped"]}
    assert "2+ CUDA GPUs" in skipped["nccl_expert_parallel"] and "notebooks" in skipped and "GPU figures" in skipped
    assert "wrote" in done.stdout and "skipped nccl_expert_parallel" in done.stdout
    assert sorted(e.name for e in records.records_dir().iterdir()) == before, "a CPU check must not ship a record"


def test_cli_refuses_nonsense() -> None:
    with pytest.raises(SystemExit):
        gpucheck.main(["--jobs", "0"])
    with pytest.raises(SystemExit):
        gpucheck.main(["--device", "tpu"])


def test_a_failing_measurement_is_a_skip_with_its_reason() -> None:
    c = gpucheck.Check(torch.device("cpu"), True, "cmd")
    assert c.measure("ok", "python ok", lambda: {"x": 1}) == {"x": 1}
    assert c.measure("bad", "python bad", lambda: 1 / 0) is None
    assert c.measurements["ok"]["command"] == "python ok" and "bad" not in c.measurements
    assert c.skipped == [{"what": "bad", "why": "failed: ZeroDivisionError: division by zero"}]


def test_only_a_full_gpu_record_goes_into_the_package() -> None:
    assert gpucheck.default_out({"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "quick": False}) == (
        records.records_dir() / "gpucheck_nvidia-h100-80gb-hbm3.json"
    )
    assert gpucheck.default_out({"device": "NVIDIA H100", "device_type": "cuda", "quick": True}).parent.name == ""
    assert gpucheck.default_out({"device": "AMD EPYC", "device_type": "cpu", "quick": False}).parent.name == ""
    for record in records.load("gpucheck"):  # whatever is shipped is a full GPU run
        assert record["device_type"] == "cuda" and not record["quick"]


def test_datasheet_match_and_targets() -> None:
    assert gpucheck.datasheet_for("NVIDIA H100 80GB HBM3").name == "H100"
    assert gpucheck.datasheet_for("NVIDIA A100-SXM4-40GB").name == "A100-40GB"
    assert gpucheck.datasheet_for("Tesla T4").name == "T4"
    assert gpucheck.datasheet_for("NVIDIA L40S") is None
    sheet = gpucheck.datasheet_for("NVIDIA H100 80GB HBM3").get("memory_bandwidth_bytes_per_s")
    record = {
        "device": "NVIDIA H100 80GB HBM3",
        "device_type": "cuda",
        "roofline": {"figures": {"bandwidth_bytes_per_s": {"copy": 0.5 * sheet}}},
        "measurements": {
            "moe_dispatch": {
                "result": {
                    "settings": {"tokens": 16384},
                    "prefill_s": {"moe sorted": 2.0, "moe grouped": 1.25, "dense SwiGLU": 1.0},
                    "decode": [
                        {"times_s": {"moe sorted": 3.0, "moe loop": 4.0}, "floor_s": 2.0},
                        {"times_s": {"moe sorted": 1.0}, "floor_s": 1.0},
                    ],
                }
            }
        },
    }
    t = gpucheck.targets(record)
    assert (
        t["copy_bandwidth_vs_datasheet"]["value"] == pytest.approx(0.5) and not t["copy_bandwidth_vs_datasheet"]["met"]
    )
    assert (
        t["moe_vs_dense_prefill_throughput"]["value"] == pytest.approx(0.8)
        and t["moe_vs_dense_prefill_throughput"]["met"]
    )
    assert (
        t["decode_vs_experts_touched_floor"]["value"] == pytest.approx(1.5)
        and t["decode_vs_experts_touched_floor"]["met"]
    )
    assert gpucheck.targets({**record, "device_type": "cpu"}) == {}


def test_notebook_list_covers_every_chapter_and_solution() -> None:
    from conftest import toc_files

    paths = {str(p.relative_to(ROOT)) for p in gpucheck.notebook_paths(ROOT)}
    chapters = {f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()}
    solutions = {str(p.relative_to(ROOT)) for p in (ROOT / "solutions").glob("*/*.ipynb")}
    assert paths == chapters | solutions and chapters and solutions
    assert gpucheck.repo_root() == ROOT


# ------------------------------------------------------------------ a T4, simulated on the CPU


@pytest.fixture
def fake_t4(monkeypatch):
    """torch believes there is one CUDA GPU of compute capability 7.5 with 15 GB (Colab's T4)."""
    props = types.SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=15 * 10**9)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: T4)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch may claim on a T4
    return props


def test_t4_computes_in_fp16_never_bf16(fake_t4) -> None:
    assert dev_module.pick_dtype("cuda") == torch.float16
    assert dev_module.pick_dtype("cuda", T4) == torch.float16
    info = dev_module.device_info("cuda")
    assert info.dtype == torch.float16 and info.capability == T4 and info.name == "Tesla T4"
    assert "sm_75" in info.summary() and "float16" in info.summary()
    assert dev_module.pick_dtype("cuda", (8, 0)) == torch.bfloat16


def test_t4_has_no_grouped_mm_and_the_grouped_dispatch_falls_back(fake_t4) -> None:
    from dmcourse import moe

    for dtype in (torch.float16, torch.bfloat16):
        assert moe.grouped_mm_supported("cuda", dtype) is False  # decided from the capability, no probe


def test_t4_training_uses_gradscaler_with_fp16_autocast(fake_t4, monkeypatch) -> None:
    """train() on a 'cuda' device with amp_dtype fp16 (what a T4 gets) creates a GradScaler and runs the
    scaled step; here the CUDA calls are redirected to the CPU's autocast and GradScaler."""
    from dmcourse import moe_train, toy, train

    scalers, autocasts = [], []
    real_scaler, real_autocast = torch.amp.GradScaler, torch.autocast

    def scaler(device_type="cuda", **kw):
        scalers.append(device_type)
        return real_scaler("cpu", **kw)

    def autocast(device_type, dtype=None, enabled=True):
        autocasts.append((device_type, dtype, enabled))
        return real_autocast("cpu", dtype=dtype, enabled=enabled)

    monkeypatch.setattr(torch.amp, "GradScaler", scaler)
    monkeypatch.setattr(torch, "autocast", autocast)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(train, "to_device", lambda batch, device: batch)
    task = toy.MixtureTask(seed=0)
    model = toy.toy_moe(task)
    amp = dev_module.pick_dtype("cuda")
    history = train.train(
        model,
        task.batch_fn(4, 8),
        moe_train.moe_loss_fn(),
        train.TrainConfig(steps=2, device="cuda", amp_dtype=amp),
        progress=False,
    )
    assert scalers == ["cuda"] and autocasts and all(a == ("cuda", torch.float16, True) for a in autocasts)
    assert all(torch.isfinite(torch.tensor(v)) for v in history["loss"])


def test_t4_memory_15_gb() -> None:
    """Colab's T4 offers about 15 GB: the course's fit arithmetic says which models a T4 holds."""
    from dmcourse import economics as ec
    from dmcourse import hardware

    assert 15e9 <= hardware.gpu("T4").memory_bytes <= 16.1e9
    small = ec.serving_memory("OLMoE-1B-7B", "T4", "fp16", batch=1, context=4096)
    big = ec.serving_memory("Mixtral-8x7B", "T4", "fp16", batch=1, context=4096)
    assert small.fits and small.needed_bytes < 15e9
    assert not big.fits and big.gpus_needed >= 6


# ------------------------------------------------------------------ newer / private torch APIs removed


def test_without_grouped_mm_the_grouped_dispatch_equals_sorted(monkeypatch) -> None:
    from dmcourse import moe

    monkeypatch.delattr(F, "grouped_mm", raising=False)
    monkeypatch.delattr(torch, "_grouped_mm", raising=False)
    moe._probe_grouped_mm.cache_clear()
    try:
        assert moe._grouped_mm_fn() is None and moe.grouped_mm_supported("cpu", torch.float32) is False
        torch.manual_seed(0)
        layer = moe.MoE(16, 32, n_experts=4, top_k=2).eval()
        x = torch.randn(10, 16)
        with torch.no_grad():
            layer.dispatch = "grouped"
            grouped = layer(x)
            layer.dispatch = "sorted"
            torch.testing.assert_close(grouped, layer(x))
    finally:
        moe._probe_grouped_mm.cache_clear()


def test_without_onednn_linear_the_moe_uses_f_linear(monkeypatch) -> None:
    """A torch without oneDNN's linear op (or a build without it): the seam's probe never offers it,
    and the MoE's matmuls are F.linear."""
    from dmcourse import matmul

    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace(), raising=False)
    matmul.onednn_works.cache_clear()
    try:
        assert matmul.onednn_works(torch.float32) is False
        assert "onednn" not in matmul.candidates(torch.float32)
        x, w = torch.randn(64, 16), torch.randn(8, 16)
        with torch.no_grad():
            torch.testing.assert_close(matmul.linear(x, w), F.linear(x, w))
    finally:
        matmul.onednn_works.cache_clear()
