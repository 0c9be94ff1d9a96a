"""The TDA layer (seed Sec. 3.2): identity at initialisation, the reference grid and offsets,
Eq. 1-3 written out by hand, backends, gradients, input checks."""
from __future__ import annotations

import math

import pytest
import torch

import lc4_kernels
from lc4.tda import TemporalContext, TemporallyDeformableAttention, reference_grid

from model_helpers import randomize_


def make_tda(**options) -> TemporallyDeformableAttention:
    torch.manual_seed(0)
    options = {"dim": 16, "num_heads": 4, "spatial_stride": 2, "temporal_stride": 2, **options}
    return TemporallyDeformableAttention(**options).double()


def test_fresh_tda_is_an_exact_identity_and_has_zero_offsets():
    tda = make_tda()
    hidden = torch.randn(2 * 5, 7 * 6, 16, dtype=torch.float64)
    out = tda(hidden, TemporalContext(5, (7, 6)))
    assert torch.equal(out, hidden)
    x = hidden.view(2, 5, 7, 6, 16)
    points = tda.deformed_points(tda.norm(x))
    grid = reference_grid(5, 7, 6, (2, 2, 2), dtype=torch.float64)
    assert torch.equal(points, grid[None, :, None].expand_as(points))


def test_reference_grid_is_uniform_inside_the_volume_and_matches_the_offset_conv():
    grid = reference_grid(8, 64, 64, (2, 4, 4))
    assert grid.shape == (4 * 16 * 16, 3)  # Nk = 1024 for an 8-frame clip at 64x64 latents
    assert set(grid[:, 0].tolist()) == set(range(0, 64, 4))  # x
    assert set(grid[:, 2].tolist()) == {0.0, 2.0, 4.0, 6.0}  # t
    odd = reference_grid(5, 7, 9, (2, 4, 4))
    assert odd[:, 0].max() <= 8 and odd[:, 1].max() <= 6 and odd[:, 2].max() <= 4
    tda = make_tda(spatial_stride=4)
    x = torch.randn(1, 5, 7, 9, 16, dtype=torch.float64)
    assert tda.deformed_points(x).shape[1] == odd.shape[0] == math.ceil(5 / 2) * math.ceil(7 / 4) * math.ceil(9 / 4)


def test_offsets_are_bounded_by_alpha():
    tda = make_tda(alpha=2.0)
    with torch.no_grad():
        tda.offset_out.bias.fill_(50.0)  # tanh saturates
    x = torch.randn(1, 4, 6, 6, 16, dtype=torch.float64)
    offsets = tda.deformed_points(x) - reference_grid(4, 6, 6, (2, 2, 2), dtype=torch.float64)[None, :, None]
    assert torch.allclose(offsets, torch.full_like(offsets, 2.0))


def test_attend_equals_equations_1_to_3_written_out():
    """Eq. 1: sample h at the deformed points, then project (here: by trilinear_sample);
    Eq. 3: per-head softmax(q k~^T / sqrt(d)) v~, concatenated, then W_h."""
    tda = randomize_(make_tda(offset_groups=2)).double()
    B, Fr, H, W, C, heads = 2, 4, 5, 6, 16, 4
    x = torch.randn(B, Fr, H, W, C, dtype=torch.float64)
    normed = tda.norm(x)
    points = tda.deformed_points(normed)  # (B, Nk, G, 3)
    groups, d = points.shape[2], C // heads
    # Sample h once per offset group, then project with each head's slice of W_k, W_v.
    value = normed.unsqueeze(4).expand(B, Fr, H, W, groups, C).contiguous()
    sampled = lc4_kernels.trilinear_sample(value, points, backend="reference")  # (B, Nk, G, C)
    q = tda.to_q(normed).reshape(B, -1, heads, d)
    outs = []
    for h in range(heads):
        g = h // (heads // groups)
        k_h = sampled[:, :, g] @ tda.to_k.weight[h * d:(h + 1) * d].T
        v_h = sampled[:, :, g] @ tda.to_v.weight[h * d:(h + 1) * d].T
        attn = torch.softmax(q[:, :, h] @ k_h.transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(attn @ v_h)
    expected = tda.to_out(torch.cat(outs, dim=-1)).view(B, Fr, H, W, C)
    assert torch.allclose(tda.attend(x), expected, atol=1e-10)


def test_trained_tda_mixes_frames():
    tda = randomize_(make_tda())
    hidden = torch.randn(3 * 4, 6 * 6, 16, dtype=torch.float64)
    context = TemporalContext(3, (6, 6))
    out = tda(hidden, context)
    assert not torch.allclose(out, hidden)
    changed = hidden.clone()
    changed[2] += torch.randn_like(changed[2])  # a later frame of the first video (not a constant: LN)
    other = tda(changed, context)
    assert not torch.allclose(other[0], out[0])  # frame 0 sees frame 2
    assert torch.equal(other[3:], out[3:])  # the other videos do not


@pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")
def test_reference_and_cpu_backends_agree_in_the_layer():
    tda = randomize_(make_tda()).float()
    hidden = torch.randn(2 * 4, 6 * 5, 16)
    context = TemporalContext(4, (6, 5))
    tda.backend = "reference"
    expected = tda(hidden, context)
    tda.backend = "cpu"
    assert torch.allclose(tda(hidden, context), expected, atol=1e-5)


def test_gradients_reach_every_parameter():
    tda = randomize_(make_tda())
    hidden = torch.randn(4, 6 * 6, 16, dtype=torch.float64, requires_grad=True)
    tda(hidden, TemporalContext(4, (6, 6))).square().sum().backward()
    for name, param in tda.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert hidden.grad.abs().sum() > 0


def test_per_sample_gradients_with_torch_func_equal_one_backward_per_clip():
    """functional_call + vmap(grad) over the clips of a batch (per-sample gradients, e.g. for
    DP-SGD or influence scores) against a plain backward of each clip alone."""
    from torch import func

    tda = randomize_(make_tda())
    tda.backend = "cpu"
    context = TemporalContext(2, (4, 4))
    clips = torch.randn(3, 2, 4 * 4, 16, dtype=torch.float64)  # 3 clips of (F * 1, H * W, C)
    params = {name: p.detach() for name, p in tda.named_parameters()}

    def loss(params, clip):
        return func.functional_call(tda, params, (clip, context)).square().sum()

    per_sample = func.vmap(func.grad(loss), in_dims=(None, 0))(params, clips)
    for i, clip in enumerate(clips):
        tda.zero_grad()
        tda(clip, context).square().sum().backward()
        for name, param in tda.named_parameters():
            torch.testing.assert_close(per_sample[name][i], param.grad, rtol=1e-9, atol=1e-10, msg=name)


def test_compress_returns_one_token_per_reference_point():
    tda = make_tda()
    x = torch.randn(2, 4, 6, 6, 16, dtype=torch.float64)
    tokens = tda.compress(x)
    assert tokens.shape == (2, 2 * 3 * 3, 16)
    assert torch.equal(tokens, x[:, ::2, ::2, ::2].reshape(2, -1, 16))  # fresh: the features at the grid


def test_bad_inputs_name_the_argument_and_shape():
    tda = make_tda()
    with pytest.raises(ValueError, match="hidden_states.*num_frames=3"):
        tda(torch.randn(4, 36, 16, dtype=torch.float64), TemporalContext(3, (6, 6)))
    with pytest.raises(ValueError, match=r"hidden_states: expected \(B\*F, H\*W, 16\)"):
        tda(torch.randn(4, 36, 8, dtype=torch.float64), TemporalContext(4, (6, 6)))
    with pytest.raises(ValueError, match="35 tokens"):
        tda(torch.randn(4, 35, 16, dtype=torch.float64), TemporalContext(4, (6, 6)))
    with pytest.raises(ValueError, match="offset_groups"):
        TemporallyDeformableAttention(16, num_heads=4, offset_groups=3)


def test_deformed_points_are_the_grid_plus_alpha_tanh_of_each_points_offsets():
    """Step (ii) point by point: the reference point ``(ix * Nrs, iy * Nrs, it * Nrt)`` (t-major
    order) plus ``alpha * tanh`` of the offset conv's (dx, dy, dt) at that point, per group."""
    ss, st, alpha, groups = 3, 2, 3.0, 2
    tda = randomize_(make_tda(offset_groups=groups, spatial_stride=ss, temporal_stride=st, alpha=alpha))
    B, Fr, H, W = 2, 5, 7, 8
    x = torch.randn(B, Fr, H, W, 16, dtype=torch.float64)
    raw = tda.offset_out(tda.offset_act(tda.offset_conv(tda.to_offset_features(x).permute(0, 4, 1, 2, 3))))
    fp, hp, wp = math.ceil(Fr / st), math.ceil(H / ss), math.ceil(W / ss)
    assert raw.shape == (B, 3 * groups, fp, hp, wp)
    assert 0.05 < raw.abs().max() < 1  # offsets in tanh's curved range, not saturated
    expected = torch.empty(B, fp * hp * wp, groups, 3, dtype=torch.float64)
    for it in range(fp):
        for iy in range(hp):
            for ix in range(wp):
                j = (it * hp + iy) * wp + ix
                for g in range(groups):
                    dx, dy, dt = raw[:, 3 * g:3 * g + 3, it, iy, ix].unbind(1)
                    expected[:, j, g, 0] = ix * ss + alpha * torch.tanh(dx)
                    expected[:, j, g, 1] = iy * ss + alpha * torch.tanh(dy)
                    expected[:, j, g, 2] = it * st + alpha * torch.tanh(dt)
    assert torch.allclose(tda.deformed_points(x), expected, atol=1e-12)


@pytest.mark.parametrize("height, width", [(5, 7), (7, 5)])
def test_forward_is_the_residual_plus_attention_of_each_video_laid_out_as_h_by_w(height, width):
    """``(B*F, H*W, C)``: video-major frames, row-major tokens; TDA runs per video of F frames."""
    tda = randomize_(make_tda())
    videos, frames = 3, 4
    hidden = torch.randn(videos * frames, height * width, 16, dtype=torch.float64)
    out = tda(hidden, TemporalContext(frames, (height, width)))
    x = hidden.view(videos, frames, height, width, 16)
    expected = torch.stack([x[v:v + 1] + tda.attend(x[v:v + 1]) for v in range(videos)])
    assert torch.allclose(out, expected.reshape_as(hidden), atol=1e-12)


@pytest.mark.parametrize("latent", [(13, 7), (9, 16), (8, 8)])
def test_level_sizes_follow_the_unet_downsampling(latent):
    """Each UNet level is what diffusers' stride-2 3x3 conv (padding 1) makes of the one above."""
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    sample = torch.zeros(1, 1, *latent)
    context = TemporalContext(1, latent)
    for _ in range(3):
        height, width = sample.shape[-2:]
        assert context.level_size(height * width) == (height, width)
        sample = conv(sample)


def test_compress_is_the_layer_output_at_the_reference_points():
    """CMPF's TDA(y_lum): the queries are the features at the reference points, so the tokens are
    the full layer's output (residual included) there, with distinct spatial and temporal strides."""
    tda = randomize_(make_tda(spatial_stride=3, temporal_stride=2))
    x = torch.randn(2, 5, 7, 8, 16, dtype=torch.float64)
    full = x + tda.attend(x)
    expected = full[:, ::2, ::3, ::3].reshape(2, -1, 16)
    assert torch.allclose(tda.compress(x), expected, atol=1e-12)


def test_half_precision_layers_keep_point_coordinates_in_float32():
    """bfloat16 holds integers exactly only up to 256: a point at x = 257 would move."""
    tda = make_tda(spatial_stride=1, temporal_stride=1).to(torch.bfloat16)
    x = torch.randn(1, 2, 2, 260, 16, dtype=torch.bfloat16)
    points = tda.deformed_points(x)
    assert points.dtype == torch.float32
    grid = reference_grid(2, 2, 260, (1, 1, 1))  # float32
    assert grid[:, 0].max() == 259
    assert torch.equal(points, grid[None, :, None].expand_as(points))  # fresh: zero offsets
