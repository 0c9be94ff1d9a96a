"""The evaluation functions on hand-made outputs, and the CDC comparison wiring on a tiny model."""
import numpy as np
import pytest

from lc4.toy.evaluate import (color_accuracy, color_accuracy_by_color, color_accuracy_by_object_count, compare_cdc,
                              mean_cdc, object_hits, swap_hue_shifts, swap_succeeded, swapped_spec)
from lc4.toy.generator import generate_clip, render
from lc4.toy.palette import OBJECT_COLORS


def _clips(count=8, min_objects=1):
    clips = (generate_clip(seed, "heldout") for seed in range(200))
    return [c for c in clips if len(c.spec.objects) >= min_objects][:count]


def _grey(frames):
    luma = (frames.astype(float) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


def test_perfect_output_scores_all_and_grey_scores_none():
    clips = _clips()
    assert color_accuracy([c.frames for c in clips], clips) == 1.0
    assert color_accuracy([_grey(c.frames) for c in clips], clips) == 0.0


def test_swapped_colours_are_detected():
    clips = _clips(min_objects=2)
    swapped_outputs = [render(swapped_spec(c.spec), c.frames.shape[1], len(c.frames))[0] for c in clips]
    # Rendered with swapped colours: the two swapped objects miss, the rest still hit.
    for output, clip in zip(swapped_outputs, clips):
        hits = object_hits(output, clip)
        assert hits[:2] == [False, False] and all(hits[2:])
        assert object_hits(output, clip, swapped_spec(clip.spec))[:2] == [True, True]
        assert swap_succeeded(clip.frames, output, clip)
        assert not swap_succeeded(clip.frames, clip.frames, clip)  # the prompt was ignored
        assert not swap_succeeded(output, output, clip)


def test_swap_hue_shift_is_one_for_the_full_swap_and_zero_when_the_words_are_ignored():
    for clip in _clips(min_objects=2):
        swapped = render(swapped_spec(clip.spec), clip.frames.shape[1], len(clip.frames))[0]
        assert swap_hue_shifts(clip.frames, swapped, clip) == pytest.approx([1.0, 1.0], abs=0.02)
        assert swap_hue_shifts(swapped, clip.frames, clip) == pytest.approx([-1.0, -1.0], abs=0.02)
        assert swap_hue_shifts(clip.frames, clip.frames, clip) == [0.0, 0.0]
        assert swap_hue_shifts(clip.frames, _grey(clip.frames), clip) == [0.0, 0.0]  # no hue to move


def test_swap_hue_shift_measures_a_partial_move():
    clip = _clips(min_objects=2)[0]
    a, b = (clip.spec.objects[k].color for k in (0, 1))
    rgb_a, rgb_b = (np.asarray(OBJECT_COLORS[c], dtype=float) for c in (a, b))
    # Under the swapped prompt the first object takes a colour between its old and its new one.
    partly = clip.frames.copy()
    partly[clip.masks[:, 0]] = ((rgb_a + rgb_b) / 2).round().astype(np.uint8)
    first, second = swap_hue_shifts(clip.frames, partly, clip)
    assert 0.2 < first < 0.8 and second == 0.0


def test_one_wrong_object_lowers_accuracy_by_its_share():
    clip = _clips(min_objects=2)[0]
    wrong = clip.frames.copy()
    other = next(c for c in OBJECT_COLORS if c not in {o.color for o in clip.spec.objects})
    wrong[clip.masks[:, 0]] = OBJECT_COLORS[other]
    assert color_accuracy([wrong], [clip]) == pytest.approx(1 - 1 / len(clip.spec.objects))


def test_accuracy_by_object_count_scores_each_count_on_its_own_clips():
    clips = _clips(12)
    counts = sorted({len(c.spec.objects) for c in clips})
    assert len(counts) >= 2
    # Perfect outputs for clips of the fewest objects, grey ones for the others.
    outputs = [c.frames if len(c.spec.objects) == counts[0] else _grey(c.frames) for c in clips]
    by_count = color_accuracy_by_object_count(outputs, clips)
    assert list(by_count) == counts
    assert by_count[counts[0]] == 1.0 and all(by_count[n] == 0.0 for n in counts[1:])


def test_accuracy_by_color_scores_each_named_colour_on_its_own_objects():
    clips = _clips(12)
    named = {o.color for c in clips for o in c.spec.objects}
    wrong_color = sorted(named)[0]
    outputs = []
    for clip in clips:  # every object of one colour painted grey, the others left true
        frames = clip.frames.copy()
        for k, obj in enumerate(clip.spec.objects):
            if obj.color == wrong_color:
                frames[clip.masks[:, k]] = _grey(frames[clip.masks[:, k]])
        outputs.append(frames)
    by_color = color_accuracy_by_color(outputs, clips)
    assert set(by_color) == named and list(by_color) == [c for c in OBJECT_COLORS if c in named]
    assert by_color[wrong_color] == 0.0 and all(by_color[c] == 1.0 for c in named - {wrong_color})


def test_cdc_comparison_prefers_the_steadier_output():
    clips = _clips(4)
    rng = np.random.default_rng(0)

    def flicker(clip):  # each frame tinted differently: inconsistent colour distributions
        tint = rng.integers(-40, 40, size=(len(clip.frames), 1, 1, 3))
        return np.clip(clip.frames.astype(int) + tint, 0, 255).astype(np.uint8)

    result = compare_cdc(lambda c: c.frames, flicker, clips)
    assert result.method == pytest.approx(mean_cdc([c.frames for c in clips]))
    assert result.method_is_better and result.ablation > result.method
    assert result.clips_method_lower == len(clips)
    assert compare_cdc(flicker, lambda c: c.frames, clips).clips_method_lower == 0


def test_pipeline_evaluation_wiring_on_a_tiny_model(monkeypatch):
    """A fresh toy model end to end through the pipeline: TDA starts as an identity, so
    bypassing it must not change the output; with random TDA weights it must."""
    import torch

    from lc4.pipeline import LC4Pipeline
    from lc4.toy.model import ToyModelSizes, toy_components
    from lc4.toy.run import evaluate_pipeline
    from lc4.toy.settings import ToyEvaluation

    torch.set_num_threads(2)
    pipeline = LC4Pipeline(**toy_components(ToyModelSizes(), resolution=32))
    settings = ToyEvaluation(num_inference_steps=2, guidance_scale=2.0)
    clips = [generate_clip(seed, "heldout", size=32, num_frames=4) for seed in range(2)]
    long_clips = [generate_clip(seed, "heldout", size=32, num_frames=12) for seed in range(2)]
    report = evaluate_pipeline(pipeline, clips, settings, long_clips)
    assert report["clips"] == 2 and (report["long_clips"], report["long_clip_frames"]) == (2, 12)
    for suffix in ("", "_colors_unnamed"):
        assert report[f"cdc_ccf{suffix}"] >= 0 and report[f"cdc_clip_by_clip{suffix}"] >= 0
        assert report[f"clips_ccf_steadier{suffix}"] in (0, 1, 2)
    assert 0 <= report["color_accuracy"] <= 1
    assert set(report["color_accuracy_by_objects_per_clip"]) == {str(len(c.spec.objects)) for c in clips}
    assert set(report["color_accuracy_by_color"]) == {o.color for c in clips for o in c.spec.objects}
    assert 0 <= report["color_accuracy_vae_round_trip"] <= 1
    assert "swap_hue_shift" in report
    assert report["cdc_tda"] == pytest.approx(report["cdc_tda_bypassed"])
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, param in pipeline.tda.named_parameters():
            if "to_out" in name or "offset_out" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    changed = evaluate_pipeline(pipeline, clips[:1], settings)
    assert changed["cdc_tda"] != pytest.approx(changed["cdc_tda_bypassed"])
