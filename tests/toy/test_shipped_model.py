"""The shipped toy L-C4 (models/toy, made by `make toy-model`) still colours held-out clips.

It runs the committed weights on the report's 50 held-out clips (unseen colour/shape pairs,
regenerated from their seeds) with the evaluation settings of configs/toy/toy.yaml and checks
the colour accuracy against a threshold set from the figure measured when the model was
trained (models/toy/report.json: 45.5% of 110 objects), with margin, and not below three times
chance (1 / 9 palette colours). A regression in the kernels, the UNet/TDA/CMPF code, the sampler
or the colour conversion that breaks what the model learned fails here.

The swap claim is not asserted: the shipped model scores 0% on it (see README, toy model).
"""
import json
from pathlib import Path

import pytest
import torch

from lc4.toy.evaluate import color_accuracy
from lc4.toy.generator import generate_clip
from lc4.toy.palette import OBJECT_COLORS
from lc4.toy.run import colorize
from lc4.toy.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "toy"
CHANCE = 1 / len(OBJECT_COLORS)
# Measured 0.455 on these 50 clips (report.json); a model that stopped learning scores near
# chance (the first, broken, toy model: 0.18), so the margin tolerates machine differences only.
COLOR_ACCURACY_MIN = 0.36


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
    assert report["cdc_tda"] < report["cdc_tda_bypassed"]  # TDA steadies the colours (claim 3)


def test_colors_follow_the_caption_on_heldout_clips(shipped):
    pipeline, settings, clips, _ = shipped
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outputs = [colorize(pipeline, clip, clip.caption, settings) for clip in clips]
    finally:
        torch.set_num_threads(threads)
    accuracy = color_accuracy(outputs, clips)
    print(f"colour accuracy {accuracy:.3f} over {len(clips)} held-out clips")
    assert accuracy >= COLOR_ACCURACY_MIN
