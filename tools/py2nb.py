"""Author a notebook as a percent-format script, then convert it (outputs-free) to .ipynb.

    python tools/py2nb.py draft.py book/02_dense.ipynb
    python tools/notebooks.py stamp      # then add the setup cell and Colab metadata

Cell markers (one per line, as in jupytext's percent format):
    # %%                                   a code cell
    # %% [markdown]                        a markdown cell (each line starts with "# ")
    # %% tags=["hide-input"]               code cell with tags
    # %% nbgrader="solution" id="flops"    nbgrader solution cell (graded=False)
    # %% nbgrader="tests" id="t_flops" points=2   nbgrader autograded test cell
    # %% [markdown] nbgrader="answer" id="why" points=1   manually graded answer
    # %% nbgrader="readonly" id="given"    locked cell students cannot change
The committed artifact is the .ipynb; the draft is a convenience and is not kept.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

MARKER = re.compile(r"^# %%(?P<md> \[markdown\])?(?P<rest>.*)$")
ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\[[^\]]*\]|\d+)')


def _nbgrader(kind: str, grade_id: str, points: int | None) -> dict:
    meta = {"grade": False, "grade_id": grade_id, "locked": False, "schema_version": 3,
            "solution": False, "task": False}
    if kind == "solution":
        meta["solution"] = True
    elif kind == "tests":
        meta.update(grade=True, locked=True, points=points or 1)
    elif kind == "answer":
        meta.update(grade=True, solution=True, points=points or 1)
    elif kind == "readonly":
        meta["locked"] = True
    else:
        raise ValueError(f"unknown nbgrader cell kind {kind!r}")
    return meta


def convert(text: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    chunks: list[tuple[bool, dict, list[str]]] = []
    for line in text.splitlines():
        m = MARKER.match(line)
        if m:
            attrs = {k: json.loads(v) for k, v in ATTR.findall(m["rest"])}
            chunks.append((bool(m["md"]), attrs, []))
        elif chunks:
            chunks[-1][2].append(line)
    for is_md, attrs, lines in chunks:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if is_md:
            cell = nbformat.v4.new_markdown_cell("\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in lines))
        else:
            cell = nbformat.v4.new_code_cell("\n".join(lines))
        if "tags" in attrs:
            cell.metadata["tags"] = attrs["tags"]
        if "nbgrader" in attrs:
            cell.metadata["nbgrader"] = _nbgrader(attrs["nbgrader"], attrs["id"], attrs.get("points"))
        if "id" in attrs:
            cell.id = attrs["id"]
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    nbformat.write(convert(src.read_text()), dst)
    print(f"wrote {dst}")
