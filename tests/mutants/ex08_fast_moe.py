"""Mistakes students make in ex08_fast_moe, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. time_device
    {
        "name": "clock read before the final synchronize (times the launch, not the work)",
        "cell": "time_device",
        "old": "        synchronize()\n        samples.append(clock() - start)",
        "new": "        samples.append(clock() - start)\n        synchronize()",
    },
    {
        "name": "no synchronize before the start clock read (queued warm-up work counted)",
        "cell": "time_device",
        "old": "        synchronize()\n        start = clock()",
        "new": "        start = clock()",
    },
    {"name": "warm-up skipped", "cell": "time_device", "old": "    for _ in range(warmup):\n        fn()\n", "new": ""},
    {
        "name": "one warm-up call too few",
        "cell": "time_device",
        "old": "for _ in range(warmup):",
        "new": "for _ in range(warmup - 1):",
    },
    {
        "name": "times a single run",
        "cell": "time_device",
        "old": "for _ in range(repeats):",
        "new": "for _ in range(1):",
    },
    {
        "name": "mean of the samples (dragged by an outlier)",
        "cell": "time_device",
        "old": "return float(statistics.median(samples))",
        "new": "return float(statistics.mean(samples))",
    },
    {
        "name": "minimum of the samples",
        "cell": "time_device",
        "old": "return float(statistics.median(samples))",
        "new": "return float(min(samples))",
    },
    {
        "name": "one span over all repeats divided by their number",
        "cell": "time_device",
        "old": "    samples = []\n    for _ in range(repeats):\n        synchronize()\n        start = clock()\n        fn()\n        synchronize()\n        samples.append(clock() - start)\n    return float(statistics.median(samples))",
        "new": "    synchronize()\n    start = clock()\n    for _ in range(repeats):\n        fn()\n    synchronize()\n    return (clock() - start) / repeats",
    },
    {
        "name": "the host's time.perf_counter instead of the given clock",
        "cell": "time_device",
        "old": "        start = clock()\n        fn()\n        synchronize()\n        samples.append(clock() - start)",
        "new": "        start = time.perf_counter()\n        fn()\n        synchronize()\n        samples.append(time.perf_counter() - start)",
    },
    {
        "name": "result in milliseconds",
        "cell": "time_device",
        "old": "return float(statistics.median(samples))",
        "new": "return float(statistics.median(samples)) * 1e3",
    },
    {
        "name": "no check of warmup and repeats",
        "cell": "time_device",
        "old": '            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")',
        "new": "            pass",
    },
    # 2. fast_moe
    {
        "name": "routing weights dropped in the combine",
        "cell": "fast_moe",
        "old": "out.index_add_(0, token, ys * weights.reshape(-1)[order, None].to(x.dtype))",
        "new": "out.index_add_(0, token, ys)",
    },
    {
        "name": "weights not permuted with the rows",
        "cell": "fast_moe",
        "old": "weights.reshape(-1)[order, None]",
        "new": "weights.reshape(-1)[:, None]",
    },
    {
        "name": "rows read with the pair index instead of the token (order, not order // k)",
        "cell": "fast_moe",
        "old": "token = order // k",
        "new": "token = order % x.shape[0]",
    },
    {"name": "k hard-coded to 2", "cell": "fast_moe", "old": "k = indices.shape[1]", "new": "k = 2"},
    {
        "name": "combine by indexed += (a token's k results overwrite each other)",
        "cell": "fast_moe",
        "old": "out.index_add_(0, token, ys * weights.reshape(-1)[order, None].to(x.dtype))",
        "new": "out[token] += ys * weights.reshape(-1)[order, None].to(x.dtype)",
    },
    {
        "name": "result always float32",
        "cell": "fast_moe",
        "old": "out = torch.zeros_like(x)",
        "new": "out = torch.zeros(x.shape)",
    },
    {
        "name": "experts counted up to the largest index (fails with no tokens)",
        "cell": "fast_moe",
        "old": "torch.bincount(flat, minlength=w_gate.shape[0])",
        "new": "torch.bincount(flat, minlength=int(flat.max()) + 1)",
    },
    {
        "name": "correct but the per-token loop (slow)",
        "cell": "fast_moe",
        "old": "    k = indices.shape[1]\n",
        "new": "    return slow_moe(x, indices, weights, w_gate, w_up, w_down)\n    k = indices.shape[1]\n",
    },
    {
        "name": "correct but a host sync per row (slow)",
        "cell": "fast_moe",
        "old": "    out = torch.zeros_like(x)\n    out.index_add_(0, token, ys * weights.reshape(-1)[order, None].to(x.dtype))",
        "new": "    out = torch.zeros_like(x)\n    wf = weights.reshape(-1)\n    for i in range(ys.shape[0]):\n        out[int(token[i])] += wf[int(order[i])] * ys[i]",
    },
]
