import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lc4.metrics import ClipFeatures, MissingWeightsError, frechet_distance, fvd, i3d_features, load_i3d
from lc4.metrics.fvd import ENV_VAR
from lc4.metrics.i3d import InceptionI3d, Unit3D

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


def test_clips_are_resized_bilinearly_and_scaled_to_minus_one_one(random_i3d, bikes_frames):
    frames = bikes_frames[:8, :, :64, :64]
    # Halving the size bilinearly with half-pixel centres (no antialiasing) averages 2x2 blocks.
    halved = frames.double().view(8, 3, 32, 2, 32, 2).mean(dim=(3, 5))
    clip = (halved / 127.5 - 1).permute(1, 0, 2, 3).unsqueeze(0).float()  # (1, 3, T, H, W) in [-1, 1]
    with torch.no_grad():
        expected = random_i3d(clip)[0].double()
    features = i3d_features(frames.unsqueeze(0), random_i3d, **SMALL)
    assert torch.allclose(features[0], expected, rtol=1e-4, atol=1e-4)


def test_a_new_video_starts_a_new_clip(random_i3d, bikes_frames):
    clips = ClipFeatures(random_i3d, **SMALL)
    clips.add(bikes_frames[:11])  # one clip, and three frames that end_video drops
    assert clips.end_video().shape == (1, 400)
    clips.add(bikes_frames[4:12])
    expected = i3d_features(bikes_frames[4:12].unsqueeze(0), random_i3d, **SMALL)
    assert torch.allclose(clips.end_video(), expected, atol=1e-5)


def test_unit3d_is_a_tf_same_convolution_then_batch_norm_with_eps_1e_3():
    torch.manual_seed(0)
    unit = Unit3D(2, 3, kernel=(3, 3, 3), stride=(2, 2, 2)).eval()
    bn = unit.bn
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.005, 0.02)  # small: eps matters
    bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 2, 5, 6, 7)
    # TF 'SAME', stride 2: total padding max(k - s, 0) for even sizes, max(k - size % s, 0) for odd
    # ones, the odd pixel at the end: T 5 -> (1, 1), H 6 -> (0, 1), W 7 -> (1, 1).
    conv = F.conv3d(F.pad(x, (1, 1, 0, 1, 1, 1)), unit.conv3d.weight, stride=2)
    def per_channel(t):
        return t.view(1, 3, 1, 1, 1)

    expected = torch.relu((conv - per_channel(bn.running_mean)) / per_channel(torch.sqrt(bn.running_var + 1e-3))
                          * per_channel(bn.weight) + per_channel(bn.bias))
    with torch.no_grad():
        out = unit(x)
    assert out.shape == (1, 3, 3, 3, 4)
    assert torch.allclose(out, expected, atol=1e-5)


def test_logits_pool_two_frames_at_stride_one_then_average_over_time(random_i3d):
    """As the PyTorch port: AvgPool3d((2, 7, 7), stride 1) before the 1x1x1 logits layer; the
    logits are then averaged over time. At 32 frames of 32x32, Mixed_5c is 4 x 1 x 1."""
    captured = {}
    handle = random_i3d.Mixed_5c.register_forward_hook(lambda module, inputs, output: captured.update(x=output))
    clip = torch.rand(1, 3, 32, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        with torch.no_grad():
            logits = random_i3d(clip)[0]
    finally:
        handle.remove()
    x = captured["x"][0, :, :, 0, 0]
    assert x.shape == (1024, 4)
    # the mean of the three two-frame windows (x0+x1)/2, (x1+x2)/2, (x2+x3)/2
    pooled = (x[:, 0] + 2 * x[:, 1] + 2 * x[:, 2] + x[:, 3]) / 6
    weight, bias = random_i3d.logits.conv3d.weight[:, :, 0, 0, 0], random_i3d.logits.conv3d.bias
    assert torch.allclose(logits, weight @ pooled + bias, rtol=1e-4, atol=1e-4)


def test_an_explicit_path_wins_over_the_environment_and_wrapped_state_dicts_load(tmp_path, monkeypatch, random_i3d):
    torch.save({"state_dict": random_i3d.state_dict()}, tmp_path / "wrapped.pt")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere.pt"))  # does not exist
    loaded = load_i3d(tmp_path / "wrapped.pt")
    assert torch.equal(loaded.logits.conv3d.weight, random_i3d.logits.conv3d.weight)


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
    with pytest.raises(ValueError, match="at least one video of one frame"):
        i3d_features(torch.zeros(1, 0, 3, 32, 32), random_i3d, **SMALL)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
