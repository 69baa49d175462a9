"""Chapter 2 (Dense models, "Does it fit on one GPU?"): datasheet figures, one data file per kind --
GPUs in ``dmcourse/data/gpus.json`` (:func:`gpus`, :func:`gpu`), interconnects in
``dmcourse/data/links.json`` (:func:`links`, used by the communication model of chapter 8).

Every figure there is a vendor datasheet number with its source URL; wherever the book shows one
it says "datasheet". ``memory_bytes`` is the datasheet's GB times 1e9, as printed; a program can
allocate somewhat less (driver, ECC, CUDA context).

The loader is generic: an entry must have ``name``, ``memory_bytes`` and ``source``; any other
field (bandwidth, peak FLOP/s, ...) is kept and readable as ``spec.field`` or ``spec.get("field")``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from dmcourse.checks import check_int, positive_float

REQUIRED_FIELDS = ("name", "memory_bytes", "source")


@dataclass(frozen=True)
class GPUSpec:
    """One GPU's datasheet entry. ``memory_bytes``: datasheet memory in bytes (GB x 1e9).
    Other fields of the JSON entry are in ``data`` and readable as attributes."""

    name: str
    memory_bytes: int
    source: str
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getattr__(self, key: str) -> Any:
        # only called for names that are not dataclass fields
        data = object.__getattribute__(self, "data")
        if key in data:
            return data[key]
        raise AttributeError(f"GPU {self.name!r} has no field {key!r} in gpus.json; fields: {sorted(data)}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def memory_gb(self) -> float:
        """Datasheet memory in GB (1e9 bytes)."""
        return self.memory_bytes / 1e9

    @property
    def memory_gib(self) -> float:
        """The same memory in GiB (2**30 bytes)."""
        return self.memory_bytes / 2**30


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def parse_gpus(doc: Mapping[str, Any]) -> dict[str, GPUSpec]:
    """Validate a gpus.json document (``{"gpus": [{...}, ...]}``) and return ``{name: GPUSpec}``
    in file order. Raises ``ValueError`` naming the entry and field that is wrong."""
    entries = doc.get("gpus") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError("gpus.json must hold a non-empty list under 'gpus'")
    out: dict[str, GPUSpec] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"gpus.json entry {i} is not an object")
        missing = [k for k in REQUIRED_FIELDS if k not in entry]
        if missing:
            raise ValueError(f"gpus.json entry {i} ({entry.get('name', '?')}) lacks {missing}")
        name, mem, src = entry["name"], entry["memory_bytes"], entry["source"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"gpus.json entry {i}: name must be a non-empty string, got {name!r}")
        check_int(f"gpus.json {name}: memory_bytes", mem)
        if not isinstance(src, str) or not src.startswith("http"):
            raise ValueError(f"gpus.json {name}: source must be a URL, got {src!r}")
        if _key(name) in {_key(n) for n in out}:
            raise ValueError(f"gpus.json: duplicate GPU name {name!r}")
        out[name] = GPUSpec(name=name, memory_bytes=mem, source=src, data=dict(entry))
    return out


def _data(file: str) -> Any:
    """The JSON document ``dmcourse/data/<file>`` (shipped in the wheel: Colab reads it too)."""
    return json.loads((resources.files("dmcourse") / "data" / file).read_text())


@lru_cache(maxsize=1)
def _load() -> dict[str, GPUSpec]:
    return parse_gpus(_data("gpus.json"))


def gpus() -> dict[str, GPUSpec]:
    """All GPUs in ``dmcourse/data/gpus.json``, ``{name: GPUSpec}`` in file order."""
    return dict(_load())


def gpu(name: str | GPUSpec) -> GPUSpec:
    """The GPU called ``name`` (case, spaces and dashes ignored: "a100 80gb" works)."""
    if isinstance(name, GPUSpec):
        return name
    if not isinstance(name, str):
        raise ValueError(f"GPU name must be a string, got {name!r}")
    table = _load()
    for spec_name, spec in table.items():
        if _key(spec_name) == _key(name):
            return spec
    raise ValueError(f"unknown GPU {name!r}; known (datasheet table): {', '.join(table)}")


@dataclass(frozen=True)
class LinkSpec:
    """One interconnect's datasheet figure: ``bytes_per_s`` per GPU and per direction (what one rank
    can send while it receives as much); ``datasheet``: how that follows from the printed figure;
    ``source``: the page that prints it."""

    name: str
    bytes_per_s: float
    datasheet: str
    source: str


def parse_links(doc: Mapping[str, Any]) -> dict[str, LinkSpec]:
    """Validate a links.json document (``{"links": [{...}, ...]}``) and return ``{name: LinkSpec}``
    in file order. Raises ``ValueError`` naming the entry and field that is wrong."""
    entries = doc.get("links") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError("links.json must hold a non-empty list under 'links'")
    out: dict[str, LinkSpec] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != {"name", "bytes_per_s", "datasheet", "source"}:
            raise ValueError(
                f"links.json entry {i} must have exactly name, bytes_per_s, datasheet, source; got {entry!r}"
            )
        rate = entry["bytes_per_s"]
        positive_float(f"links.json {entry['name']!r}: bytes_per_s", rate)
        if not str(entry["source"]).startswith("http"):
            raise ValueError(f"links.json {entry['name']!r}: source must be a URL, got {entry['source']!r}")
        if entry["name"] in out:
            raise ValueError(f"links.json: duplicate link name {entry['name']!r}")
        out[entry["name"]] = LinkSpec(
            name=entry["name"], bytes_per_s=float(rate), datasheet=entry["datasheet"], source=entry["source"]
        )
    return out


@lru_cache(maxsize=1)
def _load_links() -> dict[str, LinkSpec]:
    return parse_links(_data("links.json"))


def links() -> dict[str, LinkSpec]:
    """All links in ``dmcourse/data/links.json``, ``{name: LinkSpec}`` in file order."""
    return dict(_load_links())
