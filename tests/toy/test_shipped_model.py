"""The shipped toy L-C4 (models/toy, made by `make toy-model`) still colours held-out clips.

It runs the committed weights on the report's 50 held-out clips (unseen colour/shape pairs,
regenerated from their seeds) with the evaluation settings of configs/toy/toy.yaml and checks
the colour accuracy and the swap claim against thresholds set from the figures measured when
the model was trained (models/toy/report.json: 94.5% of 110 objects; 75.0% of 36 swapped clips,
swapped words moving the objects' hues 0.80 of the way), with margin, and the accuracy not below
three times chance (1 / 9 palette colours). A regression in the kernels, the UNet/TDA/CMPF code,
the sampler or the colour conversion that breaks what the model learned fails here.
"""
import json
from pathlib import Path

import pytest
import torch

from lc4.toy.evaluate import swapped_spec
from lc4.toy.generator import generate_clip
from lc4.toy.palette import OBJECT_COLORS
from lc4.toy.run import color_and_swap_scores
from lc4.toy.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "toy"
CHANCE = 1 / len(OBJECT_COLORS)
# Measured 0.945 on these 50 clips (report.json); a model that stopped learning scores near
# chance (the first, broken, toy model: 0.18), so the margins tolerate machine differences only.
COLOR_ACCURACY_MIN = 0.82
# Measured 0.750 (27 of 36 clips) and 0.80; a model whose colours ignore the words scores 0 and
# about 0 (the previous toy model: 0% and -0.02).
SWAP_SUCCESS_MIN = 0.58
SWAP_HUE_SHIFT_MIN = 0.63


@pytest.fixture(scope="module")
def shipped():
    from lc4.pipeline import LC4Pipeline

    if not (MODEL / "model_index.json").is_file():
        pytest.fail(f"{MODEL} is missing: the toy model is committed (make toy-model rebuilds it)")
    pipeline = LC4Pipeline.from_pretrained(MODEL)
    pipeline.set_progress_bar_config(disable=True)
    settings = load_settings(ROOT / "configs" / "toy" / "toy.yaml")
    report = json.loads((MODEL / "report.json").read_text())
    clips = [generate_clip(seed, "heldout", settings.data.size, settings.data.num_frames)
             for seed in range(report["clips"])]
    return pipeline, settings.evaluation, clips, report


def test_threshold_is_at_least_three_times_chance():
    assert COLOR_ACCURACY_MIN >= 3 * CHANCE


def test_report_matches_the_shipped_settings(shipped):
    _, settings, clips, report = shipped
    assert report["clips"] == len(clips) >= 50
    assert report["objects"] == sum(len(clip.spec.objects) for clip in clips)
    assert (report["num_inference_steps"], report["guidance_scale"]) == (settings.num_inference_steps,
                                                                         settings.guidance_scale)
    assert report["color_accuracy"] >= COLOR_ACCURACY_MIN
    assert report["swap_success"] >= SWAP_SUCCESS_MIN and report["swap_hue_shift"] >= SWAP_HUE_SHIFT_MIN
    assert report["cdc_tda"] < report["cdc_tda_bypassed"]  # TDA steadies the colours (claim 3)


@pytest.fixture(scope="module")
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scores(shipped, two_threads):
    """Claims 1 and 2 on the report's clips, as `lc4.toy evaluate` and `lc4.toy score` measure them."""
    pipeline, settings, clips, _ = shipped
    return color_and_swap_scores(pipeline, clips, settings)[0]


def test_colors_follow_the_caption_on_heldout_clips(shipped, scores):
    _, _, clips, _ = shipped
    print(f"colour accuracy {scores['color_accuracy']:.3f} over {len(clips)} held-out clips")
    assert scores["color_accuracy"] >= COLOR_ACCURACY_MIN


def test_swapped_words_swap_the_colors(shipped, scores):
    _, _, clips, report = shipped
    assert scores["swap_clips"] == report["swap_clips"] == sum(len(clip.spec.objects) >= 2 for clip in clips)
    success, shift = scores["swap_success"], scores["swap_hue_shift"]
    print(f"swap success {success:.3f}, hue shift {shift:.3f} over {scores['swap_clips']} held-out clips")
    assert success >= SWAP_SUCCESS_MIN
    assert shift >= SWAP_HUE_SHIFT_MIN


def test_scores_name_every_miss(shipped, scores):
    """`python -m lc4.toy score` lists the objects behind its figures: the caption's misses
    are the accuracy's, and a swap fails exactly where one of its two objects misses."""
    _, _, clips, _ = shipped
    caption_misses = [m for m in scores["misses"] if m["prompt"] == "caption"]
    assert len(caption_misses) == round(scores["objects"] * (1 - scores["color_accuracy"]))
    assert len(scores["swaps_failed"]) == round(scores["swap_clips"] * (1 - scores["swap_success"]))
    two_or_more = {clip.seed for clip in clips if len(clip.spec.objects) >= 2}
    blamed = {m["seed"] for m in scores["misses"] if m["object"] in (0, 1) and m["seed"] in two_or_more}
    assert set(scores["swaps_failed"]) == blamed
    for miss in scores["misses"]:
        clip = clips[miss["seed"]]
        spec = clip.spec if miss["prompt"] == "caption" else swapped_spec(clip.spec)
        assert miss["wanted"] == spec.objects[miss["object"]].color != miss["got"]
