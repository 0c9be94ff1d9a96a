"""The toy config file (``configs/toy/toy.yaml``): data, model sizes, VAE and luminance-encoder
training, evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from .model import LuminanceTraining, ToyModelSizes, VAETraining


@dataclass
class ToyData:
    num_train: int = 2000
    num_heldout: int = 100
    size: int = 64
    num_frames: int = 8


@dataclass
class ToyEvaluation:
    clips: int = 50
    num_inference_steps: int = 20
    guidance_scale: float = 3.0
    long_clips: int = 8
    long_clip_frames: int = 64
    seed: int = 0


@dataclass
class ToySettings:
    data: ToyData = field(default_factory=ToyData)
    model: ToyModelSizes = field(default_factory=ToyModelSizes)
    vae: VAETraining = field(default_factory=VAETraining)
    luminance: LuminanceTraining = field(default_factory=LuminanceTraining)
    evaluation: ToyEvaluation = field(default_factory=ToyEvaluation)


def _section(cls, values: dict, name: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"toy config: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}")
    return cls(**values)


def load_settings(path: str | Path | None = None, overrides: dict | None = None) -> ToySettings:
    """Reads the YAML file (missing sections take the defaults); ``overrides`` is
    ``{"section.key": value}``."""
    import yaml

    values = yaml.safe_load(Path(path).read_text()) if path else {}
    values = values or {}
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        values.setdefault(section, {})[key] = value
    kinds = {"data": ToyData, "model": ToyModelSizes, "vae": VAETraining, "luminance": LuminanceTraining,
             "evaluation": ToyEvaluation}
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ValueError(f"toy config: unknown section(s) {', '.join(unknown)}; known: {', '.join(kinds)}")
    return ToySettings(**{name: _section(cls, values.get(name) or {}, name) for name, cls in kinds.items()})
