"""Mistakes students make in ex02_moe, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. topk_route
    {
        "name": "softmax over all experts, kept probabilities not renormalised",
        "cell": "topk_route",
        "old": "weights = top / top.sum(dim=-1, keepdim=True)",
        "new": "weights = top",
    },
    {
        "name": "softmax over the tokens (wrong dimension) before top-k",
        "cell": "topk_route",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "probs = torch.softmax(logits, dim=0)",
    },
    {
        "name": "renormalisation sums over the tokens (wrong dimension)",
        "cell": "topk_route",
        "old": "weights = top / top.sum(dim=-1, keepdim=True)",
        "new": "weights = top / top.sum(dim=0, keepdim=True)",
    },
    {
        "name": "top-k over the tokens (wrong dimension)",
        "cell": "topk_route",
        "old": "top, indices = torch.topk(probs, k, dim=-1)",
        "new": "top, indices = torch.topk(probs, k, dim=0)",
    },
    {
        "name": "raw logits used as weights (no softmax)",
        "cell": "topk_route",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "probs = logits",
    },
    {
        "name": "top-k of the smallest scores",
        "cell": "topk_route",
        "old": "top, indices = torch.topk(probs, k, dim=-1)",
        "new": "top, indices = torch.topk(probs, k, dim=-1, largest=False)",
    },
    {
        "name": "k hard-coded to 2",
        "cell": "topk_route",
        "old": "top, indices = torch.topk(probs, k, dim=-1)",
        "new": "top, indices = torch.topk(probs, 2, dim=-1)",
    },
    {
        "name": "no ValueError for k out of range",
        "cell": "topk_route",
        "old": 'raise ValueError(f"k must be an int in [1, {n_experts}], got {k!r}")',
        "new": "pass",
    },
    # 2. moe_forward
    {
        "name": "routing weights dropped in the combine",
        "cell": "moe_forward",
        "old": "out.index_add_(0, token, weights[token, slot].unsqueeze(-1) * y)",
        "new": "out.index_add_(0, token, y)",
    },
    {
        "name": "k > 1: each expert output weighted by the sum of the token's k weights (double counting)",
        "cell": "moe_forward",
        "old": "out.index_add_(0, token, weights[token, slot].unsqueeze(-1) * y)",
        "new": "out.index_add_(0, token, weights[token].sum(-1, keepdim=True) * y)",
    },
    {
        "name": "k > 1: weight of slot 0 used for every expert",
        "cell": "moe_forward",
        "old": "out.index_add_(0, token, weights[token, slot].unsqueeze(-1) * y)",
        "new": "out.index_add_(0, token, weights[token, 0].unsqueeze(-1) * y)",
    },
    {
        "name": "experts looked up by rank among the used ones (breaks when an expert gets no token)",
        "cell": "moe_forward",
        "old": "    for e in range(w_gate.shape[0]):\n        token, slot = torch.where(indices == e)",
        "new": "    for e, used in enumerate(indices.unique().tolist()):\n        token, slot = torch.where(indices == used)",
    },
    {
        "name": "experts looped only up to the largest index minus one",
        "cell": "moe_forward",
        "old": "for e in range(w_gate.shape[0]):",
        "new": "for e in range(int(indices.max())):",
    },
    {
        "name": "combine overwrites instead of adding (a token's last expert wins)",
        "cell": "moe_forward",
        "old": "out.index_add_(0, token, weights[token, slot].unsqueeze(-1) * y)",
        "new": "out[token] = weights[token, slot].unsqueeze(-1) * y",
    },
    {
        "name": "expert without the up projection",
        "cell": "moe_forward",
        "old": "y = (F.silu(xe @ w_gate[e].T) * (xe @ w_up[e].T)) @ w_down[e].T",
        "new": "y = F.silu(xe @ w_gate[e].T) @ w_down[e].T",
    },
    # 3. moe_params
    {
        "name": "all experts counted as active",
        "cell": "moe_params",
        "old": 'active = cfg["n_layers"] * (common + cfg["top_k"] * expert) + outside',
        "new": 'active = cfg["n_layers"] * (common + cfg["n_experts"] * expert) + outside',
    },
    {
        "name": "shared experts not counted as active",
        "cell": "moe_params",
        "old": 'active = cfg["n_layers"] * (common + cfg["top_k"] * expert) + outside',
        "new": 'active = cfg["n_layers"] * (common - shared + cfg["top_k"] * expert) + outside',
    },
    {"name": "router forgotten", "cell": "moe_params", "old": 'router = cfg["n_experts"] * d', "new": "router = 0"},
    {
        "name": "SwiGLU experts counted with two matrices",
        "cell": "moe_params",
        "old": 'expert = 3 * d * cfg["d_ff_expert"]',
        "new": 'expert = 2 * d * cfg["d_ff_expert"]',
    },
    {
        "name": "shared experts sized with d_ff_expert always",
        "cell": "moe_params",
        "old": 'cfg.get("d_ff_shared", cfg["d_ff_expert"])',
        "new": 'cfg["d_ff_expert"]',
    },
    {
        "name": "LM head counted even when tied",
        "cell": "moe_params",
        "old": 'head = 0 if cfg.get("tied_embeddings", False) else embedding',
        "new": "head = embedding",
    },
    # hardening (issue 18): boundaries, types, inputs modified in place, the float32 of the ungraded part 4
    {
        "name": "[boundary] k == E rejected (k < E instead of k <= E)",
        "cell": "topk_route",
        "old": "not 1 <= k <= n_experts",
        "new": "not 1 <= k < n_experts",
    },
    {
        "name": "[in place] topk_route subtracts the max from the logits in place",
        "cell": "topk_route",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "logits -= logits.max(dim=-1, keepdim=True).values\n    probs = torch.softmax(logits, dim=-1)",
    },
    {
        "name": "[types] topk_route returns int32 indices",
        "cell": "topk_route",
        "old": "return indices, weights",
        "new": "return indices.to(torch.int32), weights",
    },
    {
        "name": "[types] topk_route returns float64 weights for float32 logits",
        "cell": "topk_route",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "probs = torch.softmax(logits.double(), dim=-1)",
    },
    {
        "name": "[types; ungraded part 4 runs float32] moe_forward output always float64",
        "cell": "moe_forward",
        "old": "out = torch.zeros_like(x)",
        "new": "out = torch.zeros(x.shape, dtype=torch.float64)",
    },
    {
        "name": "[in place] moe_forward reuses x's memory for the output",
        "cell": "moe_forward",
        "old": "out = torch.zeros_like(x)",
        "new": "x, out = x.clone(), x.zero_()",
    },
    {
        "name": "[types] active parameters via top_k / n_experts (a float)",
        "cell": "moe_params",
        "old": 'active = cfg["n_layers"] * (common + cfg["top_k"] * expert) + outside',
        "new": 'active = cfg["n_layers"] * (common + cfg["n_experts"] * expert * cfg["top_k"] / cfg["n_experts"]) + outside',
    },
    {
        "name": "[in place] moe_params fills the default n_shared_experts into cfg (setdefault)",
        "cell": "moe_params",
        "old": 'shared = cfg.get("n_shared_experts", 0)',
        "new": 'shared = cfg.setdefault("n_shared_experts", 0)',
    },
]
