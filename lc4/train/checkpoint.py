"""Checkpoints and the trained model folder.

A checkpoint is ``OUTPUT/checkpoints/step-NNNNNNNN/``: accelerate's ``save_state`` (model,
optimizer, learning-rate scheduler, gradient scaler, EMA and the run's progress as registered
objects, every process's RNG states). It is written under a temporary name first and renamed
when complete, so a run killed while saving never leaves a checkpoint that looks finished:
``--resume latest`` only ever sees complete ones.

The trained model is a complete lc4 model folder (``OUTPUT/model/``), usable by
``lc4 colorize --model`` and as the next stage's ``model.path``: trained components are saved
from the run, frozen ones copied byte for byte from the input folder.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Optional

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})$")
TEMP_PREFIX = ".tmp-"
CUSTOM_STATE_PATTERN = re.compile(r"^custom_checkpoint_\d+\.pkl$")  # accelerate's name for a registered object
TRAINED_FOLDERS = {"unet": "unet", "tda": "tda", "luminance_encoder": "luminance_encoder", "cmpf": "cmpf",
                   "text_encoder": "text_encoder"}


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``folder`` as ``(step, path)``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def resolve_resume(resume: Optional[str], folder: str | Path) -> Optional[Path]:
    """``None`` -> no resume; ``"latest"`` -> the newest complete checkpoint (or None when there
    is none yet, so the same command starts and restarts a run); else a checkpoint path."""
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(folder)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume: no checkpoint folder at {resume!r} (or say 'latest')")
    return path


def refuse_fresh_run_over_checkpoints(checkpoints_dir: str | Path, output_dir: str | Path) -> None:
    """A fresh run must not share a folder with another run's checkpoints: rotation would delete
    its own first, the logs would mix and ``--resume latest`` would continue the other run."""
    checkpoints = list_checkpoints(checkpoints_dir)
    if checkpoints:
        raise ValueError(f"output_dir {str(output_dir)!r} already holds the checkpoints of an earlier run (the newest "
                         f"{checkpoints[-1][1].name}): pass --resume latest to continue that run, or choose another "
                         f"output_dir (or remove its checkpoints) to start afresh")


def check_ema_matches(checkpoint: str | Path, with_ema: bool) -> None:
    """The checkpoint holds the states this run registers with accelerate: the EMA (with
    ``ema.enabled``) and the progress. Else accelerate fails with a count that names neither."""
    saved = len([p for p in Path(checkpoint).iterdir() if CUSTOM_STATE_PATTERN.match(p.name)])
    expected = 2 if with_ema else 1
    if saved == expected:
        return
    if saved in (1, 2):
        written = "with" if saved == 2 else "without"
        raise ValueError(f"--resume: the checkpoint {str(checkpoint)!r} was written {written} EMA (ema.enabled: "
                         f"{str(saved == 2).lower()}), but the config now says ema.enabled: {str(with_ema).lower()}; "
                         f"resume with the setting the run started with, or start afresh in another output_dir")
    raise ValueError(f"--resume: {str(checkpoint)!r} is not an lc4 train checkpoint: it holds {saved} custom states, "
                     f"expected {expected}")


def save_checkpoint(accelerator, folder: str | Path, step: int, keep_last: Optional[int] = None) -> Path:
    """``accelerator.save_state`` into a temporary folder, renamed when every process is done."""
    folder = Path(folder)
    final = folder / checkpoint_name(step)
    temp = folder / f"{TEMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temp, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
        _fsync_dir(folder)
        if keep_last:
            for _, old in list_checkpoints(folder)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_model_folder(components, source_dir: str | Path, output_dir: str | Path, trained_parts) -> Path:
    """A complete lc4 model folder at ``output_dir``: the ``trained_parts`` saved from
    ``components`` (``unet`` without its TDA layers, ``tda`` on its own), every other
    component copied from ``source_dir``. Written under a temporary name, then renamed."""
    from ..unet import tda_removed

    source_dir, output_dir = Path(source_dir), Path(output_dir)
    temp = output_dir.with_name(f"{TEMP_PREFIX}{output_dir.name}")
    shutil.rmtree(temp, ignore_errors=True)
    shutil.copytree(source_dir, temp)
    for part in trained_parts:
        target = temp / TRAINED_FOLDERS[part]
        shutil.rmtree(target, ignore_errors=True)
        if part == "unet":
            with tda_removed(components.unet):
                components.unet.save_pretrained(target, safe_serialization=True)
        else:
            getattr(components, part).save_pretrained(target, safe_serialization=True)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(temp, output_dir)
    return output_dir
