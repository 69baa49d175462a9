"""dmcourse: the helper package of the course "Dense models vs Mixture-of-Experts".

Each module holds one idea of the course; chapters build a small version inline, check that the
module computes the same thing, and use the module from then on. Chapter 1 ("Your device and how
we measure") imports it first; each module's docstring names the chapter that introduces it, and
``tests/test_structure.py`` declares which module may import which (lower layers only).
"""

from dmcourse._version import __version__
from dmcourse.accounting import ParamCount, count_params
from dmcourse.configs import ModelConfig, load_preset
from dmcourse.device import DeviceInfo, device_info, in_colab, pick_device, pick_dtype, seed_everything
from dmcourse.moe import MoE, from_mixtral_block
from dmcourse.routing import Router, Routing
from dmcourse.timing import Timing, time_fn

__all__ = [
    "__version__",
    "DeviceInfo",
    "MoE",
    "ModelConfig",
    "ParamCount",
    "Router",
    "Routing",
    "Timing",
    "count_params",
    "device_info",
    "from_mixtral_block",
    "in_colab",
    "load_preset",
    "pick_device",
    "pick_dtype",
    "seed_everything",
    "time_fn",
]
