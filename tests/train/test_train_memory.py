"""``--plan-memory``: the simulated peak of one step grows as it must and holds what it must;
the luminance encoder's gradient checkpointing computes the same gradients."""
from __future__ import annotations

import pytest
import torch

from lc4.train import load_config
from lc4.train.memory import GIB, format_plan, plan_memory
from train_helpers import tiny_config_values


@pytest.fixture
def tiny_config(tiny_model_dir, video_folder, tmp_path):
    return load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path, mixed_precision="fp16"))


def test_tiny_plan_is_sane(tiny_config):
    from dataclasses import replace

    small = plan_memory(tiny_config, resolution=32, frames=8, batch_size=1)
    assert small.trainable_parameters > 0 and not small.gradient_checkpointing
    assert small.gradients == 4 * small.trainable_parameters
    assert small.optimizer_states == 8 * small.trainable_parameters
    # The peak holds at least the resident weights, the AdamW states and the gradients.
    assert small.peak >= small.static + small.gradients
    larger = plan_memory(tiny_config, resolution=64, frames=8, batch_size=1)
    longer = plan_memory(tiny_config, resolution=32, frames=16, batch_size=1)
    for plan in (larger, longer):
        assert plan.peak > small.peak and plan.static == small.static
    checkpointed = plan_memory(replace(tiny_config, gradient_checkpointing=True), resolution=64)
    assert checkpointed.peak < larger.peak
    stage2 = plan_memory(replace(tiny_config, stage=2, gradient_checkpointing=True), resolution=64)
    assert stage2.trainable_parameters < checkpointed.trainable_parameters
    assert stage2.optimizer_states < checkpointed.optimizer_states and stage2.peak < checkpointed.peak
    text = format_plan(small)
    assert "1 x 8 at 32x32 px, fp16" in text and "peak of the step" in text
    # A trained text encoder is held in float32 (frozen, in fp16) with its gradients and states.
    with_text = plan_memory(replace(tiny_config, trainable=["unet", "tda", "luminance_encoder", "text_encoder"]),
                            resolution=32, frames=8, batch_size=1)
    text_params = with_text.trainable_parameters - small.trainable_parameters
    assert text_params > 0 and with_text.gradients == small.gradients + 4 * text_params
    assert with_text.optimizer_states == small.optimizer_states + 8 * text_params
    assert with_text.weights["text_encoder"] == 2 * small.weights["text_encoder"] >= 2 * 2 * text_params
    assert with_text.peak > small.peak
    # CMPF trained in stage 1 is on the GPU, in the step and in the optimizer; otherwise it is not.
    assert "cmpf" not in small.weights
    with_cmpf = plan_memory(replace(tiny_config, trainable=["unet", "tda", "luminance_encoder", "cmpf"]),
                            resolution=32, frames=8, batch_size=1)
    cmpf_params = with_cmpf.trainable_parameters - small.trainable_parameters
    assert cmpf_params > 0 and with_cmpf.weights["cmpf"] > 0
    assert with_cmpf.optimizer_states == small.optimizer_states + 8 * cmpf_params
    assert with_cmpf.peak > small.peak


def test_sd15_stage2_plan_at_512(tmp_path):
    """The SD1.5 architecture (no model folder needed): stage 2 at 512 px, 8 frames, batch 1."""
    config = load_config(values={"stage": 2, "model": {"path": str(tmp_path / "absent")}, "batch_size": 1,
                                 "data": {"resolution": 512}})
    plan = plan_memory(config)
    assert plan.architecture.startswith("SD1.5")
    assert 3.3 * GIB < plan.weights["unet (with TDA)"] < 3.6 * GIB  # 860 M float32 UNet + TDA
    assert plan.weights["vae"] < 0.2 * GIB  # frozen, fp16
    assert 4 * GIB < plan.peak < 16 * GIB
    assert "fits a 16 GB GPU" in format_plan(plan)


def test_plan_memory_command(tiny_model_dir, video_folder, tmp_path, capsys):
    import yaml

    from lc4.cli import main
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run")))
    assert main(["train", str(path), "--plan-memory", "--resolution", "48", "--frames", "8", "--batch-size", "1",
                 "--dtype", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "1 x 8 at 48x48 px, fp16" in out and "GiB" in out
    assert not (tmp_path / "run").exists()  # planning trains nothing


def test_luminance_encoder_checkpointing_keeps_gradients(tiny_model_dir):
    from lc4.luminance import LuminanceEncoder
    encoder = LuminanceEncoder.from_pretrained(tiny_model_dir / "luminance_encoder")
    torch.nn.init.normal_(encoder.latent_proj.weight, std=0.1)
    luminance = torch.rand(2, 1, 16, 16) * 2 - 1

    def gradients():
        encoder.zero_grad()
        out = encoder(luminance)
        (out.latent_residual.square().sum() + out.features.sum()).backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    plain = gradients()
    encoder.enable_gradient_checkpointing()
    assert encoder.encoder.gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)
