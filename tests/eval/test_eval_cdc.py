import math

import numpy as np
import pytest
import torch

from lc4.metrics import cdc, cdc_from_histograms, channel_histograms, js_divergence

from eval_helpers import degrade

scipy_distance = pytest.importorskip("scipy.spatial.distance")


def _independent_cdc(frames: np.ndarray, dilations=(1, 2, 4)) -> float:
    """The CDC formula written out with numpy and scipy, on (T, H, W, 3) uint8 frames:
    per channel, 256-bin histograms / pixel count, JS divergence (natural log) of frames i
    and i + d, mean over pairs, then over dilations and channels."""
    num_frames, height, width, _ = frames.shape
    per_channel = []
    for channel in range(3):
        hists = [np.histogram(f[..., channel], bins=256, range=(0, 256))[0] / (height * width) for f in frames]
        per_dilation = []
        for d in dilations:
            # scipy gives the JS *distance*, the square root of the divergence.
            js = [scipy_distance.jensenshannon(hists[i], hists[i + d]) ** 2 for i in range(num_frames - d)]
            per_dilation.append(np.mean(js))
        per_channel.append(np.mean(per_dilation))
    return float(np.mean(per_channel))


def test_identical_frames_score_zero(bikes_frames):
    still = bikes_frames[:1].repeat(6, 1, 1, 1)
    assert cdc(still.unsqueeze(0)).item() == 0.0


def test_histograms_are_normalised_counts():
    frame = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    frame[0, 0] = torch.tensor([[0, 0], [7, 255]])
    hist = channel_histograms(frame)
    assert hist.shape == (1, 3, 256)
    assert hist[0, 0, 0] == 0.5 and hist[0, 0, 7] == 0.25 and hist[0, 0, 255] == 0.25
    assert hist[0, 1, 0] == 1.0
    assert torch.allclose(hist.sum(-1), torch.ones(1, 3, dtype=torch.float64))


def test_float_frames_are_rounded_to_the_nearest_level():
    frame = torch.zeros(1, 3, 2, 2)
    frame[0, 0] = torch.tensor([[0.4, 0.6], [1.4, 254.6]])
    hist = channel_histograms(frame)
    assert hist[0, 0, 0] == 0.25 and hist[0, 0, 1] == 0.5 and hist[0, 0, 255] == 0.25


def test_float_frames_match_the_independent_implementation_of_their_rounded_levels(bikes_frames):
    clip = degrade(bikes_frames)
    jitter = 0.8 * (torch.rand(clip.shape, generator=torch.Generator().manual_seed(1)) - 0.5)  # within +-0.4
    floats = (clip.float() + jitter).clamp(0, 255)
    expected = _independent_cdc(clip.permute(0, 2, 3, 1).numpy())
    assert cdc(floats.unsqueeze(0), scale=1.0).item() == pytest.approx(expected, rel=1e-9)


def test_js_divergence_by_hand():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # m = (0.75, 0.25, 0): KL(p||m) = 0.5 ln(2/3) + 0.5 ln 2, KL(q||m) = ln(4/3)
    expected = 0.5 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2)) + 0.5 * math.log(4 / 3)
    assert js_divergence(p, q).item() == pytest.approx(expected, rel=1e-12)
    assert js_divergence(q, p).item() == pytest.approx(expected, rel=1e-12)
    # disjoint supports give the maximum, ln 2
    assert js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(math.log(2))


def test_black_then_white_frames():
    frames = torch.zeros(1, 2, 3, 4, 4, dtype=torch.uint8)
    frames[0, 1] = 255
    # one pair, every channel ln 2; dilations 2 and 4 do not fit two frames and are left out
    assert cdc(frames).item() == pytest.approx(1000 * math.log(2))
    assert cdc(frames, scale=1.0).item() == pytest.approx(math.log(2))


def test_dilations_are_weighted_equally():
    levels = [0, 0, 255, 255, 0]  # JS is ln 2 exactly where the two frames differ
    frames = torch.stack([torch.full((3, 2, 2), v, dtype=torch.uint8) for v in levels])
    # d=1: 2 of 4 pairs differ; d=2: 3 of 3; d=4: 0 of 1
    expected = math.log(2) * (2 / 4 + 3 / 3 + 0 / 1) / 3
    assert cdc_from_histograms(channel_histograms(frames)).item() == pytest.approx(expected)


def test_matches_an_independent_implementation_on_real_frames(bikes_frames):
    for clip in (bikes_frames, degrade(bikes_frames)):
        expected = _independent_cdc(clip.permute(0, 2, 3, 1).numpy())
        assert cdc(clip.unsqueeze(0), scale=1.0).item() == pytest.approx(expected, rel=1e-9)


def test_flicker_scores_worse_and_batches_score_each_video(bikes_frames):
    batch = torch.stack([bikes_frames, degrade(bikes_frames)])
    steady, flickering = cdc(batch).tolist()
    assert 0 < steady < flickering
    assert cdc(bikes_frames.unsqueeze(0)).item() == pytest.approx(steady)


def test_bad_input():
    with pytest.raises(ValueError, match=r"videos: expected RGB videos of shape \(B, T, 3, H, W\)"):
        cdc(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="at least 2 frames"):
        cdc(torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="dilations"):
        cdc(torch.zeros(1, 4, 3, 8, 8), dilations=(0,))
    with pytest.raises(ValueError, match="at least one video of one frame"):
        cdc(torch.zeros(1, 0, 3, 8, 8))
