"""Loss terms added to the InfoNCE of train.py, each weighted by a train.* param and off at 0.

Distillation to the base model (train.distill_weight = λ): Reimers & Gurevych (2020), "Making
Monolingual Sentence Embeddings Multilingual using Knowledge Distillation" (EMNLP, arXiv:2004.09813),
train a student to reproduce a frozen teacher's embeddings with an MSE loss. Here the teacher is the
frozen base model itself and the texts are the batch's own (queries, passages), so the term keeps the
fine-tuned space close to the base model's while InfoNCE moves it:
    loss = InfoNCE + λ · mean_i ||s_i − t_i||²,
with s_i, t_i the L2-normalised student and teacher embeddings of text i (||s − t||² = 2 − 2 cos(s, t),
so the term is a cosine pull, on the same scale for every model width). The teacher's embeddings
are computed without gradients, in eval mode (no dropout), once per batch.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch


def frozen_teacher(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` as it is now (the base model, before any step): eval mode, no gradients."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def distill_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """mean_i ||s_i − t_i||² over the rows of every (student, teacher) pair of [n, d] tensors."""
    s = torch.cat(list(student))
    t = torch.cat(list(teacher)).to(s.dtype)
    return (s - t).pow(2).sum(dim=-1).mean()
