"""Encoder directories (imported and trained) are standard sentence-transformers models: they load
with `SentenceTransformer(path)` and embed like the pipeline, and with `AutoModel.from_pretrained`
without missing or unused weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hybridir.cli import main
from hybridir.model.encoder_dir import load_encoder, read_settings
from hybridir.model.modeling import encode_texts

from pairs_fixture import build_pairs
from test_encoder_import import eval_texts, imported_e5
from tiny_encoder import SPEC, TINY_TRAIN, make_tiny_encoder

pytest.importorskip("sentence_transformers")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Path:
    return imported_e5(tmp_path_factory, repo)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory, repo: Path, mirror: Path) -> Path:
    """A real (tiny) training run through the CLI, as in tests/test_train.py."""
    d = tmp_path_factory.mktemp("trained")
    pairs = build_pairs(mirror, ntrex_lines=400, tatoeba_lines=120, arcd_questions=60)
    pairs.to_parquet(d / "pairs.parquet", index=False)
    make_tiny_encoder(pairs["query"].tolist() + pairs["passage"].tolist(), d / "base")
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(TINY_TRAIN | {"batch_size": 8, "steps": 2, "valid_every": 1, "valid_batches": 2,
                                         "lr": 1e-3, "precision": "fp32", "query_max_length": 32,
                                         "passage_max_length": 48})
    (d / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    common = ["--params", str(d / "params.yaml"), "--pairs", str(d / "pairs.parquet")]
    assert main(["batches", *common, "--strategy", "hybrid", "--seed", "0", "--out", str(d / "b.parquet")]) == 0
    assert main(["train", *common, "--base", str(d / "base"), "--batches", str(d / "b.parquet"),
                 "--out", str(d / "out"), "--no-progress"]) == 0
    return d / "out"


def sample_texts(mirror: Path) -> list[str]:
    """Two questions and two sentences per XQuAD-R language."""
    return [t for (dataset, _), (qs, ss) in eval_texts(mirror).items() if dataset == "xquad-r"
            for t in qs[:2] + ss[:2]]


def assert_sentence_transformer_embeds_like_the_pipeline(model_dir: Path, texts: list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    settings = read_settings(model_dir)
    st = SentenceTransformer(str(model_dir), device="cpu")
    tokenizer, model = load_encoder(model_dir)
    for prompt, prefix in (("query", settings["query_prefix"]), ("document", settings["passage_prefix"])):
        theirs = st.encode(texts, prompt_name=prompt, convert_to_numpy=True)
        ours = encode_texts(model, tokenizer, texts, prefix=prefix, pooling=settings["pooling"], max_length=512,
                            precision="fp32")
        cosine = (theirs * ours).sum(axis=1) / np.linalg.norm(theirs, axis=1)
        assert cosine.min() >= 0.9999, f"{prompt}: min cosine {cosine.min():.6f}"


def assert_loads_without_initialising_weights(model_dir: Path) -> None:
    from transformers import AutoModel

    _, info = AutoModel.from_pretrained(model_dir, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())


def test_imported_encoder_is_a_sentence_transformer(e5_dir: Path, repo: Path, mirror: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))["encoder"]
    assert read_settings(e5_dir) == {k: params[k] for k in ("query_prefix", "passage_prefix", "pooling")}
    assert_sentence_transformer_embeds_like_the_pipeline(e5_dir, sample_texts(mirror))


def test_imported_encoder_loads_complete_with_automodel(e5_dir: Path) -> None:
    assert_loads_without_initialising_weights(e5_dir)


def test_trained_encoder_is_a_complete_sentence_transformer(trained_dir: Path, mirror: Path) -> None:
    assert read_settings(trained_dir) == SPEC
    assert_loads_without_initialising_weights(trained_dir)
    assert_sentence_transformer_embeds_like_the_pipeline(trained_dir, sample_texts(mirror))
    for name in ("model.safetensors", "loss.csv", "train_summary.json"):
        assert (trained_dir / name).is_file(), name
