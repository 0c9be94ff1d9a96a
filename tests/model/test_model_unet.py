"""The UNet with TDA: unchanged at initialisation, TDA between attn1 and attn2 in every block,
the fast kernels inside the model, gradient checkpointing, SD1.5 config, separate TDA weights."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

import lc4_kernels
from lc4.ccf import ClipPlan
from lc4.unet import (SD15_UNET_CONFIG, TDAAdapter, TDATransformerBlock, insert_tda, remove_tda, tda_removed,
                      temporal_kwargs)

from model_helpers import randomize_, recorded_tda_calls

FRAMES = 4


def unet_inputs(unet, frames=FRAMES, videos=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    sample = torch.randn(videos * frames, 4, size, size, generator=generator)
    text = torch.randn(videos * frames, 7, unet.config.cross_attention_dim, generator=generator)
    return sample, torch.tensor(500), text


def test_inserting_fresh_tda_changes_nothing(components):
    unet, adapter = components["unet"], components["tda"]
    sample, t, text = unet_inputs(unet)
    with torch.no_grad():
        plain = unet(sample, t, text).sample
        insert_tda(unet, adapter)
        with recorded_tda_calls() as calls:
            with_tda = unet(sample, t, text, cross_attention_kwargs=temporal_kwargs(sample, FRAMES)).sample
    assert len(calls) == len(adapter.blocks) > 0  # TDA really ran
    assert torch.equal(with_tda, plain)
    # ... and a trained TDA does change the output.
    randomize_(adapter)
    with torch.no_grad():
        trained = unet(sample, t, text, cross_attention_kwargs=temporal_kwargs(sample, FRAMES)).sample
    assert not torch.allclose(trained, plain, atol=1e-4)
    remove_tda(unet)
    with torch.no_grad():
        assert torch.equal(unet(sample, t, text).sample, plain)


def test_tda_runs_between_self_and_cross_attention_in_every_block(components):
    unet = insert_tda(components["unet"], components["tda"])
    blocks = [m for m in unet.modules() if isinstance(m, TDATransformerBlock)]
    plain_count = sum(1 for m in components["tda"].blocks)
    assert len(blocks) == plain_count == 7  # 2 down + 1 mid + 4 up transformer blocks in the tiny UNet
    order, handles = [], []
    for index, block in enumerate(blocks):
        for name in ("attn1", "tda", "attn2", "ff"):
            handles.append(getattr(block, name).register_forward_hook(
                lambda *_, index=index, name=name: order.append((index, name))))
    sample, t, text = unet_inputs(unet)
    with torch.no_grad():
        unet(sample, t, text, cross_attention_kwargs=temporal_kwargs(sample, FRAMES))
    for handle in handles:
        handle.remove()
    executed = {index for index, _ in order}
    assert executed == set(range(len(blocks)))
    for index in executed:
        assert [name for i, name in order if i == index] == ["attn1", "tda", "attn2", "ff"]


def test_state_dict_names_of_the_unet_do_not_change(components):
    unet = components["unet"]
    plain_keys = set(unet.state_dict())
    insert_tda(unet, components["tda"])
    keys = set(unet.state_dict())
    assert plain_keys <= keys
    assert all(".tda." in key for key in keys - plain_keys)
    with tda_removed(unet):
        assert set(unet.state_dict()) == plain_keys
    assert set(unet.state_dict()) == keys


@pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")
def test_model_output_with_reference_backend_equals_cpu_backend(components):
    from lc4.tda import set_tda_backend
    unet = insert_tda(components["unet"], randomize_(components["tda"]))
    sample, t, text = unet_inputs(unet)
    outputs = {}
    for backend in ("reference", "cpu"):
        set_tda_backend(unet, backend)
        with recorded_tda_calls() as calls, torch.no_grad():
            outputs[backend] = unet(sample, t, text, cross_attention_kwargs=temporal_kwargs(sample, FRAMES)).sample
        assert {call["backend"] for call in calls} == {backend}
    assert torch.allclose(outputs["cpu"], outputs["reference"], atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(components):
    unet = insert_tda(components["unet"], randomize_(components["tda"], std=0.05))
    sample, t, text = unet_inputs(unet, videos=1)

    def tda_grads():
        unet.zero_grad(set_to_none=True)
        out = unet(sample, t, text, cross_attention_kwargs=temporal_kwargs(sample, FRAMES)).sample
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in unet.named_parameters() if ".tda." in n}

    unet.train()
    plain = tda_grads()
    unet.enable_gradient_checkpointing()
    checkpointed_calls = []
    transformer = next(m for m in unet.modules() if hasattr(m, "transformer_blocks"))
    original = transformer._gradient_checkpointing_func
    transformer._gradient_checkpointing_func = lambda *a: checkpointed_calls.append(type(a[0])) or original(*a)
    checkpointed = tda_grads()
    assert checkpointed_calls and set(checkpointed_calls) == {TDATransformerBlock}
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        assert plain[name].abs().sum() > 0, name
        assert torch.allclose(checkpointed[name], plain[name], atol=1e-6, rtol=1e-4), name


def test_sd15_adapter_has_16_layers_with_1024_key_points_at_512px():
    from accelerate import init_empty_weights
    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        adapter = TDAAdapter.from_unet(unet)
    config = adapter.config
    assert len(config.block_dims) == 16
    by_width = {}
    for dim, stride in zip(config.block_dims, config.block_spatial_strides):
        by_width.setdefault(dim, set()).add(stride)
    assert by_width == {320: {4}, 640: {2}, 1280: {1}}
    assert set(config.block_heads) == {8} and config.temporal_stride == 2 and config.alpha == 4.0
    latent = {320: 64, 640: 32, 1280: 16}  # 512 px; the 8x8 level also has 1280 channels
    for dim in (320, 640):
        side = latent[dim] // by_width[dim].pop()
        assert side * side * (8 // config.temporal_stride) == 1024


def test_tda_weights_are_saved_in_their_own_file(components, tmp_path):
    unet, adapter = components["unet"], randomize_(components["tda"])
    insert_tda(unet, adapter)
    adapter.save_pretrained(tmp_path / "tda")
    with tda_removed(unet):
        unet.save_pretrained(tmp_path / "unet")
    unet_weights = load_file(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    tda_weights = load_file(tmp_path / "tda" / "diffusion_pytorch_model.safetensors")
    assert not any("tda" in key for key in unet_weights)
    assert set(tda_weights) == set(adapter.state_dict())
    assert json.loads((tmp_path / "tda" / "config.json").read_text())["block_dims"] == list(adapter.config.block_dims)
    loaded = TDAAdapter.from_pretrained(tmp_path / "tda", local_files_only=True)
    for key, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_temporal_context_and_mismatched_adapter_are_errors(components):
    unet = insert_tda(components["unet"], components["tda"])
    sample, t, text = unet_inputs(unet)
    with pytest.raises(ValueError, match="cross_attention_kwargs.*temporal"):
        unet(sample, t, text)
    with pytest.raises(ValueError, match=r"sample: expected \(B\*3"):
        temporal_kwargs(sample, 3)
    small = TDAAdapter([32], [4], [1])
    with pytest.raises(ValueError, match="adapter: has 1 TDA layers"):
        insert_tda(unet, small)


def test_clip_plan_reaches_every_tda_block(components):
    unet = insert_tda(components["unet"], randomize_(components["tda"]))
    frames = 6
    sample, t, text = unet_inputs(unet, frames=frames, videos=1)
    plan = ClipPlan.skip_windows(frames, frames_per_clip=3)
    with recorded_tda_calls() as calls, torch.no_grad():
        unet(sample, t, text, cross_attention_kwargs=temporal_kwargs(sample, frames, plan))
    assert max(call["k"][1] for call in calls) <= 3  # clips, never the whole video
    assert all(call["k"][0] <= plan.clips_per_batch for call in calls)


def test_temporal_kwargs_describe_frames_and_latent_height_width():
    sample = torch.zeros(2 * 3, 4, 6, 10)
    temporal = temporal_kwargs(sample, 3)["temporal"]
    assert temporal.num_frames == 3 and temporal.latent_size == (6, 10)


def test_text_attention_mask_reaches_the_cross_attention(components):
    """``encoder_attention_mask`` masks text tokens in the cross-attention with TDA inserted as
    in the plain UNet (a fresh TDA changes nothing)."""
    unet = components["unet"]
    sample, t, text = unet_inputs(unet)
    mask = torch.ones(text.shape[:2], dtype=torch.bool)
    mask[:, 3:] = False
    with torch.no_grad():
        plain = unet(sample, t, text, encoder_attention_mask=mask).sample
        assert not torch.allclose(plain, unet(sample, t, text).sample, atol=1e-4)  # the mask matters
        insert_tda(unet, components["tda"])
        with_tda = unet(sample, t, text, encoder_attention_mask=mask,
                        cross_attention_kwargs=temporal_kwargs(sample, FRAMES)).sample
    assert torch.equal(with_tda, plain)


def test_fresh_tda_keeps_each_blocks_own_layer_norms(components):
    """The block's norm1, norm2 and norm3 stay before attn1, attn2 and ff (fresh layer norms are
    all alike, so they are given distinct affine weights here, as a trained UNet has)."""
    unet = components["unet"]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "transformer_blocks" in name and ".norm" in name:
                param.copy_(param + 0.3 * torch.randn(param.shape, generator=generator))
    sample, t, text = unet_inputs(unet)
    with torch.no_grad():
        plain = unet(sample, t, text).sample
        insert_tda(unet, components["tda"])
        with_tda = unet(sample, t, text, cross_attention_kwargs=temporal_kwargs(sample, FRAMES)).sample
    assert torch.equal(with_tda, plain)
