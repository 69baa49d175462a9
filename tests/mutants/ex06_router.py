"""Mistakes students make in ex06_router, each applied to the solution; every one must lose points.

Used by tests/test_mutants.py and benchmarks/mutation_table.py (see dmcourse.grading.mutation).
"""

MUTANTS = [
    # 1. switch_gate
    {
        "name": "gate renormalised over the chosen expert (always 1: no task gradient reaches the router)",
        "cell": "switch_gate",
        "old": "gate = probs.gather(1, expert.unsqueeze(1)).squeeze(1)",
        "new": "gate = probs.gather(1, expert.unsqueeze(1)).squeeze(1)\n    gate = gate / gate",
    },
    {
        "name": "gate detached from the logits",
        "cell": "switch_gate",
        "old": "gate = probs.gather(1, expert.unsqueeze(1)).squeeze(1)",
        "new": "gate = probs.gather(1, expert.unsqueeze(1)).squeeze(1).detach()",
    },
    {
        "name": "the bias leaks into the gate",
        "cell": "switch_gate",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "probs = torch.softmax(logits + bias, dim=-1)",
    },
    {
        "name": "the bias ignored in the selection",
        "cell": "switch_gate",
        "old": "expert = torch.argmax(logits + bias, dim=-1)",
        "new": "expert = torch.argmax(logits, dim=-1)",
    },
    {
        "name": "the bias subtracted in the selection",
        "cell": "switch_gate",
        "old": "expert = torch.argmax(logits + bias, dim=-1)",
        "new": "expert = torch.argmax(logits - bias, dim=-1)",
    },
    {
        "name": "softmax over the tokens (wrong dimension)",
        "cell": "switch_gate",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "probs = torch.softmax(logits, dim=0)",
    },
    {
        "name": "raw logit used as the gate (no softmax)",
        "cell": "switch_gate",
        "old": "gate = probs.gather(1, expert.unsqueeze(1)).squeeze(1)",
        "new": "gate = logits.gather(1, expert.unsqueeze(1)).squeeze(1)",
    },
    {
        "name": "logits shifted in place for stability",
        "cell": "switch_gate",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "logits.sub_(logits.max(dim=-1, keepdim=True).values)\n    probs = torch.softmax(logits, dim=-1)",
    },
    # 2. aux_loss
    {
        "name": "missing factor E",
        "cell": "aux_loss",
        "old": "return n_experts * torch.sum(f * p)",
        "new": "return torch.sum(f * p)",
    },
    {
        "name": "E squared",
        "cell": "aux_loss",
        "old": "return n_experts * torch.sum(f * p)",
        "new": "return n_experts ** 2 * torch.sum(f * p)",
    },
    {
        "name": "f_i from the probabilities instead of the dispatched tokens",
        "cell": "aux_loss",
        "old": "f = torch.bincount(expert, minlength=n_experts).to(probs.dtype) / expert.numel()",
        "new": "f = probs.mean(dim=0)",
    },
    {
        "name": "f_i from the argmax of the logits (the `expert` argument ignored)",
        "cell": "aux_loss",
        "old": "f = torch.bincount(expert, minlength=n_experts)",
        "new": "f = torch.bincount(torch.argmax(logits, dim=-1), minlength=n_experts)",
    },
    {
        "name": "f_i not divided by T (token counts)",
        "cell": "aux_loss",
        "old": "f = torch.bincount(expert, minlength=n_experts).to(probs.dtype) / expert.numel()",
        "new": "f = torch.bincount(expert, minlength=n_experts).to(probs.dtype)",
    },
    {
        "name": "bincount without minlength (breaks when the last experts get no token)",
        "cell": "aux_loss",
        "old": "torch.bincount(expert, minlength=n_experts)",
        "new": "torch.bincount(expert)",
    },
    {
        "name": "P_i detached (no gradient reaches the router)",
        "cell": "aux_loss",
        "old": "p = probs.mean(dim=0)",
        "new": "p = probs.mean(dim=0).detach()",
    },
    {
        "name": "softmax over the tokens in the loss (wrong dimension)",
        "cell": "aux_loss",
        "old": "probs = torch.softmax(logits, dim=-1)",
        "new": "probs = torch.softmax(logits, dim=0)",
    },
    # 3. update_bias
    {
        "name": "bias sign reversed (overloaded experts become more attractive)",
        "cell": "update_bias",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + gamma * torch.sign(load - load.mean())",
    },
    {
        "name": "step proportional to the load gap instead of its sign",
        "cell": "update_bias",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + gamma * (load.mean() - load)",
    },
    {
        "name": "bias modified in place",
        "cell": "update_bias",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias.add_(gamma * torch.sign(load.mean() - load))",
    },
    {
        "name": "load counted without minlength (the last experts' load missing)",
        "cell": "update_bias",
        "old": "torch.bincount(expert, minlength=bias.numel())",
        "new": "torch.bincount(expert)",
    },
    {
        "name": "compared with the total load instead of the mean",
        "cell": "update_bias",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + gamma * torch.sign(load.sum() - load)",
    },
    {
        "name": "an expert exactly at the mean load moves up (strict comparison instead of sign)",
        "cell": "update_bias",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + gamma * torch.where(load > load.mean(), -1.0, 1.0).to(bias.dtype)",
    },
    {
        "name": "the new bias always float32",
        "cell": "update_bias",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return (bias + gamma * torch.sign(load.mean() - load)).float()",
    },
    {
        "name": "gamma hard-coded",
        "cell": "update_bias",
        "old": "return bias + gamma * torch.sign(load.mean() - load)",
        "new": "return bias + 0.5 * torch.sign(load.mean() - load)",
    },
    # 4. train_router
    {
        "name": "the aux loss never added",
        "cell": "train_router",
        "old": "loss = loss + alpha * aux_loss(logits, expert)",
        "new": "loss = loss + 0 * aux_loss(logits, expert)",
    },
    {
        "name": "alpha ignored (hard-coded 0.05)",
        "cell": "train_router",
        "old": "loss = loss + alpha * aux_loss(logits, expert)",
        "new": "loss = loss + 0.05 * aux_loss(logits, expert)",
    },
    {
        "name": "the aux loss added in every mode",
        "cell": "train_router",
        "old": 'if balance == "aux":',
        "new": 'if balance != "none":',
    },
    {
        "name": "the bias never stored back into the model",
        "cell": "train_router",
        "old": "model.bias = update_bias(model.bias, expert, gamma)",
        "new": "update_bias(model.bias, expert, gamma)",
    },
    {
        "name": "gamma ignored (hard-coded 0.01)",
        "cell": "train_router",
        "old": "model.bias = update_bias(model.bias, expert, gamma)",
        "new": "model.bias = update_bias(model.bias, expert, 0.01)",
    },
    {
        "name": "lr ignored",
        "cell": "train_router",
        "old": "torch.optim.AdamW(model.parameters(), lr=lr)",
        "new": "torch.optim.AdamW(model.parameters(), lr=5e-3)",
    },
    {
        "name": "gradients never zeroed (they accumulate over steps)",
        "cell": "train_router",
        "old": "        opt.zero_grad()\n",
        "new": "",
    },
    {
        "name": "batch generator not seeded with the seed",
        "cell": "train_router",
        "old": "gen = torch.Generator().manual_seed(seed)",
        "new": "gen = torch.Generator().manual_seed(0)",
    },
    {
        "name": "model built before seeding",
        "cell": "train_router",
        "old": "    torch.manual_seed(seed)\n    model = TinyMoE()\n",
        "new": "    model = TinyMoE()\n    torch.manual_seed(seed)\n",
    },
    {
        "name": "one step fewer than asked",
        "cell": "train_router",
        "old": "for _ in range(steps):",
        "new": "for _ in range(steps - 1):",
    },
    {
        "name": "no ValueError for an unknown balance",
        "cell": "train_router",
        "old": "raise ValueError(f\"balance must be 'none', 'aux' or 'bias', got {balance!r}\")",
        "new": "pass",
    },
]
