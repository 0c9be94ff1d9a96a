"""Grounding of the cross-attentions in the caption's words: a training-only loss.

Each cross-attention of the UNet (``attn2``) spreads a pixel's query over the caption's tokens.
With a label map per frame whose classes are named by words of the caption (``class_words``:
class 0 "background", class 1 "circle", ...), this loss asks every pixel whose class's word is in
its caption to put its attention on that word rather than on the other classes' words: a
cross-entropy over the caption's class words, with each word's attention probability (averaged
over heads) as its likelihood, averaged over each class's pixels in a frame, then over the
classes of the frames and the layers. It is TokenCompose's idea
(Wang et al. 2024: supervise the cross-attention maps with segmentation masks) written as a
routing loss: the words compete for the pixel, so the pixel learns which word is its own.

Why: a from-scratch model (the toy, :mod:`lc4.toy`) learns only slowly from the diffusion loss
to route each pixel to its object's words (``docs/experiments``), which is what binds a colour
to its object; SD1.5 brings that routing from pre-training. Nothing is added to the model: the
loss reads the attention the model computes anyway, and the saved model is the plain one.
In the toy recipe it taught the routing but the colours did not follow (``docs/experiments``,
run 13), so ``make toy-model`` does not use it.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .segmentation import cross_attentions, pool_labels

IGNORE = -100  # a pixel the loss skips: mixed cell, or a class its caption does not name


def class_word_ids(tokenizer, class_words: list[str]) -> list[int]:
    """The token id of each class word; each must be one token of ``tokenizer``."""
    ids = []
    for index, word in enumerate(class_words):
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        if len(pieces) != 1:
            raise ValueError(f"grounding.class_words[{index}]: {word!r} is {len(pieces)} tokens of the "
                             f"tokenizer ({pieces}); each class word must be exactly one token")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"grounding.class_words: expected distinct words, got {class_words}")
    return ids


def class_positions(token_ids: torch.Tensor, word_ids: list[int]) -> torch.Tensor:
    """``token_ids`` ``(B, L)`` -> ``(B, C)``: the position of the first occurrence of each class
    word in each caption, -1 where the caption does not name it."""
    words = torch.tensor(word_ids, device=token_ids.device)
    hits = token_ids[:, None, :] == words[None, :, None]  # (B, C, L)
    first = hits.int().argmax(dim=-1)
    return torch.where(hits.any(dim=-1), first, torch.full_like(first, -1))


def routing_targets(labels: torch.Tensor, positions: torch.Tensor, side: int) -> torch.Tensor:
    """``labels`` ``(N, H, W)`` classes, ``positions`` ``(N, C)`` -> ``(N, side * side)`` class
    targets: the pooled class of each cell, :data:`IGNORE` for mixed cells, for classes the
    caption does not name, and for every cell of a frame whose caption names fewer than two
    classes (no choice to learn)."""
    num_classes = positions.shape[1]
    pooled = pool_labels(labels, side, num_classes, mixed=IGNORE)
    named = positions >= 0
    valid = (pooled != IGNORE) & named.gather(1, pooled.clamp_min(0))
    valid &= (named.sum(dim=1, keepdim=True) >= 2)
    return torch.where(valid, pooled, torch.full_like(pooled, IGNORE))


class CrossAttentionGrounding:
    """Forward pre-hooks on ``unet``'s cross-attentions record each one's attention
    probabilities (mean over heads, ``(N, pixels, tokens)``) while the UNet trains; :meth:`loss`
    scores those of the last UNet call against the label maps. Holds no parameters."""

    def __init__(self, unet: nn.Module, word_ids: list[int]):
        if len(word_ids) < 2:
            raise ValueError(f"grounding.class_words: expected at least 2 words, got {len(word_ids)}")
        layers = cross_attentions(unet)
        if not layers:
            raise ValueError("unet: has no cross-attention (attn2) modules to ground")
        self.word_ids = list(word_ids)
        self.probs: dict[str, torch.Tensor] = {}
        self._hooks = [module.register_forward_pre_hook(functools.partial(self._record, key), with_kwargs=True)
                       for key, module in layers.items()]

    def _record(self, key, module, args, kwargs):
        if not module.training:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        if context is None:
            context = args[1] if len(args) > 1 else hidden
        if module.norm_cross is not None:
            context = module.norm_encoder_hidden_states(context)
        heads = module.heads
        query = module.to_q(hidden).unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, heads, P, d)
        keys = module.to_k(context).unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, heads, L, d)
        if getattr(module, "norm_q", None) is not None:
            query, keys = module.norm_q(query), module.norm_k(keys)
        scores = (query.float() @ keys.float().transpose(-1, -2)) * module.scale
        self.probs[key] = scores.softmax(dim=-1).mean(dim=1)

    def loss(self, labels: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Mean over layers of the routing cross-entropy; ``labels`` ``(N, H, W)`` one map per
        frame of the UNet call, ``token_ids`` ``(N, L)`` the caption of each frame. Zero (with a
        gradient path) where no pixel has a choice to learn. Clears the recorded attention."""
        if not self.probs:
            raise RuntimeError("grounding: no attention recorded; call the UNet in training mode first")
        positions = class_positions(token_ids.to(labels.device), self.word_ids)
        losses = []
        for key, probs in self.probs.items():
            if probs.shape[0] != labels.shape[0] or token_ids.shape[0] != labels.shape[0]:
                raise ValueError(f"labels, token_ids: expected {probs.shape[0]} of each (one per frame), "
                                 f"got {labels.shape[0]} and {token_ids.shape[0]}")
            side = round(probs.shape[1] ** 0.5)
            if side * side != probs.shape[1]:
                raise ValueError(f"grounding: square latents expected, layer {key} has {probs.shape[1]} pixels")
            if token_ids.shape[1] != probs.shape[2]:
                raise ValueError(f"token_ids: expected {probs.shape[2]} tokens a caption (the attention's), "
                                 f"got {token_ids.shape[1]}")
            target = routing_targets(labels, positions.to(probs.device), side)
            word_probs = probs.gather(2, positions.clamp_min(0)[:, None, :].expand(-1, probs.shape[1], -1))
            logits = torch.log(word_probs.clamp_min(1e-12))
            logits = logits.masked_fill((positions < 0)[:, None, :], float("-inf"))
            valid = target != IGNORE
            if not valid.any():
                losses.append(probs.sum() * 0.0)
                continue
            # Each (frame, class) counts once, however many pixels it covers: the background
            # must not drown the objects, whose words are the ones that compete.
            per_pixel = F.cross_entropy(logits[valid], target[valid], reduction="none")
            group = torch.nonzero(valid)[:, 0] * positions.shape[1] + target[valid]
            groups, group_index, counts = torch.unique(group, return_inverse=True, return_counts=True)
            losses.append((per_pixel / counts[group_index]).sum() / len(groups))
        self.probs = {}
        return torch.stack(losses).mean()

    def detach_hooks(self) -> None:
        """Removes the hooks from the UNet (at the end of training)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.probs = {}
