"""Fixtures for the training tests: a tiny model folder and a small generated text-video set."""
from __future__ import annotations

import pytest

pytest.importorskip("diffusers", reason="training needs diffusers (requirements.txt)")
pytest.importorskip("accelerate", reason="training needs accelerate (requirements.txt)")
pytest.importorskip("yaml", reason="training configs need PyYAML (requirements.txt)")

from train_helpers import make_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each run builds its own Accelerator; accelerate keeps process-wide state between them."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from lc4.init_model import init_model
    folder = tmp_path_factory.mktemp("tiny_model")
    init_model(folder, tiny=True, seed=0)
    return folder


@pytest.fixture(scope="session")
def video_folder(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("videos"), count=4, num_frames=12)
