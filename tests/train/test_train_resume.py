"""Resuming, and starting again in a used output folder: refused where two runs would mix or
accelerate would fail without naming the cause; the EMA follows the model's device after loading."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lc4.train import load_config, train
from train_helpers import tiny_config_values


def two_step_config(tiny_model_dir, video_folder, output_dir, **overrides):
    return load_config(values=tiny_config_values(tiny_model_dir, video_folder, output_dir, max_steps=2, **overrides))


def folder_contents(folder: Path) -> dict:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_fresh_run_into_a_folder_holding_checkpoints_is_refused(tiny_model_dir, video_folder, tmp_path):
    config = two_step_config(tiny_model_dir, video_folder, tmp_path / "run")
    train(config, stop_after=1)
    before = folder_contents(tmp_path / "run")

    with pytest.raises(ValueError, match=r"output_dir '.*run' already holds the checkpoints of an earlier run "
                                         r"\(the newest step-00000001\): pass --resume latest .* another output_dir"):
        train(config)
    assert folder_contents(tmp_path / "run") == before  # neither its config, logs nor checkpoints touched
    assert train(config, resume="latest").step == 2


def logged_steps(output_dir: Path) -> list[int]:
    lines = (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_the_log_keeps_one_record_a_step_over_resumes_and_fresh_starts(tiny_model_dir, video_folder, tmp_path):
    run = tmp_path / "run"
    config = load_config(values=tiny_config_values(tiny_model_dir, video_folder, run, checkpointing__every_steps=2))
    train(config, stop_after=3)  # checkpoints at steps 2 and 3, records 1-3
    assert logged_steps(run) == [1, 2, 3]
    train(config, resume=str(run / "checkpoints" / "step-00000002"))  # makes step 3 again
    assert logged_steps(run) == [1, 2, 3, 4]
    shutil.rmtree(run / "checkpoints")  # a run killed before its first checkpoint leaves only logs
    train(two_step_config(tiny_model_dir, video_folder, run))
    assert logged_steps(run) == [1, 2]


@pytest.mark.parametrize("written_with_ema", [True, False])
def test_resuming_with_ema_switched_on_or_off_is_refused(tiny_model_dir, video_folder, tmp_path, written_with_ema):
    train(two_step_config(tiny_model_dir, video_folder, tmp_path / "run", ema__enabled=written_with_ema),
          stop_after=1)
    switched = two_step_config(tiny_model_dir, video_folder, tmp_path / "run", ema__enabled=not written_with_ema)
    written = "with" if written_with_ema else "without"
    with pytest.raises(ValueError, match=rf"step-00000001' was written {written} EMA .* now says ema.enabled: "
                                         rf"{str(not written_with_ema).lower()}"):
        train(switched, resume="latest")


def test_the_resumed_ema_is_moved_to_the_device_before_it_steps(tiny_model_dir, video_folder, tmp_path, monkeypatch):
    """accelerate loads registered states onto the CPU and EMAModel keeps the tensors it is
    given: on a GPU an EMA not moved after loading mixes devices in its first step. On a CPU
    only the order of the calls shows it."""
    from diffusers.training_utils import EMAModel

    config = two_step_config(tiny_model_dir, video_folder, tmp_path / "run", ema__enabled=True)
    train(config, stop_after=1)
    calls = []
    for method in ("load_state_dict", "to", "step"):
        monkeypatch.setattr(EMAModel, method, recorded(getattr(EMAModel, method), calls))

    assert train(config, resume="latest").step == 2
    after_loading = calls[calls.index("load_state_dict") + 1:]
    assert after_loading[:2] == ["to", "step"], calls


def recorded(method, calls: list):
    def wrapper(self, *args, **kwargs):
        calls.append(method.__name__)
        return method(self, *args, **kwargs)
    return wrapper
