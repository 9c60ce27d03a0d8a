"""Embedding texts with an encoder (shared by encode, beir and the benchmarks); the directory format
and pooling are in encoder_dir.py.

Precision values for `encode_texts` (speed: README "Speed", from scripts/bench_encode.py):
- "fp32": plain float32 PyTorch, the reference.
- "bf16": bfloat16. On a GPU, torch autocast. On the CPU, OpenVINO's CPU plugin with a bf16
  inference precision (the model converted in memory with `openvino.convert_model`, a few seconds
  per model): on CPUs with native bf16 (AVX512-BF16 or AMX) the fastest accurate CPU path measured
  (README "Speed"); on CPUs without it OpenVINO computes in fp32 (and `auto` picks int8 there).
- "int8": ONNX Runtime, int8 weights and dynamically quantised activations, CPU only; embeddings
  within cosine 0.999 of fp32 (tests/test_modeling.py), XQuAD-R mAP within 0.005 (README "Speed").
  Plain dynamic int8 (torch quantize_dynamic or ONNX Runtime) loses up to 0.10 (torch) / 0.023 (ORT)
  multilingual mAP: BERT activations have outlier channels. So outliers are first moved into the
  weights (SmoothQuant, alpha 0.7, calibrated on random vocabulary sequences: no data involved) and
  the FFN output projections stay fp32. The quantised session is built once per model object
  (export + quantisation, tens of seconds) and cached.
Export, quantisation (int8) and conversion (bf16 on the CPU) depend only on the model's files, this
module and the runtime's version: `runner_cache(model_dir)` names a directory for that combination
($HYBRIDIR_CACHE, default ~/.cache/hybridir), where the first encode stage of a model leaves the
converted model and the others (the other datasets, BEIR) load it instead of converting again. A hit
computes exactly what a miss would; the cache holds no result.
Lower-layer states (int8 and CPU bf16, `split` = train.freeze_layers = N): a model trained with its
embeddings and lowest N layers frozen computes exactly what the base model computes up to layer N, so
encoding runs as two graphs, layers [0, N) and [N, all), and the lower graph's output for a list of
texts is kept in $HYBRIDIR_CACHE/states/ (float16, real tokens only: about 0.7 GB for XQuAD-R's or MLQA-R's
texts), keyed by the sha256 of those weights, the token ids, the precision, this module and the runtimes.
The first model of the run encodes the whole way and leaves the states; every other model that shares
the lower layers (the zero-shot model and each trained one) runs only its upper layers. A key never
matches other lower weights, and a hit yields exactly what a miss computes.
On the CPU, int8 and bf16 keep two chunks in flight (`_pipelined`: each batch's rows split in two,
run side by side on half the threads each: OpenVINO streams, ONNX Runtime sessions on two threads),
faster per text than one batch on all threads (README "Speed").
All variants sort texts by token length into batches: on the 13,014 XQuAD-R candidates, batches
of 64 in input order compute 1.70M token positions, length-sorted batches 0.61M (0.60M real).
"""
from __future__ import annotations

import collections
import copy
import hashlib
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import BadInput, CannotRun
from .encoder_dir import POOLINGS, pool

PRECISIONS = ("fp32", "bf16", "int8")


def cpu_has_native_bf16() -> bool:
    """Whether OpenVINO can run bf16 natively on this CPU (False without the openvino package)."""
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(precision: str, cuda: bool, cpu_bf16: bool) -> str:
    """evaluate.precision as run: "auto" is bf16 on a CUDA GPU or a CPU with native bf16, else int8."""
    return ("bf16" if cuda or cpu_bf16 else "int8") if precision == "auto" else precision


def encode_placement(precision: str) -> tuple[str, str]:
    """(precision as run, device) for evaluate.precision on this machine: a GPU when there is one,
    except for int8 (a CPU technique)."""
    cuda = torch.cuda.is_available()
    run_as = resolve_precision(precision, cuda, not cuda and cpu_has_native_bf16())
    return run_as, "cuda" if cuda and run_as != "int8" else "cpu"


# ONNX node names (from BERT / XLM-R module paths) of the FFN output projection, whose GELU
# inputs quantise badly.
_FFN_OUT_NODE = re.compile(r"/layer\.\d+/output/dense/")
SMOOTH_ALPHA = 0.7

Batch = tuple[np.ndarray, np.ndarray]   # (input_ids or lower-layer states, attention_mask), padded
# padded batches -> their last hidden states, in order; a stream, so a runtime may keep several in flight
Runner = Callable[[Iterable[Batch]], Iterator[torch.Tensor]]


def length_buckets(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of indices with similar lengths (longest first), so little padding is computed."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 input_ids and attention_mask for token id lists."""
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, :len(x)] = x
        mask[row, :len(x)] = 1
    return input_ids, mask


def torch_runner(model: torch.nn.Module) -> Runner:
    device = next(model.parameters()).device

    def run(batches: Iterable[Batch]) -> Iterator[torch.Tensor]:
        for input_ids, mask in batches:
            yield model(input_ids=torch.from_numpy(input_ids).to(device),
                        attention_mask=torch.from_numpy(mask).to(device)).last_hidden_state
    return run


# ---------------------------------------------------------------- int8 (ONNX Runtime)

class _ScaledInput(torch.nn.Module):
    """x -> inner(x * inv_scale, ...): the activation half of SmoothQuant (the weight half is folded in)."""

    def __init__(self, inv_scale: torch.Tensor, inner: torch.nn.Module):
        super().__init__()
        self.register_buffer("inv_scale", inv_scale)
        self.inner = inner

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.inner(x * self.inv_scale, *args, **kwargs)


def calibration_batch(tokenizer: Any, n: int = 64, length: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random sequences of ordinary vocabulary tokens framed by the special tokens (data-free)."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = np.array([i for i in range(len(tokenizer)) if i not in special])
    frame = tokenizer("")["input_ids"]  # e.g. [<s>, </s>]
    ids = [frame[:1] + ordinary[rng.integers(0, len(ordinary), length)].tolist() + frame[1:] for _ in range(n)]
    return pad_batch(ids, tokenizer.pad_token_id or 0)


def _smooth_scale(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w = torch.stack([x.detach().abs().amax(dim=0) for x in weights]).amax(dim=0).clamp(min=1e-5)
    return (act_max.clamp(min=1e-5) ** alpha / w ** (1 - alpha)).clamp(min=1e-5)


def smooth_for_int8(model: torch.nn.Module, tokenizer: Any, alpha: float = SMOOTH_ALPHA) -> torch.nn.Module:
    """A copy of a BERT-style encoder with activation outliers moved into the weights (SmoothQuant).

    Per input channel j of a Linear: s_j = max|x_j|^alpha / max|W_j|^(1-alpha), W_j *= s_j, x_j /= s_j,
    so the fp32 function is unchanged while int8 quantisation of x loses far less. Q/K/V share one
    scaling of their common input; the attention output projection's scaling is folded into the
    value projection (the context is linear in V per channel), so it costs nothing at run time.
    The FFN output projection is left alone (it stays fp32 in the int8 model).
    """
    smoothed = copy.deepcopy(model).float().eval()
    attentions = [(n, m) for n, m in smoothed.named_modules()
                  if all(isinstance(getattr(getattr(m, "self", None), k, None), torch.nn.Linear)
                         for k in ("query", "key", "value"))
                  and isinstance(getattr(getattr(m, "output", None), "dense", None), torch.nn.Linear)]
    intermediates = [(n, m.dense) for n, m in smoothed.named_modules()
                     if n.endswith("intermediate") and isinstance(getattr(m, "dense", None), torch.nn.Linear)]
    if not attentions or len(intermediates) != len(attentions):
        raise BadInput("precision int8 supports BERT-style encoders (bert, xlm-roberta); use fp32")
    watched = {id(m.self.query): f"{n}.qkv" for n, m in attentions}
    watched.update({id(m.output.dense): f"{n}.out" for n, m in attentions})
    watched.update({id(lin): f"{n}.ffn_in" for n, lin in intermediates})
    amax: dict[str, torch.Tensor] = {}

    def hook(module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        key = watched[id(module)]
        x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(dim=0)
        amax[key] = torch.maximum(amax[key], x) if key in amax else x

    modules = [m.self.query for _, m in attentions] + [m.output.dense for _, m in attentions] + \
        [lin for _, lin in intermediates]
    hooks = [m.register_forward_hook(hook) for m in modules]
    with torch.inference_mode():
        next(torch_runner(smoothed)([calibration_batch(tokenizer)]))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for name, att in attentions:
            q, k, v, out = att.self.query, att.self.key, att.self.value, att.output.dense
            s_out = _smooth_scale(amax[f"{name}.out"], [out.weight], alpha)
            out.weight.mul_(s_out)                      # columns (inputs) of the output projection
            v.weight.div_(s_out[:, None])               # rows (outputs) of V ...
            v.bias.div_(s_out)                          # ... make the context arrive pre-divided
            s_qkv = _smooth_scale(amax[f"{name}.qkv"], [q.weight, k.weight, v.weight], alpha)
            for lin in (q, k, v):
                lin.weight.mul_(s_qkv)
            att.self = _ScaledInput(1.0 / s_qkv, att.self)
        for name, lin in intermediates:
            s_in = _smooth_scale(amax[f"{name}.ffn_in"], [lin.weight], alpha)
            lin.weight.mul_(s_in)
            smoothed.get_submodule(name).dense = _ScaledInput(1.0 / s_in, lin)
    return smoothed


class _Layers(torch.nn.Module):
    """Transformer layers [start, stop) of a BERT-style encoder as a graph of their own, with the
    model's own modules and attention mask: start 0 takes (input_ids, attention_mask) through the
    embeddings, start > 0 takes (hidden states after layer start - 1, attention_mask). (0, all) is the
    whole encoder: model(...).last_hidden_state."""

    def __init__(self, model: torch.nn.Module, start: int, stop: int):
        super().__init__()
        self.model, self.start, self.stop = model, start, stop

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        model = self.model
        if self.start == 0:
            x = model.embeddings(input_ids=x)
        mask = create_bidirectional_mask(config=model.config, inputs_embeds=x, attention_mask=attention_mask)
        for layer in model.encoder.layer[self.start:self.stop]:
            x = layer(x, mask)
        return x


Part = tuple[int, int]   # layers [start, stop) of the encoder one runner computes


def n_layers(model: torch.nn.Module) -> int:
    return len(model.encoder.layer)


def _example_inputs(model: torch.nn.Module, part: Part) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str]]:
    """Trace inputs and their names for the graph of `part`."""
    ids = torch.ones((2, 8), dtype=torch.long)
    if part[0] == 0:
        return (ids, ids), ["input_ids", "attention_mask"]
    return (torch.zeros((2, 8, model.config.hidden_size)), ids), ["hidden_in", "attention_mask"]


def export_onnx(model: torch.nn.Module, path: Path, part: Part | None = None) -> None:
    """The graph of `part` (default: the whole encoder) -> last hidden states, dynamic batch and length."""
    part = part or (0, n_layers(model))
    example, names = _example_inputs(model, part)
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(_Layers(model, *part).eval(), example, str(path), input_names=names, output_names=["hidden"],
                      dynamic_axes={name: axes for name in names + ["hidden"]}, opset_version=17, dynamo=False)


CACHE_ENV = "HYBRIDIR_CACHE"


def _code_and_runtimes() -> "hashlib._Hash":
    """sha256 over this module's source and the runtimes' versions: what a cached conversion depends on
    besides the weights."""
    from importlib import metadata

    h = hashlib.sha256(Path(__file__).read_bytes())
    for name in ("onnxruntime", "onnx", "openvino", "torch", "transformers"):
        try:
            h.update(f"{name}={metadata.version(name)}\n".encode())
        except metadata.PackageNotFoundError:
            pass
    return h


def runner_cache(model_dir: str | Path) -> Path:
    """The cache directory of converted runners for the model in `model_dir`: keyed by the sha256 of
    its files, of this module's source and of the runtimes' versions (module docstring)."""
    h = _code_and_runtimes()
    root = Path(model_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return cache_root() / "runners" / h.hexdigest()[:32]


def cache_root() -> Path:
    """$HYBRIDIR_CACHE, default ~/.cache/hybridir: converted runners and lower-layer states."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hybridir")


def converted_cache(model_dir: str | Path, precision: str, device: str) -> Path | None:
    """runner_cache(model_dir) where encode_texts converts the model (int8; bf16 on the CPU), else None."""
    return runner_cache(model_dir) if device == "cpu" and precision in ("int8", "bf16") else None


def _write_cached(path: Path, write: Callable[[Path], None]) -> None:
    """write(temporary sibling), then rename it onto `path`: no reader sees a partial file, and jobs
    writing the same content may race (atomic.atomic_path moves an old file aside first: not here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)   # nothing half-written left (e.g. a full disk)
        raise


def _keep(built: Path, cache: Path | None, name: str) -> None:
    """Copy a built file into the cache under `name`."""
    if cache is not None:
        _write_cached(cache / name, lambda tmp: shutil.copyfile(built, tmp))


def _part_name(model: torch.nn.Module, part: Part | None) -> str:
    """'' for the whole encoder, else '.layers<start>-<stop>' (file names in the runner cache)."""
    return "" if part is None or part == (0, n_layers(model)) else f".layers{part[0]}-{part[1]}"


def onnx_runner(model: torch.nn.Module, tokenizer: Any, *, int8: bool = True, smooth: bool = True,
                keep_ffn_out_fp32: bool = True, cache: Path | None = None, part: Part | None = None) -> Runner:
    """An ONNX Runtime session for `model`'s layers `part` (default all; optionally SmoothQuant + dynamic
    int8) as a Runner; `cache` (runner_cache): load the exported model from there, or leave it there."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise CannotRun("precision int8 needs the onnx and onnxruntime packages "
                        "(pip install onnx onnxruntime), or use precision fp32") from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    slots = _slots()
    options.intra_op_num_threads = max(1, torch.get_num_threads() // slots)
    name = "model.{}{}{}{}.onnx".format("int8" if int8 else "fp32", ".smooth" if smooth else "",
                                        ".ffn32" if keep_ffn_out_fp32 else "", _part_name(model, part))
    if cache is not None and (cache / name).is_file():
        session = ort.InferenceSession(str(cache / name), options, providers=["CPUExecutionProvider"])
        return _session_runner(session, slots)
    # smoothing calibrates every layer on the inputs it sees in the whole model (data-free, module docstring)
    source = smooth_for_int8(model, tokenizer) if smooth else copy.deepcopy(model).float().eval()
    with tempfile.TemporaryDirectory(prefix="hybridir-onnx-") as tmp:
        fp32_path, int8_path = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_onnx(source, fp32_path, part)
        path = fp32_path
        if int8:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            node_names = [n.name for n in onnx.load(str(fp32_path), load_external_data=False).graph.node
                          if n.op_type == "MatMul"]
            exclude = [n for n in node_names if keep_ffn_out_fp32 and _FFN_OUT_NODE.search(n)]
            quantize_dynamic(fp32_path, int8_path, op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
            path = int8_path
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        _keep(path, cache, name)
    return _session_runner(session, slots)


def _slots() -> int:
    """Batches the CPU runtimes keep in flight at once: 2 where there are 2 threads or more (each runs
    on half the threads), measured faster per text than one batch on all of them (README "Speed")."""
    return 2 if torch.get_num_threads() >= 2 else 1


def _pipelined(batches: Iterable[Batch], slots: int, start: Callable[[int, Batch], Any],
               finish: Callable[[Any], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Each batch's output, in order, from `slots` workers running at once: a batch's rows are split
    into `slots` chunks, and the next chunks start while earlier ones run (start(slot, chunk) ->
    handle, finish(handle) -> output); at most `slots` chunks are in flight and one batch is read
    ahead, so lazily built inputs (kept lower-layer states) are not all materialised."""
    def chunks() -> Iterator[tuple[bool, Batch]]:
        for x, mask in batches:
            rows = -(-len(mask) // slots)
            starts = range(0, len(mask), rows)
            for r in starts:
                yield r == starts[-1], (x[r:r + rows], mask[r:r + rows])

    pending: collections.deque = collections.deque()   # (handle, last chunk of its batch), oldest first
    parts: list[torch.Tensor] = []

    def collect() -> torch.Tensor | None:
        handle, last = pending.popleft()
        parts.append(finish(handle))
        if not last:
            return None
        whole = parts[0] if len(parts) == 1 else torch.cat(parts)
        parts.clear()
        return whole

    for k, (last, chunk) in enumerate(chunks()):
        if len(pending) == slots:   # the oldest holds slot k % slots: finish it first
            if (whole := collect()) is not None:
                yield whole
        pending.append((start(k % slots, chunk), last))
    while pending:
        if (whole := collect()) is not None:
            yield whole


def _session_runner(session: Any, slots: int) -> Runner:
    names = [x.name for x in session.get_inputs()]   # (input_ids or hidden_in, attention_mask)
    workers = ThreadPoolExecutor(slots, thread_name_prefix="hybridir-onnx")   # session.run releases the GIL

    def run(batches: Iterable[Batch]) -> Iterator[torch.Tensor]:
        return _pipelined(batches, slots, lambda _, chunk: workers.submit(session.run, None, dict(zip(names, chunk))),
                          lambda future: torch.from_numpy(future.result()[0]))
    return run


# ---------------------------------------------------------------- bf16 on the CPU (OpenVINO)

def openvino_runner(model: torch.nn.Module, cache: Path | None = None, part: Part | None = None) -> Runner:
    """`model`'s layers `part` (default all) in OpenVINO's CPU plugin at bf16 inference precision;
    `cache` as for onnx_runner (the converted model is saved with fp32 weights: no fp16 compression)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise CannotRun("precision bf16 on the CPU needs the openvino package (pip install openvino), "
                        "or use precision fp32 / int8") from exc
    core = ov.Core()
    stem = "openvino" + _part_name(model, part)
    xml, weights = f"{stem}.xml", f"{stem}.bin"
    if cache is not None and (cache / xml).is_file() and (cache / weights).is_file():
        converted = core.read_model(str(cache / xml))
    else:
        part = part or (0, n_layers(model))
        example, _ = _example_inputs(model, part)
        converted = ov.convert_model(_Layers(copy.deepcopy(model).float().eval(), *part), example_input=example)
        if cache is not None:
            with tempfile.TemporaryDirectory(prefix="hybridir-ov-") as tmp:
                ov.save_model(converted, str(Path(tmp) / xml), compress_to_fp16=False)
                _keep(Path(tmp) / weights, cache, weights)   # the weights first: xml marks complete
                _keep(Path(tmp) / xml, cache, xml)
    slots = _slots()
    compiled = core.compile_model(converted, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "NUM_STREAMS": slots})
    requests = [compiled.create_infer_request() for _ in range(slots)]

    def start(slot: int, chunk: Batch) -> Any:
        requests[slot].start_async(list(chunk))   # inputs are copied in (row slices: contiguous)
        return requests[slot]

    def finish(request: Any) -> torch.Tensor:
        request.wait()
        return torch.from_numpy(request.get_output_tensor(0).data.copy())   # the buffer is reused

    def run(batches: Iterable[Batch]) -> Iterator[torch.Tensor]:
        return _pipelined(batches, slots, start, finish)
    return run


def _per_model(model: torch.nn.Module, key: str, build: Callable[[], Any]) -> Any:
    """build() once per model object and key: runners (export, conversion, quantisation happen once)
    and the lower-layer signature (hashing the embedding matrix once, not per call)."""
    attr = f"_hybridir_{key}"
    cached = getattr(model, attr, None)
    if cached is None:
        cached = build()
        object.__setattr__(model, attr, cached)  # plain attribute, not a submodule
    return cached


# ---------------------------------------------------------------- encoding

def encode_texts(model: torch.nn.Module, tokenizer: Any, texts: list[str], *, prefix: str,
                 pooling: str = "mean", max_length: int = 256, batch_size: int = 64,
                 precision: str = "fp32", progress: bool = False, cache: Path | None = None,
                 split: int = 0) -> np.ndarray:
    """Embed `texts` (each prefixed) -> float32 [len(texts), hidden], L2-normalised, in input order.
    `cache`: runner_cache of the model's directory (int8 and CPU bf16 load their converted model there).
    `split` = N (0 < N < layers, with a cache): the lower N layers and the rest run as two graphs and the
    lower graph's output is kept in the states cache (`lower_states`), where every model with the same
    embeddings and lower N layers finds it (train.freeze_layers: the zero-shot and every trained model)."""
    if precision not in PRECISIONS:
        raise BadInput(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not texts:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    device_type = next(model.parameters()).device.type
    if precision == "int8" and device_type != "cpu":
        raise BadInput("precision int8 runs on the CPU only: move the model to the CPU or use fp32/bf16")
    converted: Callable[[Part | None], Runner] | None = None
    kind = "int8" if precision == "int8" else "openvino_bf16"
    if precision == "int8":
        def converted(part: Part | None) -> Runner:
            return onnx_runner(model, tokenizer, cache=cache, part=part)
    elif precision == "bf16" and device_type == "cpu":
        def converted(part: Part | None) -> Runner:
            return openvino_runner(model, cache=cache, part=part)
    lower: Callable[[list[Batch]], Iterator[np.ndarray]] | None = None
    if converted is None:
        run = torch_runner(model)
    elif cache is not None and 0 < split < n_layers(model):
        top = n_layers(model)
        run = _per_model(model, f"{kind}_layers{split}_{top}_runner", lambda: converted((split, top)))
        signature = _per_model(model, f"{precision}_lower{split}_signature",
                               lambda: lower_signature(model, split, precision))

        def lower(batches: list[Batch]) -> Iterator[np.ndarray]:
            build = lambda: _per_model(model, f"{kind}_layers0_{split}_runner", lambda: converted((0, split)))
            return lower_states(batches, build, signature)
    else:
        run = _per_model(model, f"{kind}_runner", lambda: converted(None))
    autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16,
                              enabled=precision == "bf16" and device_type != "cpu")
    with autocast:
        return encode_with(run, tokenizer, texts, prefix=prefix, pooling=pooling, max_length=max_length,
                           batch_size=batch_size, progress=progress, lower=lower)


# ---------------------------------------------------------------- lower-layer states

def lower_signature(model: torch.nn.Module, split: int, precision: str) -> bytes:
    """What the lower `split` layers' output depends on besides the token ids: the embeddings' and
    those layers' weights, the precision, this module and the runtimes (not the upper layers)."""
    h = _code_and_runtimes()
    h.update(f"{precision}:{split}\n".encode())
    lower = ("embeddings.",) + tuple(f"encoder.layer.{i}." for i in range(split))
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(lower):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def lower_states(batches: list[Batch], build: Callable[[], Runner],
                 signature: bytes) -> Iterator[np.ndarray]:
    """Per padded batch (input_ids, attention_mask), the lower graph's hidden states as float32
    [batch, length, hidden]: the real tokens' rows rounded to float16 (below bf16's own rounding),
    zeros at padding (masked out of attention and pooling). Kept in cache_root()/states/<key>.npy,
    key = sha256 of `signature` and the batches, so a hit yields exactly what a miss computes; the
    lower graph is built (`build`) only on a miss."""
    h = hashlib.sha256(signature)
    for ids, mask in batches:
        h.update(repr(ids.shape).encode() + ids.tobytes() + mask.tobytes())
    path = cache_root() / "states" / f"{h.hexdigest()[:32]}.npy"
    if path.is_file():
        flat = np.load(path, mmap_mode="r")
    else:
        run = build()
        with torch.inference_mode():
            flat = np.concatenate([states.float().numpy()[mask.astype(bool)].astype(np.float16)
                                   for states, (_, mask) in zip(run(batches), batches)])
        _write_cached(path, lambda tmp: np.save(tmp, flat, allow_pickle=False))
    start = 0
    for ids, mask in batches:
        real = mask.astype(bool)
        x = np.zeros(ids.shape + (flat.shape[1],), dtype=np.float32)
        x[real] = flat[start:start + int(real.sum())]
        start += int(real.sum())
        yield x


def encode_with(run: Runner, tokenizer: Any, texts: list[str], *, prefix: str, pooling: str = "mean",
                max_length: int = 256, batch_size: int = 64, bucketing: bool = True,
                progress: bool = False,
                lower: Callable[[list[Batch]], Iterator[np.ndarray]] | None = None,
                ) -> np.ndarray:
    """`encode_texts` for any Runner; bucketing=False keeps input order in batches (benchmarks only).
    `lower`: the padded batches -> `run`'s first input per batch (lower_states), instead of the token ids."""
    if pooling not in POOLINGS:
        raise BadInput(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if batch_size < 1:
        raise BadInput(f"batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    if not texts:
        dim = next(run([pad_batch([tokenizer("")["input_ids"]], 0)])).shape[-1]
        return np.zeros((0, dim), dtype=np.float32)
    ids = tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if bucketing:
        order = length_buckets(lengths, batch_size)
    else:
        order = [np.arange(i, min(i + batch_size, len(ids))) for i in range(0, len(ids), batch_size)]
    batches = [pad_batch([ids[i] for i in idx], pad_id) for idx in order]
    inputs = lower(batches) if lower is not None else (input_ids for input_ids, _ in batches)
    steps = zip(order, batches, run(zip(inputs, (mask for _, mask in batches))))
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="encode", unit="batch", total=len(order))
    out: np.ndarray | None = None
    with torch.inference_mode():
        for idx, (_, mask), states in steps:
            states = states.float()
            mask_t = torch.from_numpy(mask).to(states.device)
            vectors = torch.nn.functional.normalize(pool(states, mask_t, pooling), dim=-1).cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
    assert out is not None
    return out
