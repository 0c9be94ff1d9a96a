"""Training configuration: a YAML or TOML file whose defaults are the paper's (seed Sec. 3.5).

Sec. 3.5 in config terms:

* two stages: ``stage: 1`` trains the denoising UNet with TDA under the CLIP embeddings of the
  captions; ``stage: 2`` freezes it and trains CMPF. What trains is explicit in ``trainable``
  (stage defaults below); stage 2 refuses a ``trainable`` that includes the UNet or TDA. A
  stage 1 whose ``trainable`` names ``cmpf`` (not the paper's schedule) conditions the UNet on
  CMPF's embeddings and trains both together.
* Eq. 9's MSE in both stages; its target follows the model folder's scheduler: epsilon for
  SD1.5, as in the paper (the toy model, trained from scratch, uses v-prediction);
* AdamW, ``lr = 1e-5``, ``betas = (0.99, 0.999)``; 20 epochs (stage 1), 10 (stage 2);
  batch size 2; clips of ``N^f = 8`` frames.
* ``lambda = 1e-4``: the paper names it with the training settings but defines no loss term
  for it; with AdamW the one hyper-parameter it can be is the weight decay, so that is where
  it goes (``optimizer.weight_decay``).

Choices the paper leaves open: resolution 256 (its evaluations run at 256; 512 is the SD1.5
native size), ``caption_dropout = 0.1`` (the pipeline samples with classifier-free guidance, so
the unconditional branch has to keep training), fp16 mixed precision and gradient
checkpointing (V100s), a constant learning rate, gradient clipping at 1.0.

Memory (``lc4 train CONFIG --plan-memory``): stage 1 with the whole UNet trainable holds about
14 GB of fp32 weights, gradients and AdamW states on every GPU under DDP. Two ways under 16 GB:
``distributed: {sharding: fsdp}`` over several GPUs (accelerate's FSDP plugin shards gradients
and optimizer states, ZeRO-2-like) or, on one GPU, ``optimizer: {name: adamw8bit}``
(bitsandbytes, 2 bytes of state per parameter instead of 8).

Luminance encoder: the paper starts it from L-CAD's weights, which are not public, so stage 1
trains it by default (its zero-initialised ``latent_proj`` is how the luminance reaches the
UNet). Eq. 9 gives its decoder skip projections no gradient; they stay as initialised. The
toy model (:mod:`lc4.toy`) pre-trains both of its outputs first and freezes it in stage 1.

Text encoder: frozen CLIP, as in the paper. ``trainable`` may name ``text_encoder`` (as
diffusers' DreamBooth ``--train_text_encoder`` does), for a text encoder that starts from
random weights (a model trained from scratch) where the paper's is pretrained CLIP.

A minimal file::

    stage: 1
    model: {path: models/lc4-sd15}       # from `lc4 init-model DIR --from-sd15 SD_DIR`
    data: {source: data/internvid.csv}    # or .jsonl, or a folder of videos with .txt captions
    output_dir: runs/stage1
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .segmentation import TARGETS as SEGMENTATION_TARGETS

TRAINABLE_PARTS = ("unet", "tda", "luminance_encoder", "cmpf", "text_encoder")
STAGE_TRAINABLE = {1: ("unet", "tda", "luminance_encoder"), 2: ("cmpf",)}
STAGE_EPOCHS = {1: 20, 2: 10}
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
SHARDING = ("none", "fsdp")
LATENT_CHOICES = ("sample", "mode")
FSDP_STRATEGIES = ("SHARD_GRAD_OP", "FULL_SHARD")
# The keys that hold paths: relative ones in a config file are relative to its folder.
PATH_KEYS = ("model.path", "data.source", "data.encoding_cache_file", "output_dir", "validation.video")
# FSDP units (module class names): every ResNet block and transformer of the UNet and of the
# luminance encoder; the rest (embeddings, up/down-samplers, conv_in/out) is the root unit.
FSDP_WRAP = ("ResnetBlock2D", "Transformer2DModel")


@dataclass
class ModelConfig:
    path: str = ""  # an lc4 model folder (`lc4 init-model`, or a previous stage's output)
    tda_backend: Optional[str] = None  # lc4_kernels backend; None: automatic


@dataclass
class DataConfig:
    source: str = ""  # folder of videos (caption in NAME.txt beside each), .csv or .jsonl
    resolution: int = 256
    num_frames: int = 8  # N^f
    frame_stride: int = 1  # take every k-th frame of the source
    random_crop: bool = True  # else centre crop
    caption_dropout: float = 0.1
    # Of the captions kept, the share trained without their colour words (lc4.cmpf.without_color_words),
    # so that guidance can push from the colourless caption along the colour words alone.
    color_word_dropout: float = 0.0
    num_workers: int = 4
    max_skips: int = 32  # consecutive unreadable videos tolerated before giving up
    # Small data sets seen over many epochs (the toy model): keep every decoded video in memory
    # (per loader worker), and the frozen VAE's posterior and luminance features of every frame
    # (lc4.train.encoding_cache). Neither changes what a step computes beyond ~1e-6.
    cache_frames: bool = False
    cache_encodings: bool = False
    # With cache_encodings: a file the encodings are read from at the start and written to at the
    # end, so the stages of one model (same frozen encoders and data) share them; None: in memory only.
    encoding_cache_file: Optional[str] = None


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # "adamw" (torch, fused on a GPU) or "adamw8bit" (bitsandbytes, 8-bit states)
    lr: float = 1e-5
    betas: tuple[float, float] = (0.99, 0.999)
    weight_decay: float = 1e-4  # the paper's lambda, see the module docstring
    eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    lr_scheduler: str = "constant"  # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 0


@dataclass
class DistributedConfig:
    """How several processes share the work (``accelerate launch``). ``sharding: none`` is DDP:
    every GPU holds the whole model, its gradients and AdamW states. ``sharding: fsdp`` passes
    accelerate a ``FullyShardedDataParallelPlugin`` (torch FSDP2, ``fully_shard``): each GPU keeps
    1/N of the trained weights (fp32), gradients and optimizer states, and all-gathers the
    weights in fp16 per unit (``fsdp_wrap``) for the forward and backward. ``fsdp_strategy``:
    ``SHARD_GRAD_OP`` (ZeRO-2-like: gathered weights stay between forward and backward, one
    all-gather per step) or ``FULL_SHARD`` (ZeRO-3-like: freed after each unit's forward and
    gathered again for the backward; less memory, more communication)."""

    sharding: str = "none"
    fsdp_strategy: str = "SHARD_GRAD_OP"
    fsdp_wrap: list[str] = field(default_factory=lambda: list(FSDP_WRAP))


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.9999


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: Optional[int] = 3  # None keeps all


@dataclass
class LoggingConfig:
    every_steps: int = 10
    tensorboard: bool = False
    progress_bar: bool = True


@dataclass
class ValidationConfig:
    every_steps: int = 0  # 0: never (the end of training still validates if a clip is known)
    video: Optional[str] = None  # a held-out video; None: the last item of the data source is held out
    caption: Optional[str] = None
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0


@dataclass
class SegmentationConfig:
    """Segmentation heads on the cross-attentions' queries (:mod:`lc4.train.segmentation`),
    training only. ``weight`` > 0 needs a ``segmentation`` label folder for every clip of the
    data source (``.jsonl``/``.csv`` key: PNG label maps, one per frame, class indices 0 to
    ``num_classes - 1``, 0 the background)."""

    weight: float = 0.0  # 0: off
    num_classes: int = 0
    # What each latent cell's head is asked for: "majority", the class covering more than 3/4 of
    # the cell (else the background); "shares", every class's share of the cell's pixels (a soft
    # target), so cells on the edge between two objects are asked for both.
    targets: str = "majority"
    # Extra diffusion-loss weight on latent cells whose pixels hold two or more label classes
    # (the edges between objects, and between objects and background, where a neighbour's
    # colour leaks in); 0: off. Uses the label maps, with or without the heads.
    boundary_weight: float = 0.0


@dataclass
class GroundingConfig:
    """The cross-attentions' routing loss (:mod:`lc4.train.grounding`), training only.
    ``weight`` > 0 needs the same ``segmentation`` label folders as the heads above;
    ``class_words[i]`` is the caption's word for label class ``i`` (one token each, e.g.
    ``[background, circle, square]``)."""

    weight: float = 0.0  # 0: off
    class_words: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    stage: int = 1
    trainable: Optional[list[str]] = None  # None: the stage's default, STAGE_TRAINABLE
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output_dir: str = "runs/lc4"
    batch_size: int = 2  # clips per process and micro-step
    gradient_accumulation_steps: int = 1
    epochs: Optional[int] = None  # None: the stage's default, STAGE_EPOCHS
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    mixed_precision: str = "fp16"  # falls back to "no" without a GPU
    gradient_checkpointing: bool = True
    # Under gradient checkpointing, the luminance encoder (full resolution, the VAE encoder's
    # structure) runs this many frames at a time: the same outputs and gradients, but a block's
    # recomputation in the backward holds the activations of one chunk, not of every frame.
    # None: all frames at once.
    luminance_chunk_frames: Optional[int] = 1
    # The 2D convolutions' weights in channels-last memory format (activations follow). Measured
    # on the CPU only: the toy model's single-frame stage ran 1.24x as fast (58.9 against 47.6
    # clips/s, 32 frames a step on 2 cores); off until a GPU has measured it.
    channels_last: bool = False
    # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' --snr_gamma): each clip's MSE
    # times min(SNR(t), gamma) / SNR(t), so the low-noise steps no longer dominate the gradient.
    # None: Eq. 9's plain MSE (the paper's).
    snr_gamma: Optional[float] = None
    # Which latent of each frame's VAE posterior the denoiser learns: "sample", a draw from it
    # (SD1.5's training), or "mode", its mean, without the posterior's noise (a VAE trained with a
    # small KL weight can leave much of its latents' variance in that noise).
    latents: str = "sample"
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (needed for bitwise resume)

    def __post_init__(self):
        self.validate()

    @property
    def trainable_parts(self) -> tuple[str, ...]:
        return tuple(self.trainable) if self.trainable is not None else STAGE_TRAINABLE[self.stage]

    @property
    def uses_cmpf(self) -> bool:
        """Whether the UNet is conditioned on CMPF's embeddings: always in stage 2; in stage 1
        (plain CLIP embeddings in the paper) only when CMPF trains with the UNet."""
        return self.stage == 2 or "cmpf" in self.trainable_parts

    @property
    def uses_label_maps(self) -> bool:
        """Whether training reads the data's ``segmentation`` label maps (heads, boundary
        weighting or grounding)."""
        return self.segmentation.weight > 0 or self.segmentation.boundary_weight > 0 or self.grounding.weight > 0

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else STAGE_EPOCHS[self.stage]

    def validate(self) -> None:
        if self.stage not in STAGE_TRAINABLE:
            raise ValueError(f"stage: expected 1 or 2, got {self.stage!r}")
        unknown = [p for p in self.trainable_parts if p not in TRAINABLE_PARTS]
        if unknown or not self.trainable_parts:
            raise ValueError(f"trainable: expected a non-empty list of {TRAINABLE_PARTS}, got {self.trainable!r}")
        if self.stage == 2 and {"unet", "tda"} & set(self.trainable_parts):
            raise ValueError("trainable: stage 2 freezes the UNet and its TDA layers; train them in stage 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: expected one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        data = self.data
        if data.resolution % 8 or data.resolution <= 0:
            raise ValueError(f"data.resolution: expected a positive multiple of 8, got {data.resolution}")
        for name, value in (("data.num_frames", data.num_frames), ("data.frame_stride", data.frame_stride),
                            ("batch_size", self.batch_size),
                            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
                            ("checkpointing.every_steps", self.checkpointing.every_steps),
                            ("logging.every_steps", self.logging.every_steps)):
            if value < 1:
                raise ValueError(f"{name}: expected >= 1, got {value}")
        for name, value in (("data.caption_dropout", data.caption_dropout),
                            ("data.color_word_dropout", data.color_word_dropout)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a probability, got {value}")
        if self.optimizer.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name: expected one of {OPTIMIZERS}, got {self.optimizer.name!r}")
        dist = self.distributed
        dist.fsdp_strategy = str(dist.fsdp_strategy).upper()
        if dist.sharding not in SHARDING:
            raise ValueError(f"distributed.sharding: expected one of {SHARDING}, got {dist.sharding!r}")
        if dist.fsdp_strategy not in FSDP_STRATEGIES:
            raise ValueError(f"distributed.fsdp_strategy: expected one of {FSDP_STRATEGIES}, got {dist.fsdp_strategy!r}")
        if dist.sharding == "fsdp":
            if self.optimizer.name == "adamw8bit":
                raise ValueError("optimizer.name: adamw8bit is for one GPU; with distributed.sharding: fsdp use adamw "
                                 "(bitsandbytes' 8-bit states do not shard with FSDP's DTensor parameters)")
            if self.ema.enabled:
                raise ValueError("ema.enabled: not supported with distributed.sharding: fsdp yet (the EMA copy "
                                 "would be sharded and checkpointed per process); use sharding: none for EMA")
            if not dist.fsdp_wrap:
                raise ValueError("distributed.fsdp_wrap: expected a non-empty list of module class names")
        if data.cache_encodings and "luminance_encoder" in self.trainable_parts:
            raise ValueError("data.cache_encodings: the luminance encoder trains in this run (trainable: "
                             f"{list(self.trainable_parts)}), so its outputs change every step; "
                             "cache only with it frozen")
        if data.encoding_cache_file and not data.cache_encodings:
            raise ValueError("data.encoding_cache_file: needs data.cache_encodings: true (it is where that "
                             "cache is kept between runs)")
        if data.cache_encodings and dist.sharding == "fsdp":
            raise ValueError("data.cache_encodings: not with distributed.sharding: fsdp (the luminance "
                             "encoder's weights are sharded inside the wrapped model)")
        if self.luminance_chunk_frames is not None and self.luminance_chunk_frames < 1:
            raise ValueError(f"luminance_chunk_frames: expected >= 1 or null, got {self.luminance_chunk_frames}")
        segmentation = self.segmentation
        if not segmentation.weight >= 0:
            raise ValueError(f"segmentation.weight: expected >= 0, got {segmentation.weight}")
        if not segmentation.boundary_weight >= 0:
            raise ValueError(f"segmentation.boundary_weight: expected >= 0, got {segmentation.boundary_weight}")
        if segmentation.weight > 0 and segmentation.num_classes < 2:
            raise ValueError(f"segmentation.num_classes: expected >= 2 with segmentation.weight > 0, "
                             f"got {segmentation.num_classes}")
        if segmentation.targets not in SEGMENTATION_TARGETS:
            raise ValueError(f"segmentation.targets: expected one of {SEGMENTATION_TARGETS}, got {segmentation.targets!r}")
        if segmentation.weight > 0 and "unet" not in self.trainable_parts:
            raise ValueError("segmentation.weight: the heads teach the UNet's queries; trainable must include unet")
        grounding = self.grounding
        if not grounding.weight >= 0:
            raise ValueError(f"grounding.weight: expected >= 0, got {grounding.weight}")
        if grounding.weight > 0 and len(grounding.class_words) < 2:
            raise ValueError(f"grounding.class_words: expected at least 2 words (one per label class) with "
                             f"grounding.weight > 0, got {grounding.class_words}")
        if grounding.weight > 0 and "unet" not in self.trainable_parts:
            raise ValueError("grounding.weight: the loss teaches the UNet's cross-attentions; trainable must "
                             "include unet")
        if self.latents not in LATENT_CHOICES:
            raise ValueError(f"latents: expected one of {LATENT_CHOICES}, got {self.latents!r}")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma: expected a positive number or null, got {self.snr_gamma}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: expected >= 1, got {self.max_steps}")
        for name, value in (("epochs", self.epochs), ("checkpointing.keep_last", self.checkpointing.keep_last)):
            if value is not None and value < 1:
                raise ValueError(f"{name}: expected >= 1 or null, got {value}")
        for name, value in (("data.num_workers", data.num_workers), ("data.max_skips", data.max_skips),
                            ("optimizer.lr_warmup_steps", self.optimizer.lr_warmup_steps),
                            ("optimizer.lr", self.optimizer.lr), ("optimizer.weight_decay", self.optimizer.weight_decay),
                            ("validation.every_steps", self.validation.every_steps)):
            if value < 0:
                raise ValueError(f"{name}: expected >= 0, got {value}")
        if not 0 <= self.ema.decay < 1:
            raise ValueError(f"ema.decay: expected a value in [0, 1), got {self.ema.decay}")
        if not all(0 <= beta < 1 for beta in self.optimizer.betas):
            raise ValueError(f"optimizer.betas: expected two values in [0, 1), got {list(self.optimizer.betas)}")
        if self.optimizer.max_grad_norm is not None and not self.optimizer.max_grad_norm > 0:
            raise ValueError(f"optimizer.max_grad_norm: expected > 0 or null, got {self.optimizer.max_grad_norm}")
        if self.validation.num_inference_steps < 1:
            raise ValueError(f"validation.num_inference_steps: expected >= 1, got {self.validation.num_inference_steps}")
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"seed: expected an integer in [0, 2**32), got {self.seed}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, prefix: str = ""):
    """A dataclass from a dict, nested sections included; unknown keys are errors (typos)."""
    if not isinstance(values, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"config: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                         f"known under {prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


def _describe(kind) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a text"}.get(kind, str(kind))


def _coerce_scalar(value, kind, name: str):
    """``value`` as ``kind`` (bool, int, float or str), or a ValueError naming the key. YAML 1.1
    reads ``1e-5`` (no dot) as a string, so numbers may come as text."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if kind is float:
                return float(number)
            if float(number).is_integer():
                return int(number)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ValueError(f"{name}: expected {_describe(kind)}, got {value!r}")


def _coerce(value, hint, name: str):
    """``value`` checked against the field's type hint (bool, int, float, str, a list of them, a
    tuple, each possibly Optional); a ValueError naming the key when it does not fit."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        if origin is tuple and len(value) != len(args):
            raise ValueError(f"{name}: expected {len(args)} values, got {value!r}")
        kinds = args if origin is tuple else args * len(value)
        return origin(_coerce_scalar(item, kind, name) for item, kind in zip(value, kinds))
    if value is None:
        raise ValueError(f"{name}: expected {_describe(hint)}, got null")
    return _coerce_scalar(value, hint, name)


def _set_dotted(values: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        values = values.setdefault(key, {})
        if not isinstance(values, dict):
            raise ValueError(f"--set {dotted}: {'.'.join(parents[:depth + 1])} is a value, not a section")
    values[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=1e-4"`` -> ``("optimizer.lr", 1e-4)``; values are read as YAML."""
    import yaml

    if "=" not in text:
        raise ValueError(f"--set: expected KEY=VALUE (e.g. optimizer.lr=1e-4), got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CONFIG: no such file {str(path)!r}")
    if path.suffix.lower() == ".toml":
        return tomllib.loads(path.read_text())
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        return yaml.safe_load(path.read_text()) or {}
    raise ValueError(f"CONFIG: expected a .yaml, .yml, .toml or .json file, got {str(path)!r}")


def load_config(path: str | Path | None = None, overrides: Optional[list[str]] = None,
                values: Optional[dict] = None) -> TrainConfig:
    """Reads a config file (or takes ``values``), applies ``KEY=VALUE`` overrides, checks it.
    Relative ``model.path``, ``data.source``, ``data.encoding_cache_file``, ``output_dir`` and
    ``validation.video`` in a file are taken relative to the file's folder."""
    values = json.loads(json.dumps(values or {}))
    if path is not None:
        values = read_config_file(path)
        base = Path(path).parent
        for dotted in PATH_KEYS:
            *parents, leaf = dotted.split(".")
            section = values
            for key in parents:
                section = section.get(key) or {}
            if isinstance(section.get(leaf), str) and section[leaf] and not Path(section[leaf]).is_absolute():
                section[leaf] = str(base / section[leaf])
    for text in overrides or []:
        _set_dotted(values, *parse_override(text))
    return _build(TrainConfig, values)


def dump_config(config: TrainConfig, path: str | Path) -> None:
    """Writes the config as YAML that :func:`load_config` reads back to the same run: its paths
    absolute (relative ones were relative to the working folder, not to the file's)."""
    import yaml

    data = config.to_dict()
    data["optimizer"]["betas"] = list(data["optimizer"]["betas"])
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        section = data
        for key in parents:
            section = section[key]
        if section[leaf]:
            section[leaf] = os.path.abspath(section[leaf])
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
