from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dmcourse import device_info, in_colab, pick_device, pick_dtype, seed_everything


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((7, 5), torch.float16),  # T4: no bf16 tensor cores, whatever is_bf16_supported() says
        ((7, 0), torch.float16),  # V100
        ((8, 0), torch.bfloat16),  # A100
        ((8, 9), torch.bfloat16),  # L4
        ((9, 0), torch.bfloat16),
    ],  # H100 / H200
)
def test_cuda_dtype_follows_compute_capability(capability, expected) -> None:
    assert pick_dtype("cuda", capability) == expected


def test_cpu_uses_fp32() -> None:
    assert pick_dtype("cpu") == torch.float32
    assert pick_dtype(torch.device("cpu"), (9, 0)) == torch.float32


@pytest.mark.parametrize("bad", [(8,), (8, -1), ("8", "0"), (8.0, 0)])
def test_bad_capability_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="capability"):
        pick_dtype("cuda", bad)


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            pick_device("cuda")


def test_device_info_on_cpu() -> None:
    info = device_info("cpu")
    assert info.device.type == "cpu" and info.dtype == torch.float32 and info.capability is None
    assert info.memory_bytes is None or info.memory_bytes > 2**28
    assert info.cpu_threads >= 1 and info.torch_version == torch.__version__
    assert "cpu" in info.summary() and "float32" in info.summary()


def test_seed_everything_repeats_all_generators() -> None:
    def draw():
        g = seed_everything(123)
        return random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=g))

    assert draw() == draw()
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_in_colab(monkeypatch) -> None:
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert in_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-20261101")
    assert in_colab() is True
