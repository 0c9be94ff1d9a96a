import numpy as np
import pytest
import torch

from lc4.metrics import ClipFeatures, MissingWeightsError, frechet_distance, fvd, i3d_features, load_i3d
from lc4.metrics.fvd import ENV_VAR
from lc4.metrics.i3d import InceptionI3d

SMALL = dict(clip_length=8, input_size=32)  # the real setting is 16 frames at 224x224


def _random_i3d(num_classes: int = 400) -> InceptionI3d:
    """He-initialised so that the signal survives 20 layers (the default init fades it out and
    every input gives the same logits)."""
    torch.manual_seed(0)
    model = InceptionI3d(num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


@pytest.fixture(scope="module")
def random_i3d():
    return _random_i3d()


@pytest.fixture(scope="module")
def small_i3d():
    """Eight logits instead of 400: the Frechet distance's matrix square root stays cheap."""
    return _random_i3d(num_classes=8)


def test_frechet_distance_of_the_same_set_is_zero():
    features = np.random.default_rng(0).normal(size=(50, 6))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_by_hand():
    # Corner designs have diagonal sample covariance: 4/3 * s^2 per axis (N - 1 = 3).
    corners = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=np.float64)
    a = corners * [1.0, 2.0] + [0.0, 0.0]
    b = corners * [3.0, 2.0] + [1.0, -2.0]
    std_a, std_b = np.sqrt(4 / 3) * np.array([1.0, 2.0]), np.sqrt(4 / 3) * np.array([3.0, 2.0])
    # |mu_a - mu_b|^2 + sum (std_a - std_b)^2 for commuting (diagonal) covariances
    expected = (1 + 4) + ((std_a - std_b) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_the_matrix_square_root_formula():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(30, 5)) @ rng.normal(size=(5, 5)) + 0.5
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_clip_features_shapes_and_streaming(random_i3d, bikes_frames):
    clips = ClipFeatures(random_i3d, **SMALL)
    for chunk in bikes_frames[:11].split(3):  # arbitrary chunks; the 3-frame tail is dropped
        clips.add(chunk)
    streamed = clips.end_video()
    assert streamed.shape == (1, 400)
    whole = i3d_features(bikes_frames[:8].unsqueeze(0), random_i3d, **SMALL)
    assert torch.allclose(streamed, whole, atol=1e-5)
    two_videos = i3d_features(torch.stack([bikes_frames[:8], bikes_frames[:8].flip(0)]), random_i3d, **SMALL)
    assert two_videos.shape == (2, 400)


def test_fvd_of_a_set_with_itself_is_zero_and_degrading_raises_it(small_i3d, bikes_frames):
    clips = bikes_frames[:12].unfold(0, 8, 2).permute(0, 4, 1, 2, 3)  # (3, 8, 3, H, W) overlapping clips
    noisy = (clips.float() + 60 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 255)
    same = fvd(clips, clips, model=small_i3d, **SMALL)
    different = fvd(noisy, clips, model=small_i3d, **SMALL)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert different > 100 * max(same, 1e-9)


def test_state_dict_follows_the_pytorch_i3d_port(random_i3d):
    keys = set(random_i3d.state_dict())
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Conv3d_1a_7x7.bn.running_var", "Mixed_4f.b1b.bn.bias",
                "Mixed_5c.b3b.conv3d.weight", "logits.conv3d.weight", "logits.conv3d.bias"):
        assert key in keys
    assert random_i3d.state_dict()["Mixed_5c.b0.conv3d.weight"].shape == (384, 832, 1, 1, 1)


def test_load_i3d_from_a_file_and_from_the_environment(tmp_path, monkeypatch, random_i3d, bikes_frames):
    torch.save(random_i3d.state_dict(), tmp_path / "rgb_imagenet.pt")
    loaded = load_i3d(tmp_path / "rgb_imagenet.pt")
    video = bikes_frames[:8].unsqueeze(0)
    assert torch.allclose(i3d_features(video, loaded, **SMALL), i3d_features(video, random_i3d, **SMALL))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "rgb_imagenet.pt"))
    assert load_i3d() is loaded  # cached per path


def test_missing_weights_name_the_variable_and_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(MissingWeightsError, match=ENV_VAR):
        load_i3d()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "rgb_imagenet.pt"))
    with pytest.raises(MissingWeightsError, match="rgb_imagenet.pt"):
        load_i3d()


def test_bad_input(random_i3d):
    with pytest.raises(ValueError, match="at least clip_length=8 frames"):
        i3d_features(torch.zeros(1, 4, 3, 32, 32), random_i3d, **SMALL)
    with pytest.raises(ValueError, match=r"videos: expected RGB videos of shape \(B, T, 3, H, W\)"):
        i3d_features(torch.zeros(8, 3, 32, 32), random_i3d, **SMALL)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
