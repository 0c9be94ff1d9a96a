"""Fixtures for the model tests: tiny random components, a tiny model folder, real footage."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers", reason="the model layer needs diffusers (requirements.txt)")
pytest.importorskip("transformers", reason="the model layer needs transformers (requirements.txt)")


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
