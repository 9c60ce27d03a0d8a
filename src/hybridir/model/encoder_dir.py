"""Encoder directories: the one format (a sentence-transformers model) that import, train, encode and
the benchmarks write and read, and the pooling that turns token states into sentence vectors.

Kept apart from the encoding machinery (modeling.py) so that import and training stages depend on
the format alone: changing how texts are encoded fast re-runs encodes, not the training.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import BadInput, MissingInput

POOLINGS = ("mean", "cls")
_ST_FILES = ("config_sentence_transformers.json", "modules.json")   # sentence-transformers' own config
_TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer.model", "vocab.txt", "spiece.model")


_RECREATE = "re-run `hybridir import-encoder` (base encoder) or the training stage that wrote it"


def _missing_files(model_dir: Path) -> list[str]:
    missing = []
    if not (model_dir / "config.json").is_file():
        missing.append("config.json")
    if not any(model_dir.glob("*.safetensors")):
        missing.append("model weights (*.safetensors)")
    if not (model_dir / "tokenizer_config.json").is_file() and not any(
            (model_dir / name).is_file() for name in _TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
    missing += [name for name in _ST_FILES if not (model_dir / name).is_file()]
    return missing


def load_encoder(model_dir: str | Path) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, model in eval mode) from a transformers model directory.

    Raises FileNotFoundError naming what is missing and how to recreate the directory.
    """
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingInput(f"encoder directory {model_dir} does not exist: {_RECREATE}")
    missing = _missing_files(model_dir)
    if missing:
        raise MissingInput(f"encoder directory {model_dir} lacks {', '.join(missing)}: {_RECREATE}")
    # The checkpoint is complete (pooler included, see save_encoder): loaded as saved, nothing initialised.
    return AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()


# ---------------------------------------------------------------- the model directory format
#
# An encoder directory is a standard sentence-transformers model: the transformer (config.json,
# model.safetensors, tokenizer files) at the root, so `AutoModel.from_pretrained` and `load_encoder`
# read it as a transformers model, then Pooling (1_Pooling/) and Normalize (2_Normalize/), and the
# prefixes as the prompts "query" and "document" (config_sentence_transformers.json). So
# `SentenceTransformer(dir).encode_query(texts)` / `.encode_document(texts)` embed like the pipeline.
# ST truncates at the tokenizer's limit (the model's maximum); the pipeline's own encode length is
# the params setting encoder.max_length, not stored here.

SETTING_KEYS = ("query_prefix", "passage_prefix", "pooling")
QUERY_PROMPT, PASSAGE_PROMPT = "query", "document"   # sentence-transformers' names (encode_query / _document)


def save_encoder(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, settings: dict[str, str]) -> None:
    """Write `model` + `tokenizer` at `out_dir` as a sentence-transformers directory with `settings`
    (query_prefix, passage_prefix, pooling); the weights as safetensors."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    if settings["pooling"] not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {settings['pooling']!r}")
    # ST builds its Transformer module from a directory only: stage the transformers files beside out_dir.
    with tempfile.TemporaryDirectory(prefix=".hybridir-stage-", dir=Path(out_dir).parent) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
        transformer = Transformer(stage)
        st = SentenceTransformer(
            modules=[transformer, Pooling(transformer.get_embedding_dimension(), settings["pooling"]), Normalize()],
            prompts={QUERY_PROMPT: settings["query_prefix"], PASSAGE_PROMPT: settings["passage_prefix"]},
            device="cpu")
        st.save(str(out_dir), create_model_card=False, safe_serialization=True)


def read_settings(model_dir: str | Path) -> dict[str, str]:
    """query_prefix, passage_prefix and pooling of an encoder directory (its sentence-transformers
    prompts and Pooling module): the one reader of them, for encode, train and the benchmarks."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    model_dir = Path(model_dir)
    missing = _missing_files(model_dir) if model_dir.is_dir() else [str(model_dir)]
    if missing:   # every missing part at once (an interrupted copy usually lacks more than one)
        raise MissingInput(f"encoder directory {model_dir} lacks {', '.join(missing)}: {_RECREATE}")
    try:
        prompts = json.loads((model_dir / "config_sentence_transformers.json").read_text("utf-8"))["prompts"]
        modules = json.loads((model_dir / "modules.json").read_text("utf-8"))
        pooling_path = next(m["path"] for m in modules if m["type"].endswith(".Pooling"))
        pooling = Pooling.load_config(str(model_dir), subfolder=pooling_path)["pooling_mode"]
        settings = {"query_prefix": prompts[QUERY_PROMPT], "passage_prefix": prompts[PASSAGE_PROMPT],
                    "pooling": pooling}
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as exc:
        raise BadInput(f"{model_dir} is not a sentence-transformers encoder directory with "
                         f"{QUERY_PROMPT!r}/{PASSAGE_PROMPT!r} prompts and a Pooling module "
                         f"({exc.__class__.__name__}: {exc}): {_RECREATE}") from exc
    if settings["pooling"] not in POOLINGS:
        raise BadInput(f"{model_dir}: pooling {settings['pooling']!r} is not one of {POOLINGS}")
    return settings


def pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vectors [batch, hidden] from token states (not normalised; differentiable)."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
        return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if pooling == "cls":
        return last_hidden_state[:, 0]
    raise BadInput(f"pooling must be one of {POOLINGS}, got {pooling!r}")
