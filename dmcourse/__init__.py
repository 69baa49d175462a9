"""dmcourse: the helper package of the course "Dense models vs Mixture-of-Experts".

Each module holds one idea of the course; chapters build a small version inline, check that the
module computes the same thing, and use the module from then on. Chapter 1 ("Your device and how
we measure") imports it first; each module's docstring names the chapter that introduces it, and
``tests/test_structure.py`` declares which module may import which (lower layers only).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from dmcourse._version import __version__

#: The course's main names, imported from their modules on first use (PEP 562), so that
#: ``import dmcourse`` (and the instructor CLI, ``python -m dmcourse.grading``) does not import torch.
_EXPORTS: dict[str, str] = {
    "ParamCount": "accounting",
    "count_params": "accounting",
    "ModelConfig": "configs",
    "load_preset": "configs",
    "DeviceInfo": "device",
    "device_info": "device",
    "in_colab": "device",
    "pick_device": "device",
    "pick_dtype": "device",
    "seed_everything": "device",
    "MoE": "moe",
    "from_mixtral_block": "moe",
    "Router": "routing",
    "Routing": "routing",
    "Timing": "timing",
    "time_fn": "timing",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from dmcourse.accounting import ParamCount as ParamCount
    from dmcourse.accounting import count_params as count_params
    from dmcourse.configs import ModelConfig as ModelConfig
    from dmcourse.configs import load_preset as load_preset
    from dmcourse.device import DeviceInfo as DeviceInfo
    from dmcourse.device import device_info as device_info
    from dmcourse.device import in_colab as in_colab
    from dmcourse.device import pick_device as pick_device
    from dmcourse.device import pick_dtype as pick_dtype
    from dmcourse.device import seed_everything as seed_everything
    from dmcourse.moe import MoE as MoE
    from dmcourse.moe import from_mixtral_block as from_mixtral_block
    from dmcourse.routing import Router as Router
    from dmcourse.routing import Routing as Routing
    from dmcourse.timing import Timing as Timing
    from dmcourse.timing import time_fn as time_fn


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"dmcourse.{_EXPORTS[name]}"), name)
        globals()[name] = value  # the next lookup is an ordinary attribute
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"dmcourse.{name}") is not None:
        return importlib.import_module(f"dmcourse.{name}")  # dmcourse.matmul without importing it first
    raise AttributeError(f"module 'dmcourse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
