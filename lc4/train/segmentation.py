"""Segmentation heads on the cross-attentions' queries: deep supervision used in training only.

Each cross-attention of the UNet (``attn2``: a pixel's query into the caption) gets a linear
head reading its input as the class of the pixel (a segmentation label map per frame, pooled to
the layer's size), and the heads' cross-entropy is added to the diffusion loss. The heads are
dropped when training ends: the model folder and the architecture are unchanged; only the
training signal gains a direct path telling the queries what is under them.

Why: a from-scratch model (the toy, :mod:`lc4.toy`) does not learn to tell its objects apart
where it asks the caption, so it cannot route each colour word to its object; SD1.5 brings that
from pre-training. With these heads on the generator's masks the toy binds colours to objects
(``docs/experiments``, "Shape heads for 4000 steps").
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

# A cell of a pooled label map takes the class covering more than this share of it, else 0.
MIN_CLASS_SHARE = 0.75


TARGETS = ("majority", "shares")


def pool_label_shares(labels: torch.Tensor, side: int, num_classes: int) -> torch.Tensor:
    """``labels`` ``(N, H, W)`` integer classes -> ``(N, side * side, num_classes)``: the share
    of each cell's pixels that each class covers (rows sum to 1)."""
    if labels.dim() != 3:
        raise ValueError(f"labels: expected (N, H, W) class indices, got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels: class indices must lie in [0, {num_classes}) (the configured classes), "
                         f"got {labels.min().item()} to {labels.max().item()}")
    one_hot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(one_hot, side).flatten(2).transpose(1, 2)


def pool_labels(labels: torch.Tensor, side: int, num_classes: int, mixed: int = 0) -> torch.Tensor:
    """``labels`` ``(N, H, W)`` integer classes -> ``(N, side * side)``: in each cell the class
    that covers more than :data:`MIN_CLASS_SHARE` of it, else ``mixed`` (by default 0, the
    background)."""
    best, cls = pool_label_shares(labels, side, num_classes).max(dim=2)
    return torch.where(best > MIN_CLASS_SHARE, cls, torch.full_like(cls, mixed))


def cross_attentions(unet: nn.Module) -> dict[str, nn.Module]:
    """The UNet's cross-attention modules (diffusers' ``attn2``) by name, dots made underscores."""
    return {name.replace(".", "_"): module for name, module in unet.named_modules() if name.endswith("attn2")}


class CrossAttentionSegmentationHeads(nn.Module):
    """A linear head per cross-attention of ``unet`` on its input; forward pre-hooks apply the
    heads during the UNet's own forward (so DDP sees their parameters used there) while this
    module is in training mode, and :meth:`loss` scores the logits of the last UNet call.

    ``targets``: ``"majority"`` asks each cell for the class covering most of it (mixed cells:
    background, :func:`pool_labels`); ``"shares"`` for the share of it each class covers, so a
    cell on the edge between two objects is asked for both (:func:`pool_label_shares`)."""

    def __init__(self, unet: nn.Module, num_classes: int, targets: str = "majority"):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
        if targets not in TARGETS:
            raise ValueError(f"targets: expected one of {TARGETS}, got {targets!r}")
        layers = cross_attentions(unet)
        if not layers:
            raise ValueError("unet: has no cross-attention (attn2) modules to supervise")
        self.num_classes = num_classes
        self.targets = targets
        self.heads = nn.ModuleDict({key: nn.Linear(m.to_q.in_features, num_classes) for key, m in layers.items()})
        self.logits: dict[str, torch.Tensor] = {}
        self._hooks = [module.register_forward_pre_hook(functools.partial(self._record, key), with_kwargs=True)
                       for key, module in layers.items()]

    def _record(self, key, module, args, kwargs):
        if self.training:
            hidden = args[0] if args else kwargs["hidden_states"]
            self.logits[key] = self.heads[key](hidden)

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Mean over layers of the cross-entropy against ``labels`` ``(N, H, W)`` (one map per
        frame of the UNet call, in its order); clears the recorded logits."""
        if not self.logits:
            raise RuntimeError("segmentation heads: no logits recorded; call the UNet in training mode first")
        losses = []
        for key, logits in self.logits.items():
            if logits.shape[0] != labels.shape[0]:
                raise ValueError(f"labels: expected {logits.shape[0]} maps (one per frame), got {labels.shape[0]}")
            side = round(logits.shape[1] ** 0.5)
            if side * side != logits.shape[1]:
                raise ValueError(f"segmentation heads: square latents expected, layer {key} has {logits.shape[1]} pixels")
            if self.targets == "shares":
                target = pool_label_shares(labels.to(logits.device), side, self.num_classes).flatten(0, 1)
            else:
                target = pool_labels(labels.to(logits.device), side, self.num_classes).flatten()
            losses.append(F.cross_entropy(logits.flatten(0, 1).float(), target))
        self.logits = {}
        return torch.stack(losses).mean()

    def detach_hooks(self) -> None:
        """Removes the hooks from the UNet (at the end of training: the heads are dropped)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.logits = {}
