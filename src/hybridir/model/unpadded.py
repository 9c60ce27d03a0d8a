"""The encoder's forward pass without computation on padding (the CPU training path).

A batch tokenised with padding to its longest text spends about half of its token positions on
padding (training batches of the default config: 0.51 real tokens per position). Here the
token-wise work (embeddings, Q/K/V and output projections, FFN, LayerNorms, dropout) runs on the
packed real tokens only, [tokens, hidden]; only the attention itself runs on the padded layout
[batch, heads, length, length], computed as torch's math SDPA computes it (`_attention`).

The result equals the padded forward up to float rounding, dropout included: every dropout mask
is drawn exactly as the padded forward draws it (same shapes, same order, from the same generator;
the padded positions' noise is drawn and discarded), so a training run takes the same random
masks and follows the same loss trajectory (tests/test_train_speed_paths.py checks loss and
gradients against the padded path, in train mode).

With frozen lower layers (train.freeze_layers = N), the states after layer N of a text depend on
nothing that training changes, and in eval mode (no dropout) not on the step either: `FrozenPrefix`
keeps them for the fixed validation batches, and every validation pass after the first runs only the
upper layers on them: the same operations on the same inputs, so bit-identical losses.

Supported: BERT and XLM-RoBERTa style encoders (absolute positions, no decoder, eager or sdpa
attention); `supports(model)` says whether a model qualifies (the caller falls back to the
padded forward otherwise).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

_TYPES = ("bert", "xlm-roberta")


def supports(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in _TYPES or getattr(config, "is_decoder", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if getattr(config, "_attn_implementation", "eager") not in ("eager", "sdpa"):
        return False
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    return layers is not None and all(hasattr(x, "attention") and hasattr(x, "intermediate") for x in layers)


def _dropout(x: torch.Tensor, module: torch.nn.Dropout, shape: tuple[int, ...], idx: torch.Tensor,
             training: bool) -> torch.Tensor:
    """`module(padded x)` restricted to the packed rows: the noise is drawn at the padded shape
    exactly as torch's CPU dropout draws it (empty_like(input).bernoulli_(1 - p) / (1 - p))."""
    p = module.p
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0
    noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    noise.div_(1 - p)
    return x * noise.view(-1, shape[-1]).index_select(0, idx)


@dataclass
class FrozenPrefix:
    """States after the lowest `layers` layers of a model whose embeddings and those layers are frozen,
    per batch of token ids, kept in eval mode only (train mode draws dropout masks in them)."""
    layers: int
    states: dict[bytes, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def key(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bytes:
        h = hashlib.sha256(repr((tuple(input_ids.shape), str(input_ids.dtype))).encode())
        for t in (input_ids, attention_mask):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.digest()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float,
               dropout: torch.nn.Dropout, training: bool) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) v, dropout on the probabilities, on [batch, heads, length, head]:
    torch's math SDPA (what the padded forward runs on the CPU when training, dropout drawn the same
    way), without its fully-masked-row guard (isneginf/all/where over [batch, heads, length, length]:
    0.11 s of a 2.4 CPU-s step in torch.profiler): every text keeps a token, so no row is fully masked."""
    root = scaling ** 0.5   # SDPA scales q and k by sqrt(scaling) each
    probs = torch.softmax(torch.matmul(q * root, (k * root).transpose(-2, -1)) + mask, dim=-1)
    return torch.matmul(torch.nn.functional.dropout(probs, dropout.p, training), v)


def _qkv_weights(att: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The query, key and value projections as one [3 * hidden, hidden] matrix and bias (one matmul
    and one unpacking instead of three; gradients flow back to the three Linear modules)."""
    return (torch.cat([att.query.weight, att.key.weight, att.value.weight]),
            torch.cat([att.query.bias, att.key.bias, att.value.bias]))


def packed_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         prefix: FrozenPrefix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden states of the real tokens [n_real, hidden] in row-major order, their flat
    indices into [batch * length]) for right-padded `input_ids` / `attention_mask` [batch, length];
    `prefix`: take / keep the frozen lower layers' states (eval mode only, see FrozenPrefix)."""
    emb = model.embeddings
    training = model.training
    batch, length = input_ids.shape
    idx = attention_mask.reshape(-1).nonzero().squeeze(1)
    rows, cols = torch.div(idx, length, rounding_mode="floor"), idx % length
    hidden = model.config.hidden_size
    shape = (batch, length, hidden)
    key = prefix.key(input_ids, attention_mask) if prefix is not None and not training else None
    x = prefix.states.get(key) if key is not None else None
    start = prefix.layers if x is not None else 0
    if x is None:
        if hasattr(emb, "create_position_ids_from_input_ids"):    # XLM-R: padding_idx + 1 + position
            position_ids = emb.create_position_ids_from_input_ids(input_ids, emb.padding_idx)
        else:
            position_ids = emb.position_ids[:, :length].expand(batch, length)
        ids = input_ids.reshape(-1).index_select(0, idx)
        pos = position_ids.reshape(-1).index_select(0, idx)
        x = emb.word_embeddings(ids) + emb.token_type_embeddings(torch.zeros_like(ids))
        x = x + emb.position_embeddings(pos)
        x = emb.LayerNorm(x)
        x = _dropout(x, emb.dropout, shape, idx, training)
    # additive key mask [batch, 1, 1, length], as SDPA turns a boolean mask into one
    mask = x.new_zeros(batch, 1, 1, length).masked_fill(
        attention_mask[:, None, None, :] == 0, float("-inf"))

    for i, layer in enumerate(model.encoder.layer[start:], start):
        att = layer.attention.self
        heads, head_size = att.num_attention_heads, att.attention_head_size
        weight, bias = _qkv_weights(att)
        qkv = torch.addmm(bias, x, weight.t())
        # padded [3, batch, heads, length, head]; padding rows stay zero (masked out as keys)
        qkv = qkv.new_zeros(batch * length, qkv.shape[-1]).index_copy(0, idx, qkv)
        q, k, v = qkv.view(batch, length, 3, heads, head_size).permute(2, 0, 3, 1, 4)
        context = _attention(q, k, v, mask, att.scaling, att.dropout, training)
        # the real rows only, [n_real, heads * head]: no copy of the padded layout
        context = context.transpose(1, 2)[rows, cols].reshape(len(idx), -1)
        out = layer.attention.output
        x = out.LayerNorm(_dropout(out.dense(context), out.dropout, shape, idx, training) + x)
        ffn = layer.output
        x = ffn.LayerNorm(_dropout(ffn.dense(layer.intermediate(x)), ffn.dropout, shape, idx, training) + x)
        if key is not None and i + 1 == prefix.layers:   # the last frozen layer's output
            prefix.states[key] = x
    return x, idx


def pooled(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           pooling: str, prefix: FrozenPrefix | None = None) -> torch.Tensor:
    """Sentence vectors [batch, hidden] (not normalised) = encoder_dir.pool(model(...).last_hidden_state)."""
    from .encoder_dir import POOLINGS

    states, idx = packed_hidden_states(model, input_ids, attention_mask, prefix)
    batch, length = input_ids.shape
    if pooling == "mean":
        rows = torch.div(idx, length, rounding_mode="floor")
        sums = states.new_zeros(batch, states.shape[-1]).index_add(0, rows, states)
        return sums / attention_mask.sum(dim=1, keepdim=True).to(states.dtype).clamp(min=1e-9)
    if pooling == "cls":
        starts = torch.cumsum(attention_mask.sum(dim=1), 0) - attention_mask.sum(dim=1)
        return states.index_select(0, starts)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
