"""Cross-modality pre-fusion (CMPF), seed Sec. 3.3, Eq. 4-7: instance-aware text embeddings.

``L`` fusion blocks refine the CLIP embeddings ``y_0`` of the prompt:

* Eq. 4: ``y = LN(MSA(y) + y)`` (inter-word relations);
* Eq. 5: ``y = LN(MCA(y, TDA(y_lum), M) + y)``: text tokens attend to the luminance encoder's
  features compressed by a TDA layer (:meth:`TemporallyDeformableAttention.compress`), with
  the colour words masked out of the queries (``M``), so nouns learn what they look like and
  colour words keep their CLIP meaning;
* Eq. 6: ``y = LN(FFN(y) + y)``;
* Eq. 7: ``y_tex = W_e(y_L) + y_0`` with ``W_e`` zero-initialised: a fresh CMPF returns the
  CLIP embeddings exactly.

:data:`COLOR_NAMES` is the colour vocabulary (basic and extended names, multi-word names);
:func:`color_token_mask` finds them in tokenised prompts with the actual tokenizer.
"""
from __future__ import annotations

import re
import weakref
from typing import Optional, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .tda import TemporallyDeformableAttention

BASIC_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
                "gray", "grey")
EXTENDED_COLORS = (
    "amber", "aqua", "azure", "beige", "blond", "blonde", "bronze", "burgundy", "charcoal", "chartreuse",
    "chocolate", "coral", "cream", "crimson", "cyan", "emerald", "fuchsia", "gold", "golden", "indigo",
    "ivory", "jade", "khaki", "lavender", "lilac", "lime", "magenta", "maroon", "mauve", "mint", "navy",
    "ochre", "olive", "peach", "plum", "rose", "ruby", "rust", "saffron", "salmon", "sapphire", "scarlet",
    "sepia", "silver", "tan", "taupe", "teal", "turquoise", "ultramarine", "vermilion", "violet",
    "colorful", "colourful",
)
_SHADES = ("light", "dark", "pale", "bright", "deep", "hot", "sky", "navy", "royal", "forest", "olive",
           "lime", "baby", "pastel", "neon")
MULTI_WORD_COLORS = tuple(f"{shade} {base}" for shade in _SHADES for base in BASIC_COLORS if shade != base) + (
    "off white", "sea green", "blood red", "cherry red", "brick red", "lemon yellow", "mustard yellow",
    "rose gold", "midnight blue", "powder blue", "steel blue", "jet black",
)
COLOR_NAMES = BASIC_COLORS + EXTENDED_COLORS + MULTI_WORD_COLORS
# Longest names first, so that "dark red" goes as a whole before "red" could leave "dark" behind.
_COLOR_WORDS = re.compile(r"\b(?:" + "|".join(re.escape(name).replace(r"\ ", r"[\s-]+")
                                               for name in sorted(COLOR_NAMES, key=len, reverse=True))
                          + r")\b", re.IGNORECASE)
_ORPHAN_HYPHENS = re.compile(r"(?<![^\W_])-+|-+(?![^\W_])")  # left by "blue-green", "red-haired"


def without_color_words(text: str) -> str:
    """``text`` with every colour name of :data:`COLOR_NAMES` taken out: "a red car on a dark
    blue road" -> "a car on a road" (the caption a model trained with ``data.color_word_dropout``
    has seen, and the negative prompt that guides along the colour words alone)."""
    return " ".join(_ORPHAN_HYPHENS.sub(" ", _COLOR_WORDS.sub(" ", text)).split())


_PATTERNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _color_patterns(tokenizer, color_names: Sequence[str]) -> dict[int, torch.Tensor]:
    """The names' token sequences grouped by length, ``{n: (P, n) int64}``. Tokenising some 250
    names costs more than a training step's matching, so the result is kept per tokenizer (and
    vocabulary size, which grows when tokens are added)."""
    key = (tuple(color_names), len(tokenizer))
    try:
        cached = _PATTERNS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        cached = {}
    if key not in cached:
        by_length: dict[int, set] = {}
        for name in color_names:
            ids = tuple(tokenizer(name, add_special_tokens=False).input_ids)
            if ids:
                by_length.setdefault(len(ids), set()).add(ids)
        cached[key] = {n: torch.tensor(sorted(found), dtype=torch.long) for n, found in by_length.items()}
    return cached[key]


def color_token_mask(tokenizer, input_ids: torch.Tensor, color_names: Sequence[str] = COLOR_NAMES) -> torch.Tensor:
    """Bool mask ``(B, L)``, True at the tokens of colour names in ``input_ids`` ``(B, L)``.

    Each name is tokenised by ``tokenizer`` itself (CLIP splits on words first, so a word's
    tokens do not depend on its neighbours) and matched as a token subsequence.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected (B, L), got {tuple(input_ids.shape)}")
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    length = input_ids.shape[1]
    for n, patterns in _color_patterns(tokenizer, color_names).items():
        if n > length:
            continue
        windows = input_ids.unfold(1, n, 1)  # (B, L - n + 1, n)
        starts = (windows[:, :, None, :] == patterns.to(input_ids.device)).all(-1).any(-1)
        for offset in range(n):
            mask[:, offset:offset + length - n + 1] |= starts
    return mask


class FusionBlock(nn.Module):
    """One CMPF block: Eq. 4 (MSA), Eq. 5 (masked cross-attention), Eq. 6 (FFN), post-norm."""

    def __init__(self, dim: int, num_heads: int, ffn_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim))
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, text: torch.Tensor, visual: torch.Tensor, color_mask: Optional[torch.Tensor]) -> torch.Tensor:
        text = self.norm1(self.self_attn(text, text, text, need_weights=False)[0] + text)
        fused = self.cross_attn(text, visual, visual, need_weights=False)[0]
        if color_mask is not None:
            fused = fused.masked_fill(color_mask[..., None], 0.0)  # M: colour words take no visual context
        text = self.norm2(fused + text)
        return self.norm3(self.ffn(text) + text)


class CrossModalityPreFusion(ModelMixin, ConfigMixin):
    """CMPF. ``luminance_channels``: channels of ``y_lum`` (the luminance encoder's output)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, text_dim: int = 768, num_layers: int = 2, num_heads: int = 8, ffn_mult: int = 4,
                 luminance_channels: int = 8, spatial_stride: int = 4, temporal_stride: int = 2,
                 alpha: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.visual_in = nn.Linear(luminance_channels, text_dim)
        self.visual_tda = TemporallyDeformableAttention(text_dim, num_heads, 1, spatial_stride, temporal_stride, alpha)
        self.blocks = nn.ModuleList(FusionBlock(text_dim, num_heads, ffn_mult, dropout) for _ in range(num_layers))
        self.proj_out = nn.Linear(text_dim, text_dim)  # W_e
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def visual_prompt(self, luminance_features: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``y_lum`` ``(B*F, C, h, w)`` -> compressed tokens ``(B, Nk, text_dim)``."""
        channels = self.config.luminance_channels
        if luminance_features.dim() != 4 or luminance_features.shape[1] != channels \
                or luminance_features.shape[0] % num_frames:
            raise ValueError(f"luminance_features: expected (B*{num_frames}, {channels}, h, w), "
                             f"got {tuple(luminance_features.shape)}")
        BF, _, h, w = luminance_features.shape
        x = luminance_features.to(self.dtype).permute(0, 2, 3, 1).reshape(BF // num_frames, num_frames, h, w, channels)
        return self.visual_tda.compress(self.visual_in(x))

    def forward(self, text_embeds: torch.Tensor, luminance_features: torch.Tensor, num_frames: int,
                color_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``text_embeds`` ``(B, Nt, D)`` CLIP embeddings; ``luminance_features`` ``(B_v*F, C, h, w)``
        with ``B_v`` 1 (shared by all prompts) or ``B``; ``color_mask`` ``(B, Nt)`` bool.
        Returns instance-aware embeddings ``(B, Nt, D)`` (Eq. 7)."""
        if text_embeds.dim() != 3 or text_embeds.shape[-1] != self.config.text_dim:
            raise ValueError(f"text_embeds: expected (B, Nt, {self.config.text_dim}), got {tuple(text_embeds.shape)}")
        if color_mask is not None and color_mask.shape != text_embeds.shape[:2]:
            raise ValueError(f"color_mask: expected {tuple(text_embeds.shape[:2])}, got {tuple(color_mask.shape)}")
        visual = self.visual_prompt(luminance_features, num_frames)
        if visual.shape[0] != text_embeds.shape[0]:
            if visual.shape[0] != 1:
                raise ValueError(f"luminance_features: {visual.shape[0]} videos for {text_embeds.shape[0]} prompts")
            visual = visual.expand(text_embeds.shape[0], -1, -1)
        y0 = text_embeds
        y = text_embeds.to(self.dtype)
        for block in self.blocks:
            y = block(y, visual, color_mask)
        return y0 + self.proj_out(y).to(y0.dtype)
