"""Finding network weights on local disk: never downloaded at run time."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch


class MissingWeightsError(FileNotFoundError):
    """A metric's network weights are not configured or the named file does not exist."""


def resolve_weights_path(explicit: str | os.PathLike | None, env_var: str, what: str) -> Path:
    """``explicit`` if given, else the path in ``$env_var``; it must exist.

    ``what`` describes the expected file or folder for the error message.
    """
    raw = explicit if explicit is not None else os.environ.get(env_var)
    if not raw:
        raise MissingWeightsError(
            f"no weights for {what}: pass their path as an option or set {env_var}"
        )
    path = Path(raw).expanduser()
    if not path.exists():
        source = "given path" if explicit is not None else f"${env_var}"
        raise MissingWeightsError(f"weights file not found: {path} ({source}; expected {what})")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingWeightsError(f"weights file not found: {path} (expected {what})")
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Loads a tensor-only checkpoint (``weights_only``: no code runs from the file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: not a readable PyTorch weights file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'truncated?'})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    """``load_state_dict(strict=True)`` with an error that names the file and the mismatched keys."""
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit {type(model).__name__}; "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{source}: weights do not fit {type(model).__name__}: {error}") from None
    return model
