"""The toy generator: determinism, captions that match the masks and colours, the held-out split."""
import numpy as np
import pytest

from lc4.toy.dataset import NUM_LABEL_CLASSES, clip_of_row, read_rows, write_split
from lc4.train.data import load_label_maps
from lc4.toy.evaluate import object_color_names
from lc4.toy.generator import (HELDOUT_PAIRS, MIN_LUMA_CONTRAST, SHAPES, ClipSpec, caption_for, generate_clip,
                               is_heldout_pair)
from lc4.toy.palette import (BACKGROUND_COLORS, OBJECT_COLORS, OBJECT_LUMA_RANGE, PALETTE_HUES, chroma_of,
                             hue_distance, luma_of, name_of_chroma, object_rgb)


def test_same_seed_same_clip_other_seed_other_clip():
    a, b = generate_clip(7), generate_clip(7)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks) and a.caption == b.caption
    assert not np.array_equal(a.frames, generate_clip(8).frames)
    assert generate_clip(7, "heldout").caption != a.caption or not np.array_equal(generate_clip(7, "heldout").frames, a.frames)


def test_shapes_and_size_are_configurable():
    clip = generate_clip(3, size=48, num_frames=12)
    assert clip.frames.shape == (12, 48, 48, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (12, len(clip.spec.objects), 48, 48)


@pytest.mark.parametrize("seed", range(12))
def test_caption_names_every_object_and_its_pixels_have_that_colour(seed):
    clip = generate_clip(seed)
    assert 1 <= len(clip.spec.objects) <= 3
    for k, obj in enumerate(clip.spec.objects):
        assert f"{obj.color} {obj.shape}" in clip.caption
        pixels = clip.frames[clip.masks[:, k]]
        assert len(pixels) > 0
        assert (pixels == np.round(object_rgb(obj.color, obj.luma))).all()
    assert clip.caption.endswith(f"on a {clip.spec.background} background")
    assert not (clip.masks.sum(axis=1) > 1).any(), "visible masks must not overlap"
    # The ground truth reads back as the caption's colours.
    assert object_color_names(clip.frames, clip.masks) == [o.color for o in clip.spec.objects]


@pytest.mark.parametrize("seed", range(6))
def test_caption_without_colors_keeps_the_shapes_and_names_no_colour(seed):
    spec = generate_clip(seed).spec
    words = caption_for(spec, with_colors=False).replace(",", "").split()
    assert caption_for(spec, with_colors=False).endswith(" on a background")
    assert [w for w in words if w in SHAPES] == [o.shape for o in spec.objects]
    assert not set(words) & (set(OBJECT_COLORS) | set(BACKGROUND_COLORS))
    assert caption_for(spec) == spec.caption


def test_clips_move_and_vary():
    clips = [generate_clip(seed) for seed in range(30)]
    assert any(not np.array_equal(c.masks[0], c.masks[-1]) for c in clips)
    assert {len(c.spec.objects) for c in clips} == {1, 2, 3}
    assert len({c.spec.texture for c in clips}) > 1
    # Some object is cut by the frame border at some point (entering or leaving).
    assert any(c.masks[:, :, [0, -1], :].any() or c.masks[:, :, :, [0, -1]].any() for c in clips)


def test_heldout_split_has_combinations_training_never_shows():
    train_pairs = {(o.color, o.shape) for seed in range(300) for o in generate_clip(seed).spec.objects}
    assert not train_pairs & HELDOUT_PAIRS
    heldout = [generate_clip(seed, "heldout") for seed in range(50)]
    assert all(any(is_heldout_pair(o.color, o.shape) for o in c.spec.objects) for c in heldout)
    # Every colour and shape of a held-out pair still occurs in training, in other combinations.
    assert {c for c, _ in HELDOUT_PAIRS} <= {c for c, _ in train_pairs}
    assert {s for _, s in HELDOUT_PAIRS} <= {s for _, s in train_pairs} <= set(SHAPES)


def test_grey_level_does_not_give_the_colour_away():
    """Nearest mean luma per colour, fitted on 300 clips, names the colours of 300 others about
    as well as chance (1/9): the caption is the only way to the colour."""
    def objects(seeds):
        return [(o.color, luma_of(object_rgb(o.color, o.luma))) for s in seeds for o in generate_clip(s).spec.objects]
    fit, held = objects(range(300)), objects(range(300, 600))
    means = {c: np.mean([l for name, l in fit if name == c]) for c in OBJECT_COLORS}
    guessed = [min(means, key=lambda c: abs(means[c] - luma)) == color for color, luma in held]
    assert np.mean(guessed) < 2 / len(OBJECT_COLORS)


@pytest.mark.parametrize("seed", range(12))
def test_objects_stand_out_from_the_background_and_each_other_in_grey(seed):
    clip = generate_clip(seed)
    background = luma_of(BACKGROUND_COLORS[clip.spec.background])
    lumas = [o.luma for o in clip.spec.objects]
    for luma in lumas:
        assert OBJECT_LUMA_RANGE[0] <= luma <= OBJECT_LUMA_RANGE[1]
        assert luma >= background + MIN_LUMA_CONTRAST or luma <= 0.75 * background - MIN_LUMA_CONTRAST
    assert all(abs(a - b) >= MIN_LUMA_CONTRAST for i, a in enumerate(lumas) for b in lumas[i + 1:])
    # The drawn colour keeps the object's luma (chroma is scaled into the RGB cube, not clipped).
    for obj in clip.spec.objects:
        assert luma_of(object_rgb(obj.color, obj.luma)) == pytest.approx(obj.luma, abs=1e-5)


def test_palette_hues_are_apart_and_grey_has_no_name():
    hues = sorted(PALETTE_HUES.values())
    gaps = [hue_distance(a, b) for a, b in zip(hues, hues[1:] + hues[:1])]
    assert min(gaps) >= 25
    for name, rgb in OBJECT_COLORS.items():
        assert name_of_chroma(chroma_of(rgb)) == name
        for luma in np.linspace(*OBJECT_LUMA_RANGE, 5):  # as drawn, at any luma, after rounding
            assert name_of_chroma(chroma_of(np.round(object_rgb(name, luma)))) == name
    assert name_of_chroma(chroma_of((128, 128, 128))) is None


def test_spec_round_trips_and_written_split_regenerates(tmp_path):
    clip = generate_clip(5)
    assert ClipSpec.from_dict(clip.spec.to_dict()) == clip.spec
    listing = write_split(tmp_path, "heldout", 3, size=32, num_frames=4)
    rows = read_rows(listing)
    assert len(rows) == 3
    from lc4.video import read_video
    for row in rows:
        regenerated = clip_of_row(row)
        assert row["caption"] == regenerated.caption
        frames = read_video(tmp_path / row["video"]).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(frames, regenerated.frames)
        # The label maps: background 0, else 1 + the shape index of the object that shows.
        labels = load_label_maps(tmp_path / row["segmentation"], 4, (32, 32), range(4)).numpy()
        expected = np.zeros_like(labels)
        for k, obj in enumerate(regenerated.spec.objects):
            expected[regenerated.masks[:, k]] = 1 + SHAPES.index(obj.shape)
        assert np.array_equal(labels, expected) and labels.max() < NUM_LABEL_CLASSES
        assert set(np.unique(labels)) - {0}, "no object pixels labelled"
