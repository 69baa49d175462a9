"""Record trained routers' expert popularity for the chapter "Serving an MoE" (book/09_serving.ipynb).

Trains the load-balancing chapter's toy MoE (``dmcourse.toy.toy_moe`` on ``MixtureTask(shared=0.5)``,
its CPU settings: 400 steps of 16 sequences x 32 tokens, AdamW lr 3e-3, seed 0) under a few of that
chapter's balancing settings, then routes held-out sequences and writes, per configuration and
MoE layer, the expert chosen by every token (``indices``: sequences x tokens x top_k) to
``dmcourse/data/expert_popularity.json`` (read by :func:`dmcourse.serving.load_popularity`).
The counts and the skew are computed from these indices by the chapter, not stored.

    python tools/expert_popularity.py            # about a minute on one CPU core
    python tools/expert_popularity.py --out /tmp/popularity.json --steps 5   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

import dmcourse
from dmcourse import moe_train, toy
from dmcourse import train as T

OUT = Path(__file__).resolve().parents[1] / "dmcourse" / "data" / "expert_popularity.json"
STEPS, BATCH, SEQ = 400, 16, 32  # the balancing chapter's CPU settings
EVAL_SEQS, EVAL_LEN = 64, 32  # held-out sequences routed for the record
BASE = {"d_model": 32, "n_layers": 2, "n_experts": 8, "top_k": 2, "d_ff": 16}
CONFIGS = {
    "Mixtral top-2, no balancing": (moe_train.Balancing(), {"router": "softmax"}),
    "Mixtral top-2, aux 0.01": (moe_train.Balancing(aux_alpha=0.01, aux_convention="hf"), {"router": "softmax"}),
    "DeepSeek sigmoid, bias 0.01": (moe_train.Balancing(bias_gamma=0.01), {"router": "sigmoid"}),
    "fine-grained 16 x 8 top-4, bias 0.01": (
        moe_train.Balancing(bias_gamma=0.01),
        {"router": "sigmoid", "n_experts": 16, "top_k": 4, "d_ff": 8},
    ),
}


def record(name: str, balancing: moe_train.Balancing, arch: dict, task: toy.MixtureTask, steps: int = STEPS) -> dict:
    """Train one configuration (seed 0) for ``steps`` steps and route the held-out sequences."""
    arch = {**BASE, **arch}
    dmcourse.seed_everything(0)
    model = toy.toy_moe(task, **arch)
    config = T.TrainConfig(steps=steps, lr=3e-3, log_every=steps, seed=0)
    t0 = time.perf_counter()
    history = T.train(
        model, task.batch_fn(BATCH, SEQ), moe_train.moe_loss_fn(balancing), config, hooks=balancing.hooks(), desc=name
    )
    seconds = time.perf_counter() - t0
    held_out = task.sample(EVAL_SEQS, EVAL_LEN, torch.Generator().manual_seed(12345))
    model.eval()
    with torch.no_grad():
        model(held_out.x)
    layers = []
    for moe in moe_train.moe_layers(model):
        idx = moe.last_routing.indices.reshape(EVAL_SEQS, EVAL_LEN, moe.top_k)
        layers.append(idx.tolist())
    print(f"{name}: final loss {history.last('loss'):.3f}, {seconds:.1f} s")
    return {
        "arch": arch,
        "balancing": {k: v for k, v in vars(balancing).items() if v},
        "final_loss": round(float(history.last("loss")), 4),
        "indices": layers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(OUT), help=f"output JSON (default {OUT})")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS}, the chapter's)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    torch.set_num_threads(1)
    task = toy.MixtureTask(shared=0.5)
    doc = {
        "about": "Expert choices of trained toy routers (dmcourse.toy.toy_moe on MixtureTask(shared=0.5)): "
        "indices[layer][sequence][token][j] = the j-th expert token `token` of held-out sequence "
        "`sequence` was sent to. Made by the command below from the course's own training code.",
        "command": " ".join(["python tools/expert_popularity.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"dmcourse": dmcourse.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "task": repr(task),
        "training": {"steps": args.steps, "batch": BATCH, "seq_len": SEQ, "lr": 3e-3, "seed": 0},
        "held_out": {"sequences": EVAL_SEQS, "tokens": EVAL_LEN, "generator_seed": 12345},
        "configs": {name: record(name, bal, arch, task, args.steps) for name, (bal, arch) in CONFIGS.items()},
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
