"""Which encoder weights training leaves fixed (train.freeze_embeddings, train.freeze_layers).

Freezing the embeddings and the lower transformer layers keeps the base model's lower, more
language-general representations and trains only the upper layers, a standard way to fine-tune on
little data without forgetting (Lee et al. 2019, "What Would Elsa Do? Freezing Layers During
Transformer Fine-Tuning", arXiv:1911.03090). Frozen weights get no gradient and are not given to
the optimizer, so they stay bit-identical.
"""
from __future__ import annotations

import torch

from ..errors import BadInput


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer layers, lowest first (BERT-family encoders: XLM-R, LaBSE, E5)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise BadInput(f"train.freeze_layers: {type(model).__name__} has no encoder.layer stack")
    return layers


def freeze(model: torch.nn.Module, *, embeddings: bool, layers: int) -> None:
    """Fix the token-embedding matrix (`embeddings`); with `layers` = N > 0, also the whole embedding
    block and the lowest N transformer layers."""
    if embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if layers:
        stack = transformer_layers(model)
        if layers > len(stack):
            raise BadInput(f"train.freeze_layers = {layers} but the model has {len(stack)} layers")
        model.embeddings.requires_grad_(False)
        stack[:layers].requires_grad_(False)
