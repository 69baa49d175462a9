"""dmcourse.stream: the opt-in C decode kernel equals x @ w.T, rejects empty and mis-shaped inputs, is a
candidate of dmcourse.matmul only where opted in and threaded, and falls back cleanly (or fails loudly
under DMCOURSE_REQUIRE_KERNEL) where it cannot be built."""

from __future__ import annotations

import pytest
import torch

from dmcourse import matmul, measure, moe, stream

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


@pytest.mark.parametrize(
    "x,w,message",
    [
        (torch.randn(2, 24), torch.randn(4, 24), "multiple of 16"),
        (torch.randn(2, 32), torch.randn(4, 16), "disagree on in"),
        (torch.randn(2, 32, dtype=torch.float64), torch.randn(4, 32, dtype=torch.float64), "float32"),
        (torch.randn(32), torch.randn(4, 32), "2-D"),
        (torch.randn(0, 32), torch.randn(4, 32), "empty"),
        (torch.randn(2, 0), torch.randn(4, 0), "empty"),
        (torch.randn(2, 32), torch.randn(0, 32), "empty"),
    ],
)
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
def test_the_kernel_is_a_candidate_only_when_opted_in_and_threaded(monkeypatch, request):
    request.addfinalizer(stream._opted_by_env.cache_clear)
    monkeypatch.delenv("DMCOURSE_KERNEL", raising=False)
    monkeypatch.setattr(stream, "_opted_in", None)
    stream._opted_by_env.cache_clear()
    assert "stream" not in matmul.candidates(torch.float32), "the kernel must be opt-in"
    monkeypatch.setenv("DMCOURSE_KERNEL", "1")
    stream._opted_by_env.cache_clear()
    assert ("stream" in matmul.candidates(torch.float32)) == stream.threaded()
    stream.enable(False)  # code wins over the environment
    assert "stream" not in matmul.candidates(torch.float32)
    stream.enable(True)
    monkeypatch.setattr(stream, "threaded", lambda: False)  # e.g. Apple clang: no OpenMP
    assert not stream.enabled() and "stream" not in matmul.candidates(torch.float32)
    assert "stream" not in matmul.candidates(torch.bfloat16)
    with pytest.raises(TypeError, match="True, False or None"):
        stream.enable("yes")


@needs_kernel
def test_built_with_openmp_here():
    """Linux CI builds with gcc -fopenmp: a thread-less build here would be a silent slowdown."""
    assert stream.threaded() and "OpenMP" in stream.status()


@pytest.fixture
def rebuild(monkeypatch, tmp_path):
    """Build the kernel afresh under the environment the test sets (and again afterwards)."""
    monkeypatch.setenv("DMCOURSE_CACHE", str(tmp_path / "cache"))
    # these tests break the build on purpose; CI's DMCOURSE_REQUIRE_KERNEL=1 is for the real one
    monkeypatch.delenv("DMCOURSE_REQUIRE_KERNEL", raising=False)
    stream._library.cache_clear()
    stream._opted_by_env.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    stream._library.cache_clear()
    stream._opted_by_env.cache_clear()


def test_switched_off_falls_back(rebuild):
    rebuild.setenv("DMCOURSE_NO_KERNEL", "1")
    rebuild.setenv("DMCOURSE_KERNEL", "1")  # opted in, but not built: not a candidate
    assert not stream.available() and not stream.enabled() and "DMCOURSE_NO_KERNEL" in stream.status()
    assert "stream" not in matmul.candidates(torch.float32)
    x, w = torch.randn(2, 32), torch.randn(8, 32)
    with torch.inference_mode():
        torch.testing.assert_close(moe.linear(x, w), x @ w.T)
    with pytest.raises(RuntimeError, match="DMCOURSE_NO_KERNEL"):
        matmul.set_choice("stream")
    with pytest.raises(RuntimeError, match="DMCOURSE_NO_KERNEL"):
        stream.linear_stream(x, w)
    with pytest.raises(RuntimeError, match="read_kernel"):
        measure.measure_bandwidth("cpu", kind="read_kernel", buffer_bytes=measure.MiB)


def test_no_compiler_says_so(rebuild):
    rebuild.setenv("CC", "no-such-compiler-dmcourse")
    assert not stream.available()
    assert "no C compiler" in stream.status() and "no-such-compiler-dmcourse" in stream.status()


def test_require_kernel_makes_a_failed_build_an_error(rebuild):
    rebuild.setenv("CC", "no-such-compiler-dmcourse")
    rebuild.setenv("DMCOURSE_REQUIRE_KERNEL", "1")
    with pytest.raises(RuntimeError, match="DMCOURSE_REQUIRE_KERNEL.*no C compiler"):
        stream.available()


def test_without_openmp_it_runs_on_one_thread_and_is_not_enabled(rebuild, tmp_path):
    """A compiler that refuses -fopenmp (Apple clang does): the build falls back to no OpenMP, computes
    correctly, says so, is never a candidate, and DMCOURSE_REQUIRE_KERNEL rejects it."""
    fake = tmp_path / "noompcc"
    fake.write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && { echo "no -fopenmp" >&2; exit 1; }; done\nexec cc "$@"\n'
    )
    fake.chmod(0o755)
    rebuild.setenv("CC", str(fake))
    rebuild.setenv("DMCOURSE_KERNEL", "1")
    if not stream.available():
        pytest.skip(f"no working cc here: {stream.status()}")
    assert not stream.threaded() and not stream.enabled() and "no OpenMP" in stream.status()
    x, w = torch.randn(3, 32), torch.randn(8, 32)
    torch.testing.assert_close(stream.linear_stream(x, w), x @ w.T, rtol=1e-5, atol=1e-5)
    stream._library.cache_clear()
    rebuild.setenv("DMCOURSE_REQUIRE_KERNEL", "1")
    with pytest.raises(RuntimeError, match="without OpenMP"):
        stream.available()


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
