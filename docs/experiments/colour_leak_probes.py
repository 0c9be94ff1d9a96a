"""Where the toy model's wrong colours come from: memorised clips, and colour leaking between
touching objects. Probes of a trained toy model (`make toy-model`'s folder), run from the
repository root:

    python docs/experiments/colour_leak_probes.py touching MODEL SPLIT FIRST COUNT
    python docs/experiments/colour_leak_probes.py leak MODEL SPLIT COUNT
    python docs/experiments/colour_leak_probes.py roundtrip-leak MODEL SPLIT COUNT
    python docs/experiments/colour_leak_probes.py roundtrip-swap MODEL FIRST COUNT
    python docs/experiments/colour_leak_probes.py routing MODEL COUNT

* ``touching``: colour accuracy (the report's settings from configs/toy/toy.yaml) of the objects of
  clips ``FIRST`` .. ``FIRST + COUNT - 1`` of ``SPLIT`` (``train``: the very clips the model
  trained on; ``heldout``) that touch another object (less than 2 pixels apart, mean over the
  frames) and of those that touch none, beside the same figures for the VAE round trip.
* ``leak``: on ``COUNT`` three-object clips of ``SPLIT``, each object B in turn gets the palette
  colour farthest in hue from its own, in the caption only (same grey frames); how far every
  other object A moves along B's own move (A's mean chroma change projected on B's, over the
  length of B's: 0 no leak, 1 A follows B fully), by caption order (A named before or after B),
  by the gap between A and B, and with B's new caption given only to the cross-attentions of one
  part of the UNet (the others keep the original caption): which layers carry the colour and
  the leak.
* ``roundtrip-leak``: the same for the VAE (encoder, decoder with the luminance skips), the true
  frames of B redrawn in its new colour: the leak a perfect denoiser would show.
* ``roundtrip-swap``: the swap claim for the VAE round trip of held-out clips ``FIRST`` ..
  ``FIRST + COUNT - 1``: the true frames, and the frames redrawn with the first two objects'
  colours swapped, each through the VAE; what a perfect denoiser on this VAE would score.
* ``routing``: in the last 16x16 cross-attention, the attention (heads averaged; clips of the
  training split noised to t = 300 and 600, caption and CMPF as in training) of object A's
  latent cells on A's own colour and shape words, on another object B's (touching A or not),
  and on the background's words. Needs a tokenizer that spells each word as one token.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from lc4.toy.evaluate import object_hits, object_mean_chromas, object_pixels
from lc4.toy.generator import ToyClip, generate_clip, render
from lc4.toy.palette import PALETTE_HUES, hue_distance
from lc4.toy.settings import load_settings

TOY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "toy" / "toy.yaml"  # the report's sampling settings
TOUCHING = 2.0  # pixels: objects closer than this (mean over the frames) touch
LAYER_GROUPS = {  # cross-attention (attn2) module name prefixes of the toy UNet (2 levels)
    "16x16 (down_blocks.0, up_blocks.1)": ("down_blocks.0", "up_blocks.1"),
    "8x8 (down_blocks.1, mid_block, up_blocks.0)": ("down_blocks.1", "mid_block", "up_blocks.0"),
    "down_blocks.0": ("down_blocks.0",),
    "up_blocks.1.attentions.0": ("up_blocks.1.attentions.0",),
    "up_blocks.1.attentions.1 (the last)": ("up_blocks.1.attentions.1",),
}


def gap(clip: ToyClip, a: int, b: int) -> float:
    """Mean over the frames showing both of the least distance (pixels) from A's pixels to B's."""
    gaps = [distance_transform_edt(~clip.masks[f, b])[clip.masks[f, a]].min()
            for f in range(len(clip.masks)) if clip.masks[f, a].any() and clip.masks[f, b].any()]
    return float(np.mean(gaps)) if gaps else float("inf")


def three_object_clips(split: str, count: int):
    seed, found = 0, 0
    while found < count:
        clip = generate_clip(seed, split)
        seed += 1
        if len(clip.spec.objects) == 3:
            found += 1
            yield clip


def farthest_colour(clip: ToyClip, b: int) -> list[str]:
    """The clip's colours with object ``b``'s replaced by the unused palette colour farthest in hue."""
    colours = [o.color for o in clip.spec.objects]
    new = max((c for c in PALETTE_HUES if c not in colours),
              key=lambda c: hue_distance(PALETTE_HUES[c], PALETTE_HUES[colours[b]]))
    colours[b] = new
    return colours


def along(move: np.ndarray, reference: np.ndarray) -> float:
    """``move`` projected on ``reference``, over the length of ``reference``."""
    return float(move @ reference) / float(reference @ reference)


def follow(base, moved, b: int, a: int) -> float:
    """How far A's mean chroma moved along B's move, over the length of B's move."""
    return along(moved[a] - base[a], moved[b] - base[b])


def load(model: str):
    from lc4.pipeline import LC4Pipeline

    pipe = LC4Pipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def touching(args) -> None:
    from lc4.toy.run import colorize, round_trip

    pipe, settings = load(args.model), load_settings(TOY_CONFIG).evaluation
    hits = {"touching": [], "apart": []}
    trips = {"touching": [], "apart": []}
    for seed in range(args.first, args.first + args.count):
        clip = generate_clip(seed, args.split)
        out = object_hits(colorize(pipe, clip, clip.caption, settings), clip)
        trip = object_hits(round_trip(pipe, clip), clip)
        n = len(clip.spec.objects)
        for a in range(n):
            key = "touching" if any(gap(clip, a, b) < TOUCHING for b in range(n) if b != a) else "apart"
            hits[key].append(out[a])
            trips[key].append(trip[a])
    for key in hits:
        print(f"{key}: {100 * np.mean(hits[key]):.1f}% of {len(hits[key])} objects right "
              f"(VAE round trip {100 * np.mean(trips[key]):.1f}%)")


class CaptionSwitch:
    """Forward pre-hooks on the UNet's cross-attentions: ``record`` keeps each one's text input
    (``encoder_hidden_states``), ``replace`` hands the recorded one to the layers named."""

    def __init__(self, unet):
        self.modules = {n: m for n, m in unet.named_modules() if n.endswith("attn2")}
        self.recorded, self.mode, self.names = {}, None, ()
        for name, module in self.modules.items():
            module.register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name):
        def pre(module, args, kwargs):
            if self.mode == "record":
                self.recorded[name] = kwargs["encoder_hidden_states"]
            elif self.mode == "replace" and name in self.names:
                return args, {**kwargs, "encoder_hidden_states": self.recorded[name]}
        return pre

    def select(self, prefixes: tuple[str, ...]) -> None:
        self.mode, self.names = "replace", [n for n in self.modules if n.startswith(prefixes)]


def summarize(rows: dict[str, list[float]]) -> str:
    return " | ".join(f"{k}: n={len(v)} mean {np.mean(v):.3f} median {np.median(v):.3f}" for k, v in rows.items() if v)


def leak(args) -> None:
    from lc4.toy.run import colorize

    pipe, settings = load(args.model), load_settings(TOY_CONFIG).evaluation
    switch = CaptionSwitch(pipe.unet)
    by_order = {"A named before B": [], "A named after B": []}
    by_gap = {f"gap < {TOUCHING:g} px": [], f"{TOUCHING:g}-6 px": [], "6-15 px": [], ">= 15 px": []}
    by_layers = {g: {"B itself": [], "A touching B": [], "A apart": []} for g in LAYER_GROUPS}
    for clip in three_object_clips(args.split, args.count):
        switch.mode = None
        base = object_mean_chromas(colorize(pipe, clip, clip.caption, settings), clip.masks)
        for b in range(3):
            caption = clip.spec.with_colors(farthest_colour(clip, b)).caption
            switch.mode = "record"
            moved = object_mean_chromas(colorize(pipe, clip, caption, settings), clip.masks)
            if base[b] is None or moved[b] is None:
                continue
            others = [a for a in range(3) if a != b and base[a] is not None and moved[a] is not None]
            gaps = {a: gap(clip, a, b) for a in others}
            for a in others:
                shift = follow(base, moved, b, a)
                by_order["A named before B" if a < b else "A named after B"].append(shift)
                by_gap[next(k for k, hi in zip(by_gap, (TOUCHING, 6, 15, np.inf)) if gaps[a] < hi)].append(shift)
            for group, prefixes in LAYER_GROUPS.items():
                switch.select(prefixes)
                partial = object_mean_chromas(colorize(pipe, clip, clip.caption, settings), clip.masks)
                rows = by_layers[group]
                if partial[b] is not None:
                    rows["B itself"].append(along(partial[b] - base[b], moved[b] - base[b]))
                for a in others:
                    if partial[a] is not None:
                        rows["A touching B" if gaps[a] < TOUCHING else "A apart"].append(
                            along(partial[a] - base[a], moved[b] - base[b]))
    print("A's move along B's, B's colour word changed everywhere:")
    print("  by caption order:", summarize(by_order))
    print("  by gap:", summarize(by_gap))
    print("B's new caption only in some cross-attentions (B itself: how much of B's own move they carry):")
    for group, rows in by_layers.items():
        print(f"  {group}: {summarize(rows)}")


def roundtrip_leak(args) -> None:
    from lc4.toy.run import round_trip

    pipe = load(args.model)
    rows = {"A touching B": [], "A apart": []}
    for clip in three_object_clips(args.split, args.count):
        base = object_mean_chromas(round_trip(pipe, clip), clip.masks)
        for b in range(3):
            spec = clip.spec.with_colors(farthest_colour(clip, b))
            frames, masks = render(spec, clip.frames.shape[1], len(clip.frames))
            moved = object_mean_chromas(round_trip(pipe, ToyClip(spec=spec, frames=frames, masks=masks)), clip.masks)
            for a in range(3):
                if a != b and base[a] is not None and base[b] is not None:
                    rows["A touching B" if gap(clip, a, b) < TOUCHING else "A apart"].append(follow(base, moved, b, a))
    print("VAE round trip, A's move along B's:", summarize(rows))


def roundtrip_swap(args) -> None:
    from lc4.toy.evaluate import swap_succeeded, swapped_spec
    from lc4.toy.run import round_trip

    pipe = load(args.model)
    hits, swaps = [], []
    for seed in range(args.first, args.first + args.count):
        clip = generate_clip(seed, "heldout")
        original = round_trip(pipe, clip)
        hits += object_hits(original, clip)
        if len(clip.spec.objects) >= 2:
            spec = swapped_spec(clip.spec)
            frames, masks = render(spec, clip.frames.shape[1], len(clip.frames))
            swapped = round_trip(pipe, ToyClip(spec=spec, frames=frames, masks=masks))
            swaps.append(swap_succeeded(original, swapped, clip))
    print(f"VAE round trip: {100 * np.mean(hits):.1f}% of {len(hits)} objects named right, "
          f"{100 * np.mean(swaps):.1f}% of {len(swaps)} swaps")


def routing(args) -> None:
    from lc4.color import rgb_to_luma
    from lc4.luminance import luminance_input
    from lc4.train.grounding import CrossAttentionGrounding, class_word_ids
    from lc4.train.models import LC4Denoiser, diffusion_loss, load_components

    c = load_components(args.model)
    tokenizer = c.tokenizer
    recorder = CrossAttentionGrounding(c.unet, class_word_ids(tokenizer, ["background", "circle"]))
    denoiser = LC4Denoiser(c.unet, c.luminance_encoder, text_encoder=c.text_encoder).train()
    rows = {"own words": [], "touching B's words": [], "apart B's words": [], "background words": []}
    for seed, clip in enumerate(three_object_clips("train", args.count)):
        objects = clip.spec.objects
        ids = tokenizer(clip.caption).input_ids

        def positions(word: str) -> list[int]:
            pieces = tokenizer(word, add_special_tokens=False).input_ids
            if len(pieces) != 1:
                raise SystemExit(f"routing: {word!r} is {len(pieces)} tokens of this model's tokenizer; needs one")
            return [i for i, t in enumerate(ids) if t == pieces[0]]

        # object k is the k-th "a <colour> <shape>" of the caption
        words = [[positions(o.color)[[p.color for p in objects[:k + 1]].count(o.color) - 1],
                  positions(o.shape)[[p.shape for p in objects[:k + 1]].count(o.shape) - 1]]
                 for k, o in enumerate(objects)]
        background = positions("background") + positions(clip.spec.background)
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        batch = {"pixel_values": frames[None], "captions": [clip.caption],
                 "luminance": luminance_input(rgb_to_luma((frames + 1) / 2).clamp(0, 1))[None]}
        for t in (300, 600):
            with torch.no_grad():
                diffusion_loss(denoiser, c, batch, generator=torch.Generator().manual_seed(seed),
                               timesteps=torch.tensor([t]), train_text_encoder=True, with_cmpf=True)
            probs = next(p for k, p in recorder.probs.items() if k.startswith("up_blocks_1_attentions_1"))
            side = round(probs.shape[1] ** 0.5)
            for a in range(3):
                cells = F.adaptive_avg_pool2d(torch.from_numpy(object_pixels(clip.masks, a)).float()[:, None], side)
                cells = cells[:, 0].flatten(1) > 0.5
                if not cells.any():
                    continue
                p = probs[cells]
                rows["own words"].append(p[:, words[a]].sum(-1).mean().item())
                rows["background words"].append(p[:, background].sum(-1).mean().item())
                for b in range(3):
                    if b != a:
                        key = "touching B's words" if gap(clip, a, b) < TOUCHING else "apart B's words"
                        rows[key].append(p[:, words[b]].sum(-1).mean().item())
    print("last 16x16 cross-attention, attention of A's cells on:", summarize(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("touching")
    p.add_argument("model"); p.add_argument("split"); p.add_argument("first", type=int); p.add_argument("count", type=int)
    p = sub.add_parser("roundtrip-swap")
    p.add_argument("model"); p.add_argument("first", type=int); p.add_argument("count", type=int)
    for name in ("leak", "roundtrip-leak"):
        p = sub.add_parser(name)
        p.add_argument("model"); p.add_argument("split"); p.add_argument("count", type=int)
    p = sub.add_parser("routing")
    p.add_argument("model"); p.add_argument("count", type=int)
    args = parser.parse_args()
    torch.manual_seed(0)
    {"touching": touching, "leak": leak, "roundtrip-leak": roundtrip_leak, "roundtrip-swap": roundtrip_swap,
     "routing": routing}[args.command](args)


if __name__ == "__main__":
    main()
