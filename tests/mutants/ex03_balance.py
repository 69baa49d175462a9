"""Mistakes students make in ex03_balance, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. aux_loss
    {
        "name": "f_i from the probabilities instead of the assignments",
        "cell": "aux_loss",
        "old": "f = counts / (k * n_tokens)",
        "new": "f = probs.mean(dim=0)",
    },
    {
        "name": "missing factor N",
        "cell": "aux_loss",
        "old": "return n_experts * torch.sum(f * p)",
        "new": "return torch.sum(f * p)",
    },
    {
        "name": "N squared (transformers' Switch mean over experts without dividing by N)",
        "cell": "aux_loss",
        "old": "return n_experts * torch.sum(f * p)",
        "new": "return n_experts ** 2 * torch.sum(f * p)",
    },
    {
        "name": "missing division by k (the 'hf' convention: k at balance)",
        "cell": "aux_loss",
        "old": "f = counts / (k * n_tokens)",
        "new": "f = counts / n_tokens",
    },
    {
        "name": "P_i averaged over the experts instead of the tokens",
        "cell": "aux_loss",
        "old": "p = probs.mean(dim=0)",
        "new": "p = probs.mean(dim=1, keepdim=True)",
    },
    {
        "name": "softmax over the tokens (wrong dimension)",
        "cell": "aux_loss",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "probs = torch.softmax(logits, dim=0)",
    },
    {
        "name": "the k least probable experts",
        "cell": "aux_loss",
        "old": "chosen = torch.topk(probs, k, dim=-1).indices",
        "new": "chosen = torch.topk(probs, k, dim=-1, largest=False).indices",
    },
    {
        "name": "top-1 counted whatever k is",
        "cell": "aux_loss",
        "old": "chosen = torch.topk(probs, k, dim=-1).indices",
        "new": "chosen = torch.topk(probs, 1, dim=-1).indices",
    },
    {
        "name": "P_i detached (no gradient reaches the router)",
        "cell": "aux_loss",
        "old": "p = probs.mean(dim=0)",
        "new": "p = probs.mean(dim=0).detach()",
    },
    # 2. z_loss
    {
        "name": "z-loss on the probabilities instead of the logits",
        "cell": "z_loss",
        "old": "return (torch.logsumexp(logits, dim=-1) ** 2).mean()",
        "new": "return (torch.logsumexp(torch.softmax(logits, dim=-1), dim=-1) ** 2).mean()",
    },
    {
        "name": "log-sum-exp not squared",
        "cell": "z_loss",
        "old": "return (torch.logsumexp(logits, dim=-1) ** 2).mean()",
        "new": "return torch.logsumexp(logits, dim=-1).mean()",
    },
    {
        "name": "summed over tokens instead of averaged",
        "cell": "z_loss",
        "old": "return (torch.logsumexp(logits, dim=-1) ** 2).mean()",
        "new": "return (torch.logsumexp(logits, dim=-1) ** 2).sum()",
    },
    {
        "name": "naive log(sum(exp)) overflows for large logits",
        "cell": "z_loss",
        "old": "return (torch.logsumexp(logits, dim=-1) ** 2).mean()",
        "new": "return (torch.log(torch.exp(logits).sum(dim=-1)) ** 2).mean()",
    },
    {
        "name": "squared logits (an L2 penalty) instead of the log-sum-exp",
        "cell": "z_loss",
        "old": "return (torch.logsumexp(logits, dim=-1) ** 2).mean()",
        "new": "return (logits ** 2).mean()",
    },
    {
        "name": "log-sum-exp over the tokens (wrong dimension)",
        "cell": "z_loss",
        "old": "return (torch.logsumexp(logits, dim=-1) ** 2).mean()",
        "new": "return (torch.logsumexp(logits, dim=0) ** 2).mean()",
    },
    # 3. expert_capacity
    {
        "name": "capacity rounded down",
        "cell": "capacity",
        "old": "return math.ceil(capacity_factor * n_tokens * k / n_experts)",
        "new": "return int(capacity_factor * n_tokens * k / n_experts)",
    },
    {
        "name": "capacity forgets the k slots per token",
        "cell": "capacity",
        "old": "return math.ceil(capacity_factor * n_tokens * k / n_experts)",
        "new": "return math.ceil(capacity_factor * n_tokens / n_experts)",
    },
    {
        "name": "capacity forgets the capacity factor",
        "cell": "capacity",
        "old": "return math.ceil(capacity_factor * n_tokens * k / n_experts)",
        "new": "return math.ceil(n_tokens * k / n_experts)",
    },
    # 3. capacity_keep
    {
        "name": "drops in the wrong order: the last tokens are kept",
        "cell": "capacity_keep",
        "old": "    for t in range(indices.shape[0]):",
        "new": "    for t in reversed(range(indices.shape[0])):",
    },
    {
        "name": "drops in the wrong order: all 1st choices before any 2nd choice",
        "cell": "capacity_keep",
        "old": "    for t in range(indices.shape[0]):\n        for j in range(indices.shape[1]):",
        "new": "    for j in range(indices.shape[1]):\n        for t in range(indices.shape[0]):",
    },
    {
        "name": "off by one: each expert keeps capacity + 1",
        "cell": "capacity_keep",
        "old": "if used[e] < capacity:",
        "new": "if used[e] <= capacity:",
    },
    {
        "name": "one capacity for all experts together",
        "cell": "capacity_keep",
        "old": "if used[e] < capacity:",
        "new": "if sum(used) < capacity:",
    },
    {"name": "keep and drop swapped", "cell": "capacity_keep", "old": "    return keep\n", "new": "    return ~keep\n"},
    # 4. update_bias
    {
        "name": "bias sign reversed (overloaded experts become more attractive)",
        "cell": "bias_update",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + gamma * torch.sign(load - load.mean())",
    },
    {
        "name": "step proportional to the load gap instead of its sign",
        "cell": "bias_update",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + gamma * (load.mean() - load)",
    },
    {
        "name": "bias modified in place",
        "cell": "bias_update",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias.add_(gamma * torch.sign(load.mean() - load))",
    },
    {
        "name": "compared with the total load instead of the mean",
        "cell": "bias_update",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + gamma * torch.sign(load.sum() - load)",
    },
    # 4. route_with_bias
    {
        "name": "the bias leaks into the gating weights",
        "cell": "route_with_bias",
        "old": "chosen = scores.gather(1, indices)",
        "new": "chosen = (scores + bias).gather(1, indices)",
    },
    {
        "name": "the bias is ignored in the selection",
        "cell": "route_with_bias",
        "old": "indices = torch.topk(scores + bias, k, dim=-1).indices",
        "new": "indices = torch.topk(scores, k, dim=-1).indices",
    },
    {
        "name": "the bias subtracted instead of added",
        "cell": "route_with_bias",
        "old": "indices = torch.topk(scores + bias, k, dim=-1).indices",
        "new": "indices = torch.topk(scores - bias, k, dim=-1).indices",
    },
    {
        "name": "weights not normalised over the chosen experts",
        "cell": "route_with_bias",
        "old": "return indices, chosen / chosen.sum(dim=-1, keepdim=True)",
        "new": "return indices, chosen",
    },
    {
        "name": "weights normalised over all experts' scores",
        "cell": "route_with_bias",
        "old": "return indices, chosen / chosen.sum(dim=-1, keepdim=True)",
        "new": "return indices, chosen / scores.sum(dim=-1, keepdim=True)",
    },
    # hardening (issue 18): boundaries, types, inputs modified in place
    {
        "name": "[boundary] an expert nobody chose drops out of f (bincount without minlength)",
        "cell": "aux_loss",
        "old": "torch.bincount(chosen.reshape(-1), minlength=n_experts)",
        "new": "torch.bincount(chosen.reshape(-1))",
    },
    {
        "name": "[message] stable log-sum-exp that drops the max",
        "cell": "z_loss",
        "old": "return (torch.logsumexp(logits, dim=-1) ** 2).mean()",
        "new": "m = logits.max(dim=-1, keepdim=True).values\n    return (torch.log(torch.exp(logits - m).sum(dim=-1)) ** 2).mean()",
    },
    {
        "name": "[in place] z_loss subtracts the max from the logits in place",
        "cell": "z_loss",
        "old": "return (torch.logsumexp(logits, dim=-1) ** 2).mean()",
        "new": "m = logits.max(dim=-1, keepdim=True).values\n    logits -= m\n    return ((m.squeeze(-1) + torch.log(torch.exp(logits).sum(dim=-1))) ** 2).mean()",
    },
    {
        "name": "[types] capacity by float ceiling division (returns a float)",
        "cell": "capacity",
        "old": "return math.ceil(capacity_factor * n_tokens * k / n_experts)",
        "new": "return -(-(capacity_factor * n_tokens * k) // n_experts)",
    },
    {
        "name": "[boundary] capacity 0 taken as 'no limit'",
        "cell": "capacity_keep",
        "old": "if used[e] < capacity:",
        "new": "if used[e] < capacity or capacity == 0:",
    },
    {
        "name": "[in place] capacity_keep marks dropped assignments in indices (-1)",
        "cell": "capacity_keep",
        "old": "                used[e] += 1\n",
        "new": "                used[e] += 1\n            else:\n                indices[t, j] = -1\n",
    },
    {
        "name": "[types] mean load by floor division on the integer loads",
        "cell": "bias_update",
        "old": "load = load.to(torch.float32)\n    return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + gamma * torch.sign(load.sum() // load.numel() - load)",
    },
    {
        "name": "[types] update_bias returns float64 for a float32 bias",
        "cell": "bias_update",
        "old": "load = load.to(torch.float32)",
        "new": "load = load.to(torch.float64)",
    },
    {
        "name": "[in place] route_with_bias adds the bias to the scores in place",
        "cell": "route_with_bias",
        "old": "indices = torch.topk(scores + bias, k, dim=-1).indices\n    chosen = scores.gather(1, indices)",
        "new": "scores += bias\n    indices = torch.topk(scores, k, dim=-1).indices\n    chosen = (scores - bias).gather(1, indices)",
    },
    {
        "name": "[types] route_with_bias returns int32 indices",
        "cell": "route_with_bias",
        "old": "return indices, chosen / chosen.sum(dim=-1, keepdim=True)",
        "new": "return indices.int(), chosen / chosen.sum(dim=-1, keepdim=True)",
    },
]
