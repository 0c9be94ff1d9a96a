import math

import numpy as np
import pytest
import torch

from lc4.metrics import psnr, ssim

from eval_helpers import to_tensor

skimage_metrics = pytest.importorskip("skimage.metrics")


def _noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_identical_frames(bikes_frames):
    assert torch.isinf(psnr(bikes_frames, bikes_frames)).all()
    assert ssim(bikes_frames, bikes_frames).tolist() == pytest.approx([1.0] * len(bikes_frames), abs=1e-6)


def test_psnr_of_a_known_offset():
    target = torch.full((2, 3, 16, 16), 100.0)
    pred = target + torch.tensor([10.0, 1.0]).view(2, 1, 1, 1)
    # MSE 100 and 1
    assert psnr(pred, target).tolist() == pytest.approx([10 * math.log10(255**2 / 100), 10 * math.log10(255**2)])


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
@pytest.mark.parametrize("sigma", [3.0, 25.0])
def test_agrees_with_scikit_image(photos, name, sigma):
    target = photos[name][:256, :256]
    pred = _noisy(target, sigma, seed=int(sigma))
    expected_psnr = skimage_metrics.peak_signal_noise_ratio(target, pred, data_range=255)
    expected_ssim = skimage_metrics.structural_similarity(
        pred, target, channel_axis=-1, data_range=255,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )
    assert psnr(to_tensor(pred), to_tensor(target)).item() == pytest.approx(expected_psnr, abs=1e-5)
    assert ssim(to_tensor(pred), to_tensor(target)).item() == pytest.approx(expected_ssim, abs=1e-4)


def test_batches_score_each_frame(bikes_frames):
    pred = bikes_frames.clone()
    pred[1] = pred[1] // 2  # only frame 1 is changed
    scores_psnr, scores_ssim = psnr(pred[:3], bikes_frames[:3]), ssim(pred[:3], bikes_frames[:3])
    assert scores_psnr.shape == scores_ssim.shape == (3,)
    assert torch.isinf(scores_psnr[[0, 2]]).all() and torch.isfinite(scores_psnr[1])
    assert scores_ssim[1] < 0.99 < scores_ssim[0]
    single = ssim(pred[1:2], bikes_frames[1:2])
    assert single.item() == pytest.approx(scores_ssim[1].item(), abs=1e-6)


def test_bad_input():
    frames = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="target: expected the same shape"):
        psnr(frames, frames[:1])
    with pytest.raises(ValueError, match=r"pred: expected RGB frames of shape \(N, 3, H, W\)"):
        ssim(frames[0], frames[0])
    with pytest.raises(ValueError, match="larger than 11x11"):
        ssim(frames[..., :8, :8], frames[..., :8, :8])
    with_nan = frames.clone()
    with_nan[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="pred: expected RGB values in 0-255, got NaN"):
        psnr(with_nan, frames)
    with pytest.raises(ValueError, match="pred: expected at least one frame"):
        psnr(frames[:0], frames[:0])
    over = frames.clone()
    over[0, 0, 0, 0] = 255.5
    with pytest.raises(ValueError, match=r"pred: expected RGB values in 0-255, got the range \[0, 255.5\]"):
        psnr(over, frames)
    negative = torch.zeros(2, 3, 16, 16, dtype=torch.int32)  # integers other than uint8 are checked too
    negative[0, 0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"pred: expected RGB values in 0-255, got the range \[-1, 0\]"):
        ssim(negative, frames)
    wide = torch.zeros(2, 3, 16, 16, dtype=torch.uint16)  # a 16-bit frame on its own scale
    wide[0, 0, 0, 0] = 1000
    with pytest.raises(ValueError, match=r"pred: expected RGB values in 0-255, got the range \[0, 1000\]"):
        psnr(wide, frames)
    wide[0, 0, 0, 0] = 255
    torch.testing.assert_close(psnr(wide, frames.to(torch.uint16)), psnr(wide.float(), frames))
