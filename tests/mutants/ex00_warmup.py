"""Mistakes students make in ex00_warmup, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. matmul_flops
    {
        "name": "flops without the factor 2 (counts multiply-adds)",
        "cell": "matmul_flops",
        "old": "return 2 * m * k * n",
        "new": "return m * k * n",
    },
    {
        "name": "flops returned as float",
        "cell": "matmul_flops",
        "old": "return 2 * m * k * n",
        "new": "return 2.0 * m * k * n",
    },
    {
        "name": "flops of (m, n) only (forgets the inner dimension k)",
        "cell": "matmul_flops",
        "old": "return 2 * m * k * n",
        "new": "return 2 * m * n",
    },
    {
        "name": "flops accept zero and negative sizes",
        "cell": "matmul_flops",
        "old": 'raise ValueError(f"{name} must be a positive int, got {value!r}")',
        "new": "pass",
    },
    {
        "name": "flops accept non-integer sizes",
        "cell": "matmul_flops",
        "old": "if not isinstance(value, int) or isinstance(value, bool) or value <= 0:",
        "new": "if value <= 0:",
    },
    # 2. achieved_flops_per_s
    {
        "name": "throughput inverted (seconds per FLOP)",
        "cell": "achieved_flops",
        "old": "return matmul_flops(m, k, n) / seconds",
        "new": "return seconds / matmul_flops(m, k, n)",
    },
    {
        "name": "throughput with seconds taken as milliseconds",
        "cell": "achieved_flops",
        "old": "return matmul_flops(m, k, n) / seconds",
        "new": "return matmul_flops(m, k, n) / (seconds * 1e3)",
    },
    {
        "name": "throughput counts m*k*n instead of the FLOPs",
        "cell": "achieved_flops",
        "old": "return matmul_flops(m, k, n) / seconds",
        "new": "return m * k * n / seconds",
    },
    {
        "name": "throughput does not reject zero seconds",
        "cell": "achieved_flops",
        "old": "if not seconds > 0:",
        "new": "if seconds < 0:",
    },
    # 3. choose_dtype
    {"name": "bf16 on a T4 (capability 7.5)", "cell": "choose_dtype", "old": ">= (8, 0)", "new": ">= (7, 0)"},
    {"name": "bf16 only above 8.0 (A100 gets fp16)", "cell": "choose_dtype", "old": ">= (8, 0)", "new": "> (8, 0)"},
    {
        "name": "bf16 decided by the minor version",
        "cell": "choose_dtype",
        "old": "tuple(capability) >= (8, 0)",
        "new": "capability[1] >= 0 and capability[0] >= 7",
    },
    {
        "name": "unknown device falls back to fp32 instead of raising",
        "cell": "choose_dtype",
        "old": 'raise ValueError(f"unknown device type {device_type!r}")',
        "new": "return torch.float32",
    },
    {
        "name": "fp16 on the CPU",
        "cell": "choose_dtype",
        "old": 'if device_type == "cpu":\n        return torch.float32',
        "new": 'if device_type == "cpu":\n        return torch.float16',
    },
    # 4. robust_time
    {
        "name": "mean instead of median",
        "cell": "robust_time",
        "old": "statistics.median(kept)",
        "new": "statistics.mean(kept)",
    },
    {"name": "warm-up samples kept", "cell": "robust_time", "old": "list(samples)[warmup:]", "new": "list(samples)"},
    {
        "name": "one sample too many dropped",
        "cell": "robust_time",
        "old": "list(samples)[warmup:]",
        "new": "list(samples)[warmup + 1:]",
    },
    {
        "name": "upper middle element as the median of an even count",
        "cell": "robust_time",
        "old": "statistics.median(kept)",
        "new": "sorted(kept)[len(kept) // 2]",
    },
    {"name": "minimum instead of median", "cell": "robust_time", "old": "statistics.median(kept)", "new": "min(kept)"},
    # hardening (issue 18): boundaries, ignored arguments, types, inputs modified in place
    {
        "name": "[boundary] flops reject size 1 (< 2 instead of < 1)",
        "cell": "matmul_flops",
        "old": "or value <= 0:",
        "new": "or value < 2:",
    },
    {
        "name": "[types] flops accept a bool (True taken as size 1)",
        "cell": "matmul_flops",
        "old": "if not isinstance(value, int) or isinstance(value, bool) or value <= 0:",
        "new": "if not isinstance(value, int) or value <= 0:",
    },
    {
        "name": "[types] flops accept an integral float (2.0)",
        "cell": "matmul_flops",
        "old": "if not isinstance(value, int) or isinstance(value, bool) or value <= 0:",
        "new": "if value != int(value) or isinstance(value, bool) or value <= 0:",
    },
    {
        "name": "[types] throughput with floor division //",
        "cell": "achieved_flops",
        "old": "return matmul_flops(m, k, n) / seconds",
        "new": "return matmul_flops(m, k, n) // seconds",
    },
    {
        "name": "[boundary] throughput rejects a valid sub-microsecond time",
        "cell": "achieved_flops",
        "old": "if not seconds > 0:",
        "new": "if not seconds > 1e-6:",
    },
    {
        "name": "[boundary] robust_time raises when exactly one sample is left",
        "cell": "robust_time",
        "old": "if not kept:",
        "new": "if len(kept) < 2:",
    },
    {
        "name": "[in place] robust_time deletes the warm-up samples from the caller's list",
        "cell": "robust_time",
        "old": "kept = list(samples)[warmup:]",
        "new": "del samples[:warmup]\n    kept = samples",
    },
    {
        "name": "[in place] robust_time sorts the caller's list",
        "cell": "robust_time",
        "old": "return statistics.median(kept)",
        "new": "samples[warmup:] = sorted(samples[warmup:])\n    return statistics.median(kept)",
    },
    {
        "name": "[boundary] negative warmup accepted (keeps the last samples)",
        "cell": "robust_time",
        "old": "if warmup < 0:",
        "new": "if False:",
    },
]
