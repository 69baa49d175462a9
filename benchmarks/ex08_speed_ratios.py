"""The speed ratios behind ex08_fast_moe's hidden speed test, measured as the grader measures them.

Loads ``slow_moe`` and the solution's ``fast_moe`` from solutions/ex08_fast_moe, adds an
expert-loop dispatch (exercise 2's answer) and the course's sorted dispatch
(``dmcourse.moe.dispatch_sorted``), and times them interleaved on the hidden test's layer (256
tokens, d_model 64, d_ff 128, 8 experts, k = 2, float32, CPU, one thread by default). Prints one row
per trial: medians in ms and the two ratios the test bounds (slow/fast > 10, fast/sorted < 4).

    python benchmarks/ex08_speed_ratios.py --trials 5 --threads 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import nbformat
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmcourse.moe import dispatch_sorted  # noqa: E402
from dmcourse.routing import Routing  # noqa: E402


def _solution_namespace() -> dict:
    nb = nbformat.read(ROOT / "solutions" / "ex08_fast_moe" / "ex08_fast_moe.ipynb", as_version=4)
    ns: dict = {}
    exec("import statistics, time, torch\nimport torch.nn.functional as F", ns)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") in ("given_slow", "fast_moe"):
            exec(cell.source, ns)
    return ns


def _median_s(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    ns = _solution_namespace()
    swiglu, slow_moe, fast_moe = ns["swiglu"], ns["slow_moe"], ns["fast_moe"]

    def loop_moe(x, indices, weights, w_gate, w_up, w_down):
        out = torch.zeros_like(x)
        for e in range(w_gate.shape[0]):
            token, slot = torch.where(indices == e)
            if len(token):
                out.index_add_(0, token, weights[token, slot, None] * swiglu(x[token], w_gate[e], w_up[e], w_down[e]))
        return out

    torch.manual_seed(1)
    T, d, f, E, k = 256, 64, 128, 8, 2
    x = torch.randn(T, d)
    w = [torch.randn(E, f, d) / 8, torch.randn(E, f, d) / 8, torch.randn(E, d, f) / 11]
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)])
    wts = torch.softmax(torch.randn(T, k), -1)
    routing = Routing(ids, wts, torch.zeros(T, E), torch.zeros(T, E))
    print(
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {a.threads} thread(s)"
    )
    print("| trial | slow ms | fast ms | expert loop ms | course sorted ms | slow/fast | slow/loop | fast/sorted |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for trial in range(a.trials):
            m: dict[str, list[float]] = {"slow": [], "fast": [], "loop": [], "sorted": []}
            for _ in range(3):  # interleaved, as the hidden test
                m["slow"].append(_median_s(lambda: slow_moe(x, ids, wts, *w), 1))
                m["fast"].append(_median_s(lambda: fast_moe(x, ids, wts, *w), 5))
                m["loop"].append(_median_s(lambda: loop_moe(x, ids, wts, *w), 5))
                m["sorted"].append(_median_s(lambda: dispatch_sorted(x, routing, *w), 5))
            s = {n: statistics.median(v) for n, v in m.items()}
            print(
                f"| {trial} | {s['slow'] * 1e3:.1f} | {s['fast'] * 1e3:.2f} | {s['loop'] * 1e3:.2f} | "
                f"{s['sorted'] * 1e3:.2f} | {s['slow'] / s['fast']:.0f} | {s['slow'] / s['loop']:.0f} | "
                f"{s['fast'] / s['sorted']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
