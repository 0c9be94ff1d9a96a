import pytest
import torch
import torch.nn.functional as F

from lc4.metrics import LPIPS, MissingWeightsError, load_lpips, lpips
from lc4.metrics.lpips import ALEXNET_FILE, ENV_VAR, LINEAR_FILE

_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}


def _published_style_files(folder, seed=0):
    """Random tensors saved under the names and keys of torchvision's AlexNet checkpoint and
    the lpips package's alex.pth, as a user would download them."""
    generator = torch.Generator().manual_seed(seed)
    backbone = {}
    for index, (out_c, in_c, k) in _CONVS.items():
        backbone[f"features.{index}.weight"] = torch.randn(out_c, in_c, k, k, generator=generator) * (2 / (in_c * k * k)) ** 0.5
        backbone[f"features.{index}.bias"] = torch.randn(out_c, generator=generator) * 0.01
    for key in ("classifier.1.weight", "classifier.4.weight", "classifier.6.bias"):  # in the real file, unused
        backbone[key] = torch.randn(8, 8, generator=generator)
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
              for i, c in enumerate((64, 192, 384, 256, 256))}
    folder.mkdir(exist_ok=True)
    torch.save(backbone, folder / ALEXNET_FILE)
    torch.save(linear, folder / LINEAR_FILE)
    return backbone, linear


def _lpips_by_hand(x, y, backbone, linear):
    """LPIPS v0.1 written out with functional ops on the raw tensors, x and y in [-1, 1]."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(z):
        z = (z - shift) / scale
        outs = []
        for index, stride, padding, pool in ((0, 4, 2, False), (3, 1, 2, True), (6, 1, 1, True), (8, 1, 1, False), (10, 1, 1, False)):
            if pool:
                z = F.max_pool2d(z, 3, 2)
            z = F.relu(F.conv2d(z, backbone[f"features.{index}.weight"], backbone[f"features.{index}.bias"], stride, padding))
            outs.append(z)
        return outs

    total = 0
    for i, (fx, fy) in enumerate(zip(taps(x), taps(y))):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + ((nx - ny) ** 2 * linear[f"lin{i}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def test_loads_published_style_files_and_computes_lpips(tmp_path, bikes_frames):
    backbone, linear = _published_style_files(tmp_path / "lpips")
    model = load_lpips(tmp_path / "lpips")
    pred, target = bikes_frames[1:4], bikes_frames[0:3]
    scores = lpips(pred, target, model=model)
    assert scores.shape == (3,)
    expected = _lpips_by_hand(pred.float() / 127.5 - 1, target.float() / 127.5 - 1, backbone, linear)
    assert torch.allclose(scores.float(), expected, rtol=1e-4, atol=1e-6)
    assert (scores > 0).all()
    assert torch.equal(lpips(pred, pred, model=model), torch.zeros(3, dtype=torch.float64))


def test_loads_a_single_state_dict_file_from_the_environment(tmp_path, monkeypatch, bikes_frames):
    saved = LPIPS()
    torch.save(saved.state_dict(), tmp_path / "lpips_alex.pth")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "lpips_alex.pth"))
    pred, target = bikes_frames[:2], bikes_frames[2:4]
    expected = saved(pred.float() / 127.5 - 1, target.float() / 127.5 - 1)
    assert torch.allclose(lpips(pred, target).float(), expected)


def test_missing_weights_name_the_variable_and_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(MissingWeightsError, match=ENV_VAR):
        load_lpips()
    with pytest.raises(MissingWeightsError, match="nowhere.pth"):
        load_lpips(tmp_path / "nowhere.pth")
    (tmp_path / "half").mkdir()
    torch.save({}, tmp_path / "half" / ALEXNET_FILE)
    with pytest.raises(MissingWeightsError, match=LINEAR_FILE):
        load_lpips(tmp_path / "half")


def test_weights_of_another_network_are_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth.*missing keys"):
        load_lpips(tmp_path / "other.pth")


def test_bad_input():
    model = LPIPS()
    frames = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="target: expected the same shape"):
        lpips(frames, frames[:1], model=model)
    with pytest.raises(ValueError, match=r"pred: expected RGB frames of shape \(N, 3, H, W\)"):
        lpips(frames[:, :1], frames[:, :1], model=model)
    with pytest.raises(ValueError, match=r"at least 31x31 pixels, got \(30, 32\)"):
        lpips(frames[..., :30, :], frames[..., :30, :], model=model)
    assert lpips(frames[..., :31, :31], frames[..., :31, :31], model=model).shape == (2,)
