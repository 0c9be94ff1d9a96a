"""The training loop on the tiny model: learning, stage 2 freezing, kill-and-resume, bad data,
checkpoints, validation, the command line."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from lc4.train import load_config, train
from lc4.train.checkpoint import list_checkpoints
from lc4.train.data import TextVideoDataset, collate, list_videos
from lc4.train.models import LC4Denoiser, boundary_cell_weights, diffusion_loss, load_components
from train_helpers import make_dataset, tiny_config_values

EVAL_TIMESTEPS = (50, 250, 500, 750, 950)


def fixed_noise_loss(denoiser, components, batch, with_cmpf=False) -> float:
    """Eq. 9 with fixed noise at fixed timesteps: the same number for the same weights."""
    losses = []
    with torch.no_grad():
        for seed, t in enumerate(EVAL_TIMESTEPS):
            generator = torch.Generator().manual_seed(seed)
            timesteps = torch.full((batch["pixel_values"].shape[0],), t)
            losses.append(diffusion_loss(denoiser, components, batch, generator=generator, timesteps=timesteps,
                                         with_cmpf=with_cmpf).item())
    return sum(losses) / len(losses)


def eval_batch(source: Path) -> dict:
    dataset = TextVideoDataset(list_videos(source), resolution=32, num_frames=8, random_crop=False)
    return collate([dataset[(index, 7)] for index in range(len(dataset))])


def weights(module: torch.nn.Module) -> dict:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def logged_losses(output_dir: Path) -> dict[int, float]:
    """``{step: loss}`` of the run's ``logs/metrics.jsonl``."""
    records = [json.loads(line) for line in (output_dir / "logs/metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records}


def test_stage1_loss_goes_down(tiny_model_dir, video_folder, tmp_path):
    config = load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=30))
    batch = eval_batch(video_folder)
    initial = load_components(tiny_model_dir)
    before = fixed_noise_loss(LC4Denoiser(initial.unet, initial.luminance_encoder).eval(), initial, batch)

    result = train(config)

    after = fixed_noise_loss(result.denoiser.eval(), result.components, batch)
    assert result.step == 30
    assert after < 0.8 * before, f"fixed-noise loss {before:.4f} -> {after:.4f}"
    records = [json.loads(line) for line in (tmp_path / "run/logs/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert all(r["lr"] == pytest.approx(1e-3) and r["clips_per_s"] > 0 and r["memory_gib"] > 0 for r in records)
    # The trained model folder is complete and holds the trained weights.
    trained = load_components(result.model_dir)
    assert fixed_noise_loss(LC4Denoiser(trained.unet, trained.luminance_encoder).eval(), trained, batch) \
        == pytest.approx(after, rel=1e-5)


def test_stage2_trains_cmpf_and_leaves_the_unet_bitwise_unchanged(tiny_model_dir, video_folder, tmp_path):
    stage1 = train(load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path / "s1", max_steps=2)))
    start = load_components(stage1.model_dir)
    values = tiny_config_values(stage1.model_dir, video_folder, tmp_path / "s2", max_steps=4, stage=2)
    result = train(load_config(values=values))

    for name, module in (("unet", "unet"), ("luminance_encoder", "luminance_encoder")):
        before, after = weights(getattr(start, module)), weights(getattr(result.components, module))
        assert before.keys() == after.keys()
        changed = [key for key in before if not torch.equal(before[key], after[key])]
        assert not changed, f"stage 2 changed {name} weights: {changed[:5]}"
    cmpf_before, cmpf_after = weights(start.cmpf), weights(result.components.cmpf)
    assert not torch.equal(cmpf_before["proj_out.weight"], cmpf_after["proj_out.weight"])
    saved = load_components(result.model_dir)
    assert torch.equal(weights(saved.cmpf)["proj_out.weight"], cmpf_after["proj_out.weight"])
    assert all(torch.equal(v, weights(saved.unet)[k]) for k, v in weights(start.unet).items())


def train_three_steps(trainable, tiny_model_dir, video_folder, output_dir):
    """``(components before, TrainResult)`` of a 3-step stage 1 that trains ``trainable``."""
    values = tiny_config_values(tiny_model_dir, video_folder, output_dir, max_steps=3)
    values["trainable"] = trainable
    return load_components(tiny_model_dir), train(load_config(values=values))


def test_stage1_with_cmpf_trains_it_jointly_with_the_unet(tiny_model_dir, video_folder, tmp_path):
    start, result = train_three_steps(["unet", "tda", "cmpf"], tiny_model_dir, video_folder, tmp_path / "run")

    assert result.denoiser.cmpf is result.components.cmpf
    for name in ("unet", "cmpf"):
        before, after = weights(getattr(start, name)), weights(getattr(result.components, name))
        assert any(not torch.equal(before[key], after[key]) for key in before), f"{name} did not train"
    # CMPF's zero-initialised W_e (Eq. 7) left zero: the diffusion loss reaches it through the UNet.
    assert weights(result.components.cmpf)["proj_out.weight"].abs().sum() > 0
    saved = load_components(result.model_dir)
    assert all(torch.equal(tensor, weights(result.components.cmpf)[key]) for key, tensor in weights(saved.cmpf).items())


def test_trainable_text_encoder_trains_inside_the_denoiser_and_is_saved(tiny_model_dir, video_folder, tmp_path):
    start, result = train_three_steps(["unet", "tda", "text_encoder"], tiny_model_dir, video_folder, tmp_path / "run")

    assert result.denoiser.text_encoder is result.components.text_encoder
    before, after = weights(start.text_encoder), weights(result.components.text_encoder)
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert any(".layers." in key for key in changed)
    assert any(key.endswith("token_embedding.weight") for key in changed)
    saved = load_components(result.model_dir)
    assert all(torch.equal(tensor, after[key]) for key, tensor in weights(saved.text_encoder).items())
    # The default (frozen CLIP, as in the paper) leaves it bitwise as it was.
    frozen = train(load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path / "frozen",
                                                         max_steps=2)))
    assert frozen.denoiser.text_encoder is None
    assert all(torch.equal(tensor, before[key]) for key, tensor in weights(frozen.components.text_encoder).items())


def test_channels_last_trains_the_same_model(tiny_model_dir, video_folder, tmp_path):
    runs = {}
    for channels_last in (False, True):
        values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / str(channels_last), max_steps=3,
                                    channels_last=channels_last, deterministic=True)
        runs[channels_last] = train(load_config(values=values))
    conv_weight = runs[True].components.unet.conv_in.weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last) and not conv_weight.is_contiguous()
    # Same weights, data and noise: the same losses up to the convolutions' summation order.
    losses = {key: [json.loads(line)["loss"] for line in (tmp_path / str(key) / "logs/metrics.jsonl").open()]
              for key in runs}
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    # The saved folder loads back to the trained weights.
    saved, trained = weights(load_components(runs[True].model_dir).unet), weights(runs[True].components.unet)
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)


def test_denoiser_with_a_text_encoder_wants_token_ids(tiny_model_dir):
    components = load_components(tiny_model_dir)
    denoiser = LC4Denoiser(components.unet, components.luminance_encoder, text_encoder=components.text_encoder)
    embeds = torch.zeros(1, 77, components.text_encoder.config.hidden_size)
    with pytest.raises(ValueError, match=r"text: .*token ids \(B, L\)"):
        denoiser(torch.zeros(8, 4, 4, 4), torch.zeros(8, dtype=torch.long), embeds, torch.zeros(8, 1, 32, 32), 8)


def test_killed_and_resumed_run_ends_with_the_same_weights(tiny_model_dir, video_folder, tmp_path):
    # 4 clips, accumulation 2: 2 optimizer steps per epoch, so step 3 stops inside epoch 1.
    common = dict(max_steps=5, gradient_accumulation_steps=2, deterministic=True, ema__enabled=True,
                  ema__decay=0.9, optimizer__lr_scheduler="linear", optimizer__lr_warmup_steps=2,
                  logging__every_steps=2)
    whole = train(load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path / "whole", **common)))

    interrupted = load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path / "cut", **common))
    first = train(interrupted, stop_after=3)
    assert first.step == 3 and first.model_dir is None
    assert [step for step, _ in list_checkpoints(tmp_path / "cut/checkpoints")] == [3]
    resumed = train(interrupted, resume="latest")
    assert resumed.step == 5

    expected, actual = weights(whole.denoiser), weights(resumed.denoiser)
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not different, f"{len(different)} tensors differ after resuming, e.g. {different[:3]}"
    # The saved models hold the EMA weights, equal too; and they differ from the raw weights.
    saved_whole, saved_resumed = load_components(whole.model_dir), load_components(resumed.model_dir)
    assert all(torch.equal(v, weights(saved_resumed.unet)[k]) for k, v in weights(saved_whole.unet).items())
    assert not torch.equal(weights(saved_whole.unet)["conv_in.weight"], expected["unet.conv_in.weight"])
    # The same records where the windows coincide; the stop at step 3 splits the window of steps 3-4.
    log_whole, log_cut = logged_losses(tmp_path / "whole"), logged_losses(tmp_path / "cut")
    assert list(log_whole) == [2, 4, 5] and list(log_cut) == [2, 3, 4, 5]
    assert log_cut[2] == log_whole[2] and log_cut[5] == log_whole[5]
    assert (log_cut[3] + log_cut[4]) / 2 == pytest.approx(log_whole[4], rel=1e-6)


def test_each_logged_step_is_the_mean_of_its_own_micro_batches(tiny_model_dir, video_folder, tmp_path, monkeypatch):
    import lc4.train.loop

    losses = []

    def recorded_loss(*args, **kwargs):
        loss = diffusion_loss(*args, **kwargs)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(lc4.train.loop, "diffusion_loss", recorded_loss)
    # 4 clips, accumulation 3: step 1 has three micro-batches, step 2 (the epoch's last) one.
    train(load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=2,
                                                gradient_accumulation_steps=3)))
    assert len(losses) == 4
    logged = logged_losses(tmp_path / "run")
    assert logged[1] == pytest.approx(sum(losses[:3]) / 3, rel=1e-6)
    assert logged[2] == pytest.approx(losses[3], rel=1e-6)


def test_a_corrupt_and_a_short_video_are_skipped_and_reported(tiny_model_dir, tmp_path, caplog):
    source = make_dataset(tmp_path / "data", count=3, num_frames=12)
    (source / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (source / "broken.txt").write_text("a red car")
    short = make_dataset(tmp_path / "short", count=1, num_frames=4)
    shutil.copy(short / "clip00.mp4", source / "short.mp4")
    (source / "short.txt").write_text("a blue bird")

    config = load_config(values=tiny_config_values(tiny_model_dir, source, tmp_path / "run", max_steps=6,
                                                   data__num_workers=1))
    with caplog.at_level(logging.WARNING, logger="lc4.train.data"):
        result = train(config)  # one worker process: its warnings reach the log through stderr
    assert result.step == 6 and result.model_dir is not None

    dataset = TextVideoDataset(list_videos(source), resolution=32, num_frames=8)
    names = [item.path.name for item in dataset.items]
    with caplog.at_level(logging.WARNING, logger="lc4.train.data"):
        caplog.clear()
        sample = dataset[(names.index("broken.mp4"), 0)]
        sample_short = dataset[(names.index("short.mp4"), 0)]
    assert dataset.items[sample["index"]].path.name not in ("broken.mp4", "short.mp4")
    assert dataset.items[sample_short["index"]].path.name not in ("broken.mp4", "short.mp4")
    messages = [record.getMessage() for record in caplog.records]
    assert any("broken.mp4" in m for m in messages) and any("short.mp4" in m and "4 frames" in m for m in messages)


def test_checkpoints_are_complete_and_pruned(tiny_model_dir, video_folder, tmp_path):
    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=5,
                                checkpointing__every_steps=2, checkpointing__keep_last=2)
    (tmp_path / "run/checkpoints/.tmp-step-00000009").mkdir(parents=True)  # a save killed halfway
    train(load_config(values=values))
    checkpoints = list_checkpoints(tmp_path / "run/checkpoints")
    assert [step for step, _ in checkpoints] == [4, 5]
    assert not [p for p in (tmp_path / "run/checkpoints").iterdir() if p.name.startswith(".tmp-step-00000004")]
    files = {p.name for p in checkpoints[-1][1].iterdir()}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= files
    # resume latest ignores the unfinished folder and, with nothing left to do, stops at once.
    again = train(load_config(values=values), resume="latest")
    assert again.step == 5


def test_validation_colorizes_the_held_out_clip(tiny_model_dir, video_folder, tmp_path):
    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=2,
                                validation__every_steps=2, validation__num_inference_steps=2)
    result = train(load_config(values=values))
    assert result.validation_outputs == [tmp_path / "run/validation/step-00000002.mp4"]
    from lc4.video import read_video
    frames = read_video(result.validation_outputs[0])
    assert frames.shape == (8, 3, 32, 32)


def test_lc4_train_command(tiny_model_dir, video_folder, tmp_path, capsys):
    from lc4.cli import main

    config_path = tmp_path / "stage1.yaml"
    import yaml
    values = tiny_config_values(tiny_model_dir, video_folder, "run", max_steps=2)
    config_path.write_text(yaml.safe_dump(values))
    assert main(["train", str(config_path), "--set", "max_steps=3"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert (tmp_path / "run/model/unet/diffusion_pytorch_model.safetensors").is_file()
    assert load_config(tmp_path / "run/config.yaml").max_steps == 3
    assert main(["train", str(config_path), "--set", "stage=2", "--set", "trainable=[unet]"]) == 2
    assert "stage 2 freezes the UNet" in capsys.readouterr().err


def test_min_snr_weighting(tiny_model_dir):
    """snr_gamma weights each clip by min(SNR, gamma) / SNR: 1 where SNR <= gamma (high noise),
    gamma / SNR where the noise is low; None is Eq. 9's plain MSE."""
    import torch.nn as nn

    class Zero(nn.Module):
        def forward(self, noisy, *args, **kwargs):
            return torch.zeros_like(noisy)

    components = load_components(tiny_model_dir)
    pixels = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": pixels, "luminance": pixels.mean(2, keepdim=True), "captions": ["a red car", "a dog"]}
    alphas = components.noise_scheduler.alphas_cumprod

    def loss(timestep, gamma):
        return diffusion_loss(Zero(), components, batch, generator=torch.Generator().manual_seed(1),
                              timesteps=torch.tensor([timestep, timestep]), snr_gamma=gamma)

    noisy_step, clean_step = 900, 10
    assert alphas[noisy_step] / (1 - alphas[noisy_step]) < 5 < alphas[clean_step] / (1 - alphas[clean_step])
    assert torch.equal(loss(noisy_step, 5.0), loss(noisy_step, None))
    snr = alphas[clean_step] / (1 - alphas[clean_step])
    torch.testing.assert_close(loss(clean_step, 5.0), loss(clean_step, None) * 5.0 / snr)
    with pytest.raises(ValueError, match="snr_gamma: expected a positive number"):
        load_config(values={"snr_gamma": 0})


def test_boundary_cell_weights_mark_cells_holding_two_labels():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4, :4] = 2  # the whole top-left 4x4 cell: one label, not an edge
    labels[0, 5, 3:6] = 1  # crosses the bottom-left cell into the bottom-right one: both hold two labels
    weights = boundary_cell_weights(labels, (2, 2), 3.0)[0, 0]
    raw = torch.tensor([[1.0, 1.0], [4.0, 4.0]])  # 1 + 3 where a cell holds two labels
    torch.testing.assert_close(weights, raw / raw.mean())
    assert torch.equal(boundary_cell_weights(torch.ones(2, 8, 8, dtype=torch.long), (4, 4), 3.0), torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="multiples of the latent"):
        boundary_cell_weights(labels, (3, 3), 1.0)


def test_boundary_weight_reweights_the_loss_on_edge_cells(tiny_model_dir):
    """With one edge cell a frame, the loss is (E + b x) / (1 + b / N): E the plain MSE, N the
    cells a frame, x that cell's error share; x from one weight predicts the loss at another."""
    import torch.nn as nn

    class Zero(nn.Module):
        def forward(self, noisy, *args, **kwargs):
            return torch.zeros_like(noisy)

    components = load_components(tiny_model_dir)
    pixels = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.zeros(2, 2, 32, 32, dtype=torch.long)
    batch = {"pixel_values": pixels, "luminance": pixels.mean(2, keepdim=True), "captions": ["a red car", "a dog"],
             "segmentation": labels}

    def loss(boundary_weight, batch=batch):
        return diffusion_loss(Zero(), components, batch, generator=torch.Generator().manual_seed(1),
                              timesteps=torch.tensor([300, 700]), boundary_weight=boundary_weight).double()

    plain = loss(0.0)
    torch.testing.assert_close(loss(5.0), plain)  # one label everywhere: no edge, nothing changes
    labels[:, :, 0, 0] = 1  # the top-left cell of every frame holds two labels
    cells = (32 // 2 ** (len(components.vae.config.block_out_channels) - 1)) ** 2
    share = (loss(1.0) * (1 + 1 / cells) - plain) / 1.0
    torch.testing.assert_close(loss(4.0), (plain + 4.0 * share) / (1 + 4.0 / cells))
    assert not torch.isclose(loss(4.0), plain)
    del batch["segmentation"]
    with pytest.raises(ValueError, match="no segmentation label maps"):
        loss(1.0)
    with pytest.raises(ValueError, match="segmentation.boundary_weight: expected >= 0"):
        load_config(values={"segmentation": {"boundary_weight": -1.0}})
    assert load_config(values={"segmentation": {"boundary_weight": 1.0}}).uses_label_maps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_target_follows_the_scheduler(tiny_model_dir, prediction_type):
    """The regression target is the noise, v = sqrt(a) * noise - sqrt(1 - a) * z0, or z0, as
    the model folder's scheduler says (a zero prediction's loss is the target's mean square)."""
    import dataclasses

    import torch.nn as nn
    from diffusers import DDPMScheduler

    from lc4.train.models import encode_frames

    class Zero(nn.Module):
        def forward(self, noisy, *args, **kwargs):
            return torch.zeros_like(noisy)

    components = load_components(tiny_model_dir)
    components = dataclasses.replace(components, noise_scheduler=DDPMScheduler.from_config(
        components.scheduler_config, prediction_type=prediction_type, rescale_betas_zero_snr=True))
    pixels = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": pixels, "luminance": pixels.mean(2, keepdim=True), "captions": ["a red car"]}
    timestep = 700
    loss = diffusion_loss(Zero(), components, batch, generator=torch.Generator().manual_seed(1),
                          timesteps=torch.tensor([timestep]))
    generator = torch.Generator().manual_seed(1)
    latents = encode_frames(components.vae, pixels.flatten(0, 1), generator)
    noise = torch.randn(latents.shape, generator=generator)
    alpha = components.noise_scheduler.alphas_cumprod[timestep]
    target = {"epsilon": noise, "sample": latents,
              "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * latents}[prediction_type]
    torch.testing.assert_close(loss, (target ** 2).mean())


def test_unknown_prediction_type_is_refused(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "flow"}))
    with pytest.raises(ValueError, match="prediction_type is 'flow'"):
        load_components(folder)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mixed_precision, checkpointing", [("no", False), ("fp16", True)])
def test_stage1_trains_on_cuda(tiny_model_dir, video_folder, tmp_path, mixed_precision, checkpointing):
    """As on the CPU, on the GPU: in float32, and in fp16 mixed precision with gradient
    checkpointing (the V100 recipe); the saved weights stay float32 and learnt."""
    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=30,
                                mixed_precision=mixed_precision, gradient_checkpointing=checkpointing)
    batch = eval_batch(video_folder)
    initial = load_components(tiny_model_dir)
    before = fixed_noise_loss(LC4Denoiser(initial.unet, initial.luminance_encoder).eval(), initial, batch)

    result = train(load_config(values=values))

    assert result.step == 30 and next(result.denoiser.parameters()).device.type == "cuda"
    records = [json.loads(line) for line in (tmp_path / "run/logs/metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["memory_gib"] > 0 for r in records)
    trained = load_components(result.model_dir)  # on the CPU
    assert next(trained.unet.parameters()).dtype == torch.float32
    after = fixed_noise_loss(LC4Denoiser(trained.unet, trained.luminance_encoder).eval(), trained, batch)
    assert after < 0.8 * before, f"fixed-noise loss {before:.4f} -> {after:.4f}"


def test_each_clip_gets_one_timestep_drawn_from_the_whole_schedule(tiny_model_dir):
    """Timesteps uniform over 0..T-1 (both ends drawn in 6000 seeded draws), one per clip, shared
    by its frames; the denoiser sees sqrt(a_t) z0 + sqrt(1 - a_t) noise at the clip's own t."""
    import torch.nn as nn

    from lc4.train.models import encode_frames

    class Recorder(nn.Module):
        def forward(self, noisy, timesteps, *args, **kwargs):
            seen.append((noisy.detach(), timesteps.detach()))
            return torch.zeros_like(noisy)

    components = load_components(tiny_model_dir)
    steps = components.noise_scheduler.config.num_train_timesteps
    pixels = torch.rand(2000, 2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": pixels, "luminance": pixels.mean(2, keepdim=True), "captions": [""] * 2000}
    seen, drawn = [], []
    with torch.no_grad():
        for seed in range(3):
            diffusion_loss(Recorder(), components, batch, generator=torch.Generator().manual_seed(seed))
            timesteps = seen[-1][1]
            assert torch.equal(timesteps[0::2], timesteps[1::2])  # both frames of a clip
            drawn.append(timesteps[0::2])
    drawn = torch.cat(drawn)
    assert drawn.min() == 0 and drawn.max() == steps - 1
    # The noisy latents of two clips at different timesteps, recomputed.
    seen.clear()
    small = {key: value[:2] for key, value in batch.items()}
    with torch.no_grad():
        diffusion_loss(Recorder(), components, small, generator=torch.Generator().manual_seed(1),
                       timesteps=torch.tensor([100, 800]))
        generator = torch.Generator().manual_seed(1)
        latents = encode_frames(components.vae, small["pixel_values"].flatten(0, 1), generator)
        noise = torch.randn(latents.shape, generator=generator)
    alphas = components.noise_scheduler.alphas_cumprod[torch.tensor([100, 100, 800, 800])].view(-1, 1, 1, 1)
    torch.testing.assert_close(seen[0][0], alphas.sqrt() * latents + (1 - alphas).sqrt() * noise)
    assert seen[0][1].tolist() == [100, 100, 800, 800]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_each_clip_by_its_own_timestep(tiny_model_dir, prediction_type):
    """Two clips at t = 900 and 10 in one batch: the loss is the mean of each clip's MSE times
    min(SNR_t, gamma) / w_t, w_t = SNR_t (epsilon) or SNR_t + 1 (v), recomputed from the noise."""
    import dataclasses

    import torch.nn as nn
    from diffusers import DDPMScheduler

    from lc4.train.models import encode_frames

    class Zero(nn.Module):
        def forward(self, noisy, *args, **kwargs):
            return torch.zeros_like(noisy)

    components = load_components(tiny_model_dir)
    components = dataclasses.replace(components, noise_scheduler=DDPMScheduler.from_config(
        components.scheduler_config, prediction_type=prediction_type))
    pixels = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": pixels, "luminance": pixels.mean(2, keepdim=True), "captions": ["a red car", "a dog"]}
    gamma, steps = 5.0, torch.tensor([900, 10])
    loss = diffusion_loss(Zero(), components, batch, generator=torch.Generator().manual_seed(1), timesteps=steps,
                          snr_gamma=gamma)
    generator = torch.Generator().manual_seed(1)
    latents = encode_frames(components.vae, pixels.flatten(0, 1), generator).unflatten(0, (2, 2))
    noise = torch.randn(latents.shape, generator=generator)
    a = components.noise_scheduler.alphas_cumprod[steps].view(2, 1, 1, 1, 1)
    target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
    snr = (a / (1 - a)).flatten()
    weight = torch.clamp(snr, max=gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    torch.testing.assert_close(loss, ((target ** 2).mean(dim=(1, 2, 3, 4)) * weight).mean())


def test_mode_latents_are_the_posterior_mean_without_or_with_the_encoding_cache(tiny_model_dir):
    """``latents: mode``: the denoiser sees sqrt(a_t) * scaled posterior mean + sqrt(1 - a_t) *
    noise, the noise the generator's first draw (no latent is drawn), from the pixels or from
    a cached posterior alike; ``sample`` draws a different latent for each generator."""
    import torch.nn as nn

    from lc4.latents import scale_latents
    from lc4.train.models import sample_latents

    class Recorder(nn.Module):
        def forward(self, noisy, *args, **kwargs):
            seen.append(noisy.detach())
            return torch.zeros_like(noisy)

    components = load_components(tiny_model_dir)
    pixels = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": pixels, "luminance": pixels.mean(2, keepdim=True), "captions": ["a red car"]}
    seen = []
    with torch.no_grad():
        diffusion_loss(Recorder(), components, batch, generator=torch.Generator().manual_seed(1),
                       timesteps=torch.tensor([600]), latents_from_mode=True)
        posterior = components.vae.encode(pixels.flatten(0, 1)).latent_dist
        mean = scale_latents(components.vae, posterior.mean)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
        cached = sample_latents(components.vae, posterior.parameters, torch.Generator().manual_seed(5), mode=True)
        draws = [sample_latents(components.vae, posterior.parameters, torch.Generator().manual_seed(s)) for s in (5, 6)]
    alpha = components.noise_scheduler.alphas_cumprod[600]
    torch.testing.assert_close(seen[0], alpha.sqrt() * mean + (1 - alpha).sqrt() * noise)
    torch.testing.assert_close(cached, mean)
    assert not torch.allclose(draws[0], draws[1]) and not torch.allclose(draws[0], mean)


def test_training_passes_the_latents_choice_and_refuses_others(tiny_model_dir, video_folder, tmp_path, monkeypatch):
    import lc4.train.loop

    seen = []

    def recorded_loss(*args, **kwargs):
        seen.append(kwargs["latents_from_mode"])
        return diffusion_loss(*args, **kwargs)

    monkeypatch.setattr(lc4.train.loop, "diffusion_loss", recorded_loss)
    train(load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=1,
                                                latents="mode")))
    assert seen == [True]
    assert load_config(values={}).latents == "sample"
    with pytest.raises(ValueError, match=r"latents: expected one of \('sample', 'mode'\), got 'mean'"):
        load_config(values={"latents": "mean"})
