"""Which device and dtype a notebook uses, what the machine is, seeding and Colab detection.

Chapter 1 ("Your device and how we measure") introduces it.

The course runs everywhere: CUDA when there is a GPU, else the CPU. The dtype follows the hardware:

* compute capability >= 8.0 (A100, L4, H100, H200, RTX 30xx and newer): ``torch.bfloat16``
* older CUDA GPUs (T4 is 7.5, V100 is 7.0): ``torch.float16`` -- their tensor cores have no bf16,
  even though ``torch.cuda.is_bf16_supported()`` may answer True (it emulates bf16 slowly)
* CPU: ``torch.float32``
"""

from __future__ import annotations

import os
import platform
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

from dmcourse.checks import check_int

BF16_MIN_CAPABILITY: tuple[int, int] = (8, 0)


def pick_device(prefer: str | None = None) -> torch.device:
    """The device to run on: ``prefer`` if given ("cpu", "cuda", "cuda:1"), else CUDA when available.

    Raises ``ValueError`` for an unknown device string and ``RuntimeError`` when CUDA is asked
    for on a machine without it.
    """
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(prefer)
    except RuntimeError as err:
        raise ValueError(f"unknown device {prefer!r}: expected 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {prefer!r} asked for, but torch sees no CUDA GPU on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {prefer!r} is not supported by the course: use 'cpu' or 'cuda'")
    return device


def pick_dtype(device: torch.device | str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """The compute dtype the course uses on ``device``.

    ``capability`` is the CUDA compute capability ``(major, minor)``; when omitted for a CUDA
    device it is read from the GPU. bf16 needs capability >= 8.0, older GPUs get fp16, CPU fp32.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.float32
    if device.type != "cuda":
        raise ValueError(f"no dtype rule for device type {device.type!r}: expected 'cpu' or 'cuda'")
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if len(capability) != 2:
        raise ValueError(f"capability must be (major, minor), got {capability!r}")
    for part, value in zip(("major", "minor"), capability):
        check_int(f"capability {part}", value, 0)
    return torch.bfloat16 if tuple(capability) >= BF16_MIN_CAPABILITY else torch.float16


@dataclass(frozen=True)
class DeviceInfo:
    """What the notebook runs on. ``memory_bytes`` is GPU memory on CUDA, system RAM on CPU."""

    device: torch.device
    name: str
    dtype: torch.dtype
    capability: tuple[int, int] | None
    memory_bytes: int | None
    cpu_threads: int
    torch_version: str
    python_version: str
    in_colab: bool

    def summary(self) -> str:
        """One line naming the device, e.g. for figure captions and measurement records."""
        mem = f", {self.memory_bytes / 2**30:.1f} GiB" if self.memory_bytes else ""
        cap = f", sm_{self.capability[0]}{self.capability[1]}" if self.capability else ""
        return f"{self.name} ({self.device.type}{cap}{mem}, {str(self.dtype).removeprefix('torch.')})"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _system_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_info(device: torch.device | str | None = None) -> DeviceInfo:
    """Describe ``device`` (default: :func:`pick_device`)."""
    device = pick_device(None if device is None else str(device))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        capability: tuple[int, int] | None = (props.major, props.minor)
        memory: int | None = int(props.total_memory)
        name = props.name
    else:
        capability, name, memory = None, _cpu_name(), _system_memory_bytes()
    return DeviceInfo(
        device=device,
        name=name,
        dtype=pick_dtype(device, capability),
        capability=capability,
        memory_bytes=memory,
        cpu_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        in_colab=in_colab(),
    )


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same way."""
    check_int("seed", seed, 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
