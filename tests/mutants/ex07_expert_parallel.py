"""Mistakes students make in ex07_expert_parallel, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. send_splits
    {
        "name": "experts assigned to ranks round-robin (e % W) instead of in blocks",
        "cell": "send_splits",
        "old": "return [int(c) for c in counts.view(world_size, e_local).sum(1)]",
        "new": "return [int(c) for c in counts.view(e_local, world_size).sum(0)]",
    },
    {
        "name": "only each token's first expert counted (k ignored)",
        "cell": "send_splits",
        "old": "counts = torch.bincount(indices.reshape(-1), minlength=n_experts)",
        "new": "counts = torch.bincount(indices[:, 0], minlength=n_experts)",
    },
    {
        "name": "bincount without minlength (breaks when the last experts get nothing)",
        "cell": "send_splits",
        "old": "torch.bincount(indices.reshape(-1), minlength=n_experts)",
        "new": "torch.bincount(indices.reshape(-1))",
    },
    {
        "name": "returns tensors instead of Python ints",
        "cell": "send_splits",
        "old": "return [int(c) for c in counts.view(world_size, e_local).sum(1)]",
        "new": "return list(counts.view(world_size, e_local).sum(1))",
    },
    {
        "name": "no ValueError when world_size does not divide n_experts",
        "cell": "send_splits",
        "old": 'raise ValueError(f"world_size={world_size} must divide n_experts={n_experts}")',
        "new": "pass",
    },
    {
        "name": "rank of an expert computed as e // world_size",
        "cell": "send_splits",
        "old": "return [int(c) for c in counts.view(world_size, e_local).sum(1)]",
        "new": "return [int(((indices.reshape(-1) // world_size) == r).sum()) for r in range(world_size)]",
    },
    # 2. rank_order
    {
        "name": "the inverse permutation (where each pair goes) instead of the pair at each position",
        "cell": "rank_order",
        "old": "return torch.argsort(indices.reshape(-1), stable=True)",
        "new": "return torch.argsort(torch.argsort(indices.reshape(-1), stable=True))",
    },
    {
        "name": "sorted by rank only, pairs of one rank not grouped by expert",
        "cell": "rank_order",
        "old": "return torch.argsort(indices.reshape(-1), stable=True)",
        "new": "return torch.argsort(indices.reshape(-1) // 2, stable=True)",
    },
    {
        "name": "descending expert order",
        "cell": "rank_order",
        "old": "return torch.argsort(indices.reshape(-1), stable=True)",
        "new": "return torch.argsort(indices.reshape(-1), stable=True, descending=True)",
    },
    {
        "name": "sorted column by column (slot-major) instead of pair order for ties",
        "cell": "rank_order",
        "old": "return torch.argsort(indices.reshape(-1), stable=True)",
        "new": "order = torch.argsort(indices.T.reshape(-1), stable=True)\n    return (order % indices.shape[0]) * indices.shape[1] + order // max(indices.shape[0], 1)",
    },
    {
        "name": "the token ids instead of the pair ids",
        "cell": "rank_order",
        "old": "return torch.argsort(indices.reshape(-1), stable=True)",
        "new": "return torch.argsort(indices.reshape(-1), stable=True) // indices.shape[1]",
    },
    # 3. combine
    {
        "name": "permutation applied again instead of undone (returned[order])",
        "cell": "combine",
        "old": "    unsorted = torch.empty_like(returned)\n    unsorted[order] = returned",
        "new": "    unsorted = returned[order]",
    },
    {
        "name": "permutation not undone at all",
        "cell": "combine",
        "old": "    unsorted = torch.empty_like(returned)\n    unsorted[order] = returned",
        "new": "    unsorted = returned.clone()",
    },
    {
        "name": "routing weights dropped",
        "cell": "combine",
        "old": "mixed = unsorted.view(n_tokens, k, returned.shape[-1]) * weights.unsqueeze(-1).to(returned.dtype)",
        "new": "mixed = unsorted.view(n_tokens, k, returned.shape[-1])",
    },
    {
        "name": "only the first slot of each token kept",
        "cell": "combine",
        "old": "return mixed.sum(dim=1)",
        "new": "return mixed[:, 0]",
    },
    {
        "name": "result always float32",
        "cell": "combine",
        "old": "return mixed.sum(dim=1)",
        "new": "return mixed.sum(dim=1).float()",
    },
    {
        "name": "-1 in view (fails with no tokens)",
        "cell": "combine",
        "old": "unsorted.view(n_tokens, k, returned.shape[-1])",
        "new": "unsorted.view(n_tokens, k, -1)",
    },
    {
        "name": "returned permuted in place",
        "cell": "combine",
        "old": "    unsorted = torch.empty_like(returned)\n    unsorted[order] = returned",
        "new": "    returned[order] = returned.clone()\n    unsorted = returned",
    },
]
