"""Read a submitted notebook, or say in one line why it cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat


class InvalidNotebook(ValueError):
    """The file is not a Jupyter notebook nbgrader can read (the message says why)."""


def read(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` as nbformat 4; raises InvalidNotebook with the reason."""
    raw = Path(path).read_bytes()
    if not raw.strip():
        raise InvalidNotebook("empty file")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InvalidNotebook(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InvalidNotebook(f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells", data.get("worksheets")), list):
        raise InvalidNotebook("JSON but not a notebook (no list of cells)")
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4, capture_validation_error={})
    except Exception as e:  # nbformat raises many kinds for malformed notebooks
        raise InvalidNotebook(f"not a readable notebook: {type(e).__name__}: {e}"[:300]) from None
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") not in ("code", "markdown", "raw") or not isinstance(cell.get("source"), str):
            raise InvalidNotebook(f"cell {i} is malformed (cell_type {cell.get('cell_type')!r})")
    return nb
