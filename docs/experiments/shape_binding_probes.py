"""Where the toy model's colour-to-object binding fails: linear probes and learning probes.

Run on the toy domain (main since run 6 in README.md here; earlier runs used it as a patch), from the
repository root, with a model folder that `make toy-model` wrote on that domain:

    python docs/experiments/shape_binding_probes.py text MODEL
    python docs/experiments/shape_binding_probes.py features MODEL [T]
    python docs/experiments/shape_binding_probes.py learn-unet MODEL STEPS [T]
    python docs/experiments/shape_binding_probes.py learn-cnn STEPS [--save CNN]
    python docs/experiments/shape_binding_probes.py oracle MODEL STEPS {with,without,queries,prompt} [MIN_T]
                                                      [--scratch] [--clips N] [--frames F] [--pairs]
                                                      [--aux-chroma W] [--map-init {zeros,default}]
                                                      [--map-from CNN] [--aux-shapes W] [--cmpf]
    python docs/experiments/shape_binding_probes.py routing MODEL STEPS

* ``text``: does the text encoder's output at a shape word carry the colour named before it?
  A linear classifier from that token to the colour, fitted on multi-object training captions,
  scored on held-out captions (unseen colour/shape pairs).
* ``features``: does the UNet know which shape a pixel belongs to where it asks the caption?
  A linear classifier from the input of every cross-attention layer (clips noised to step
  ``T``) to the shape of the object under each latent pixel, fitted on 200 training clips,
  scored on 60 held-out clips.
* ``learn-unet``: how fast the UNet learns that shape when told directly: a linear head on the
  last 16x16 cross-attention input, trained with the UNet on per-pixel shape labels.
* ``learn-cnn``: the same task for a plain CNN from the 64x64 grey frames (receptive field
  about 60 pixels), as a yardstick of how hard the shapes are to tell apart; ``--save``
  writes it for ``oracle --map-from``.
* ``oracle``: would the model bind colours if it knew the shapes? Fine-tunes the UNet for
  ``STEPS`` (the diffusion loss, 4 training clips a step, lr 3e-4) ``with`` the true shape map
  of every latent pixel added to the luminance residual (a zero-initialised 1x1 convolution of
  the one-hot map; ``--map-init default``: PyTorch's default initialisation instead) or
  ``without`` it (the control: the same fine-tuning), then reports the colour accuracy on 32
  unseen clips of the training distribution (seeds 5000-5031), the map given at inference too;
  ``queries``: the map instead added to the input of every cross-attention (its queries; a
  linear embedding per layer, default-initialised), where the pixel asks the caption, so that no
  layer below has to carry it; ``prompt``: the map instead added to the luminance encoder's
  features ``y_lum`` that CMPF reads as its visual prompt (a 1x1 convolution initialised as
  ``--map-init`` says; CMPF then trains, Sec. 3.3), so that the nouns' embeddings can learn
  where their objects are and what they look like. ``--cmpf``: CMPF in the denoiser and trained
  with the rest (implied by ``prompt``), its colour-word mask from the tokenizer as in stage 2.
  ``--map-from CNN``: the shape probabilities a ``learn-cnn`` CNN predicts from the grey frames
  instead of the true map. ``MIN_T``: fine-tune on timesteps from ``MIN_T`` up only (where the
  colours must come from the caption) instead of all. ``--scratch``: ``MODEL`` is an ``init``
  folder (UNet and text encoder untrained) and the run is stage 1 itself: the text encoder
  trains too, lr 1e-3 with 100 warm-up steps and cosine decay over ``STEPS`` (the schedule of
  `lc4 train`). ``--clips N --frames F``: each step takes a random window of ``F`` frames from
  each of ``N`` training clips instead of all 8 frames of 4 clips (``--clips 32 --frames 1``:
  the same frames a step, each from another clip, TDA seeing one frame). ``--pairs``: half the
  clips of a step are recoloured twins of the other half (the same grey frames, every object
  another colour: a permutation of the caption's colours where one keeps to training pairs),
  each twin under its original's noise, timestep and caption dropout, so that the two differ
  only where a colour word must reach its object. The accuracy line also gives the mean
  ``swap_hue_shift`` of the 32 clips' multi-object ones. ``--aux-chroma W``: deep supervision of
  the routing: a linear head on the output of every cross-attention reads it as the chroma under
  each pixel (the true chroma pooled to the layer's size, scaled to unit spread), its MSE added
  to the diffusion loss with weight ``W`` on the clips that keep their caption. The heads are
  dropped after training: the model is the same; only the training signal gains a direct,
  noise-free path from a pixel's colour to the word its query picks. ``--aux-shapes W``: the
  same for the queries' side: a linear head on the input of every cross-attention reads the
  shape under each pixel (`shape_labels` at the layer's size; the generator's masks as a
  stand-in for the shape knowledge a pretrained SD1.5 brings), its cross-entropy added with
  weight ``W``; every 100 steps the heads' accuracy over the step's object pixels (all layers
  pooled) is printed.
* ``routing``: the binding with everything else taken away: the true shape map of each latent
  pixel queries the caption's tokens through one cross-attention (2 heads) whose output is
  read as the pixel's chroma, trained with the text encoder (from ``MODEL``) on the chroma of
  32 training frames a step (each from another clip), plain MSE, no noise, no UNet; prints
  the colour accuracy on 64 unseen clips every 500 steps.

Learning probes print held-out accuracy over object pixels; ``features`` also prints the share
of the most frequent shape, the accuracy of always guessing it.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import itertools
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.optimization import get_scheduler

from lc4.color import rgb_to_luma, ycbcr_to_rgb
from lc4.luminance import luminance_input
from lc4.pipeline import LC4Pipeline
from lc4.toy.evaluate import color_accuracy, color_accuracy_by_object_count, swap_hue_shifts, swapped_spec
from lc4.toy.generator import COLOR_NAMES, ToyClip, generate_clip, is_heldout_pair, render
from lc4.toy.palette import SHAPES, chroma_of
from lc4.toy.run import colorize
from lc4.toy.settings import load_settings
from lc4.train.models import LC4Denoiser, diffusion_loss, load_components, tokenize_captions
from lc4.train.segmentation import cross_attentions

LATENT_SIDE = 16
LAST_16_CROSS_ATTENTION = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"
TRAIN_SEEDS = range(2000)  # the clips `make toy-model` trains on


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 1500):
    """A standardised linear classifier fitted on ``(x, y)``; returns ``accuracy(x, y)``."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), 1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(linear((x - mean) / std), y).backward()
        optimizer.step()
    return lambda xs, ys: round((linear((xs - mean) / std).argmax(1) == ys).float().mean().item(), 3)


def token_ids(model, captions: list[str]) -> torch.Tensor:
    """Token ids of ``captions`` for ``model`` (a pipeline or training components: its ``tokenizer``)."""
    return tokenize_captions(model.tokenizer, captions, "cpu")[0]


def probe_text(pipe: LC4Pipeline) -> None:
    def tokens_and_colours(split: str, seeds: range):
        xs, ys = [], []
        for seed in seeds:
            clip = generate_clip(seed, split)
            if len(clip.spec.objects) < 2:
                continue
            ids = token_ids(pipe, [clip.caption])
            with torch.no_grad():
                embeddings = pipe.text_encoder(ids)[0][0]
            tokens = pipe.tokenizer.convert_ids_to_tokens(ids[0])
            for obj in clip.spec.objects:
                pieces = pipe.tokenizer.tokenize(obj.shape)  # the last piece has seen the whole word
                start = next(i for i in range(len(tokens)) if tokens[i:i + len(pieces)] == pieces)
                xs.append(embeddings[start + len(pieces) - 1])
                ys.append(COLOR_NAMES.index(obj.color))
        return torch.stack(xs), torch.tensor(ys)

    x_train, y_train = tokens_and_colours("train", range(1500))
    x_test, y_test = tokens_and_colours("heldout", range(300))
    accuracy = fit_linear(x_train, y_train, len(COLOR_NAMES))
    print(f"shape-word token -> its colour: train {accuracy(x_train, y_train)}, held-out {accuracy(x_test, y_test)} "
          f"({len(y_train)} / {len(y_test)} objects; chance {1 / len(COLOR_NAMES):.3f})")


def shape_labels(clip, side: int) -> torch.Tensor:
    """``(F, side, side)``: 1 + the shape index where an object covers > 75% of a cell, else 0."""
    coverage = F.adaptive_avg_pool2d(torch.from_numpy(clip.masks).float(), side)
    labels = torch.zeros(coverage.shape[0], side, side, dtype=torch.long)
    for k, obj in enumerate(clip.spec.objects):
        labels[coverage[:, k] > 0.75] = SHAPES.index(obj.shape) + 1
    return labels


def unet_call(pipe: LC4Pipeline, clips: list, timestep: torch.Tensor, generator=None) -> None:
    """The UNet on ``clips`` noised to ``timestep`` (one per clip), as in training."""
    frames = torch.cat([torch.from_numpy(c.frames).permute(0, 3, 1, 2).float() / 127.5 - 1 for c in clips])
    num_frames = clips[0].frames.shape[0]
    timesteps = timestep.repeat_interleave(num_frames)
    with torch.no_grad():
        latents = pipe.vae.encode(frames).latent_dist.mean * pipe.vae.config.scaling_factor
        text = pipe.text_encoder(token_ids(pipe, [c.caption for c in clips]))[0]
        noisy = pipe.scheduler.add_noise(latents, torch.randn(latents.shape, generator=generator), timesteps)
    luminance = luminance_input(rgb_to_luma((frames + 1) / 2))
    LC4Denoiser(pipe.unet, pipe.luminance_encoder)(noisy, timesteps, text, luminance, num_frames)


def record_cross_attention_inputs(pipe: LC4Pipeline, names=None) -> dict:
    store = {}

    def hook(name):
        def record(module, args, kwargs):
            store[name] = args[0] if args else kwargs["hidden_states"]
        return record

    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2") and (names is None or name in names):
            module.register_forward_pre_hook(hook(name), with_kwargs=True)
    return store


def probe_features(pipe: LC4Pipeline, timestep: int) -> None:
    store = record_cross_attention_inputs(pipe)
    generator = torch.Generator().manual_seed(0)

    def features(split: str, count: int):
        xs, ys = collections.defaultdict(list), collections.defaultdict(list)
        for seed in range(count):
            clip = generate_clip(seed, split)
            unet_call(pipe, [clip], torch.tensor([timestep]), generator)
            for name, hidden in store.items():
                labels = shape_labels(clip, int(hidden.shape[1] ** 0.5)).flatten(1)
                on_object = labels > 0
                xs[name].append(hidden.detach()[on_object])
                ys[name].append(labels[on_object] - 1)
        return {k: torch.cat(v) for k, v in xs.items()}, {k: torch.cat(v) for k, v in ys.items()}

    (x_train, y_train), (x_test, y_test) = features("train", 200), features("heldout", 60)
    for name in x_train:
        accuracy = fit_linear(x_train[name], y_train[name], len(SHAPES))
        majority = torch.bincount(y_test[name]).max().item() / len(y_test[name])
        print(f"{name} ({x_train[name].shape[1]} channels, {len(y_train[name])} pixels): "
              f"train {accuracy(x_train[name], y_train[name])}, held-out {accuracy(x_test[name], y_test[name])}, "
              f"most frequent shape {majority:.3f}")


def object_pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Correct and total object pixels, the background class left out of the choice."""
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    on_object = labels > 0
    return int((logits[on_object][:, 1:].argmax(1) + 1 == labels[on_object]).sum()), int(on_object.sum())


def learn(predict, parameters, steps: int, lr: float, every: int) -> None:
    """Trains ``predict(clips) -> (logits, labels)`` on 4 training clips a step; prints held-out
    object-pixel accuracy every ``every`` steps."""
    optimizer = torch.optim.AdamW(parameters, lr)
    held_out = [[generate_clip(seed, "heldout") for seed in range(i, i + 4)] for i in range(0, 40, 4)]
    for step in range(1, steps + 1):
        clips = [generate_clip(seed) for seed in random.Random(step).sample(TRAIN_SEEDS, 4)]
        logits, labels = predict(clips)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            with torch.no_grad():
                correct, total = map(sum, zip(*(object_pixel_accuracy(*predict(c)) for c in held_out)))
            print(f"step {step}: loss {loss.item():.3f}, held-out object pixels {correct / total:.3f}", flush=True)


def probe_learn_unet(pipe: LC4Pipeline, steps: int, timestep: int) -> None:
    store = record_cross_attention_inputs(pipe, {LAST_16_CROSS_ATTENTION})
    head = nn.Linear(pipe.unet.config.block_out_channels[0], len(SHAPES) + 1)

    def predict(clips):
        unet_call(pipe, clips, torch.full((len(clips),), timestep))
        labels = torch.cat([shape_labels(c, LATENT_SIDE) for c in clips])
        return head(store[LAST_16_CROSS_ATTENTION]), labels.flatten(1)

    learn(predict, list(pipe.unet.parameters()) + list(head.parameters()), steps, 3e-4, 100)


def shape_cnn(width: int = 64) -> nn.Module:
    """A plain CNN from 64x64 grey frames to 16x16 shape logits (background first)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 2, 1), nn.SiLU(), nn.Conv2d(32, width, 3, 2, 1), nn.SiLU(),
        *[layer for dilation in (1, 2, 4, 8, 1)
          for layer in (nn.Conv2d(width, width, 3, 1, dilation, dilation=dilation), nn.GroupNorm(8, width), nn.SiLU())],
        nn.Conv2d(width, len(SHAPES) + 1, 1))


def grey_frames(clips: list) -> torch.Tensor:
    """``(N*F, 1, 64, 64)`` luma of ``clips`` in [-1, 1], the CNN's input."""
    frames = torch.cat([torch.from_numpy(c.frames).permute(0, 3, 1, 2).float() / 255 for c in clips])
    return rgb_to_luma(frames) * 2 - 1


def probe_learn_cnn(steps: int, save: str | None = None) -> None:
    net = shape_cnn()

    def predict(clips):
        labels = torch.cat([shape_labels(c, LATENT_SIDE) for c in clips])
        return net(grey_frames(clips)).permute(0, 2, 3, 1), labels

    learn(predict, net.parameters(), steps, 1e-3, 500)
    if save:
        torch.save(net.state_dict(), save)


def shape_maps(clips: list) -> torch.Tensor:
    """``(N*F, 1 + len(SHAPES), 16, 16)``: each latent pixel's coverage by background and shapes."""
    maps = []
    for clip in clips:
        coverage = F.adaptive_avg_pool2d(torch.from_numpy(clip.masks).float(), LATENT_SIDE)
        one_hot = torch.zeros(coverage.shape[0], len(SHAPES) + 1, LATENT_SIDE, LATENT_SIDE)
        one_hot[:, 0] = 1
        for k, obj in enumerate(clip.spec.objects):
            one_hot[:, SHAPES.index(obj.shape) + 1] += coverage[:, k]
            one_hot[:, 0] -= coverage[:, k]
        maps.append(one_hot)
    return torch.cat(maps)


class OracleShapes(nn.Module):
    """The luminance encoder with ``shape_map`` (set before each call) embedded ``into`` its
    latent residual (the UNet's input; calls for the decoder skips pass through) or its
    features ``y_lum`` (CMPF's visual prompt), or into neither (``into=None``)."""

    def __init__(self, encoder: nn.Module, into: str | None, zero_init: bool = True):
        super().__init__()
        self.encoder, self.into, self.shape_map = encoder, into, None
        channels = encoder.config.latent_channels * (2 if into == "features" else 1)
        self.embed = nn.Conv2d(len(SHAPES) + 1, channels, 1)
        if zero_init:
            nn.init.zeros_(self.embed.weight)
            nn.init.zeros_(self.embed.bias)

    def __getattr__(self, name):  # device, dtype, config: the wrapped encoder's
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.encoder, name)

    def forward(self, luminance: torch.Tensor, return_skips: bool = True):
        features = self.encoder(luminance, return_skips=return_skips)
        if self.into is None or (return_skips and self.into == "latent_residual"):
            return features
        shape_map = self.shape_map.repeat(luminance.shape[0] // self.shape_map.shape[0], 1, 1, 1)
        embedded = getattr(features, self.into) + self.embed(shape_map).to(features.features)
        return dataclasses.replace(features, **{self.into: embedded})


def training_batch(clips: list, caption_dropout: float = 0.1) -> dict:
    """A `diffusion_loss` batch of generated clips, captions dropped as in training."""
    rgb = torch.stack([torch.from_numpy(c.frames).permute(0, 3, 1, 2).float() / 255 for c in clips])
    return {"pixel_values": rgb * 2 - 1, "luminance": luminance_input(rgb_to_luma(rgb)),
            "captions": [c.caption if random.random() > caption_dropout else "" for c in clips]}


def unseen_clip_accuracy(pipe: LC4Pipeline, before_each=lambda clip: None) -> str:
    """Colour accuracy on 32 unseen clips of the training distribution (seeds 5000-5031),
    overall and by objects a clip, and the mean ``swap_hue_shift`` of their clips with two
    objects or more (the first two objects' colours swapped in the prompt, as the report
    swaps them); ``before_each(clip)`` runs before each clip is colorized."""
    settings = load_settings("configs/toy/toy.yaml").evaluation
    clips = [generate_clip(5000 + i) for i in range(32)]
    outputs, shifts = [], []
    with torch.no_grad():
        for clip in clips:
            before_each(clip)
            outputs.append(colorize(pipe, clip, clip.caption, settings))
            if len(clip.spec.objects) >= 2:
                swapped = colorize(pipe, clip, swapped_spec(clip.spec).caption, settings)
                shifts += swap_hue_shifts(outputs[-1], swapped, clip)
    by_count = {k: round(v, 3) for k, v in color_accuracy_by_object_count(outputs, clips).items()}
    return (f"colour accuracy {color_accuracy(outputs, clips):.3f}, by objects a clip {by_count}, "
            f"swap_hue_shift {np.mean(shifts):.3f} (median {np.median(shifts):.3f}, {len(shifts)} objects)")


@functools.lru_cache(maxsize=None)
def training_clip(seed: int):
    return generate_clip(seed)


def window(clip, start: int, frames: int):
    """``clip``'s frames ``start .. start + frames - 1`` (and their masks)."""
    return dataclasses.replace(clip, frames=clip.frames[start:start + frames], masks=clip.masks[start:start + frames])


def clip_windows(clips: list, frames: int, rng: random.Random) -> list:
    """``clips`` cut to a random window of ``frames`` frames each (as `lc4 train` cuts its clips)."""
    if frames == clips[0].frames.shape[0]:
        return clips
    return [window(clip, rng.randrange(clip.frames.shape[0] - frames + 1), frames) for clip in clips]


def recoloured(clip: ToyClip, rng: random.Random):
    """``clip`` with its objects recoloured, every one to another colour, the grey frames the same
    (on the patch's domain an object's luma is its own, not its colour's): a permutation of
    their colours (the same words in other places) where one makes no held-out (colour, shape)
    pair, else other colours (not the background's, no held-out pair). ``None`` if none found."""
    spec = clip.spec
    colors, shapes = [o.color for o in spec.objects], [o.shape for o in spec.objects]
    allowed = lambda option: (all(a != b for a, b in zip(option, colors))
                              and not any(is_heldout_pair(c, s) for c, s in zip(option, shapes)))
    options = [list(p) for p in itertools.permutations(colors) if allowed(p)]
    if not options:  # one object, or every permutation makes a held-out pair: other colours
        others = [c for c in COLOR_NAMES if c != spec.background]
        options = [o for o in (rng.sample(others, len(colors)) for _ in range(100)) if allowed(o)]
    if not options:
        return None
    new_spec = spec.with_colors(rng.choice(options))
    frames, masks = render(new_spec, clip.frames.shape[1], clip.frames.shape[0])
    luma = lambda f: rgb_to_luma(torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255)
    assert (luma(frames) - luma(clip.frames)).abs().max() < 2 / 255, "recolouring changed the grey frames"
    return ToyClip(new_spec, frames, masks, clip.seed, clip.split)


@functools.lru_cache(maxsize=None)
def training_pair(seed: int):
    return training_clip(seed), recoloured(training_clip(seed), random.Random(seed))


def recoloured_pairs(count: int, frames: int, rng: random.Random) -> tuple[list, list]:
    """``count`` training clips and their recoloured twins, each pair cut to the same window.
    A clip's twin is fixed by its seed (so every pair is seen the same way each time)."""
    originals, twins = [], []
    for seed in rng.sample(TRAIN_SEEDS, len(TRAIN_SEEDS)):
        clip, twin = training_pair(seed)
        if twin is None:
            continue
        start = rng.randrange(clip.frames.shape[0] - frames + 1)
        originals.append(window(clip, start, frames))
        twins.append(window(twin, start, frames))
        if len(originals) == count:
            return originals, twins
    raise RuntimeError("too few training clips have a recoloured twin")


CHROMA_SCALE = 4.0  # Cb and Cr of the toy frames have an rms of about 0.19: brought near unit spread


class QueryShapes(nn.Module):
    """``shape_map`` (set before each call) pooled to each cross-attention's size and added,
    through a linear embedding of its own, to that layer's input (the queries' source), in
    every UNet ``attach`` was called on."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.embed = nn.ModuleDict({key: nn.Linear(len(SHAPES) + 1, m.to_q.in_features)
                                    for key, m in cross_attentions(unet).items()})
        self.shape_map = None

    def attach(self, unet: nn.Module) -> None:
        for key, module in cross_attentions(unet).items():
            module.register_forward_pre_hook(functools.partial(self.add_shapes, key), with_kwargs=True)

    def add_shapes(self, key, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        side = int(round(hidden.shape[1] ** 0.5))
        shapes = F.adaptive_avg_pool2d(self.shape_map, side).flatten(2).transpose(1, 2)
        hidden = hidden + self.embed[key](shapes.repeat(hidden.shape[0] // shapes.shape[0], 1, 1).to(hidden))
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}


class CrossAttentionChroma(nn.Module):
    """A linear chroma head on the output of every cross-attention of ``unet`` (forward hooks):
    after a UNet call, ``loss(clips, keep)`` is the mean over layers of the MSE between each
    head's reading and the clips' true chroma pooled to the layer's size, over the clips whose
    flag in ``keep`` is set (the ones that kept their caption)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        layers = cross_attentions(unet)
        self.heads = nn.ModuleDict({key: nn.Linear(m.to_out[0].out_features, 2) for key, m in layers.items()})
        self.outputs = {}
        for key, module in layers.items():
            module.register_forward_hook(functools.partial(self.record, key))

    def record(self, key, module, args, output):
        if self.training:
            self.outputs[key] = output

    def loss(self, clips: list, keep: torch.Tensor) -> torch.Tensor:
        frames = np.concatenate([c.frames for c in clips])
        chroma = torch.from_numpy(chroma_of(frames)).permute(0, 3, 1, 2).float() * CHROMA_SCALE
        keep = keep.repeat_interleave(clips[0].frames.shape[0])
        losses = []
        for key, output in self.outputs.items():
            side = int(round(output.shape[1] ** 0.5))
            target = F.adaptive_avg_pool2d(chroma, side).flatten(2).transpose(1, 2)
            losses.append(F.mse_loss(self.heads[key](output)[keep], target[keep]))
        self.outputs = {}
        return torch.stack(losses).mean()


class CrossAttentionShapes(nn.Module):
    """A linear shape head on the input of every cross-attention of ``unet`` (forward pre-hooks):
    after a UNet call, ``loss(clips)`` is the mean over layers of the cross-entropy between each
    head's reading and the shape under each pixel (`shape_labels` at the layer's size)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        layers = cross_attentions(unet)
        self.heads = nn.ModuleDict({key: nn.Linear(m.to_q.in_features, len(SHAPES) + 1) for key, m in layers.items()})
        self.inputs = {}
        for key, module in layers.items():
            module.register_forward_pre_hook(functools.partial(self.record, key), with_kwargs=True)

    def record(self, key, module, args, kwargs):
        if self.training:
            self.inputs[key] = args[0] if args else kwargs["hidden_states"]

    def loss(self, clips: list) -> torch.Tensor:
        """Also sets ``accuracy``: the heads' object-pixel accuracy on these clips, all layers pooled."""
        losses, correct, total = [], 0, 0
        for key, hidden in self.inputs.items():
            side = int(round(hidden.shape[1] ** 0.5))
            labels = torch.cat([shape_labels(c, side) for c in clips]).flatten(1)
            logits = self.heads[key](hidden)
            losses.append(F.cross_entropy(logits.flatten(0, 1), labels.flatten()))
            right, count = object_pixel_accuracy(logits.detach(), labels)
            correct, total = correct + right, total + count
        self.inputs, self.accuracy = {}, correct / max(total, 1)
        return torch.stack(losses).mean()


def probe_oracle(model: str, steps: int, shape_map: str, min_timestep: int = 0, scratch: bool = False,
                 clips_per_step: int = 4, frames: int = 8, pairs: bool = False, aux_chroma: float = 0.0,
                 zero_init: bool = True, map_from: str | None = None, aux_shapes: float = 0.0,
                 cmpf: bool = False) -> None:
    components = load_components(model)
    cmpf = cmpf or shape_map == "prompt"
    if pairs and cmpf:
        raise ValueError("--pairs is not combined with CMPF")
    if map_from:  # the CNN's predicted shape probabilities stand in for the true map
        cnn = shape_cnn()
        cnn.load_state_dict(torch.load(map_from))
        cnn.requires_grad_(False).eval()
        maps_of = lambda clips: cnn(grey_frames(clips)).softmax(1)
    else:
        maps_of = shape_maps
    into = {"with": "latent_residual", "prompt": "features"}.get(shape_map)
    luminance = OracleShapes(components.luminance_encoder, into, zero_init)
    queries = QueryShapes(components.unet)
    if shape_map == "queries":
        queries.attach(components.unet)

    def set_shape_map(clips: list) -> None:
        luminance.shape_map = queries.shape_map = maps_of(clips)

    text_encoder = components.text_encoder if scratch else None
    denoiser = LC4Denoiser(components.unet, luminance, components.cmpf if cmpf else None, text_encoder)
    parameters = [*components.unet.parameters(), *luminance.embed.parameters(), *queries.parameters()]
    if cmpf:
        parameters += list(components.cmpf.parameters())
        components.cmpf.train()
    if aux_chroma:
        if pairs:
            raise ValueError("--aux-chroma is not combined with --pairs")
        chroma_heads = CrossAttentionChroma(components.unet)
        parameters += list(chroma_heads.parameters())
    if aux_shapes:
        if pairs:
            raise ValueError("--aux-shapes is not combined with --pairs")
        shape_heads = CrossAttentionShapes(components.unet)
        parameters += list(shape_heads.parameters())
    if scratch:  # stage 1 of the patch: the text encoder trains too, lr 1e-3 with warm-up and cosine decay
        parameters += list(text_encoder.parameters())
        text_encoder.train()
    optimizer = torch.optim.AdamW(parameters, 1e-3 if scratch else 3e-4, weight_decay=1e-4)
    schedule = get_scheduler("cosine" if scratch else "constant", optimizer,
                             num_warmup_steps=100 if scratch else 0, num_training_steps=steps)
    components.unet.train()
    for step in range(1, steps + 1):
        rng = random.Random(step)
        if pairs:
            loss = paired_loss(denoiser, components, set_shape_map, *recoloured_pairs(clips_per_step // 2, frames, rng),
                               min_timestep, scratch, step)
        else:
            clips = clip_windows([training_clip(seed) for seed in rng.sample(TRAIN_SEEDS, clips_per_step)],
                                 frames, rng)
            batch = training_batch(clips)
            set_shape_map(clips)
            timesteps = torch.randint(min_timestep, components.noise_scheduler.config.num_train_timesteps,
                                      (len(clips),))
            loss = diffusion_loss(denoiser, components, batch, timesteps=timesteps, with_cmpf=cmpf,
                                  train_text_encoder=scratch)
            if aux_chroma:
                keep = torch.tensor([caption != "" for caption in batch["captions"]])
                aux = chroma_heads.loss(clips, keep)
                if step % 100 == 0:
                    print(f"step {step}: diffusion loss {loss.item():.4f}, chroma heads {aux.item():.4f}", flush=True)
                loss = loss + aux_chroma * aux
            if aux_shapes:
                aux = shape_heads.loss(clips)
                if step % 100 == 0:
                    print(f"step {step}: diffusion loss {loss.item():.4f}, shape heads {aux.item():.4f} "
                          f"({shape_heads.accuracy:.3f} of object pixels)", flush=True)
                loss = loss + aux_shapes * aux
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    if aux_chroma:
        chroma_heads.eval()
    if aux_shapes:
        shape_heads.eval()
    pipe = LC4Pipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.load_state_dict(components.unet.state_dict())
    pipe.text_encoder.load_state_dict(components.text_encoder.state_dict())
    pipe.cmpf.load_state_dict(components.cmpf.state_dict())
    pipe.cmpf.eval()
    pipe.luminance_encoder = luminance.eval()
    if shape_map == "queries":
        queries.attach(pipe.unet)
    accuracy = unseen_clip_accuracy(pipe, lambda clip: set_shape_map([clip]))
    start = "from scratch" if scratch else "fine-tuned"
    paired = ", half of them recoloured twins of the other half" if pairs else ""
    paired += f", chroma heads on the cross-attentions (weight {aux_chroma:g})" if aux_chroma else ""
    paired += f", shape heads on the cross-attentions' inputs (weight {aux_shapes:g})" if aux_shapes else ""
    paired += ", CMPF trained with the UNet" if cmpf else ""
    source = f" predicted by {map_from}" if map_from else ""
    where = {"with": "with" + ("" if zero_init else " (embedding default-initialised)"), "without": "without",
             "queries": "at the cross-attentions' queries", "prompt": "in CMPF's visual prompt"}[shape_map]
    print(f"shape map{source} {where}, {start}, {steps} steps of {clips_per_step} x {frames} "
          f"frames{paired} from t >= {min_timestep}: {accuracy}")


def paired_loss(denoiser, components, set_shape_map, originals: list, twins: list, min_timestep: int,
                scratch: bool, step: int) -> torch.Tensor:
    """The diffusion loss of each clip and its recoloured twin under the same noise, timestep and
    caption dropout: the two differ only in the colours and the caption's words, so what the
    pair's gradients do not share is the part that ties each word to its object."""
    timesteps = torch.randint(min_timestep, components.noise_scheduler.config.num_train_timesteps, (len(originals),))
    keep = [random.random() > 0.1 for _ in originals]
    losses = []
    for clips in (originals, twins):
        batch = training_batch(clips, caption_dropout=0.0)
        batch["captions"] = [c if k else "" for c, k in zip(batch["captions"], keep)]
        set_shape_map(clips)
        generator = torch.Generator().manual_seed(step)
        losses.append(diffusion_loss(denoiser, components, batch, generator=generator, timesteps=timesteps,
                                     train_text_encoder=scratch))
    return (losses[0] + losses[1]) / 2


class ShapeToCaptionColour(nn.Module):
    """The routing alone: each latent pixel's one-hot shape map -> a query into the caption's
    tokens (2 heads) -> its chroma; no luminance, no UNet, no noise."""

    def __init__(self, text_dim: int, heads: int = 2, width: int = 64):
        super().__init__()
        self.heads = heads
        self.query = nn.Sequential(nn.Conv2d(len(SHAPES) + 1, width, 1), nn.SiLU(), nn.Conv2d(width, text_dim, 1))
        self.key, self.value = nn.Linear(text_dim, text_dim), nn.Linear(text_dim, text_dim)
        self.chroma = nn.Sequential(nn.Conv2d(text_dim, width, 1), nn.SiLU(), nn.Conv2d(width, 2, 1))

    def forward(self, shape_map: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        n, _, h, w = shape_map.shape
        heads = lambda x: x.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        query = self.query(shape_map).flatten(2).transpose(1, 2)
        out = F.scaled_dot_product_attention(heads(query), heads(self.key(text)), heads(self.value(text)))
        return self.chroma(out.transpose(1, 2).flatten(2).transpose(1, 2).reshape(n, -1, h, w))


def probe_routing(model: str, steps: int, frames_per_step: int = 32) -> None:
    components = load_components(model)
    text_encoder = components.text_encoder.train()
    router = ShapeToCaptionColour(text_encoder.config.hidden_size)
    optimizer = torch.optim.AdamW([*router.parameters(), *text_encoder.parameters()], 1e-3, weight_decay=1e-4)

    def predict(clips):  # (N*F, 2, 16, 16) chroma, and the true chroma at 16x16
        ids = token_ids(components, [c.caption for c in clips]).repeat_interleave(clips[0].frames.shape[0], 0)
        frames = np.concatenate([c.frames for c in clips])
        target = F.avg_pool2d(torch.from_numpy(chroma_of(frames)).permute(0, 3, 1, 2), 64 // LATENT_SIDE)
        return router(shape_maps(clips), text_encoder(ids)[0]), target

    def unseen_accuracy() -> str:
        """The predicted chroma drawn at each frame's true luma, scored as the model's outputs are."""
        clips, outputs = [generate_clip(5000 + i) for i in range(64)], []
        with torch.no_grad():
            for clip in clips:
                chroma = F.interpolate(predict([clip])[0], scale_factor=64 // LATENT_SIDE)
                luma = rgb_to_luma(torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255)
                rgb = ycbcr_to_rgb(torch.cat([luma, chroma], 1))
                outputs.append((rgb * 255).round().byte().permute(0, 2, 3, 1).numpy())
        by_count = {k: round(v, 3) for k, v in color_accuracy_by_object_count(outputs, clips).items()}
        return f"colour accuracy {color_accuracy(outputs, clips):.3f}, by objects a clip {by_count}"

    for step in range(1, steps + 1):
        rng = random.Random(step)
        clips = clip_windows([training_clip(seed) for seed in rng.sample(TRAIN_SEEDS, frames_per_step)], 1, rng)
        prediction, target = predict(clips)
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            scored = f", 64 unseen clips: {unseen_accuracy()}" if step % 500 == 0 else ""
            print(f"step {step}: loss {loss.item():.5f}{scored}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    sub.add_parser("text").add_argument("model")
    features = sub.add_parser("features")
    features.add_argument("model")
    features.add_argument("timestep", type=int, nargs="?", default=700)
    unet = sub.add_parser("learn-unet")
    unet.add_argument("model")
    unet.add_argument("steps", type=int)
    unet.add_argument("timestep", type=int, nargs="?", default=700)
    cnn = sub.add_parser("learn-cnn")
    cnn.add_argument("steps", type=int)
    cnn.add_argument("--save", help="where to write the trained CNN's state dict")
    oracle = sub.add_parser("oracle")
    oracle.add_argument("model")
    oracle.add_argument("steps", type=int)
    oracle.add_argument("map", choices=("with", "without", "queries", "prompt"))
    oracle.add_argument("min_timestep", type=int, nargs="?", default=0)
    oracle.add_argument("--scratch", action="store_true")
    oracle.add_argument("--clips", type=int, default=4, help="clips a step")
    oracle.add_argument("--frames", type=int, default=8, help="frames of each clip (a random window)")
    oracle.add_argument("--pairs", action="store_true",
                        help="half the clips a step are recoloured twins of the other half, same noise")
    oracle.add_argument("--aux-chroma", type=float, default=0.0,
                        help="weight of the cross-attention chroma heads' loss (0: none)")
    oracle.add_argument("--map-init", choices=("zeros", "default"), default="zeros",
                        help="initialisation of the map's embedding into the luminance residual")
    oracle.add_argument("--aux-shapes", type=float, default=0.0,
                        help="weight of the cross-attention inputs' shape heads' loss (0: none)")
    oracle.add_argument("--map-from", help="a CNN saved by learn-cnn --save: its predicted map, not the true one")
    oracle.add_argument("--cmpf", action="store_true", help="CMPF in the denoiser, trained (implied by map prompt)")
    routing = sub.add_parser("routing")
    routing.add_argument("model")
    routing.add_argument("steps", type=int)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if args.probe == "learn-cnn":
        return probe_learn_cnn(args.steps, args.save)
    if args.probe == "oracle":
        return probe_oracle(args.model, args.steps, args.map, args.min_timestep, args.scratch,
                            args.clips, args.frames, args.pairs, args.aux_chroma,
                            args.map_init == "zeros", args.map_from,
                            args.aux_shapes, args.cmpf)
    if args.probe == "routing":
        return probe_routing(args.model, args.steps)
    pipe = LC4Pipeline.from_pretrained(args.model)
    if args.probe == "text":
        probe_text(pipe)
    elif args.probe == "features":
        probe_features(pipe, args.timestep)
    else:
        probe_learn_unet(pipe, args.steps, args.timestep)


if __name__ == "__main__":
    main()
