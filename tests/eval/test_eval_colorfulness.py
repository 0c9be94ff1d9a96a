import math

import numpy as np
import pytest
import torch

from lc4.metrics import colorfulness

from eval_helpers import to_tensor


def _reference(image: np.ndarray, absolute: bool) -> float:
    """The formula written out on one (H, W, 3) image with numpy."""
    r, g, b = (image[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    if absolute:
        rg, yb = np.abs(rg), np.abs(yb)
    return math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())


@pytest.mark.parametrize("variant", ["abs", "hasler"])
def test_grey_frames_score_zero(variant):
    grey = torch.stack([torch.full((3, 16, 16), level, dtype=torch.uint8) for level in (0, 77, 255)])
    assert torch.equal(colorfulness(grey, variant), torch.zeros(3, dtype=torch.float64))


def test_half_red_half_green_by_hand():
    frame = torch.zeros(1, 3, 4, 8)
    frame[0, 0, :, :4] = 255  # red half
    frame[0, 1, :, 4:] = 255  # green half
    # rg is +255 / -255, yb is 127.5 everywhere.
    # hasler: std(rg) = 255, mean(rg) = 0, mean(yb) = 127.5 -> 255 + 0.3 * 127.5
    assert colorfulness(frame, "hasler").item() == pytest.approx(255 + 0.3 * 127.5)
    # abs: |rg| = 255 everywhere -> no spread; 0.3 * sqrt(255^2 + 127.5^2)
    assert colorfulness(frame, "abs").item() == pytest.approx(0.3 * math.hypot(255, 127.5))


@pytest.mark.parametrize("variant", ["abs", "hasler"])
def test_matches_the_formula_on_photos(photos, variant):
    images = [photos["astronaut"][:300, :300], photos["chelsea"][:300, :300], photos["coffee"][:300, :300]]
    batch = torch.cat([to_tensor(image) for image in images])
    expected = [_reference(image, absolute=variant == "abs") for image in images]
    assert colorfulness(batch, variant).tolist() == pytest.approx(expected, rel=1e-9)


def test_desaturating_lowers_colorfulness(photos):
    image = to_tensor(photos["coffee"]).float()
    grey = image.mean(dim=1, keepdim=True)
    batch = torch.cat([image, 0.5 * image + 0.5 * grey])
    vivid, washed = colorfulness(batch).tolist()
    assert washed < vivid


def test_bad_input():
    with pytest.raises(ValueError, match=r"frames: expected RGB frames of shape \(N, 3, H, W\)"):
        colorfulness(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="variant"):
        colorfulness(torch.zeros(1, 3, 8, 8), "vivid")
    with pytest.raises(ValueError, match="0-255"):
        colorfulness(torch.full((1, 3, 8, 8), -1.0))
