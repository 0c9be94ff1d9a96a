"""Fitting stage 1 (whole UNet trained) on 16 GB GPUs: FSDP sharding over several GPUs, 8-bit
AdamW on one, the luminance encoder in frame chunks; their configs and their memory plans."""
from __future__ import annotations

import sys

import pytest
import torch

from lc4.train import load_config
from lc4.train.memory import adamw8bit_state_bytes, format_plan, plan_memory
from train_helpers import tiny_config_values


def _config(tiny_model_dir, video_folder, tmp_path, **overrides):
    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", mixed_precision="fp16",
                                gradient_checkpointing=True, **overrides)
    return load_config(values=values)


@pytest.fixture(scope="module")
def one_gpu_plan(tiny_model_dir, video_folder, tmp_path_factory):
    """The tiny stage-1 plan at 32 px on one GPU: AdamW, no sharding, luminance in 1-frame chunks."""
    return plan_memory(_config(tiny_model_dir, video_folder, tmp_path_factory.mktemp("plan")), resolution=32)


def test_sharding_and_optimizer_config(tiny_model_dir, video_folder, tmp_path):
    default = _config(tiny_model_dir, video_folder, tmp_path)
    assert default.distributed.sharding == "none" and default.optimizer.name == "adamw"
    assert default.luminance_chunk_frames == 1
    config = load_config(values={"distributed": {"sharding": "fsdp", "fsdp_strategy": "full_shard"}})
    assert config.distributed.fsdp_strategy == "FULL_SHARD"
    assert "ResnetBlock2D" in config.distributed.fsdp_wrap
    assert load_config(values={}, overrides=["optimizer.name=adamw8bit"]).optimizer.name == "adamw8bit"
    for values, message in (({"distributed": {"sharding": "zero3"}}, "distributed.sharding"),
                            ({"distributed": {"fsdp_strategy": "HYBRID"}}, "fsdp_strategy"),
                            ({"optimizer": {"name": "sgd"}}, "optimizer.name"),
                            ({"distributed": {"sharding": "fsdp"}, "optimizer": {"name": "adamw8bit"}}, "adamw8bit"),
                            ({"distributed": {"sharding": "fsdp"}, "ema": {"enabled": True}}, "ema.enabled"),
                            ({"luminance_chunk_frames": 0}, "luminance_chunk_frames")):
        with pytest.raises(ValueError, match=message):
            load_config(values=values)


def test_fsdp_plugin_is_accelerates():
    from accelerate import FullyShardedDataParallelPlugin

    from lc4.train.memory import fsdp_plugin
    config = load_config(values={"distributed": {"sharding": "fsdp"}})
    plugin = fsdp_plugin(config, "fp16")
    assert isinstance(plugin, FullyShardedDataParallelPlugin) and plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is False  # SHARD_GRAD_OP
    assert plugin.mixed_precision_policy.param_dtype == torch.float16
    full = fsdp_plugin(load_config(values={"distributed": {"sharding": "fsdp", "fsdp_strategy": "FULL_SHARD"}}), "fp16")
    assert full.reshard_after_forward is True


def test_plan_per_gpu_memory_decreases_with_fsdp_gpus(tiny_model_dir, video_folder, tmp_path, one_gpu_plan):
    fsdp = _config(tiny_model_dir, video_folder, tmp_path, distributed={"sharding": "fsdp"})
    plans = [one_gpu_plan, *(plan_memory(fsdp, resolution=32, num_gpus=n) for n in (2, 4))]
    for fewer, more in zip(plans, plans[1:]):
        assert more.trainable_parameters == fewer.trainable_parameters
        assert more.gradients < fewer.gradients and more.optimizer_states < fewer.optimizer_states
        assert more.weights["unet (with TDA)"] < fewer.weights["unet (with TDA)"]
        assert more.peak < fewer.peak
    # Shards are 1/N of the trained weights (FSDP pads each parameter to a multiple of N).
    assert plans[2].gradients == pytest.approx(plans[0].gradients / 4, rel=0.05)
    assert plans[2].optimizer_states == pytest.approx(plans[0].optimizer_states / 4, rel=0.05)
    assert plans[0].weights["vae"] == plans[2].weights["vae"]  # frozen, outside the sharded model
    assert "4 GPU(s), FSDP SHARD_GRAD_OP" in format_plan(plans[2])
    # ZeRO-3-like: the gathered weights are freed after each unit's forward.
    full = plan_memory(_config(tiny_model_dir, video_folder, tmp_path,
                               distributed={"sharding": "fsdp", "fsdp_strategy": "FULL_SHARD"}), resolution=32, num_gpus=4)
    assert full.gradients == plans[2].gradients and full.peak <= plans[2].peak


def test_plan_accounts_adamw8bit_states(tiny_model_dir, video_folder, tmp_path, one_gpu_plan):
    adamw = one_gpu_plan
    eight = plan_memory(_config(tiny_model_dir, video_folder, tmp_path, optimizer={"name": "adamw8bit"}), resolution=32)
    assert eight.optimizer_states < adamw.optimizer_states / 2 and eight.peak < adamw.peak
    assert "AdamW8bit states" in format_plan(eight)
    big, small = torch.empty(10_000), torch.empty(100)
    assert adamw8bit_state_bytes(big) == 2 * 10_000 + 2 * 4 * 40  # uint8 moments + a float32 scale per 256
    assert adamw8bit_state_bytes(small) == 8 * 100  # bitsandbytes keeps 32-bit states below 4096 values


def test_luminance_chunks_give_the_same_outputs_and_gradients(tiny_model_dir):
    from lc4.luminance import LuminanceEncoder
    # float64: chunking only reorders sums (weight gradients add up over frames chunk by chunk);
    # in float64 that rounding is far below the tolerance, any real difference is not.
    encoder = LuminanceEncoder.from_pretrained(tiny_model_dir / "luminance_encoder").double()
    torch.nn.init.normal_(encoder.latent_proj.weight, std=0.1)
    for proj in encoder.skip_projs:
        torch.nn.init.normal_(proj.weight, std=0.1)
    encoder.enable_gradient_checkpointing()
    luminance = torch.rand(5, 1, 16, 16, dtype=torch.float64) * 2 - 1

    def run(chunk):
        encoder.zero_grad()
        encoder.checkpoint_chunk_frames = chunk
        out = encoder(luminance)
        (out.latent_residual.square().sum() + out.features.sum() + sum(s.square().sum() for s in out.skips)).backward()
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        return out, grads

    whole, whole_grads = run(None)
    assert len(whole_grads) > 10
    for chunk in (1, 2):  # 2 does not divide 5: a shorter last chunk
        out, grads = run(chunk)
        torch.testing.assert_close(out.latent_residual, whole.latent_residual, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.features, whole.features, rtol=1e-12, atol=1e-12)
        for a, b in zip(out.skips, whole.skips):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert grads.keys() == whole_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], whole_grads[name], rtol=1e-12, atol=1e-12)


def test_luminance_chunks_lower_the_peak_of_its_backward(tiny_model_dir):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lc4.luminance import LuminanceEncoder
    from lc4.train.memory import LiveMemoryTracker

    def peak(chunk):
        with FakeTensorMode():
            encoder = LuminanceEncoder.from_config(LuminanceEncoder.load_config(tiny_model_dir / "luminance_encoder"))
            encoder.enable_gradient_checkpointing()
            encoder.checkpoint_chunk_frames = chunk
            tracker = LiveMemoryTracker()
            with tracker:
                tracker.track(encoder.parameters())
                out = encoder(torch.rand(8, 1, 128, 128) * 2 - 1, return_skips=False)
                out.latent_residual.square().sum().backward()
        return tracker.peak

    whole, chunked = peak(None), peak(1)
    assert chunked < 0.6 * whole, (chunked, whole)


def test_adamw8bit_without_bitsandbytes_is_a_clear_error(monkeypatch):
    from lc4.train.optim import build_optimizer
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    optim = load_config(values={"optimizer": {"name": "adamw8bit"}}).optimizer
    with pytest.raises(ValueError, match="pip install bitsandbytes"):
        build_optimizer([torch.nn.Parameter(torch.zeros(4))], optim, torch.device("cpu"))


def test_adamw8bit_trains(tiny_model_dir, video_folder, tmp_path):
    """Runs only where bitsandbytes' 8-bit optimizer runs on the CPU (bitsandbytes >= 0.48)."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes

    from lc4.train import train
    probe = torch.nn.Parameter(torch.zeros(4096))
    probe.grad = torch.ones(4096)
    try:
        bitsandbytes.optim.AdamW8bit([probe]).step()
    except Exception as error:  # no CPU kernels in this bitsandbytes
        pytest.skip(f"bitsandbytes AdamW8bit does not run on this CPU: {error}")
    config = load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=2,
                                                   optimizer={"name": "adamw8bit", "lr": 1e-3}))
    result = train(config)
    assert result.step == 2
    from lc4.train.models import load_components
    start = load_components(tiny_model_dir).unet.state_dict()
    trained = result.denoiser.state_dict()
    assert not torch.equal(start["conv_in.weight"], trained["unet.conv_in.weight"])
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())


def test_plan_memory_command_with_num_gpus(tiny_model_dir, video_folder, tmp_path, capsys):
    import yaml

    from lc4.cli import main
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run")))
    assert main(["train", str(path), "--plan-memory", "--resolution", "32", "--dtype", "fp16", "--num-gpus", "2",
                 "--set", "distributed.sharding=fsdp", "--set", "distributed.fsdp_strategy=FULL_SHARD"]) == 0
    assert "2 GPU(s), FSDP FULL_SHARD: per GPU" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
