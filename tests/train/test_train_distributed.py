"""Two processes on the CPU (gloo, launched by torchrun, joined by accelerate) train a few steps
and end with the same weights, having seen different clips."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_helpers import tiny_config_values


def test_two_processes_end_with_identical_weights(tiny_model_dir, video_folder, tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    output = tmp_path / "run"
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(tiny_config_values(tiny_model_dir, video_folder, output, max_steps=3)))
    # ACCELERATE_USE_CPU: what `accelerate launch --cpu` sets; accelerate then joins the
    # torchrun processes with gloo instead of treating each as a run of its own.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).with_name("ddp_worker.py")), str(config)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    rank0 = torch.load(output / "weights-rank0.pt")
    rank1 = torch.load(output / "weights-rank1.pt")
    assert rank0.keys() == rank1.keys()
    different = [key for key in rank0 if not torch.equal(rank0[key], rank1[key])]
    assert not different, f"ranks disagree on {different[:5]}"
    from lc4.train.models import load_components
    start = load_components(tiny_model_dir).unet.state_dict()
    assert not torch.equal(start["conv_in.weight"], rank0["unet.conv_in.weight"]), "nothing trained"
    # 4 clips on 2 ranks with batch 1: an epoch is 2 steps; only rank 0 writes the log.
    import json
    records = [json.loads(line) for line in (output / "logs/metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in records] == [(1, 0), (2, 0), (3, 1)]
