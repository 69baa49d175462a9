"""Measurement records shipped with the package: find them, read them, check them, write them.

Introduced in chapter 5 ("Rooflines on your own device"); chapters 3 and 6 read them too. A record
is a JSON file in ``dmcourse/data/records/`` whose name says its kind::

    roofline_<device>_<date>.json    python -m dmcourse.records      (copy/read bandwidth, matmul FLOP/s)
    moe_dispatch_<device>.json       python benchmarks/moe_dispatch.py --json ...
    gpucheck_<device>.json           python -m dmcourse.gpucheck      (every GPU figure of the course)

Records are read with :mod:`importlib.resources`, never relative to a notebook or the repository,
so a notebook opened alone (Colab, a fresh folder) sees the same records as the book build. Every
record names its device, its date and the command that made it; the book prints them with the
reader's own measurement, and says so when no GPU record is shipped (nothing here is invented).

This module also holds the roofline record (schema, :func:`measure_ceilings`, :func:`make_record`)
and the command line ``python -m dmcourse.records`` (see :func:`main`).
Units: bytes, seconds, bytes/s, FLOP/s.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import torch

from dmcourse import measure
from dmcourse._version import __version__
from dmcourse.checks import check_int, positive_float
from dmcourse.device import pick_device

RECORD_SCHEMA = 1
RECORD_PREFIX = "roofline_"
#: Record kind -> file name prefix in ``dmcourse/data/records/``.
KINDS: dict[str, str] = {"roofline": "roofline_", "moe_dispatch": "moe_dispatch_", "gpucheck": "gpucheck_"}
NO_GPU_RECORD = "no GPU record shipped"


# --------------------------------------------------------------------------------------------
# Finding and reading shipped records
# --------------------------------------------------------------------------------------------


def records_dir() -> Any:
    """The package's record folder (an :mod:`importlib.resources` Traversable, also inside a wheel)."""
    return resources.files("dmcourse") / "data" / "records"


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}: expected one of {sorted(KINDS)}")
    return kind


def kind_of(name: str) -> str:
    """The kind of a record file name (``"moe_dispatch_cpu.json"`` -> ``"moe_dispatch"``)."""
    for kind, prefix in KINDS.items():
        if name.startswith(prefix) and name.endswith(".json"):
            return kind
    raise ValueError(
        f"{name!r} is not a record file name: expected <prefix><device>.json with a prefix "
        f"among {sorted(KINDS.values())}"
    )


def validate(kind: str, record: object) -> dict[str, Any]:
    """Return ``record`` if it is a well-formed record of ``kind``, else raise ValueError naming the
    missing or bad field."""
    return VALIDATORS[_check_kind(kind)](record)


def load(kind: str, device_type: str | None = None) -> list[dict[str, Any]]:
    """Every shipped record of ``kind`` (validated), sorted by device and date; only those measured on
    ``device_type`` (``"cpu"``/``"cuda"``) when given. Empty list when none is shipped."""
    _check_kind(kind)
    if device_type not in (None, "cpu", "cuda"):
        raise ValueError(f"device_type must be None, 'cpu' or 'cuda', got {device_type!r}")
    folder = records_dir()
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith(KINDS[kind]) and entry.name.endswith(".json"):
            try:
                record = validate(kind, json.loads(entry.read_text()))
            except (ValueError, TypeError) as err:
                raise ValueError(f"shipped record {entry.name} is not valid: {err}") from err
            if device_type is None or record["device_type"] == device_type:
                found.append(record)
    return sorted(found, key=lambda r: (r["device"], r["date"]))


def shipped() -> dict[str, list[dict[str, Any]]]:
    """All shipped records by kind (every kind present, possibly empty)."""
    return {kind: load(kind) for kind in KINDS}


def shipped_records() -> list[dict[str, Any]]:
    """Roofline records of GPUs shipped with the package: the ``roofline`` records and the
    ``roofline`` part of each ``gpucheck`` record, sorted by device and date."""
    found = load("roofline", "cuda") + [r["roofline"] for r in load("gpucheck", "cuda")]
    return sorted(found, key=lambda r: (r["device"], r["date"]))


def gpu_summary(section: str) -> str:
    """Lines that put each shipped GPU record's ``section`` beside the reader's measurement, or
    ``"no GPU record shipped ..."``. ``section``: ``"roofline"``, ``"moe"`` or ``"economics"``."""
    if section not in ("roofline", "moe", "economics"):
        raise ValueError(f"section must be 'roofline', 'moe' or 'economics', got {section!r}")
    checks = load("gpucheck", "cuda")
    lines = []
    if section == "roofline":
        for r in shipped_records():
            bw = r["figures"]["bandwidth_bytes_per_s"]
            peaks = ", ".join(f"{k} {v / 1e12:.1f}" for k, v in r["figures"]["matmul_flops_per_s"].items())
            lines.append(
                f"{r['device']} (measured {r['date'][:10]}, torch {r['versions']['torch']}): copy "
                f"{bw.get('copy', 0) / 1e12:.2f} TB/s, read {bw.get('read', 0) / 1e12:.2f} TB/s, "
                f"matmul TFLOP/s: {peaks}  [{r['command']}]"
            )
    for r in checks if section != "roofline" else []:
        m = r["measurements"]
        if section == "moe" and "moe_dispatch" in m:
            d = m["moe_dispatch"]["result"]
            p = d["prefill_s"]
            best = min((t, n) for n, t in p.items() if n.startswith("moe"))
            lines.append(
                f"{r['device']} (measured {r['date'][:10]}): {d['settings']['tokens']} prefill tokens, "
                f"{d['dtype']}: best MoE ({best[1]}) {p['dense SwiGLU'] / best[0]:.2f}x the throughput of "
                f"the equal-FLOPs dense SwiGLU  [{m['moe_dispatch']['command']}]"
            )
            for row in d["decode"]:
                t = min(v for k, v in row["times_s"].items() if k.startswith("moe"))
                lines.append(
                    f"  decode {row['tokens']:4d} tokens: {row['experts_touched']} experts touched, "
                    f"best MoE {t * 1e3:.3f} ms = {t / row['floor_s']:.2f}x the floor"
                )
        if section == "economics" and "roofline" in m:
            f = r["roofline"]["figures"]
            lines.append(
                f"{r['device']} (measured {r['date'][:10]}): copy bandwidth "
                f"{f['bandwidth_bytes_per_s'].get('copy', 0) / 1e12:.2f} TB/s, matmul "
                + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in f["matmul_flops_per_s"].items())
                + " (the calculator uses datasheet figures)"
            )
    if not lines:
        return (
            f"{NO_GPU_RECORD}: no GPU has run `python -m dmcourse.gpucheck` for this course yet, so the "
            "GPU figures here are datasheet figures, labelled as such."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Validation per kind
# --------------------------------------------------------------------------------------------


def _require(record: object, what: str, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise TypeError(f"a {what} record is a JSON object, got {type(record).__name__}")
    missing = set(keys) - set(record)
    if missing:
        raise ValueError(f"{what} record lacks {sorted(missing)}")
    if record.get("device_type") not in ("cpu", "cuda"):
        raise ValueError(f"{what} record device_type = {record.get('device_type')!r}: expected 'cpu' or 'cuda'")
    return record


def validate_record(record: object) -> dict[str, Any]:
    """Return ``record`` if it is a roofline record this module can read, else raise ValueError."""
    record = _require(record, "roofline", ("schema", "device", "device_type", "date", "versions", "command", "figures"))
    if record["schema"] != RECORD_SCHEMA:
        raise ValueError(f"roofline record schema {record['schema']!r} is not {RECORD_SCHEMA}")
    figures = record["figures"]
    for group in ("bandwidth_bytes_per_s", "matmul_flops_per_s"):
        values = figures.get(group) if isinstance(figures, dict) else None
        if not isinstance(values, dict) or not values:
            raise ValueError(f"roofline record figures.{group} must be a non-empty object")
        for key, value in values.items():
            positive_float(f"roofline record figures.{group}.{key}", value)
    return record


def validate_moe_dispatch(record: object) -> dict[str, Any]:
    """A record of ``benchmarks/moe_dispatch.py --json``: prefill times and decode rows."""
    record = _require(
        record,
        "moe_dispatch",
        ("device", "device_type", "dtype", "date", "torch", "command", "settings", "prefill_s", "ceilings", "decode"),
    )
    for name, t in record["prefill_s"].items():
        positive_float(f"moe_dispatch record prefill_s[{name!r}]", t)
    if not isinstance(record["decode"], list) or not record["decode"]:
        raise ValueError("moe_dispatch record decode must be a non-empty list of rows")
    for row in record["decode"]:
        for key in ("tokens", "experts_touched", "floor_s", "times_s"):
            if key not in row:
                raise ValueError(f"moe_dispatch record decode row lacks {key!r}: {sorted(row)}")
        positive_float(f"moe_dispatch record decode[tokens={row['tokens']}].floor_s", row["floor_s"])
    return record


def validate_gpucheck(record: object) -> dict[str, Any]:
    """A record of ``python -m dmcourse.gpucheck``: device, date, versions, the command, and for each
    measurement ``{"command", "seconds", "result"}``; notebooks run and what was skipped and why."""
    record = _require(
        record,
        "gpucheck",
        (
            "schema",
            "device",
            "device_type",
            "date",
            "versions",
            "command",
            "quick",
            "measurements",
            "notebooks",
            "skipped",
        ),
    )
    if record["schema"] != RECORD_SCHEMA:
        raise ValueError(f"gpucheck record schema {record['schema']!r} is not {RECORD_SCHEMA}")
    if not isinstance(record["measurements"], dict):
        raise TypeError("gpucheck record measurements must be an object")
    for name, m in record["measurements"].items():
        if not isinstance(m, dict) or not {"command", "seconds", "result"} <= set(m):
            raise ValueError(f"gpucheck record measurement {name!r} must hold command, seconds and result")
        if not isinstance(m["command"], str) or not m["command"]:
            raise ValueError(f"gpucheck record measurement {name!r} has no command")
    if "roofline" in record:
        validate_record(record["roofline"])
    if "moe_dispatch" in record["measurements"]:
        validate_moe_dispatch(record["measurements"]["moe_dispatch"]["result"])
    for nb in record["notebooks"]:
        if not isinstance(nb, dict) or nb.get("status") not in ("ok", "failed", "skipped"):
            raise ValueError(f"gpucheck record notebook entry {nb!r} needs a status ok/failed/skipped")
    for s in record["skipped"]:
        if not isinstance(s, dict) or not s.get("what") or not s.get("why"):
            raise ValueError(f"gpucheck record skipped entry {s!r} needs 'what' and 'why'")
    return record


VALIDATORS: dict[str, Callable[[object], dict[str, Any]]] = {
    "roofline": validate_record,
    "moe_dispatch": validate_moe_dispatch,
    "gpucheck": validate_gpucheck,
}


# --------------------------------------------------------------------------------------------
# The roofline record: measure a device, write / read JSON, the command line
# --------------------------------------------------------------------------------------------


def measure_ceilings(
    device: torch.device | str | None = None,
    *,
    quick: bool = False,
    precisions: Sequence[str] | None = None,
    repeats: int | None = None,
) -> dict[str, measure.Measurement]:
    """Measure the ceilings of ``device``: ``"copy"`` and ``"read"`` bandwidth and one
    ``"matmul <precision>"`` entry per precision (default: :func:`dmcourse.roofline.available_precisions`).

    ``quick=True`` uses small sizes (4 MiB buffers, 256 x 256 GEMMs, 3 repeats): seconds, for
    tests and smoke runs; the figures then understate the device.
    """
    device = pick_device(None if device is None else str(device))
    available = measure.available_precisions(device)
    precisions = tuple(available if precisions is None else precisions)
    if not precisions:
        raise ValueError("precisions must name at least one precision")
    for p in precisions:
        if p not in available:
            raise ValueError(f"precision {p!r} is not available on {device}: expected one of {available}")
    if repeats is None:
        repeats = 3 if quick else 7
    buffer = 4 * 2**20 if quick else None  # 4 MiB
    found = {
        kind: measure.measure_bandwidth(
            device, kind=kind, buffer_bytes=buffer, repeats=repeats, warmup=1 if quick else 2
        )
        for kind in ("copy", "read")
    }
    for p in precisions:
        found[f"matmul {p}"] = measure.measure_matmul(
            device, precision=p, size=256 if quick else None, repeats=repeats, warmup=1 if quick else 2
        )
    return found


def versions() -> dict[str, str | None]:
    """dmcourse, torch, Python and CUDA versions, as every record carries them."""
    return {
        "dmcourse": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
    }


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the ``date`` of a record)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_record(
    measurements: dict[str, measure.Measurement],
    device: torch.device | str | None = None,
    *,
    command: str = "",
    quick: bool = False,
) -> dict[str, Any]:
    """A JSON-ready record of ``measurements`` on ``device``: device name and kind, date (UTC),
    versions (dmcourse, torch, python, CUDA), the command that produced it, and the figures
    (``bandwidth_bytes_per_s``: copy/read; ``matmul_flops_per_s``: per precision) with settings."""
    from dmcourse.device import device_info

    info = device_info(device)
    bandwidth = {k: m.value for k, m in measurements.items() if m.unit == "B/s"}
    matmul = {k.removeprefix("matmul "): m.value for k, m in measurements.items() if m.unit == "FLOP/s"}
    return {
        "schema": RECORD_SCHEMA,
        "device": info.name,
        "device_type": info.device.type,
        "capability": list(info.capability) if info.capability else None,
        "memory_bytes": info.memory_bytes,
        "cpu_threads": info.cpu_threads,
        "date": utc_now(),
        "versions": versions(),
        "command": command,
        "quick": quick,
        "figures": {"bandwidth_bytes_per_s": bandwidth, "matmul_flops_per_s": matmul},
        "settings": {
            k: {
                **m.settings,
                "repeats": len(m.timing.times_s),
                "median_s": m.timing.median_s,
                "timing": m.timing.method,
            }
            for k, m in measurements.items()
        },
    }


def read_record(path: str | os.PathLike, kind: str = "roofline") -> dict[str, Any]:
    """Read and validate a JSON record of ``kind`` (default: a roofline record)."""
    with open(path) as f:
        return validate(kind, json.load(f))


def write_record(record: dict[str, Any], path: str | os.PathLike, kind: str = "roofline") -> None:
    """Validate ``record`` as a record of ``kind`` and write it as indented JSON to ``path``."""
    validate(kind, record)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def slug(text: str) -> str:
    """A file-name-safe form of a device name: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dmcourse.records [--device cuda] [--quick] [--out FILE] [--precisions fp32 bf16] [--threads N]``"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m dmcourse.records",
        description="Measure this device's memory bandwidth and matmul throughput; write a JSON record.",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, figures understate the device")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        help=f"matmul precisions among {sorted(measure.PRECISIONS)} (default: all the device has)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument(
        "--out", default=None, help="output file (default: roofline_<device>_<date>.json in the current directory)"
    )
    args = parser.parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.threads is not None:
            torch.set_num_threads(check_int("--threads", args.threads))
        device = pick_device(args.device)
        found = measure_ceilings(device, quick=args.quick, precisions=args.precisions, repeats=args.repeats)
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    record = make_record(found, device, command=" ".join(["python -m dmcourse.records", *argv_list]), quick=args.quick)
    out = args.out or f"{RECORD_PREFIX}{slug(record['device'])}_{record['date'][:10]}.json"
    write_record(record, out)
    for m in found.values():
        print(m)
    print(f"wrote {out} ({record['device']}, {record['date']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
