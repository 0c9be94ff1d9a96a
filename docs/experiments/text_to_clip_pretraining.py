"""Text-to-clip pre-training of the toy UNet, standing in for Stable Diffusion's own.

Run on the toy domain (main since run 6 in README.md here; earlier runs used it as a patch), from the
repository root, with the ``init`` folder that `make toy-model` wrote on that domain:

    python docs/experiments/text_to_clip_pretraining.py pretrain build/toy/init build/pt/init 2500
    python docs/experiments/text_to_clip_pretraining.py generate build/pt/init build/pt/samples.png \
        "a red circle and a blue square on a white background" ...
    python -m lc4 train configs/toy/stage1.yaml --set model.path=build/pt/init \
        --set data.source=build/toy/data/train.jsonl --set output_dir=build/pt/stage1 --set max_steps=1500
    python docs/experiments/text_to_clip_pretraining.py evaluate build/pt/stage1/model
    python -m lc4.toy evaluate build/pt/stage1/model --data build/toy/data

* ``pretrain``: SD1.5 is a text-to-image model before L-C4 fine-tunes it; the toy's UNet starts
  from random weights. This trains the UNet (with its TDA layers) and the text encoder to
  generate the toy's colour clips from their captions with no luminance input (the luminance
  residual is zero), 4 clips a step drawn from 50000 training-split seeds, AdamW lr 1e-3,
  100 warm-up steps then cosine decay; writes a copy of the model folder with the new weights.
* ``generate``: a sheet of text-to-clip samples (every other frame, one row per caption) from
  a pre-trained folder, to see whether it draws shapes in the colours their words name.
* ``evaluate``: colour accuracy on 32 unseen clips of the training distribution (seeds
  5000-5031), overall and by objects a clip, as ``shape_binding_probes.py oracle`` reports it.
"""
from __future__ import annotations

import argparse
import copy
import random
import shutil

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from PIL import Image

from lc4.pipeline import LC4Pipeline
from lc4.toy.generator import generate_clip
from lc4.train.models import LC4Denoiser, diffusion_loss, load_components
from lc4.unet import tda_removed
from shape_binding_probes import training_batch, unseen_clip_accuracy  # the script beside this one

PRETRAINING_SEEDS = range(50000)


def without_luminance(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of the luminance encoder whose latent residual and decoder skips are zero."""
    encoder = copy.deepcopy(encoder).requires_grad_(False)
    for layer in [encoder.latent_proj, *encoder.skip_projs]:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return encoder


def pretrain(source: str, target: str, steps: int, lr: float = 1e-3, warmup: int = 100) -> None:
    components = load_components(source)
    components.vae.requires_grad_(False)
    denoiser = LC4Denoiser(components.unet, without_luminance(components.luminance_encoder),
                           text_encoder=components.text_encoder)
    parameters = list(components.unet.parameters()) + list(components.text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr, weight_decay=1e-4)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    components.unet.train()
    components.text_encoder.train()
    seeds, total = random.Random(0), 0.0
    for step in range(1, steps + 1):
        clips = [generate_clip(seed) for seed in seeds.sample(PRETRAINING_SEEDS, 4)]
        loss = diffusion_loss(denoiser, components, training_batch(clips), train_text_encoder=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item()
        if step % 100 == 0 or step == steps:
            print(f"step {step}: loss {total / ((step - 1) % 100 + 1):.4f}", flush=True)
            total = 0.0
    shutil.copytree(source, target, dirs_exist_ok=True)
    with tda_removed(components.unet):
        components.unet.save_pretrained(f"{target}/unet")
    components.tda.save_pretrained(f"{target}/tda")
    components.text_encoder.save_pretrained(f"{target}/text_encoder")


def generate(model: str, output: str, captions: list[str]) -> None:
    pipe = LC4Pipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    pipe.luminance_encoder = without_luminance(pipe.luminance_encoder)
    blank = torch.zeros(8, 3, 64, 64, dtype=torch.uint8)  # no luma reaches the UNet or the decoder
    rows = []
    for seed, caption in enumerate(captions):
        with torch.no_grad():
            result = pipe(blank, caption, num_inference_steps=20, guidance_scale=3.0, seed=seed, resolution=64,
                          frames_per_clip=8, clip_mode="skip", full_resolution=False)
        frames = (result.frames.clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
        rows.append(np.concatenate(list(frames[::2]), axis=1))
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(output, optimize=True)


def evaluate(model: str) -> None:
    pipe = LC4Pipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    print(f"{model}: {unseen_clip_accuracy(pipe)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("steps", type=int)
    g = sub.add_parser("generate")
    g.add_argument("model")
    g.add_argument("output")
    g.add_argument("captions", nargs="+")
    e = sub.add_parser("evaluate")
    e.add_argument("model")
    args = parser.parse_args()
    if args.command == "pretrain":
        pretrain(args.source, args.target, args.steps)
    elif args.command == "generate":
        generate(args.model, args.output, args.captions)
    else:
        evaluate(args.model)


if __name__ == "__main__":
    main()
