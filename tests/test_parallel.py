"""Expert parallelism (dmcourse.parallel, dmcourse.comm, dmcourse.ep_tasks) and the launcher (dmcourse.launch).

The multi-process tests run real gloo process groups on CPU (2 and 4 ranks) through the command
line a notebook uses (``launch.run``: a subprocess, results as JSON), each bounded by the launch's
own collective timeout and deadline and by pytest-timeout. Reference values come from the
single-process ``dmcourse.moe.MoE`` / ``dmcourse.ffn.swiglu`` (other modules, tested on their own),
or from brute-force loops written here.
"""

from __future__ import annotations

import itertools
import json
import re
import time

import pytest
import torch

from dmcourse import comm, ep_tasks, launch, parallel

TOL = 1e-5  # float32; the expert-parallel layer computes the same rows as the single-process one

# ----------------------------------------------------------------------------------------------
# plain functions (no processes)


def test_experts_per_rank_and_splits() -> None:
    assert parallel.experts_per_rank(8, 4) == 2
    with pytest.raises(ValueError, match="multiple of world_size"):
        parallel.experts_per_rank(6, 4)
    with pytest.raises(ValueError, match="world_size"):
        parallel.experts_per_rank(8, 0)
    counts = torch.tensor([3, 0, 1, 4, 0, 0, 2, 5])
    assert parallel.send_splits(counts, 4) == [3, 5, 0, 7]
    assert parallel.send_splits(counts, 2) == [8, 7]


def test_byte_counts() -> None:
    # k copies of a d_model vector out and k results back, 2 bytes each in bf16
    assert comm.bytes_per_token(8, 7168, torch.bfloat16) == 2 * 8 * 7168 * 2
    assert comm.bytes_per_token(2, 4096, torch.float32) == 2 * 2 * 4096 * 4
    with pytest.raises(ValueError, match="k must be"):
        comm.bytes_per_token(0, 16)
    assert comm.offrank_bytes([5, 3, 0, 2], rank=1, row_bytes=10) == (5 + 0 + 2) * 10
    with pytest.raises(ValueError, match="rank 4"):
        comm.offrank_bytes([1, 2], 4, 1)
    # ring all-reduce: reduce-scatter + all-gather, each (p-1)/p of the tensor
    assert comm.allreduce_bytes(1000, 4, torch.float32) == 2 * 3 * 1000 * 4 // 4
    assert comm.allreduce_bytes(1000, 1, torch.float32) == 0


def _brute_nodes(indices: torch.Tensor, per_node: int) -> list[int]:
    return [len({e // per_node for e in row}) for row in indices.tolist()]


def _brute_cross(indices: torch.Tensor, home: int, per_node: int, dedup: bool) -> int:
    total = 0
    for row in indices.tolist():
        remote = [e // per_node for e in row if e // per_node != home]
        total += len(set(remote)) if dedup else len(remote)
    return total


@pytest.mark.parametrize(("n_experts", "k", "per_node"), [(16, 4, 4), (8, 2, 2), (12, 3, 6), (8, 1, 8)])
def test_node_counts_match_brute_force(n_experts: int, k: int, per_node: int) -> None:
    g = torch.Generator().manual_seed(n_experts * k)
    idx = torch.rand(50, n_experts, generator=g).topk(k, dim=-1).indices
    assert comm.nodes_per_token(idx, per_node).tolist() == _brute_nodes(idx, per_node)
    for home, dedup in itertools.product(range(n_experts // per_node), (False, True)):
        assert comm.cross_node_rows(idx, home, per_node, dedup) == _brute_cross(idx, home, per_node, dedup)


def test_comm_model_and_fit() -> None:
    assert comm.comm_time_s(1e9, 50e9) == pytest.approx(0.02)
    assert comm.comm_time_s(0, 1e9, 1e-5) == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        comm.comm_time_s(1, 0)
    sizes = [1e4, 1e5, 1e6, 1e7]
    latency, bw = comm.fit_link(sizes, [20e-6 + b / 3e9 for b in sizes])
    assert latency == pytest.approx(20e-6, rel=1e-6) and bw == pytest.approx(3e9, rel=1e-6)
    latency, bw = comm.fit_link(sizes, [b / 2e9 for b in sizes])  # no latency at all
    assert latency == pytest.approx(0.0, abs=1e-12) and bw == pytest.approx(2e9, rel=1e-6)
    with pytest.raises(ValueError, match="no bandwidth"):
        comm.fit_link([1, 2, 3], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="seconds > 0"):
        comm.fit_link([1, 2], [0.0, 1.0])


def test_link_figures_are_per_direction() -> None:
    links = comm.LINKS
    # datasheets: NVLink 900 GB/s and PCIe Gen5 128 GB/s count both directions; NDR is 400 Gb/s each way
    assert links["NVLink 4 (H100 SXM)"].bytes_per_s == 900e9 / 2
    assert links["PCIe 5.0 x16"].bytes_per_s == 128e9 / 2
    assert links["InfiniBand NDR (1 port)"].bytes_per_s == 400e9 / 8
    assert all(link.source.startswith("https://") and "datasheet" in link.datasheet for link in links.values())


def test_launcher_arguments() -> None:
    assert launch.pick_backend(2, "gloo") == "gloo"
    with pytest.raises(ValueError, match="backend"):
        launch.pick_backend(2, "mpi")
    if not torch.cuda.is_available():
        assert launch.pick_backend(2) == "gloo"
        with pytest.raises(ValueError, match="one CUDA GPU per rank"):
            launch.pick_backend(2, "nccl")
    port = launch.free_port()
    assert 0 < port < 65536
    with pytest.raises(ValueError, match="world_size"):
        launch.spawn(ep_tasks.task_noop, 0)
    with pytest.raises(ValueError, match="start_method"):
        launch.spawn(ep_tasks.task_noop, 2, start_method="thread")
    with pytest.raises(SystemExit):
        launch.main(["no_such_task"])


def test_launcher_finds_tasks_by_name() -> None:
    """The launcher names its tasks and imports them only when asked (no launch <-> experiments loop)."""
    assert launch.tasks() == ep_tasks.TASKS
    assert launch.resolve("check") is ep_tasks.task_check
    assert launch.resolve("dmcourse.ep_tasks:task_noop") is ep_tasks.task_noop
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        launch.resolve("nope")
    with pytest.raises(ValueError, match="cannot import 'dmcourse.ep_tasks:nope'"):
        launch.resolve("dmcourse.ep_tasks:nope")
    with pytest.raises(TypeError, match="not callable"):
        launch.resolve("dmcourse.ep_tasks:TASKS")
    with pytest.raises(SystemExit):
        launch.main(["dmcourse.no_such_module:task"])


# ----------------------------------------------------------------------------------------------
# real process groups (gloo, CPU)


def _assert_matches(ranks: list[dict]) -> None:
    for r, res in enumerate(ranks):
        for key in ("output", "x_grad", "router_grad", "w_gate_grad", "w_up_grad", "w_down_grad", "shared_grad"):
            if key in res:
                assert res[key] <= TOL * max(1.0, res["scale"]), f"rank {r}: {key} differs by {res[key]:.3g}"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_ranks_match_single_process_moe() -> None:
    out = launch.run(
        ["check"], 2, params={"check": {"tokens": 24, "n_shared_experts": 1, "seed": 3}}, timeout_s=30, deadline_s=120
    )
    assert out["meta"]["world_size"] == 2 and out["meta"]["backend"] == "gloo"
    ranks = out["results"]["check"]
    _assert_matches(ranks)
    assert [r["experts"] for r in ranks] == [[0, 4], [4, 8]]
    # what rank r sends to rank s is what rank s receives from rank r
    for r, s in itertools.product(range(2), repeat=2):
        assert ranks[r]["send_splits"][s] == ranks[s]["recv_splits"][r]
    assert sum(sum(r["send_splits"]) for r in ranks) == 2 * 24 * 2  # every (token, k) row, once


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_four_ranks_uneven_and_empty_splits() -> None:
    # rank 1 has no tokens; experts 6 and 7 (all of rank 3) are never chosen: rank 3 receives nothing
    params = {
        "check": {"tokens": [5, 0, 9, 3], "dead_experts": [6, 7]},
        "check_tp": {"tokens": 7, "d_ff": 64},
        "node_limited": {"tokens": 32, "n_experts": 16, "k": 4, "ranks_per_node": 2, "max_nodes": 1},
    }
    out = launch.run(["check", "check_tp", "node_limited"], 4, params=params, timeout_s=30, deadline_s=150)
    ranks = out["results"]["check"]
    _assert_matches(ranks)
    assert ranks[1]["tokens"] == 0 and sum(ranks[1]["send_splits"]) == 0
    assert sum(ranks[3]["recv_splits"]) == 0 and all(r["send_splits"][3] == 0 for r in ranks)
    for r, s in itertools.product(range(4), repeat=2):
        assert ranks[r]["send_splits"][s] == ranks[s]["recv_splits"][r]
    for res in out["results"]["check_tp"]:
        assert max(res.values()) <= TOL, res
    for res in out["results"]["node_limited"]:
        assert res["unlimited"]["max_error"] <= TOL and res["node_limited"]["max_error"] <= TOL
        assert res["node_limited"]["mean_nodes_per_token"] == 1.0  # at most max_nodes=1 node per token
        assert res["node_limited"]["cross_node_rows_dedup"] <= res["tokens"]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        ("raise", r"rank 1 of 2 failed first:\n.*fails on purpose"),  # its traceback, not its peer's
        ("exit", r"rank 1 of 2 failed first:\nprocess exited with code 3"),
        ("hang", r"rank 0 of 2 failed first:\n.*Timed out"),  # rank 1 sleeps: rank 0's all-reduce times out
    ],
)
def test_a_failing_rank_stops_the_launch(mode: str, expect: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(launch.LaunchError, match=re.compile(expect, re.S)):
        launch.run("crash", 2, params={"crash": {"rank": 1, "mode": mode}}, timeout_s=2, deadline_s=60)
    assert time.monotonic() - t0 < 60, "the failure was reported, but only after the deadline"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_deadline_ends_a_hanging_launch() -> None:
    t0 = time.monotonic()
    with pytest.raises(launch.LaunchError, match="deadline"):
        launch.run("crash", 2, params={"crash": {"mode": "hang"}}, timeout_s=300, deadline_s=3)
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_spawn_in_process_returns_results_by_rank() -> None:
    # the library path: fresh interpreters ("spawn"), safe from any process
    res = launch.spawn(ep_tasks.task_noop, 2, start_method="spawn", timeout_s=30, deadline_s=100)
    assert res == [{"rank": 0}, {"rank": 1}]
    json.dumps(res)
