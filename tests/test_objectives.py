"""Training options beyond InfoNCE, on the tiny real encoder: distillation to the frozen base model
(objectives.py) and frozen lower layers (freeze.py); each is read from params even when off."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from hybridir.data.batches import build_batches
from hybridir.pipeline.config import Params
from hybridir.errors import BadInput
from hybridir.train.objectives import distill_loss, frozen_teacher
from hybridir.train.trainer import Texts, TrainConfig, batch_loss, embed, iter_batches, train_loop

from test_train import BATCH, cfg, files, load_tiny, pairs  # noqa: F401  (fixtures)
from tiny_encoder import SPEC

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def _batch(pairs: pd.DataFrame):
    return next(iter_batches(build_batches(pairs, strategy="xy", alpha=0.5, batch_size=BATCH, steps=1, seed=0)))


def test_new_train_keys_are_read_even_when_off(repo: Path) -> None:
    """The train stage declares every train.* key (pipeline.stages): it must read each of them, off or on."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for values in ({"distill_weight": 0, "freeze_layers": 0}, {"distill_weight": 2.0, "freeze_layers": 6}):
        read = Params(params | {"train": params["train"] | values})
        config = TrainConfig.from_params(read["train"])
        assert (config.distill_weight, config.freeze_layers) == (values["distill_weight"], values["freeze_layers"])
        assert {"train.distill_weight", "train.freeze_layers"} <= read.reads


def test_distill_loss_is_the_mean_squared_distance_and_its_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    t = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=-1)
    loss = distill_loss([s[:2], s[2:]], [t[:2], t[2:]])
    assert loss.item() == pytest.approx(((s - t) ** 2).sum(1).mean().item())
    assert loss.item() == pytest.approx((2 - 2 * (s * t).sum(1)).mean().item())   # unit vectors: 2 - 2 cos
    loss.backward()
    assert torch.allclose(s.grad, 2 * (s - t).detach() / len(s))


def test_distillation_term_in_batch_loss(files: dict[str, Path], pairs: pd.DataFrame) -> None:
    """batch_loss adds distill_weight x the distance to the teacher's embeddings of the batch's queries and
    passages: zero for the unchanged base model, exactly the weighted term once the student moved; the
    teacher gets no gradient and stays in eval mode."""
    tokenizer, model = load_tiny(files["base"])
    model = model.double()   # exact comparisons
    teacher = frozen_teacher(model)
    texts, batch, c = Texts(pairs, SPEC), _batch(pairs), cfg(distill_weight=0.5)
    plain, _ = batch_loss(model, tokenizer, texts, batch, c, "mean", CPU)
    same, _ = batch_loss(model, tokenizer, texts, batch, c, "mean", CPU, teacher=teacher)
    assert same.item() == pytest.approx(plain.item(), abs=1e-12)   # eval mode: student = teacher
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight.add_(0.05 * torch.randn_like(model.encoder.layer[1].output.dense.weight))
    plain, _ = batch_loss(model, tokenizer, texts, batch, c, "mean", CPU)
    with_term, _ = batch_loss(model, tokenizer, texts, batch, c, "mean", CPU, teacher=teacher)
    def both(m: torch.nn.Module) -> list[torch.Tensor]:
        return [embed(m, tokenizer, texts.queries[batch.query_rows], max_length=c.query_max_length, pooling="mean",
                      device=CPU)[0],
                embed(m, tokenizer, texts.passages[batch.passage_rows], max_length=c.passage_max_length,
                      pooling="mean", device=CPU)[0]]
    term = distill_loss(both(model), both(teacher)).item()
    assert term > 1e-6
    assert (with_term - plain).item() == pytest.approx(0.5 * term, rel=1e-9)
    with_term.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert model.encoder.layer[0].attention.self.query.weight.grad is not None


def test_distillation_keeps_the_model_closer_to_the_base(files: dict[str, Path], pairs: pd.DataFrame) -> None:
    """Same batches, same seed: with a large distill_weight the weights move less from the base."""
    batch = _batch(pairs)

    def drift(weight: float) -> float:
        tokenizer, model = load_tiny(files["base"])
        base = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(0)
        train_loop(model, tokenizer, texts=Texts(pairs, SPEC), batches=[batch] * 4, valid=[batch],
                   cfg=cfg(lr=3e-3, valid_every=100, distill_weight=weight), pooling="mean", device=CPU,
                   save_best=lambda step: None, progress=False)
        trained = {k: v.clone() for k, v in model.state_dict().items()}
        return sum(float((trained[k] - base[k]).norm()) for k in base)

    assert drift(50.0) < drift(0.0)


@pytest.mark.parametrize("n", [0, 1])
def test_frozen_layers_do_not_change(files: dict[str, Path], pairs: pd.DataFrame, n: int) -> None:
    tokenizer, model = load_tiny(files["base"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch(pairs)
    torch.manual_seed(0)
    train_loop(model, tokenizer, texts=Texts(pairs, SPEC), batches=[batch] * 3, valid=[batch],
               cfg=cfg(lr=3e-3, valid_every=100, freeze_layers=n), pooling="mean", device=CPU,
               save_best=lambda step: None, progress=False)
    after = model.state_dict()
    same = {k for k in before if torch.equal(before[k], after[k])}
    frozen = {k for k in before if k.startswith(("embeddings.", "encoder.layer.0."))}
    upper = {k for k in before if k.startswith("encoder.layer.1.") and before[k].ndim == 2}
    assert not upper & same                      # the upper layer trains either way
    if n:
        assert frozen <= same                    # embeddings and layer 0: bit-identical
    else:
        assert not {k for k in frozen if before[k].ndim == 2} & same


def test_freezing_more_layers_than_the_model_has_is_an_error(files: dict[str, Path], pairs: pd.DataFrame) -> None:
    tokenizer, model = load_tiny(files["base"])
    batch = _batch(pairs)
    with pytest.raises(BadInput, match="freeze_layers = 3 but the model has 2 layers"):
        train_loop(model, tokenizer, texts=Texts(pairs, SPEC), batches=[batch], valid=[batch],
                   cfg=cfg(freeze_layers=3), pooling="mean", device=CPU, save_best=lambda step: None,
                   progress=False)


def test_bitext_batch_loss_ranks_translations_of_the_query_texts(files: dict[str, Path], pairs: pd.DataFrame) -> None:
    """A bitext batch (batches.py, train.bitext_share) is InfoNCE between each sentence and the
    translations in the batch: both sides the rows' query texts, query prefix and query length."""
    from hybridir.train.trainer import info_nce

    tokenizer, model = load_tiny(files["base"])
    model = model.double().eval()
    table = build_batches(pairs, strategy="xy", alpha=0.5, batch_size=BATCH, steps=6, seed=0, bitext_share=0.5)
    batch = next(b for b in iter_batches(table) if b.batch_type == "bitext")
    texts, c = Texts(pairs, SPEC), cfg()
    loss, _ = batch_loss(model, tokenizer, texts, batch, c, "mean", CPU)
    q, t = (embed(model, tokenizer, texts.queries[rows], max_length=c.query_max_length, pooling="mean",
                  device=CPU)[0] for rows in (batch.query_rows, batch.passage_rows))
    assert loss.item() == pytest.approx(info_nce(q, t, c.scale).item(), rel=1e-12)
    p = embed(model, tokenizer, texts.passages[batch.passage_rows], max_length=c.passage_max_length,
              pooling="mean", device=CPU)[0]
    assert abs(loss.item() - info_nce(q, p, c.scale).item()) > 1e-6   # not the passage side
