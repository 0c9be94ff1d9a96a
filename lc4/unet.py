"""The denoising UNet with TDA: a diffusers ``UNet2DConditionModel`` (SD1.5) whose transformer
blocks run spatial self-attention, then TDA, then cross-attention, then feed-forward (seed
Sec. 3.1: TDA sits between the spatial blocks and the cross-attention).

The TDA layers live in a :class:`TDAAdapter` (like diffusers' ``MotionAdapter``): its own
config and its own ``diffusion_pytorch_model.safetensors``, so SD1.5's UNet weights stay
untouched in ``unet/`` and the trained TDA weights in ``tda/``. :func:`insert_tda` swaps every
``BasicTransformerBlock`` for a :class:`TDATransformerBlock` sharing the block's own modules
(so the UNet's state-dict names do not change) and adding one TDA layer; :func:`remove_tda`
puts the original blocks back.

Frames are folded into the batch: ``sample`` is ``(B*F, 4, h, w)`` and the layout goes in
``cross_attention_kwargs={"temporal": TemporalContext(...)}`` (see :func:`temporal_kwargs`).
Gradient checkpointing (``unet.enable_gradient_checkpointing()``) covers the TDA blocks, as
diffusers' ``Transformer2DModel`` checkpoints each block it runs.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .tda import TemporalContext, TemporallyDeformableAttention

# diffusers' UNet2DConditionModel config of Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5).
SD15_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


class TDATransformerBlock(nn.Module):
    """SD1.5's ``BasicTransformerBlock`` (layer norms, self- then cross-attention) with TDA
    between the self-attention and the cross-attention. Takes the block's arguments."""

    def __init__(self, block: BasicTransformerBlock, tda: TemporallyDeformableAttention):
        super().__init__()
        if block.norm_type != "layer_norm" or block.only_cross_attention or block.attn2 is None \
                or block.pos_embed is not None:
            raise ValueError(
                "block: expected an SD1.5-style BasicTransformerBlock (norm_type='layer_norm', "
                "self- and cross-attention, no positional embedding)")
        self.norm1, self.attn1 = block.norm1, block.attn1
        self.tda = tda
        self.norm2, self.attn2 = block.norm2, block.attn2
        self.norm3, self.ff = block.norm3, block.ff
        self._original = (block,)  # a tuple: not registered, the modules above are shared

    @property
    def original_block(self) -> BasicTransformerBlock:
        return self._original[0]

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None,
                class_labels=None, added_cond_kwargs=None):
        kwargs = dict(cross_attention_kwargs or {})
        kwargs.pop("scale", None)
        temporal = kwargs.pop("temporal", None)
        if not isinstance(temporal, TemporalContext):
            raise ValueError(
                "cross_attention_kwargs: the UNet with TDA needs {'temporal': TemporalContext(num_frames, "
                "latent_size)} (see lc4.unet.temporal_kwargs)")
        hidden_states = self.attn1(self.norm1(hidden_states), attention_mask=attention_mask, **kwargs) + hidden_states
        hidden_states = self.tda(hidden_states, temporal)
        hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
                                   attention_mask=encoder_attention_mask, **kwargs) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


def temporal_kwargs(sample: torch.Tensor, num_frames: int, clip_plan=None) -> dict:
    """``cross_attention_kwargs`` for a UNet call on ``sample`` ``(B*num_frames, C, h, w)``."""
    if sample.dim() != 4 or sample.shape[0] % num_frames:
        raise ValueError(f"sample: expected (B*{num_frames}, C, h, w), got {tuple(sample.shape)}")
    return {"temporal": TemporalContext(num_frames, tuple(sample.shape[-2:]), clip_plan)}


def _transformer_block_slots(unet: nn.Module) -> Iterator[tuple[str, nn.ModuleList, int]]:
    """``(name, module list, index)`` of every transformer block of the UNet, in module order."""
    for name, module in unet.named_modules():
        if name.endswith("transformer_blocks") and isinstance(module, nn.ModuleList):
            for index, block in enumerate(module):
                if isinstance(block, (BasicTransformerBlock, TDATransformerBlock)):
                    yield f"{name}.{index}", module, index


def _level(name: str, num_levels: int) -> int:
    """Resolution level of a block (0: full latent size) from its diffusers module name."""
    if (match := re.match(r"down_blocks\.(\d+)\.", name)):
        return int(match.group(1))
    if (match := re.match(r"up_blocks\.(\d+)\.", name)):
        return num_levels - 1 - int(match.group(1))
    return num_levels - 1  # mid_block


class TDAAdapter(ModelMixin, ConfigMixin):
    """The TDA layers of a UNet, one per transformer block, in module order.

    ``spatial_stride`` (Nrs) is the stride at the first UNet level; coarser levels halve it
    (never below 1), see :mod:`lc4.tda`. Build one for a UNet with :meth:`from_unet`.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, block_dims: Sequence[int] = (), block_heads: Sequence[int] = (),
                 block_spatial_strides: Sequence[int] = (), temporal_stride: int = 2,
                 alpha: float = 4.0, offset_groups: int = 1):
        super().__init__()
        if not (len(block_dims) == len(block_heads) == len(block_spatial_strides)):
            raise ValueError("block_dims, block_heads, block_spatial_strides: expected equal lengths, got "
                             f"{len(block_dims)}, {len(block_heads)}, {len(block_spatial_strides)}")
        self.blocks = nn.ModuleList(
            TemporallyDeformableAttention(dim, heads, offset_groups, stride, temporal_stride, alpha)
            for dim, heads, stride in zip(block_dims, block_heads, block_spatial_strides))

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, spatial_stride: int = 4, temporal_stride: int = 2,
                  alpha: float = 4.0, offset_groups: int = 1) -> "TDAAdapter":
        num_levels = len(unet.config.block_out_channels)
        dims, heads, strides = [], [], []
        for name, module_list, index in _transformer_block_slots(unet):
            block = module_list[index]
            dims.append(block.norm1.normalized_shape[0])
            heads.append(block.attn1.heads)
            strides.append(max(1, spatial_stride // 2 ** _level(name, num_levels)))
        if not dims:
            raise ValueError("unet: has no transformer blocks to put TDA into")
        return cls(dims, heads, strides, temporal_stride, alpha, offset_groups)


def insert_tda(unet: UNet2DConditionModel, adapter: TDAAdapter) -> UNet2DConditionModel:
    """Puts the adapter's TDA layers into the UNet's transformer blocks (in place)."""
    slots = list(_transformer_block_slots(unet))
    if len(slots) != len(adapter.blocks):
        raise ValueError(f"adapter: has {len(adapter.blocks)} TDA layers for a UNet with {len(slots)} "
                         "transformer blocks")
    for (name, module_list, index), tda in zip(slots, adapter.blocks):
        block = module_list[index]
        if isinstance(block, TDATransformerBlock):
            block = block.original_block
        if block.norm1.normalized_shape[0] != tda.dim:
            raise ValueError(f"adapter: TDA layer of width {tda.dim} does not fit block {name} "
                             f"of width {block.norm1.normalized_shape[0]}")
        module_list[index] = TDATransformerBlock(block, tda)
    return unet


def remove_tda(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Restores the plain transformer blocks (in place); the TDA layers stay in their adapter."""
    for _, module_list, index in _transformer_block_slots(unet):
        if isinstance(module_list[index], TDATransformerBlock):
            module_list[index] = module_list[index].original_block
    return unet


def has_tda(unet: nn.Module) -> bool:
    return any(isinstance(m, TDATransformerBlock) for m in unet.modules())


def runs_tda(unet: UNet2DConditionModel, adapter: TDAAdapter) -> bool:
    """Whether the UNet's transformer blocks hold exactly this adapter's TDA layers."""
    blocks = [module_list[index] for _, module_list, index in _transformer_block_slots(unet)]
    return len(blocks) == len(adapter.blocks) and all(
        isinstance(block, TDATransformerBlock) and block.tda is tda for block, tda in zip(blocks, adapter.blocks))


@contextlib.contextmanager
def tda_removed(unet: UNet2DConditionModel):
    """The plain UNet for the duration (e.g. to save SD1.5-compatible weights), TDA after."""
    blocks = [(module_list, index, module_list[index]) for _, module_list, index in _transformer_block_slots(unet)]
    remove_tda(unet)
    try:
        yield unet
    finally:
        for module_list, index, block in blocks:
            module_list[index] = block


def load_unet_with_tda(unet_dir: str | Path, tda_dir: Optional[str | Path] = None, **tda_options):
    """SD1.5 UNet from a local diffusers folder plus TDA from ``tda_dir`` (or fresh TDA layers
    built with ``tda_options`` when ``tda_dir`` is None). Never downloads."""
    unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True)
    if tda_dir is None:
        adapter = TDAAdapter.from_unet(unet, **tda_options)
    else:
        adapter = TDAAdapter.from_pretrained(tda_dir, local_files_only=True)
    return insert_tda(unet, adapter), adapter
