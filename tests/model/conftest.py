"""Fixtures for the model tests: tiny random components, a tiny model folder, real footage."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="the model layer needs diffusers (requirements.txt)")
pytest.importorskip("transformers", reason="the model layer needs transformers (requirements.txt)")


@pytest.fixture(autouse=True)
def single_thread_torch():
    """Tiny models: torch's thread pool only adds contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def components() -> dict:
    from lc4.init_model import tiny_components
    return tiny_components(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lc4.init_model import init_model
    folder = tmp_path_factory.mktemp("tiny_model")
    init_model(folder, tiny=True, seed=0)
    return folder
