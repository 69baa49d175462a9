"""Hidden tests use this to make sure an answer does its own work.

An exercise asks students to implement something that ``dmcourse`` also implements. A submission
that simply calls the package must not pass, so hidden tests run the student's function under a
profiler and fail if any ``dmcourse`` code (other than this guard) runs during the call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import dmcourse

_PACKAGE_DIR = os.path.dirname(os.path.abspath(dmcourse.__file__)) + os.sep
_THIS_FILE = os.path.abspath(__file__)


def dmcourse_calls(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """Run ``fn(*args, **kwargs)``; return its result and the ``dmcourse`` functions it entered."""
    seen: list[str] = []

    def profiler(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event == "call":
            filename = os.path.abspath(frame.f_code.co_filename)
            if filename.startswith(_PACKAGE_DIR) and filename != _THIS_FILE:
                module = os.path.relpath(filename, _PACKAGE_DIR).removesuffix(".py").replace(os.sep, ".")
                seen.append(f"dmcourse.{module}.{frame.f_code.co_name}")

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    return result, seen


def call_without_dmcourse(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` and return its result; raise ``AssertionError`` if it used ``dmcourse`` code."""
    result, seen = dmcourse_calls(fn, *args, **kwargs)
    if seen:
        names = ", ".join(sorted(set(seen)))
        raise AssertionError(
            f"{getattr(fn, '__name__', 'your function')} calls the course package ({names}). "
            "The exercise asks you to write it yourself from Python/torch primitives."
        )
    return result
