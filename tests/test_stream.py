"""dmcourse.stream: the C decode kernel equals x @ w.T, is used by moe.linear for 1 to MAX_ROWS rows, and
falls back cleanly where it cannot be built."""

from __future__ import annotations

import pytest
import torch

from dmcourse import measure, moe, stream
from dmcourse.routing import Router

needs_kernel = pytest.mark.skipif(not stream.available(), reason=f"kernel {stream.status()}")


@needs_kernel
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
@pytest.mark.parametrize("out_features,in_features", [(1, 16), (5, 48), (64, 1024), (67, 160)])
def test_linear_stream_equals_matmul(n, out_features, in_features):
    gen = torch.Generator().manual_seed(n * 1000 + out_features)
    x = torch.randn(n, in_features, generator=gen)
    w = torch.randn(out_features, in_features, generator=gen)
    got = stream.linear_stream(x, w)
    assert got.shape == (n, out_features) and got.dtype == torch.float32
    torch.testing.assert_close(got, x.double().matmul(w.double().T).float(), rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_stream_any_thread_count_and_layout(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(32, 3).T  # (3, 32), not contiguous
        w = torch.randn(64, 32)[::2]  # (32, 32), every other row: not contiguous
        torch.testing.assert_close(stream.linear_stream(x, w), x @ w.T, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("x,w,message", [
    (torch.randn(2, 24), torch.randn(4, 24), "multiple of 16"),
    (torch.randn(2, 32), torch.randn(4, 16), "disagree on in"),
    (torch.randn(2, 32, dtype=torch.float64), torch.randn(4, 32, dtype=torch.float64), "float32"),
    (torch.randn(32), torch.randn(4, 32), "2-D"),
])
def test_linear_stream_rejects_bad_input(x, w, message):
    with pytest.raises(ValueError, match=message):
        stream.linear_stream(x, w)


@needs_kernel
def test_read_sum_equals_sum():
    x = torch.rand(100_003)  # not a multiple of the 64-float step or the 4096-float chunk
    assert stream.read_sum(x) == pytest.approx(x.double().sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="contiguous float32"):
        stream.read_sum(torch.rand(10, 10).T)


@needs_kernel
def test_moe_linear_uses_the_kernel_for_decode_rows_only(monkeypatch):
    calls = []
    real = stream.linear_stream
    monkeypatch.setattr(stream, "linear_stream", lambda x, w: calls.append(x.shape[0]) or real(x, w))
    w = torch.randn(64, 32)
    with torch.inference_mode():
        for n in (1, stream.MAX_ROWS, stream.MAX_ROWS + 1, 100):
            moe.linear(torch.randn(n, 32), w)
        moe.linear(torch.randn(3, 24), torch.randn(8, 24))  # in not a multiple of 16: oneDNN
        with stream.off():
            moe.linear(torch.randn(2, 32), w)
    moe.linear(torch.randn(2, 32, requires_grad=True), w)  # needs a gradient: F.linear
    expected = [1, stream.MAX_ROWS]
    assert calls == expected, f"the kernel ran for row counts {calls}, expected only the decode calls {expected}"


@needs_kernel
@pytest.mark.parametrize("dispatch", ["loop", "sorted"])
@pytest.mark.parametrize("tokens", [1, 4, 16])
def test_moe_decode_same_with_and_without_kernel(dispatch, tokens):
    torch.manual_seed(tokens)
    layer = moe.MoE(d_model=64, d_ff=96, n_experts=8, top_k=2, dispatch=dispatch).eval()
    x = torch.randn(1, tokens, 64)
    with torch.inference_mode():
        with stream.off():
            ref = layer(x)
        got = layer(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture
def rebuild(monkeypatch, tmp_path):
    """Build the kernel afresh under the environment the test sets (and again afterwards)."""
    monkeypatch.setenv("DMCOURSE_CACHE", str(tmp_path / "cache"))
    stream._library.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    stream._library.cache_clear()


def test_switched_off_falls_back_to_onednn(rebuild):
    rebuild.setenv("DMCOURSE_NO_KERNEL", "1")
    assert not stream.available() and "DMCOURSE_NO_KERNEL" in stream.status()
    x, w = torch.randn(2, 32), torch.randn(8, 32)
    with torch.inference_mode():
        torch.testing.assert_close(moe.linear(x, w), x @ w.T)
    with pytest.raises(RuntimeError, match="DMCOURSE_NO_KERNEL"):
        stream.linear_stream(x, w)
    with pytest.raises(RuntimeError, match="read_kernel"):
        measure.measure_bandwidth("cpu", kind="read_kernel", buffer_bytes=measure.MiB)


def test_no_compiler_says_so(rebuild):
    rebuild.setenv("CC", "no-such-compiler-dmcourse")
    assert not stream.available()
    assert "no C compiler" in stream.status() and "no-such-compiler-dmcourse" in stream.status()


def test_broken_compiler_says_so(rebuild, tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\necho 'fakecc: cannot compile' >&2\nexit 1\n")
    fake.chmod(0o755)
    rebuild.setenv("CC", str(fake))
    assert not stream.available() and "cannot compile" in stream.status()


@needs_kernel
def test_build_is_cached(rebuild, tmp_path):
    assert stream.available()
    built = sorted((tmp_path / "cache").glob("stream-*.so"))
    assert len(built) == 1 and str(built[0]) in stream.status()
    stream._library.cache_clear()
    mtime = built[0].stat().st_mtime_ns
    assert stream.available() and built[0].stat().st_mtime_ns == mtime, "the second load rebuilt the kernel"
    assert sorted((tmp_path / "cache").glob("stream-*.so")) == built


@needs_kernel
def test_measure_bandwidth_with_the_read_kernel():
    m = measure.measure_bandwidth("cpu", kind="read_kernel", buffer_bytes=2 * measure.MiB, warmup=1, repeats=3)
    assert m.value > 0 and m.settings["kind"] == "read_kernel"
    assert m.settings["counted_bytes_per_call"] == 2 * measure.MiB  # read only: the bytes once
