"""Mistakes students make in ex04_roofline, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. bytes_per_element
    {"name": "bf16 taken as 1 byte", "cell": "bytes_per_element", "old": '"bf16": 2', "new": '"bf16": 1'},
    {"name": "bf16 taken as 4 bytes (like fp32)", "cell": "bytes_per_element", "old": '"bf16": 2', "new": '"bf16": 4'},
    {
        "name": "int4 counted as 4 bytes (bits and bytes confused)",
        "cell": "bytes_per_element",
        "old": '"int4": 0.5',
        "new": '"int4": 4',
    },
    {
        "name": "unknown dtype silently 4 bytes instead of ValueError",
        "cell": "bytes_per_element",
        "old": 'raise ValueError(f"unknown dtype {dtype!r}, expected one of {sorted(sizes)}")',
        "new": "return 4",
    },
    # 2. gemm_intensity
    {
        "name": "GEMM FLOPs without the factor 2",
        "cell": "gemm_intensity",
        "old": "flops = 2 * m * k * n",
        "new": "flops = m * k * n",
    },
    {
        "name": "bytes per element applied once, to A only",
        "cell": "gemm_intensity",
        "old": "bytes_per_element(dtype) * (m * k + k * n + m * n)",
        "new": "bytes_per_element(dtype) * m * k + k * n + m * n",
    },
    {
        "name": "only the weights B counted as bytes",
        "cell": "gemm_intensity",
        "old": "bytes_per_element(dtype) * (m * k + k * n + m * n)",
        "new": "bytes_per_element(dtype) * (k * n)",
    },
    {
        "name": "output C not counted",
        "cell": "gemm_intensity",
        "old": "(m * k + k * n + m * n)",
        "new": "(m * k + k * n)",
    },
    {
        "name": "elements counted instead of bytes",
        "cell": "gemm_intensity",
        "old": "bytes_per_element(dtype) * (m * k + k * n + m * n)",
        "new": "(m * k + k * n + m * n)",
    },
    # 3. attainable_flops
    {
        "name": "max instead of min in the roofline",
        "cell": "attainable",
        "old": "return min(peak_flops, intensity * bandwidth)",
        "new": "return max(peak_flops, intensity * bandwidth)",
    },
    {
        "name": "intensity divided by the bandwidth",
        "cell": "attainable",
        "old": "intensity * bandwidth",
        "new": "intensity / bandwidth",
    },
    # 4. bound
    {
        "name": "memory and compute swapped",
        "cell": "bound",
        "old": 'return "memory" if intensity < peak_flops / bandwidth else "compute"',
        "new": 'return "compute" if intensity < peak_flops / bandwidth else "memory"',
    },
    {
        "name": "ridge point inverted (bandwidth / peak)",
        "cell": "bound",
        "old": "peak_flops / bandwidth",
        "new": "bandwidth / peak_flops",
    },
    # 5. expected_experts
    {
        "name": "expected experts with k and E swapped",
        "cell": "expected_experts",
        "old": "n_experts * (1 - (1 - top_k / n_experts) ** batch)",
        "new": "top_k * (1 - (1 - n_experts / top_k) ** batch)",
    },
    {
        "name": "expected experts scaled by k instead of E",
        "cell": "expected_experts",
        "old": "n_experts * (1 - (1 - top_k / n_experts) ** batch)",
        "new": "top_k * (1 - (1 - top_k / n_experts) ** batch)",
    },
    {
        "name": "expected experts ignores overlaps (k * B, capped at E)",
        "cell": "expected_experts",
        "old": "n_experts * (1 - (1 - top_k / n_experts) ** batch)",
        "new": "min(n_experts, top_k * batch)",
    },
    {
        "name": "expected experts with (k/E)^B instead of (1-k/E)^B",
        "cell": "expected_experts",
        "old": "n_experts * (1 - (1 - top_k / n_experts) ** batch)",
        "new": "n_experts * (1 - (top_k / n_experts) ** batch)",
    },
    # 6. decode_step
    {
        "name": "decode FLOPs without the factor 2",
        "cell": "decode_step",
        "old": "flops = 2 * batch * active",
        "new": "flops = batch * active",
    },
    {
        "name": "decode FLOPs from all expert parameters, not the active ones",
        "cell": "decode_step",
        "old": 'active = model["dense_params"] + model["expert_params"] * k / e',
        "new": 'active = model["dense_params"] + model["expert_params"]',
    },
    {
        "name": "weights read once per token instead of once per step",
        "cell": "decode_step",
        "old": 'nbytes = model["bytes_per_param"] *',
        "new": 'nbytes = batch * model["bytes_per_param"] *',
    },
    {
        "name": "every expert read whatever the batch",
        "cell": "decode_step",
        "old": 'model["expert_params"] * touched / e)',
        "new": 'model["expert_params"])',
    },
    {
        "name": "only top_k experts read whatever the batch",
        "cell": "decode_step",
        "old": "touched = expected_experts(e, k, batch)",
        "new": "touched = k",
    },
    # 7. decode_time
    {
        "name": "decode time with min instead of max",
        "cell": "decode_time",
        "old": 'return max(step["flops"] / gpu["peak_flops"], step["bytes"] / gpu["bandwidth"])',
        "new": 'return min(step["flops"] / gpu["peak_flops"], step["bytes"] / gpu["bandwidth"])',
    },
    {
        "name": "decode time adds compute and memory time",
        "cell": "decode_time",
        "old": 'return max(step["flops"] / gpu["peak_flops"], step["bytes"] / gpu["bandwidth"])',
        "new": 'return step["flops"] / gpu["peak_flops"] + step["bytes"] / gpu["bandwidth"]',
    },
    {
        "name": "decode time from the bytes only",
        "cell": "decode_time",
        "old": 'return max(step["flops"] / gpu["peak_flops"], step["bytes"] / gpu["bandwidth"])',
        "new": 'return step["bytes"] / gpu["bandwidth"]',
    },
    # hardening (issue 18): boundaries
    {
        "name": "[boundary] exactly at the ridge called memory-bound (<= instead of <)",
        "cell": "bound",
        "old": "intensity < peak_flops / bandwidth",
        "new": "intensity <= peak_flops / bandwidth",
    },
    {
        "name": "[boundary] expected experts through a logarithm (fails at top_k == n_experts)",
        "cell": "expected_experts",
        "old": "n_experts * (1 - (1 - top_k / n_experts) ** batch)",
        "new": "n_experts * (1 - math.exp(batch * math.log(1 - top_k / n_experts)))",
    },
    {
        "name": "[boundary] batch 0 wrongly rejected",
        "cell": "expected_experts",
        "old": "    return n_experts * (1 - (1 - top_k / n_experts) ** batch)",
        "new": '    if batch < 1:\n        raise ValueError(f"batch must be >= 1, got {batch}")\n    return n_experts * (1 - (1 - top_k / n_experts) ** batch)',
    },
    {
        "name": "[in place] decode_step scales model['expert_params'] to the touched experts",
        "cell": "decode_step",
        "old": 'nbytes = model["bytes_per_param"] * (model["dense_params"] + model["expert_params"] * touched / e)',
        "new": 'model["expert_params"] *= touched / e\n    nbytes = model["bytes_per_param"] * (model["dense_params"] + model["expert_params"])',
    },
]
