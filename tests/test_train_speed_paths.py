"""The fast CPU training path (hybridir.unpadded: no computation on padding; fused AdamW) computes what
the plain padded path computes: same loss and gradients (float64, train mode, so dropout included:
the same masks are drawn), same validation loss, and a few optimizer steps end at the same weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hybridir.data.batches import build_batches
from hybridir.train.trainer import Texts, TrainConfig, batch_loss, iter_batches, make_optimizer, validation_loss
from hybridir.model.unpadded import FrozenPrefix, packed_hidden_states, supports

from pairs_fixture import build_pairs
from tiny_encoder import SPEC, make_tiny_encoder

BATCH = 8
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pairs(mirror: Path) -> pd.DataFrame:
    return build_pairs(mirror, ntrex_lines=200, tatoeba_lines=60, arcd_questions=40)


@pytest.fixture(scope="module")
def base(pairs: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("speed")
    return make_tiny_encoder(pairs["query"].tolist() + pairs["passage"].tolist(), d / "base")


def cfg(**kw: object) -> TrainConfig:
    return TrainConfig(**(dict(lr=1e-3, weight_decay=0.01, warmup_ratio=0.0, scale=20.0, max_grad_norm=1.0,
                               query_max_length=32, passage_max_length=48, valid_every=100, valid_batches=2,
                               precision="fp32", freeze_embeddings=True) | kw))


def load(base: Path, dropout: float = 0.1):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(base, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return AutoTokenizer.from_pretrained(base), model.double().train()


def loss_and_grads(base: Path, pairs: pd.DataFrame, unpadded: bool, seed: int = 3, extra_negatives: int = 1):
    tokenizer, model = load(base)
    make_optimizer(model, cfg())   # freezes the token embeddings (freeze_embeddings) and the pooler
    assert supports(model)
    table = build_batches(pairs, strategy="xy", alpha=0.5, batch_size=BATCH, steps=1, seed=5,
                          extra_negatives=extra_negatives)
    torch.manual_seed(seed)   # the dropout masks
    loss, tokens = batch_loss(model, tokenizer, Texts(pairs, SPEC), next(iter_batches(table)), cfg(), "mean",
                              CPU, unpadded=unpadded)
    loss.backward()
    return float(loss.detach()), tokens, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_hidden_states_equal_the_padded_forward(base: Path, pairs: pd.DataFrame) -> None:
    tokenizer, model = load(base, dropout=0.0)
    enc = tokenizer(pairs["passage"].tolist()[:12], padding=True, return_tensors="pt")
    ref = model(**enc).last_hidden_state.reshape(-1, model.config.hidden_size)
    states, idx = packed_hidden_states(model, enc["input_ids"], enc["attention_mask"])
    assert len(idx) == int(enc["attention_mask"].sum()) < enc["attention_mask"].numel()  # some padding skipped
    torch.testing.assert_close(states, ref[idx], rtol=0, atol=1e-12)


def test_unpadded_loss_and_gradients_equal_the_padded_path_with_dropout(base: Path, pairs: pd.DataFrame) -> None:
    loss_p, tok_p, grads_p = loss_and_grads(base, pairs, unpadded=False)
    loss_u, tok_u, grads_u = loss_and_grads(base, pairs, unpadded=True)
    assert tok_p == tok_u
    assert set(grads_u) == set(grads_p) and "embeddings.word_embeddings.weight" not in grads_p   # frozen
    assert loss_u == pytest.approx(loss_p, rel=0, abs=1e-12)
    scale = max(float(g.abs().max()) for g in grads_p.values())
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_u[name], g, rtol=0, atol=1e-11 * scale, msg=name)
    # the masks matter: another seed gives another loss (so the equality above is not dropout-free)
    assert abs(loss_and_grads(base, pairs, unpadded=False, seed=4)[0] - loss_p) > 1e-6


def test_validation_loss_equal(base: Path, pairs: pd.DataFrame) -> None:
    tokenizer, model = load(base)
    table = build_batches(pairs, strategy="xx_mono", alpha=0.5, batch_size=BATCH, steps=2, seed=1)
    valid = list(iter_batches(table))
    a = validation_loss(model, tokenizer, Texts(pairs, SPEC), valid, cfg(), "cls", CPU, unpadded=False)
    b = validation_loss(model, tokenizer, Texts(pairs, SPEC), valid, cfg(), "cls", CPU, unpadded=True)
    assert model.training   # restored
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=0, abs=1e-12)


def test_frozen_prefix_validation_is_bit_identical_and_skips_the_frozen_layers(base: Path, pairs: pd.DataFrame) -> None:
    """Validation with FrozenPrefix (train.freeze_layers > 0) after training steps = without it, exactly,
    and its passes after the first run no frozen layer."""
    tokenizer, model = load(base)
    c = cfg(freeze_layers=1)
    opt, params = make_optimizer(model, c)
    texts = Texts(pairs, SPEC)
    valid = list(iter_batches(build_batches(pairs, strategy="xy", alpha=0.5, batch_size=BATCH, steps=2, seed=1)))
    calls = {"frozen": 0, "upper": 0}
    model.encoder.layer[0].attention.output.dense.register_forward_hook(lambda *a: calls.__setitem__("frozen", calls["frozen"] + 1))
    model.encoder.layer[1].attention.output.dense.register_forward_hook(lambda *a: calls.__setitem__("upper", calls["upper"] + 1))
    prefix = FrozenPrefix(1)
    first = validation_loss(model, tokenizer, texts, valid, c, "mean", CPU, unpadded=True, prefix=prefix)
    assert len(prefix.states) == 2 * len(valid) and calls["frozen"] == calls["upper"] == 2 * len(valid)
    torch.manual_seed(0)
    for batch in iter_batches(build_batches(pairs, strategy="hybrid", alpha=0.5, batch_size=BATCH, steps=2, seed=2)):
        loss, _ = batch_loss(model, tokenizer, texts, batch, c, "mean", CPU, unpadded=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    calls.update(frozen=0, upper=0)
    cached = validation_loss(model, tokenizer, texts, valid, c, "mean", CPU, unpadded=True, prefix=prefix)
    assert calls == {"frozen": 0, "upper": 2 * len(valid)}
    plain = validation_loss(model, tokenizer, texts, valid, c, "mean", CPU, unpadded=True)
    assert cached == plain                       # bit-identical
    assert abs(cached["valid_loss"] - first["valid_loss"]) > 1e-6   # the steps changed the upper layer
    # a prefix is not used in train mode (dropout masks are drawn in the frozen layers too)
    calls.update(frozen=0, upper=0)
    batch_loss(model, tokenizer, texts, valid[0], c, "mean", CPU, unpadded=True, prefix=prefix)
    assert calls["frozen"] == 2


def test_training_steps_end_at_the_same_weights(base: Path, pairs: pd.DataFrame) -> None:
    """Three AdamW steps (fused on the CPU) with dropout on: same losses, same weights."""
    table = build_batches(pairs, strategy="hybrid", alpha=0.5, batch_size=BATCH, steps=3, seed=2)
    runs = []
    for unpadded in (False, True):
        tokenizer, model = load(base)
        opt, params = make_optimizer(model, cfg())
        torch.manual_seed(0)
        losses = []
        for batch in iter_batches(table):
            loss, _ = batch_loss(model, tokenizer, Texts(pairs, SPEC), batch, cfg(), "mean", CPU, unpadded=unpadded)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss))
        runs.append((losses, {n: p.detach().clone() for n, p in model.named_parameters()}))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=0, atol=1e-10)
    for name, w in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], w, rtol=0, atol=1e-9, msg=name)
