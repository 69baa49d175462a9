"""Mistakes students make in ex05_economics, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. weight_bytes
    {
        "name": "only the active experts resident (forgets that all experts must be stored)",
        "cell": "weight_bytes",
        "old": 'return (model["shared_params"] + model["expert_params"]) * bytes_per_param',
        "new": 'return (model["shared_params"] + model["expert_params"] * model["top_k"] / model["n_experts"]) * bytes_per_param',
    },
    {
        "name": "experts forgotten altogether",
        "cell": "weight_bytes",
        "old": 'return (model["shared_params"] + model["expert_params"]) * bytes_per_param',
        "new": 'return model["shared_params"] * bytes_per_param',
    },
    {
        "name": "parameters instead of bytes",
        "cell": "weight_bytes",
        "old": 'return (model["shared_params"] + model["expert_params"]) * bytes_per_param',
        "new": 'return model["shared_params"] + model["expert_params"]',
    },
    {
        "name": "bytes per param applied to the shared parameters only",
        "cell": "weight_bytes",
        "old": 'return (model["shared_params"] + model["expert_params"]) * bytes_per_param',
        "new": 'return model["shared_params"] * bytes_per_param + model["expert_params"]',
    },
    # 2. kv_cache_bytes
    {
        "name": "KV cache without the factor 2 for K and V",
        "cell": "kv_cache_bytes",
        "old": 'per_token = 2 * model["n_layers"]',
        "new": 'per_token = model["n_layers"]',
    },
    {
        "name": "KV cache with one K/V head per query head (ignores GQA)",
        "cell": "kv_cache_bytes",
        "old": 'model["n_kv_heads"] * model["head_dim"]',
        "new": 'model["n_heads"] * model["head_dim"]',
    },
    {
        "name": "KV cache of one sequence (per-sequence / per-batch confusion)",
        "cell": "kv_cache_bytes",
        "old": "return per_token * context * batch",
        "new": "return per_token * context",
    },
    {
        "name": "KV cache of one token (per-token / per-sequence confusion)",
        "cell": "kv_cache_bytes",
        "old": "return per_token * context * batch",
        "new": "return per_token * batch",
    },
    {
        "name": "KV cache sized by d_model instead of the KV heads",
        "cell": "kv_cache_bytes",
        "old": 'model["n_kv_heads"] * model["head_dim"]',
        "new": 'model["d_model"]',
    },
    {
        "name": "KV cache for one layer only",
        "cell": "kv_cache_bytes",
        "old": 'per_token = 2 * model["n_layers"] * model["n_kv_heads"]',
        "new": 'per_token = 2 * model["n_kv_heads"]',
    },
    # 3. gpus_needed
    {
        "name": "GPU memory taken in GiB instead of GB",
        "cell": "gpus_needed",
        "old": 'gpu["memory_gb"] * 1e9',
        "new": 'gpu["memory_gb"] * 2**30',
    },
    {
        "name": "floor + 1 instead of ceiling (an extra GPU when it fits exactly)",
        "cell": "gpus_needed",
        "old": 'math.ceil(total_bytes / (gpu["memory_gb"] * 1e9))',
        "new": 'int(total_bytes / (gpu["memory_gb"] * 1e9)) + 1',
    },
    {
        "name": "rounded down (a fraction of a GPU dropped)",
        "cell": "gpus_needed",
        "old": 'math.ceil(total_bytes / (gpu["memory_gb"] * 1e9))',
        "new": 'int(total_bytes / (gpu["memory_gb"] * 1e9))',
    },
    {
        "name": "rounded to nearest",
        "cell": "gpus_needed",
        "old": 'math.ceil(total_bytes / (gpu["memory_gb"] * 1e9))',
        "new": 'round(total_bytes / (gpu["memory_gb"] * 1e9))',
    },
    {
        "name": "negative bytes accepted",
        "cell": "gpus_needed",
        "old": 'raise ValueError(f"total_bytes must be >= 0, got {total_bytes!r}")',
        "new": "pass",
    },
    # 4. decode_step_time
    {
        "name": "KV cache read once per step instead of once per sequence",
        "cell": "decode_step_time",
        "old": "nbytes += kv_cache_bytes(model, context, batch, bytes_per_value)",
        "new": "nbytes += kv_cache_bytes(model, context, 1, bytes_per_value)",
    },
    {
        "name": "KV cache reads forgotten",
        "cell": "decode_step_time",
        "old": "nbytes += kv_cache_bytes(model, context, batch, bytes_per_value)",
        "new": "pass",
    },
    {
        "name": "every expert read at every batch size",
        "cell": "decode_step_time",
        "old": "touched = 1 - (1 - k / e) ** batch",
        "new": "touched = 1",
    },
    {
        "name": "only the top_k experts read, whatever the batch",
        "cell": "decode_step_time",
        "old": "touched = 1 - (1 - k / e) ** batch",
        "new": "touched = k / e",
    },
    {
        "name": "weights read once per token instead of once per step",
        "cell": "decode_step_time",
        "old": 'nbytes = (model["shared_params"] + model["expert_params"] * touched) * bytes_per_param',
        "new": 'nbytes = batch * (model["shared_params"] + model["expert_params"] * touched) * bytes_per_param',
    },
    {
        "name": "FLOPs of one token, not of the batch",
        "cell": "decode_step_time",
        "old": "flops = 2 * batch * active",
        "new": "flops = 2 * active",
    },
    {
        "name": "FLOPs without the factor 2",
        "cell": "decode_step_time",
        "old": "flops = 2 * batch * active",
        "new": "flops = batch * active",
    },
    {
        "name": "sum of the two times instead of the larger",
        "cell": "decode_step_time",
        "old": 'return max(flops / gpu["peak_flops"], nbytes / gpu["bandwidth"])',
        "new": 'return flops / gpu["peak_flops"] + nbytes / gpu["bandwidth"]',
    },
    {
        "name": "smaller of the two times instead of the larger",
        "cell": "decode_step_time",
        "old": 'return max(flops / gpu["peak_flops"], nbytes / gpu["bandwidth"])',
        "new": 'return min(flops / gpu["peak_flops"], nbytes / gpu["bandwidth"])',
    },
    {
        "name": "all expert parameters counted as active FLOPs",
        "cell": "decode_step_time",
        "old": 'active = model["shared_params"] + model["expert_params"] * k / e',
        "new": 'active = model["shared_params"] + model["expert_params"]',
    },
    # 5. cost_per_million_tokens
    {
        "name": "cost of a step per sequence not divided by the batch (per-sequence / per-token confusion)",
        "cell": "cost_per_million",
        "old": "return usd_per_step / batch * 1e6",
        "new": "return usd_per_step * 1e6",
    },
    {
        "name": "cost multiplied by the batch",
        "cell": "cost_per_million",
        "old": "return usd_per_step / batch * 1e6",
        "new": "return usd_per_step * batch * 1e6",
    },
    {
        "name": "only one GPU paid for",
        "cell": "cost_per_million",
        "old": "usd_per_step = n_gpus * usd_per_gpu_hour / 3600 * step_seconds",
        "new": "usd_per_step = usd_per_gpu_hour / 3600 * step_seconds",
    },
    {
        "name": "price per hour taken as per minute",
        "cell": "cost_per_million",
        "old": "usd_per_gpu_hour / 3600",
        "new": "usd_per_gpu_hour / 60",
    },
    {
        "name": "per thousand tokens instead of per million",
        "cell": "cost_per_million",
        "old": "return usd_per_step / batch * 1e6",
        "new": "return usd_per_step / batch * 1e3",
    },
    # 6. choose
    {
        "name": "memory limit ignored (a model that does not fit is chosen)",
        "cell": "choose",
        "old": 'if n > workload["max_gpus"]:\n            continue',
        "new": "if False:\n            continue",
    },
    {
        "name": "compares step time (latency) instead of cost per token",
        "cell": "choose",
        "old": 'costs[name] = cost_per_million_tokens(step, workload["batch"], n, workload["usd_per_gpu_hour"])',
        "new": "costs[name] = step",
    },
    {
        "name": "KV cache left out of the memory check",
        "cell": "choose",
        "old": 'memory = (weight_bytes(model, workload["bytes_per_param"])\n                  + kv_cache_bytes(model, workload["context"], workload["batch"], 2))',
        "new": 'memory = weight_bytes(model, workload["bytes_per_param"])',
    },
    {
        "name": "one GPU's roof for any number of GPUs",
        "cell": "choose",
        "old": 'scaled = dict(gpu, peak_flops=n * gpu["peak_flops"], bandwidth=n * gpu["bandwidth"])',
        "new": "scaled = dict(gpu)",
    },
    {
        "name": "the more expensive model chosen",
        "cell": "choose",
        "old": 'return min(costs, key=lambda name: (costs[name], name != "dense"))',
        "new": 'return max(costs, key=lambda name: (costs[name], name != "dense"))',
    },
    {
        "name": "tie goes to the MoE",
        "cell": "choose",
        "old": 'return min(costs, key=lambda name: (costs[name], name != "dense"))',
        "new": 'return min(costs, key=lambda name: (costs[name], name == "dense"))',
    },
    {
        "name": "neither fitting returns a default instead of raising",
        "cell": "choose",
        "old": "raise ValueError(f\"neither model fits in {workload['max_gpus']} x {gpu.get('name', 'GPU')}\")",
        "new": 'return "dense"',
    },
    # hardening (issue 18): boundaries, ignored arguments, types, inputs modified in place
    {
        "name": "[boundary] empty context (0 tokens) wrongly rejected",
        "cell": "kv_cache_bytes",
        "old": "    return per_token * context * batch",
        "new": '    if context < 1:\n        raise ValueError(f"context must be >= 1, got {context}")\n    return per_token * context * batch',
    },
    {
        "name": "[boundary] zero bytes wrongly rejected (<= 0 instead of < 0)",
        "cell": "gpus_needed",
        "old": "if total_bytes < 0:",
        "new": "if total_bytes <= 0:",
    },
    {
        "name": "[boundary] zero bytes need zero GPUs (max(1, ...) forgotten)",
        "cell": "gpus_needed",
        "old": 'return max(1, math.ceil(total_bytes / (gpu["memory_gb"] * 1e9)))',
        "new": 'return math.ceil(total_bytes / (gpu["memory_gb"] * 1e9))',
    },
    {
        "name": "[types] GPU count by float ceiling division (returns a float)",
        "cell": "gpus_needed",
        "old": 'return max(1, math.ceil(total_bytes / (gpu["memory_gb"] * 1e9)))',
        "new": 'return max(1, -(-total_bytes // (gpu["memory_gb"] * 1e9)))',
    },
    {
        "name": "[ignored argument] KV cache read at 2 bytes whatever bytes_per_value",
        "cell": "decode_step_time",
        "old": "nbytes += kv_cache_bytes(model, context, batch, bytes_per_value)",
        "new": "nbytes += kv_cache_bytes(model, context, batch, 2)",
    },
    {
        "name": "[in place] decode_step_time scales model['expert_params'] by the touched fraction",
        "cell": "decode_step_time",
        "old": 'nbytes = (model["shared_params"] + model["expert_params"] * touched) * bytes_per_param',
        "new": 'model["expert_params"] *= touched\n    nbytes = (model["shared_params"] + model["expert_params"]) * bytes_per_param',
    },
    {
        "name": "[in place] choose scales the caller's gpu dict (gpu[...] *= n)",
        "cell": "choose",
        "old": 'scaled = dict(gpu, peak_flops=n * gpu["peak_flops"], bandwidth=n * gpu["bandwidth"])',
        "new": 'gpu["peak_flops"] *= n\n        gpu["bandwidth"] *= n\n        scaled = gpu',
    },
    {
        "name": "[boundary] a model that needs exactly max_gpus GPUs excluded (>= instead of >)",
        "cell": "choose",
        "old": 'if n > workload["max_gpus"]:',
        "new": 'if n >= workload["max_gpus"]:',
    },
    {
        "name": "[ignored argument] step time always with 2 bytes per parameter",
        "cell": "choose",
        "old": 'step = decode_step_time(model, scaled, workload["batch"], workload["context"], workload["bytes_per_param"])',
        "new": 'step = decode_step_time(model, scaled, workload["batch"], workload["context"], 2)',
    },
    {
        "name": "[ignored argument] memory check always with 2 bytes per parameter",
        "cell": "choose",
        "old": 'memory = (weight_bytes(model, workload["bytes_per_param"])',
        "new": "memory = (weight_bytes(model, 2)",
    },
]
