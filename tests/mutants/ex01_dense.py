"""Mistakes students make in ex01_dense, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. swiglu
    {
        "name": "swiglu forgets the up projection (two matrices)",
        "cell": "swiglu",
        "old": "h = gate * torch.sigmoid(gate) * (x @ w_up.T)",
        "new": "h = gate * torch.sigmoid(gate)",
    },
    {"name": "swiglu forgets the down projection", "cell": "swiglu", "old": "return h @ w_down.T", "new": "return h"},
    {
        "name": "swiglu uses sigmoid instead of silu",
        "cell": "swiglu",
        "old": "h = gate * torch.sigmoid(gate) * (x @ w_up.T)",
        "new": "h = torch.sigmoid(gate) * (x @ w_up.T)",
    },
    {
        "name": "swiglu uses relu instead of silu",
        "cell": "swiglu",
        "old": "h = gate * torch.sigmoid(gate) * (x @ w_up.T)",
        "new": "h = gate.clamp(min=0) * (x @ w_up.T)",
    },
    {
        "name": "swiglu puts silu on the up branch",
        "cell": "swiglu",
        "old": "h = gate * torch.sigmoid(gate) * (x @ w_up.T)",
        "new": "up = x @ w_up.T\n    h = up * torch.sigmoid(up) * gate",
    },
    {
        "name": "swiglu uses the gate weights twice",
        "cell": "swiglu",
        "old": "h = gate * torch.sigmoid(gate) * (x @ w_up.T)",
        "new": "h = gate * torch.sigmoid(gate) * (x @ w_gate.T)",
    },
    # 2. block_params / model_params
    {
        "name": "GQA KV heads counted as full heads",
        "cell": "block_params",
        "old": 'kv = 2 * d * cfg["n_kv_heads"] * head_dim',
        "new": 'kv = 2 * d * cfg["n_heads"] * head_dim',
    },
    {
        "name": "only one of K and V counted",
        "cell": "block_params",
        "old": 'kv = 2 * d * cfg["n_kv_heads"] * head_dim',
        "new": 'kv = d * cfg["n_kv_heads"] * head_dim',
    },
    {
        "name": "SwiGLU counted with two matrices (forgets the third)",
        "cell": "block_params",
        "old": 'ffn = 3 * d * cfg["d_ff"]',
        "new": 'ffn = 2 * d * cfg["d_ff"]',
    },
    {
        "name": "head_dim always d_model // n_heads",
        "cell": "block_params",
        "old": 'head_dim = cfg.get("head_dim", d // cfg["n_heads"])',
        "new": 'head_dim = d // cfg["n_heads"]',
    },
    {"name": "norms forgotten", "cell": "block_params", "old": "norms = 2 * d\n", "new": "norms = 0\n"},
    {
        "name": "output projection forgotten",
        "cell": "block_params",
        "old": "return q + kv + o + ffn + norms",
        "new": "return q + kv + ffn + norms",
    },
    {
        "name": "tied LM head counted twice",
        "cell": "block_params",
        "old": 'head = 0 if cfg.get("tied_embeddings", False) else embedding',
        "new": "head = embedding",
    },
    {
        "name": "final norm forgotten",
        "cell": "block_params",
        "old": 'cfg["n_layers"] * block_params(cfg) + cfg["d_model"] + embedding + head',
        "new": 'cfg["n_layers"] * block_params(cfg) + embedding + head',
    },
    # 3. FLOPs
    {
        "name": "forward FLOPs without the factor 2 (N instead of 2N)",
        "cell": "flops",
        "old": "return 2 * n_matmul_params + 2 * 2",
        "new": "return n_matmul_params + 2 * 2",
    },
    {
        "name": "attention FLOPs count only Q.K (or forget the factor 2)",
        "cell": "flops",
        "old": "return 2 * n_matmul_params + 2 * 2 * n_layers",
        "new": "return 2 * n_matmul_params + 2 * n_layers",
    },
    {
        "name": "attention term forgotten",
        "cell": "flops",
        "old": "return 2 * n_matmul_params + 2 * 2 * n_layers * n_heads * head_dim * context",
        "new": "return 2 * n_matmul_params",
    },
    {
        "name": "training = 2x forward",
        "cell": "flops",
        "old": "return 3 * forward_flops_per_token",
        "new": "return 2 * forward_flops_per_token",
    },
    # 4. bytes
    {
        "name": "bf16 taken as 1 byte per parameter (off by 2x)",
        "cell": "bytes",
        "old": '"bf16": 2,',
        "new": '"bf16": 1,',
    },
    {"name": "fp32 taken as 8 bytes (off by 2x)", "cell": "bytes", "old": '"fp32": 4,', "new": '"fp32": 8,'},
    {"name": "int4 taken as 4 bytes (bits for bytes)", "cell": "bytes", "old": '"int4": 0.5', "new": '"int4": 4'},
    {
        "name": "unknown dtype silently 2 bytes",
        "cell": "bytes",
        "old": 'raise ValueError(f"unknown dtype {dtype!r}")\n    return n_params * per[dtype]',
        "new": "return n_params * 2\n    return n_params * per[dtype]",
    },
    {
        "name": "KV cache with all heads instead of KV heads",
        "cell": "bytes",
        "old": '2 * cfg["n_layers"] * cfg["n_kv_heads"] * head_dim',
        "new": '2 * cfg["n_layers"] * cfg["n_heads"] * head_dim',
    },
    {
        "name": "KV cache stores only keys",
        "cell": "bytes",
        "old": '2 * cfg["n_layers"] * cfg["n_kv_heads"] * head_dim',
        "new": 'cfg["n_layers"] * cfg["n_kv_heads"] * head_dim',
    },
    {
        "name": "bytes_to_gb divides by 2**30 (GB and GiB mixed)",
        "cell": "bytes",
        "old": "return n_bytes / 1e9",
        "new": "return n_bytes / 2**30",
    },
    {
        "name": "bytes_to_gib divides by 1e9 (GB and GiB mixed)",
        "cell": "bytes",
        "old": "return n_bytes / 2**30",
        "new": "return n_bytes / 1e9",
    },
    # 5. fits
    {
        "name": "fits compares with GiB (datasheet GB taken as 2**30)",
        "cell": "fits",
        "old": "<= n_gpus * gpu_memory_gb * 1e9",
        "new": "<= n_gpus * gpu_memory_gb * 2**30",
    },
    {
        "name": "fits converts bytes to GiB and compares with GB",
        "cell": "fits",
        "old": "return weight_bytes(n_params, dtype) + extra_bytes <= n_gpus * gpu_memory_gb * 1e9",
        "new": "return (weight_bytes(n_params, dtype) + extra_bytes) / 2**30 <= n_gpus * gpu_memory_gb",
    },
    {
        "name": "fits ignores extra bytes",
        "cell": "fits",
        "old": "return weight_bytes(n_params, dtype) + extra_bytes <= n_gpus",
        "new": "return weight_bytes(n_params, dtype) <= n_gpus",
    },
    {
        "name": "fits ignores n_gpus",
        "cell": "fits",
        "old": "<= n_gpus * gpu_memory_gb * 1e9",
        "new": "<= gpu_memory_gb * 1e9",
    },
    {"name": "gpus_needed rounds down", "cell": "fits", "old": "max(1, math.ceil(", "new": "max(1, math.floor("},
    {"name": "gpus_needed rounds to nearest", "cell": "fits", "old": "max(1, math.ceil(", "new": "max(1, round("},
    {
        "name": "gpus_needed in GiB",
        "cell": "fits",
        "old": "/ (gpu_memory_gb * 1e9)))",
        "new": "/ (gpu_memory_gb * 2**30)))",
    },
    # answers that call the course package instead of doing the work (the guard must catch them)
    {
        "name": "swiglu calls dmcourse.ffn.swiglu",
        "cell": "swiglu",
        "old": "gate = x @ w_gate.T\n    h = gate * torch.sigmoid(gate) * (x @ w_up.T)\n    return h @ w_down.T",
        "new": "from dmcourse.ffn import swiglu as _course_swiglu\n    return _course_swiglu(x, w_gate, w_up, w_down)",
    },
    {
        "name": "weight_bytes calls dmcourse.accounting",
        "cell": "bytes",
        "old": "return n_params * per[dtype]",
        "new": "from dmcourse.accounting import bytes_per_param\n    return n_params * bytes_per_param(dtype)",
    },
    # hardening (issue 18): boundaries, ignored arguments, types, inputs modified in place
    {
        "name": "[types] head_dim with true division (block_params returns a float)",
        "cell": "block_params",
        "old": 'head_dim = cfg.get("head_dim", d // cfg["n_heads"])',
        "new": 'head_dim = cfg.get("head_dim", d / cfg["n_heads"])',
    },
    {
        "name": "[types] training FLOPs as 6N / 2 (a float)",
        "cell": "flops",
        "old": "return 3 * forward_flops_per_token(n_matmul_params, n_layers, n_heads, head_dim, context)",
        "new": "return forward_flops_per_token(n_matmul_params, n_layers, n_heads, head_dim, context) * 6 / 2",
    },
    {
        "name": "[in place] swiglu writes its output into x (x.copy_) to save memory",
        "cell": "swiglu",
        "old": "return h @ w_down.T",
        "new": "return x.copy_(h @ w_down.T)",
    },
    {
        "name": "[boundary] fits rejects memory exactly equal to the GPUs' (< instead of <=)",
        "cell": "fits",
        "old": "extra_bytes <= n_gpus * gpu_memory_gb * 1e9",
        "new": "extra_bytes < n_gpus * gpu_memory_gb * 1e9",
    },
    {
        "name": "[ignored argument] gpus_needed ignores extra_bytes",
        "cell": "fits",
        "old": "math.ceil((weight_bytes(n_params, dtype) + extra_bytes) / (gpu_memory_gb * 1e9))",
        "new": "math.ceil(weight_bytes(n_params, dtype) / (gpu_memory_gb * 1e9))",
    },
    {
        "name": "[ignored argument] gpus_needed always counts bf16",
        "cell": "fits",
        "old": "math.ceil((weight_bytes(n_params, dtype) + extra_bytes)",
        "new": 'math.ceil((weight_bytes(n_params, "bf16") + extra_bytes)',
    },
    {
        "name": "[types] gpus_needed by float ceiling division (returns a float)",
        "cell": "fits",
        "old": "return max(1, math.ceil((weight_bytes(n_params, dtype) + extra_bytes) / (gpu_memory_gb * 1e9)))",
        "new": "return max(1, -(-(weight_bytes(n_params, dtype) + extra_bytes) // (gpu_memory_gb * 1e9)))",
    },
    {
        "name": "[in place] block_params fills the default head_dim into cfg (setdefault)",
        "cell": "block_params",
        "old": 'head_dim = cfg.get("head_dim", d // cfg["n_heads"])',
        "new": 'head_dim = cfg.setdefault("head_dim", d // cfg["n_heads"])',
    },
    {
        "name": "[in place] kv_cache_bytes_per_token fills the default head_dim into cfg (setdefault)",
        "cell": "bytes",
        "old": 'head_dim = cfg.get("head_dim", cfg["d_model"] // cfg["n_heads"])',
        "new": 'head_dim = cfg.setdefault("head_dim", cfg["d_model"] // cfg["n_heads"])',
    },
]
