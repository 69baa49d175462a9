"""What expert and tensor parallelism put on the wire, and how long a link takes to carry it.

Chapter 8 ("Beyond one device: expert parallelism on torch.distributed") introduces it. Plain functions, usable without a process group:
byte counts of the all-to-alls of an expert-parallel MoE layer (:mod:`dmcourse.parallel`) and of
tensor parallelism's all-reduce, the rows that cross node boundaries with and without DeepSeek's
node-limited routing, and a communication model ``time = latency + bytes / bandwidth`` with
datasheet link figures (:data:`LINKS`) and a fit to measured transfers (:func:`fit_link`).

Units: bytes, seconds, bytes/s (per direction, per GPU).
"""

from __future__ import annotations

import torch

from dmcourse.checks import check_int, nonnegative_float, positive_float
from dmcourse.hardware import LinkSpec, links


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype`` (2 for bfloat16, 4 for float32)."""
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------------------------
# What travels (bytes and rows)


def bytes_per_token(k: int, d_model: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes one token puts on the wire in one expert-parallel MoE layer (forward): there and back.

    ``2 * k * d_model * dtype size`` -> bytes: k copies of the hidden vector go out (dispatch), k
    results come back (combine). Copies whose expert lives on the sending rank stay local: with
    uniform routing over ``p`` ranks a fraction ``(p - 1) / p`` travels. The backward pass moves the
    same amount again (the gradients take the reverse all-to-alls).
    """
    return 2 * check_int("k", k) * check_int("d_model", d_model) * dtype_bytes(dtype)


def offrank_bytes(splits: list[int], rank: int, row_bytes: int) -> int:
    """Bytes rank ``rank`` sends to *other* ranks in one all-to-all: (all rows - its own) x row_bytes."""
    if not 0 <= rank < len(splits):
        raise ValueError(f"rank {rank} outside the {len(splits)} splits")
    return (sum(splits) - splits[rank]) * row_bytes


def allreduce_bytes(numel: int, world_size: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes each rank sends in a ring all-reduce of ``numel`` elements: ``2 (p-1)/p x numel x size``.

    (A reduce-scatter then an all-gather, each sending ``(p-1)/p`` of the tensor: the ring
    algorithm's cost, e.g. NCCL's for large tensors.)
    """
    check_int("world_size", world_size)
    check_int("numel", numel, 0)
    return 2 * (world_size - 1) * numel * dtype_bytes(dtype) // world_size


def nodes_per_token(indices: torch.Tensor, experts_per_node: int) -> torch.Tensor:
    """Distinct nodes each token's experts live on: indices (T, k) -> (T,) int64."""
    check_int("experts_per_node", experts_per_node)
    node = torch.div(indices, experts_per_node, rounding_mode="floor").sort(dim=-1).values
    return 1 + (node[:, 1:] != node[:, :-1]).sum(-1)


def cross_node_rows(indices: torch.Tensor, home_node: int, experts_per_node: int, dedup: bool) -> int:
    """Hidden vectors that leave node ``home_node`` in one dispatch of these tokens' routing.

    indices: (T, k) expert ids. ``dedup=False``: one row per (token, expert on another node) --
    what :class:`dmcourse.parallel.ExpertParallelMoE` sends. ``dedup=True``: one row per (token, other node), to be
    forwarded inside that node over its fast link -- DeepSeek-V3's dispatch (report sec. 3.2.2).
    The combine sends as many rows back.
    """
    check_int("experts_per_node", experts_per_node)
    node = torch.div(indices, experts_per_node, rounding_mode="floor")
    remote = node != home_node
    if not dedup:
        return int(remote.sum())
    s = torch.where(remote, node, -1).sort(dim=-1).values
    first = (s[:, :1] >= 0).sum(-1)
    new = ((s[:, 1:] != s[:, :-1]) & (s[:, 1:] >= 0)).sum(-1)
    return int((first + new).sum())


# ----------------------------------------------------------------------------------------------
# A communication model: time = latency + bytes / bandwidth


Link = LinkSpec
"""A link's datasheet figure (:class:`dmcourse.hardware.LinkSpec`): ``bytes_per_s`` is per
direction, per GPU (what one rank can send while it also receives as much)."""

LINKS: dict[str, Link] = links()
"""Datasheet link figures (per GPU, per direction) from ``dmcourse/data/links.json``. DGX H100 pairs
each GPU with one 400 Gb/s port."""


def comm_time_s(n_bytes: float, bytes_per_s: float, latency_s: float = 0.0) -> float:
    """Modelled time of a transfer: ``latency_s + n_bytes / bytes_per_s`` -> seconds."""
    return nonnegative_float("latency_s", latency_s) + nonnegative_float("n_bytes", n_bytes) / positive_float(
        "bytes_per_s", bytes_per_s
    )


def fit_link(n_bytes: list[float], seconds: list[float]) -> tuple[float, float]:
    """Fit ``seconds = latency + n_bytes / bandwidth`` -> (latency s, bandwidth B/s).

    Least squares on the *relative* error, so small and large transfers count alike (measurements
    span decades); the latency is kept >= 0 (refit through the origin when it would be negative).
    """
    if len(n_bytes) != len(seconds) or len(n_bytes) < 2:
        raise ValueError(f"need >= 2 (bytes, seconds) pairs of equal length, got {len(n_bytes)} and {len(seconds)}")
    b = torch.tensor(n_bytes, dtype=torch.float64)
    t = torch.tensor(seconds, dtype=torch.float64)
    if bool((t <= 0).any()) or bool((b < 0).any()):
        raise ValueError(f"need bytes >= 0 and seconds > 0, got {n_bytes} and {seconds}")
    a = torch.stack([torch.ones_like(b), b], 1) / t.unsqueeze(1)
    latency, slope = torch.linalg.lstsq(a, torch.ones_like(t).unsqueeze(1)).solution.squeeze(1).tolist()
    if latency < 0:
        latency, slope = 0.0, float((b / t).sum() / (b**2 / t**2).sum())
    if slope <= 0:
        raise ValueError("time does not grow with bytes in these measurements: no bandwidth to fit")
    return latency, 1.0 / slope
