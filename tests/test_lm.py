"""Tests for dmcourse.lm: corpus, batches, the tiny LM (dense and MoE), training, checkpoints."""

import pytest
import torch

from dmcourse.accounting import count_params
from dmcourse.ffn import SwiGLU
from dmcourse.lm import (
    ALPHABET,
    CharData,
    LMConfig,
    TinyLM,
    decode,
    encode,
    lm_loss,
    load_checkpoint,
    make_corpus,
    save_checkpoint,
)
from dmcourse.moe import MoE
from dmcourse.moe_train import Balancing, moe_loss_fn
from dmcourse.train import TrainConfig, evaluate, task_loss_fn, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def test_corpus_deterministic_and_in_alphabet():
    a, b = make_corpus(5000, seed=3), make_corpus(5000, seed=3)
    assert a == b and len(a) >= 5000 and set(a) <= set(ALPHABET)
    assert make_corpus(5000, seed=4) != a
    assert decode(encode(a[:100])) == a[:100]
    math = make_corpus(2000, topics=("math",), seed=0)
    first = math.split(".")[0].strip()
    x, _, y, _, z = first.split()
    assert int(x) + int(y) == int(z)  # the arithmetic lines are right
    with pytest.raises(ValueError, match="topics"):
        make_corpus(100, topics=("poetry",))
    with pytest.raises(ValueError, match="ALPHABET"):
        encode("Hello")


def test_split_and_batches():
    data = CharData("abcdefghij" * 100, val_fraction=0.1)
    assert len(data.train) == 900 and len(data.val) == 100
    g = torch.Generator().manual_seed(0)
    batch = data.sample("val", 4, 16, g)
    assert batch.x.shape == (4, 16) and torch.equal(batch.x[:, 1:], batch.y[:, :-1])
    with pytest.raises(ValueError, match="split"):
        data.sample("test", 1, 4)


@pytest.mark.parametrize("n_experts", [0, 4])
def test_param_count_matches_accounting(n_experts):
    cfg = LMConfig(d_model=32, n_layers=2, n_heads=4, d_ff=48, n_experts=n_experts, top_k=2)
    model = TinyLM(cfg)
    # independent count: the module's own parameters vs dmcourse.accounting's formula
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg.model_config()).total
    kinds = {type(b.ffn) for b in model.blocks}
    assert kinds == ({MoE} if n_experts else {SwiGLU})


def test_causal():
    torch.manual_seed(0)
    model = TinyLM(LMConfig(d_model=32, n_heads=2, d_ff=32)).eval()
    ids = torch.randint(0, len(ALPHABET), (1, 10))
    ids2 = ids.clone()
    ids2[0, 7:] = (ids2[0, 7:] + 1) % len(ALPHABET)
    assert torch.allclose(model(ids)[0, :7], model(ids2)[0, :7], atol=1e-6)


@pytest.mark.parametrize("n_experts", [0, 4])
def test_few_steps_reduce_loss(n_experts):
    torch.manual_seed(0)
    data = CharData(make_corpus(20_000, seed=1))
    cfg = LMConfig(d_model=32, n_layers=1, n_heads=2, d_ff=32, n_experts=n_experts, top_k=1, seq_len=32)
    model = TinyLM(cfg)
    loss_fn = moe_loss_fn(Balancing(aux_alpha=0.01), lm_loss) if n_experts else task_loss_fn(lm_loss)
    val = data.batch_fn("val", 8, 32)
    before = evaluate(model, val, loss_fn, n_batches=2)["task"]
    train(model, data.batch_fn("train", 8, 32), loss_fn, TrainConfig(steps=30, lr=3e-3, warmup_steps=3), progress=False)
    after = evaluate(model, val, loss_fn, n_batches=2)["task"]
    assert before > 3.0  # about ln(40) = 3.7 at init
    assert after < before - 0.5, (before, after)


@pytest.mark.parametrize("n_experts", [0, 3])
def test_checkpoint_round_trip(tmp_path, n_experts):
    torch.manual_seed(0)
    cfg = LMConfig(d_model=16, n_layers=2, n_heads=2, d_ff=24, n_experts=n_experts, top_k=2 if n_experts else 1)
    model = TinyLM(cfg).eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, path, step=7)
    loaded, extra = load_checkpoint(path)
    loaded.eval()
    assert loaded.config == cfg and extra == {"step": 7}
    ids = torch.randint(0, len(ALPHABET), (2, 12))
    assert torch.equal(model(ids), loaded(ids))
    with pytest.raises(ValueError, match="checkpoint"):
        torch.save({"x": 1}, tmp_path / "bad.pt")
        load_checkpoint(tmp_path / "bad.pt")
