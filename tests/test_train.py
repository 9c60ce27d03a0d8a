"""Training on real batches with a real (tiny) transformer: a 2-layer BERT with a WordPiece
tokenizer trained on the fly on the fixture's texts, saved as an encoder directory."""
from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from hybridir.data.batches import build_batches
from hybridir.cli import main
from hybridir.errors import BadInput
from hybridir.model.encoder_dir import read_settings
from hybridir.train.trainer import (Batch, Dist, Texts, TrainConfig, batch_loss, info_nce, iter_batches, lr_factor,
                            train_loop)

from pairs_fixture import build_pairs
from tiny_encoder import SPEC, TINY_TRAIN, make_tiny_encoder

BATCH = 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs(mirror: Path) -> pd.DataFrame:
    return build_pairs(mirror, ntrex_lines=400, tatoeba_lines=120, arcd_questions=60)


@pytest.fixture(scope="module")
def files(pairs: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("train")
    pairs.to_parquet(d / "pairs.parquet", index=False)
    make_tiny_encoder(pairs["query"].tolist() + pairs["passage"].tolist(), d / "base")
    renumber_vocab(d / "base" / "tokenizer.json")
    return {"dir": d, "pairs": d / "pairs.parquet", "base": d / "base"}


def renumber_vocab(path: Path) -> None:
    """Special tokens keep their ids, the rest are numbered in string order. The WordPiece trainer learns
    the same vocabulary every time but numbers it in hash order, so without this each session's base
    model (seeded weights, shuffled rows) computes a different function and, e.g., may not improve."""
    tok = json.loads(path.read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    special = sorted((a["content"] for a in tok["added_tokens"]), key=vocab.__getitem__)
    assert [vocab[t] for t in special] == list(range(len(special))), "special tokens must come first"
    rest = sorted(set(vocab) - set(special))
    tok["model"]["vocab"] = {t: i for i, t in enumerate(special + rest)}
    path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


def write_params(repo: Path, d: Path, **train: object) -> Path:
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(TINY_TRAIN | {"batch_size": BATCH, "steps": 4, "valid_every": 2, "valid_batches": 2,
                                         "lr": 1e-3, "warmup_ratio": 0.25, "precision": "fp32",
                                         "query_max_length": 32, "passage_max_length": 48} | train)
    path = d / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def cfg(**kw: object) -> TrainConfig:
    base = dict(lr=1e-3, weight_decay=0.01, warmup_ratio=0.0, scale=20.0, max_grad_norm=1.0,
                query_max_length=32, passage_max_length=48, valid_every=100, valid_batches=2,
                precision="fp32", freeze_embeddings=False)
    return TrainConfig(**(base | kw))


def load_tiny(base: Path):
    from hybridir.model.encoder_dir import load_encoder
    return load_encoder(base)


def test_info_nce_is_the_in_batch_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=-1)   # 5 positives + 2 negatives
    s = 20.0
    cos = (q @ d.T).numpy().astype(np.float64)
    expected = np.mean([-np.log(np.exp(s * cos[i, i]) / np.exp(s * cos[i]).sum()) for i in range(5)])
    assert float(info_nce(q, d, s)) == pytest.approx(expected, rel=1e-5)


def test_iter_batches_yields_the_table_in_order(pairs: pd.DataFrame) -> None:
    table = build_batches(pairs, strategy="hybrid", alpha=0.5, batch_size=BATCH, steps=12, seed=3)
    got = list(iter_batches(table))
    assert [b.batch_id for b in got] == list(range(12))
    for b in got:
        part = table[table["batch_id"] == b.batch_id]
        assert b.batch_type == part["batch_type"].iloc[0]
        assert b.query_rows.tolist() == part["query_row"].tolist()
        assert b.passage_rows.tolist() == part["passage_row"].tolist()
        assert b.negative_rows is None
    with pytest.raises(ValueError, match="in order"):
        list(iter_batches(table.iloc[::-1]))


def test_lr_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(s, 10, 3) for s in range(10)]
    assert f[0] < f[1] < f[2] < f[3] == 1.0
    assert all(a > b for a, b in zip(f[3:], f[4:])) and 0 < f[-1] <= 1 / 7 + 1e-9


def test_loss_decreases_on_a_repeated_batch(files: dict[str, Path], pairs: pd.DataFrame) -> None:
    tokenizer, model = load_tiny(files["base"])
    table = build_batches(pairs, strategy="xy", alpha=0.5, batch_size=BATCH, steps=1, seed=0)
    batch = next(iter_batches(table))
    torch.manual_seed(0)
    log, summary = train_loop(model, tokenizer, texts=Texts(pairs, SPEC), batches=[batch] * 12, valid=[batch],
                              cfg=cfg(lr=3e-3, valid_every=12), pooling="mean", device=torch.device("cpu"),
                              save_best=lambda step: None, progress=False)
    losses = log["train_loss"].dropna().to_numpy()
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    assert summary["best_step"] == 12 and log["valid_loss"].iloc[-1] < log["valid_loss"].iloc[0]


def test_bf16_autocast_on_cpu(files: dict[str, Path], pairs: pd.DataFrame) -> None:
    tokenizer, model = load_tiny(files["base"])
    table = build_batches(pairs, strategy="xx_mono", alpha=0.5, batch_size=BATCH, steps=1, seed=0)
    loss, tokens = batch_loss(model, tokenizer, Texts(pairs, SPEC), next(iter_batches(table)),
                              cfg(precision="bf16"), "mean", torch.device("cpu"))
    assert torch.isfinite(loss) and tokens > 0
    loss.backward()
    assert model.embeddings.word_embeddings.weight.grad is not None


def test_train_stage_end_to_end(repo: Path, files: dict[str, Path], pairs: pd.DataFrame) -> None:
    d = files["dir"]
    params = write_params(repo, d)
    batches = d / "hybrid-s0.parquet"
    assert main(["batches", "--params", str(params), "--pairs", str(files["pairs"]), "--strategy", "hybrid",
                 "--seed", "0", "--out", str(batches)]) == 0
    out = d / "trained"
    assert main(["train", "--params", str(params), "--base", str(files["base"]), "--pairs", str(files["pairs"]),
                 "--batches", str(batches), "--out", str(out), "--no-progress"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "loss.csv", "loss.png",
                 "train_summary.json"):
        assert (out / name).is_file(), name
    assert read_settings(out) == SPEC
    summary = json.loads((out / "train_summary.json").read_text())
    for key in ("steps", "best_step", "best_valid_loss", "seconds", "steps_per_s", "tokens_per_s",
                "peak_memory_mb", "returned_base_model"):
        assert key in summary, key
    assert summary["steps"] == 4 and summary["valid_batch_types"] == {"xx_mono": 1, "xy": 1}
    log = pd.read_csv(out / "loss.csv")
    assert list(log.columns[:4]) == ["step", "train_loss", "lr", "valid_loss"]
    assert log["step"].tolist() == [0, 1, 2, 3, 4]
    assert np.isfinite(log["train_loss"].iloc[1:]).all()
    assert log.dropna(subset=["valid_loss"])["step"].tolist() == [0, 2, 4]
    # the loop consumed exactly the table's batches, in order
    table = pq.read_table(batches).to_pandas()
    assert log["batch_type"].iloc[1:].tolist() == table.drop_duplicates("batch_id")["batch_type"].tolist()
    # the selected checkpoint is the lowest validation loss, and it is what was saved
    valid = log.dropna(subset=["valid_loss"])
    assert summary["best_step"] == int(valid.loc[valid["valid_loss"].idxmin(), "step"])
    tokenizer, model = load_tiny(out)
    assert bool(changed_weights(out, files["base"])) != summary["returned_base_model"]
    assert tokenizer("query: hello")["input_ids"]


def saved_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the *.safetensors files on disk (whatever the sharding)."""
    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no safetensors in {model_dir}"
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def changed_weights(model_dir: Path, base_dir: Path) -> set[str]:
    saved, base = saved_weights(model_dir), saved_weights(base_dir)
    assert set(saved) == set(base)
    return {k for k in base if not torch.equal(saved[k], base[k])}


def english_only(pairs: pd.DataFrame, path: Path) -> Path:
    """Monolingual pairs: validation is then all X-X-mono, which the random-init tiny model learns within a
    few steps (shared words; valid loss 1.58 -> 1.02 here), unlike the cross-lingual half, which it does not."""
    en = pairs[pairs["lang"] == "en"].reset_index(drop=True)
    en.assign(row_id=np.arange(len(en))).to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("freeze", [True, False])
def test_saved_checkpoint_is_the_trained_model(repo: Path, files: dict[str, Path], pairs: pd.DataFrame,
                                               tmp_path: Path, freeze: bool) -> None:
    """The directory on disk holds trained weights: every weight matrix of the encoder moved (AdamW decays
    even rows without gradient) except the word embeddings when frozen, which stay bit-identical; the
    pooler (saved so the checkpoint is complete, unused by mean pooling) is saved unchanged."""
    params = write_params(repo, tmp_path, freeze_embeddings=freeze, lr=3e-3)
    en = english_only(pairs, tmp_path / "pairs.parquet")
    batches = tmp_path / "b.parquet"
    assert main(["batches", "--params", str(params), "--pairs", str(en), "--strategy", "xx_mono",
                 "--seed", "0", "--out", str(batches)]) == 0
    out = tmp_path / "m"
    assert main(["train", "--params", str(params), "--base", str(files["base"]), "--pairs", str(en),
                 "--batches", str(batches), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert not summary["returned_base_model"], "precondition: training must beat the base model here"
    matrices = {k for k, v in saved_weights(files["base"]).items() if v.ndim == 2 and not k.startswith("pooler.")}
    word = "embeddings.word_embeddings.weight"
    assert word in matrices
    expected = matrices - {word} if freeze else matrices
    changed = changed_weights(out, files["base"])
    assert changed & matrices == expected
    assert not {k for k in changed if k.startswith("pooler.")}


def test_stale_batches_are_refused(repo: Path, files: dict[str, Path], tmp_path: Path) -> None:
    params = write_params(repo, tmp_path)
    batches = tmp_path / "b.parquet"
    assert main(["batches", "--params", str(params), "--pairs", str(files["pairs"]), "--strategy", "xy",
                 "--seed", "1", "--out", str(batches)]) == 0
    params = write_params(repo, tmp_path, steps=6)
    rc = main(["train", "--params", str(params), "--base", str(files["base"]), "--pairs", str(files["pairs"]),
               "--batches", str(batches), "--out", str(tmp_path / "m"), "--no-progress"])
    assert rc == 2 and not (tmp_path / "m").exists()


@dataclass(frozen=True)
class DetachedGather(Dist):
    """A plausible bug: a plain all_gather, so no gradient reaches the other ranks' candidates."""

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(parts, t.detach())
        parts[self.rank] = t
        return torch.cat(parts, dim=0)


def _grads(base: Path, pairs: pd.DataFrame, dist: Dist, *, all_reduce: bool = True) -> dict[str, torch.Tensor]:
    """Gradients of one batch's loss, float64: reordered sums then agree to ~1e-15, not float32's ~1e-6."""
    tokenizer, model = load_tiny(base)
    model.eval().double()   # eval: no dropout, so ranks and the reference compute the same function
    table = build_batches(pairs, strategy="xy", alpha=0.5, batch_size=BATCH, steps=1, seed=5, extra_negatives=1)
    loss, _ = batch_loss(model, tokenizer, Texts(pairs, SPEC), next(iter_batches(table)), cfg(), "mean",
                         torch.device("cpu"), dist)
    loss.backward()
    if all_reduce and dist.world > 1:   # what DistributedDataParallel does in training (tests/test_train_distributed.py)
        for p in model.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(dist.world)
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, world: int, init: str, base: str, pairs_path: str, out: str) -> None:
    """The real multi-rank gradient and two deliberately broken ones (rank 0's copy of each)."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    pairs = pd.read_parquet(pairs_path)
    dist = Dist(rank, world)
    grads = {"sharded": _grads(Path(base), pairs, dist),
             "no_all_reduce": _grads(Path(base), pairs, dist, all_reduce=False),
             "detached_gather": _grads(Path(base), pairs, DetachedGather(rank, world))}
    if rank == 0:
        torch.save(grads, out)
    torch.distributed.destroy_process_group()


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in b)


def test_sharded_gather_matches_full_batch_gradient(files: dict[str, Path], pairs: pd.DataFrame,
                                                    tmp_path: Path) -> None:
    """The multi-rank path (gloo on CPU, 2 ranks): same gradient as one process on the whole batch."""
    out = tmp_path / "grads.pt"
    ctx = mp.get_context("spawn")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, init, str(files["base"]), str(files["pairs"]), str(out)))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0], "a rank failed (its traceback is in the captured stderr)"
    runs = torch.load(out, weights_only=True)
    full = _grads(files["base"], pairs, Dist())
    assert all(g.dtype == torch.float64 for g in full.values())
    assert set(runs["sharded"]) == set(full)
    # Only the summation order differs: float64 rounding, eps 2.2e-16 times sqrt(~1e3 summed tokens) times the
    # largest gradient, i.e. ~1e-14 of it (measured 1.1e-14). 1e-12 leaves ~100x headroom and is still 1e6x
    # below the float32 noise that made this flaky (~5e-6), let alone a real bug (~10, see below).
    tol = 1e-12 * max(float(g.abs().max()) for g in full.values())
    for name, g in full.items():
        torch.testing.assert_close(runs["sharded"][name], g, rtol=0, atol=tol, msg=name)
    # the check can fail: a missing all-reduce or a non-differentiable gather is far outside the tolerance
    for broken in ("no_all_reduce", "detached_gather"):
        assert max_abs_diff(runs[broken], full) > 1e6 * tol, broken


def test_output_is_the_best_steps_weights_not_the_last(repo: Path, files: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The best checkpoint is kept in memory and written at the end: with validation losses scripted so
    that step 2 of 4 is best, the saved weights are exactly the model's weights at step 2."""
    import hybridir.train.trainer as trainer

    params = write_params(repo, tmp_path, lr=3e-3)   # 4 steps, validation at 0, 2, 4
    batches = tmp_path / "b.parquet"
    assert main(["batches", "--params", str(params), "--pairs", str(files["pairs"]), "--strategy", "xy",
                 "--seed", "0", "--out", str(batches)]) == 0
    seen: list[dict[str, torch.Tensor]] = []

    def scripted(model: torch.nn.Module, *args: object, **kwargs: object) -> dict[str, float]:
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return {"valid_loss": [3.0, 1.0, 2.0][len(seen) - 1]}

    monkeypatch.setattr(trainer, "validation_loss", scripted)
    out = tmp_path / "m"
    assert main(["train", "--params", str(params), "--base", str(files["base"]), "--pairs", str(files["pairs"]),
                 "--batches", str(batches), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "train_summary.json").read_text())["best_step"] == 2
    saved = saved_weights(out)
    assert all(torch.equal(saved[n], w) for n, w in seen[1].items())
    assert not all(torch.equal(saved[n], w) for n, w in seen[2].items())   # the last step moved on


def test_resume_state_of_other_freeze_settings_is_refused(files: dict[str, Path]) -> None:
    from hybridir.train.trainer import load_trainable, trainable_state

    _, model = load_tiny(files["base"])
    state = trainable_state(model)
    model.embeddings.requires_grad_(False)
    with pytest.raises(BadInput, match="delete the .resume directory"):
        load_trainable(model, state)
