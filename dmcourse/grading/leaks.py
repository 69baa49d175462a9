"""Find hidden-test code in files students see (feedback HTML, the release)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import nbformat

from dmcourse.grading.safety import split_hidden, strip_ansi

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
MIN_CHARS = 12  # shorter lines ("else:", "pass") say nothing about the tests


def _flat(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def hidden_lines(source_notebook: Path, release_notebook: Path | None = None) -> list[str]:
    """Lines of the hidden tests of a source (solutions/) notebook worth looking for: not visible
    in their own cell, nor anywhere in the release (students see those anyway)."""
    shown = visible_text(release_notebook) if release_notebook is not None else ""
    out = []
    for cell in nbformat.read(source_notebook, as_version=4).cells:
        visible, hidden = split_hidden(cell.source)
        mine = {_flat(v) for v in visible}
        out += [
            _flat(h) for h in hidden if len(_flat(h)) >= MIN_CHARS and _flat(h) not in mine and _flat(h) not in shown
        ]
    return sorted(set(out))


def visible_text(path: Path) -> str:
    """What a reader sees in a file: HTML tags removed and entities decoded, whitespace collapsed."""
    path = Path(path)
    text = path.read_text(errors="replace")
    if path.suffix.lower() == ".ipynb":
        parts = []
        for cell in nbformat.reads(text, as_version=4).cells:
            parts.append(cell.source)
            for out in cell.get("outputs", []):
                parts += [out.get("text", ""), out.get("evalue", ""), *out.get("traceback", [])]
                parts += [v for v in out.get("data", {}).values() if isinstance(v, str)]
        text = strip_ansi("\n".join(parts))
    elif path.suffix.lower() in (".html", ".htm"):
        text = html.unescape(_TAG.sub("", text))
    return _flat(text)


def leaked(path: Path, lines: list[str]) -> list[str]:
    """The hidden-test lines that appear in ``path``."""
    text = visible_text(path)
    return [ln for ln in lines if ln in text]
