"""The opt-in C decode kernel against oneDNN by row count, on this machine.

The MoE layer does not read this table: ``dmcourse.matmul``'s probe measures the same comparison per
row-count bucket on the machine it runs on. This script shows it in detail.

    python benchmarks/stream_rows.py

For each number of rows n, times the gate (d_model 1024 -> d_ff 2816) and down (2816 -> 1024)
projections of 8 experts (fp32, 2 threads, 185 MB of weights, more than the last-level cache) with
``dmcourse.stream.linear_stream`` and with oneDNN (``dmcourse.matmul.linear`` inside
``dmcourse.matmul.use("onednn")``), interleaved, and a read-only pass over the same weights with
``dmcourse.stream.read_sum``. Prints weight GB/s, GFLOP/s, and the kernel's time over oneDNN's.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import torch

from dmcourse import matmul, stream
from dmcourse.device import device_info
from dmcourse.matmul import linear

ROWS = (1, 2, 4, 6, 8, 12, 16, 24, 32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(ROWS), help="row counts to time")
    parser.add_argument("--repeats", type=int, default=11, help="timed calls of each, interleaved")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if not stream.available():
        print(f"dmcourse.stream kernel {stream.status()}")
        return 1
    d_model, d_ff, experts = 1024, 2816, 8
    w_gate, w_down = torch.randn(experts, d_ff, d_model), torch.randn(experts, d_model, d_ff)
    nbytes = (w_gate.numel() + w_down.numel()) * 4

    def read():
        for e in range(experts):
            stream.read_sum(w_gate[e])
            stream.read_sum(w_down[e])

    print(f"{device_info('cpu').summary()}, 2 threads, torch {torch.__version__}, {datetime.date.today()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"{'rows':>4} {'read GB/s':>9} {'kernel GB/s':>11} {'oneDNN GB/s':>11} {'kernel GFLOP/s':>14} "
        f"{'oneDNN GFLOP/s':>14} {'kernel/oneDNN':>13}"
    )
    for n in args.rows:
        x, h = torch.randn(n, d_model), torch.randn(n, d_ff)

        def kernel(x=x, h=h):
            for e in range(experts):
                stream.linear_stream(x, w_gate[e])
                stream.linear_stream(h, w_down[e])

        def onednn(x=x, h=h):
            with matmul.use("onednn"):
                for e in range(experts):
                    linear(x, w_gate[e])
                    linear(h, w_down[e])

        times: dict[str, list[float]] = {"read": [], "kernel": [], "oneDNN": []}
        with torch.inference_mode():
            for _ in range(args.repeats):
                for name, fn in (("read", read), ("kernel", kernel), ("oneDNN", onednn)):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        t = {name: statistics.median(v) for name, v in times.items()}
        flops = 2 * n * nbytes / 4
        print(
            f"{n:4d} {nbytes / t['read'] / 1e9:9.1f} {nbytes / t['kernel'] / 1e9:11.1f} {nbytes / t['oneDNN'] / 1e9:11.1f} "
            f"{flops / t['kernel'] / 1e9:14.1f} {flops / t['oneDNN'] / 1e9:14.1f} {t['kernel'] / t['oneDNN']:13.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
