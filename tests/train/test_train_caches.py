"""The training caches: decoded videos kept by the dataset (``data.cache_frames``) and the frozen
encoders' outputs kept per frame (``data.cache_encodings``)."""
from __future__ import annotations

import json

import pytest
import torch

from lc4 import video as video_io
from lc4.train import load_config, train
from lc4.train.data import TextVideoDataset, collate, list_videos, probe, resized_size
from lc4.train.encoding_cache import FrozenEncodingCache
from lc4.train.models import LC4Denoiser, diffusion_loss, load_components
from train_helpers import labelled_source, make_dataset, tiny_config_values

SAMPLE_KEYS = ("pixel_values", "luminance", "segmentation", "frame_keys")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return labelled_source(tmp_path_factory.mktemp("labelled"), count=3, num_frames=10)


@pytest.mark.parametrize("num_frames, stride", [(1, 1), (4, 2)])
@pytest.mark.parametrize("source", ["mp4", "frame folders with labels"])
def test_cached_frames_give_the_same_samples_and_decode_each_video_once(
        source, num_frames, stride, labelled, video_folder, monkeypatch):
    items = list_videos(labelled if source != "mp4" else video_folder)
    settings = dict(resolution=24, num_frames=num_frames, frame_stride=stride, random_crop=True,
                    caption_dropout=0.3, segmentation=source != "mp4")
    plain, cached = TextVideoDataset(items, **settings), TextVideoDataset(items, cache_frames=True, **settings)
    decoded = []
    original = video_io.iter_frames
    monkeypatch.setattr(video_io, "iter_frames", lambda path, *a, **k: decoded.append(path) or original(path, *a, **k))
    for seed in range(3 * len(items)):
        key = (seed % len(items), seed)
        expected, actual = plain[key], cached[key]
        assert expected["caption"] == actual["caption"] and expected["index"] == actual["index"]
        for name in SAMPLE_KEYS:
            if name in expected or name in actual:
                assert torch.equal(expected[name], actual[name]), (name, key)
    cached_decodes = len(decoded) - 3 * len(items)  # the plain dataset decodes once per sample
    assert cached_decodes == len(items)


def test_frame_keys_name_the_source_frame_and_the_crop(labelled):
    items = list_videos(labelled)
    dataset = TextVideoDataset(items, resolution=24, num_frames=3, frame_stride=3, random_crop=True,
                               cache_frames=True)
    seen_crops = set()
    for seed in range(8):
        sample = dataset[(seed % len(items), seed)]
        assert sample["frame_keys"].shape == (3, 4) and sample["frame_keys"].dtype == torch.int64
        for frame, (index, source_frame, top, left) in zip(sample["pixel_values"], sample["frame_keys"].tolist()):
            path = items[index].path
            count, height, width = probe(path)
            pixels = next(video_io.iter_frames(path, resized_size(height, width, 24), source_frame, source_frame + 1))
            window = torch.from_numpy(pixels[top:top + 24, left:left + 24]).permute(2, 0, 1).float() / 127.5 - 1
            assert torch.allclose(frame, window, atol=1e-6)
            seen_crops.add((top, left))
        assert sample["frame_keys"][:, 1].diff().eq(3).all()
    assert len(seen_crops) > 1


@pytest.fixture(scope="module")
def components(tiny_model_dir):
    return load_components(tiny_model_dir)


@pytest.fixture(scope="module")
def batch(video_folder):
    dataset = TextVideoDataset(list_videos(video_folder), resolution=32, num_frames=2, random_crop=True)
    return collate([dataset[(index, 5 + index)] for index in range(len(dataset))])


def test_encoding_cache_keeps_each_frame_encoded_alone(components, batch):
    pixels, luminance = batch["pixel_values"].flatten(0, 1), batch["luminance"].flatten(0, 1)
    keys = batch["frame_keys"].flatten(0, 1)
    cache = FrozenEncodingCache(components.vae, components.luminance_encoder, with_features=True)
    posterior, lum = cache.lookup(pixels, luminance, keys)
    assert (cache.misses, cache.hits, len(cache)) == (len(keys), 0, len(keys))
    with torch.no_grad():
        for row in range(len(keys)):
            alone = components.vae.encode(pixels[row:row + 1]).latent_dist.parameters
            lum_alone = components.luminance_encoder(luminance[row:row + 1], return_skips=False)
            assert torch.equal(posterior[row:row + 1], alone)
            assert torch.equal(lum.latent_residual[row:row + 1], lum_alone.latent_residual)
            assert torch.equal(lum.features[row:row + 1], lum_alone.features)
        together = components.vae.encode(pixels).latent_dist.parameters
    torch.testing.assert_close(posterior, together, rtol=1e-5, atol=1e-5)

    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))
    again, lum_again = cache.lookup(pixels[order], luminance[order], keys[order])
    assert (cache.misses, cache.hits) == (len(keys), len(keys))
    assert torch.equal(again, posterior[order]) and torch.equal(lum_again.features, lum.features[order])
    without = FrozenEncodingCache(components.vae, components.luminance_encoder).lookup(pixels, luminance, keys)[1]
    assert without.features is None and torch.equal(without.latent_residual, lum.latent_residual)


def test_encoding_cache_wants_one_integer_key_row_per_frame(components, batch):
    pixels, luminance = batch["pixel_values"].flatten(0, 1), batch["luminance"].flatten(0, 1)
    keys = batch["frame_keys"].flatten(0, 1)
    cache = FrozenEncodingCache(components.vae, components.luminance_encoder)
    with pytest.raises(ValueError, match=r"frame_keys: expected \(8, K\) integer keys"):
        cache.lookup(pixels, luminance, keys[:3])
    with pytest.raises(ValueError, match="frame_keys: expected"):
        cache.lookup(pixels, luminance, keys.float())
    with pytest.raises(ValueError, match="frame_keys: a negative item index"):
        cache.lookup(pixels, luminance, torch.full_like(keys, -1))


@pytest.mark.parametrize("with_cmpf", [False, True])
def test_loss_from_cached_encodings_matches_the_encoders(components, batch, with_cmpf):
    denoiser = LC4Denoiser(components.unet, components.luminance_encoder, components.cmpf if with_cmpf else None)
    cache = FrozenEncodingCache(components.vae, components.luminance_encoder, with_features=with_cmpf)

    def loss(encodings):
        with torch.no_grad():
            return diffusion_loss(denoiser.eval(), components, batch, generator=torch.Generator().manual_seed(1),
                                  with_cmpf=with_cmpf, encodings=encodings).item()

    reference, first, second = loss(None), loss(cache), loss(cache)
    assert first == pytest.approx(reference, rel=1e-5) and second == first
    assert cache.hits == cache.misses == batch["frame_keys"].shape[0] * batch["frame_keys"].shape[1]
    unkeyed = {name: value for name, value in batch.items() if name != "frame_keys"}
    with pytest.raises(ValueError, match="data.cache_encodings: the batch has no frame_keys"):
        diffusion_loss(denoiser, components, unkeyed, encodings=cache)


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "logs/metrics.jsonl").read_text().splitlines()]


def test_training_with_both_caches_follows_the_plain_run_and_resumes_exactly(tiny_model_dir, tmp_path):
    # 4 clips of 2 frames, 1-frame samples, 2 a step: 16 samples of 8 frames, so steps hit the caches.
    source = make_dataset(tmp_path / "data", count=4, num_frames=2)
    common = dict(max_steps=8, batch_size=2, trainable=["unet", "tda"], data__num_frames=1,
                  data__random_crop=False, deterministic=True)
    cached = dict(common, data__cache_frames=True, data__cache_encodings=True)
    train(load_config(values=tiny_config_values(tiny_model_dir, source, tmp_path / "plain", **common)))
    train(load_config(values=tiny_config_values(tiny_model_dir, source, tmp_path / "whole", **cached)))
    assert _losses(tmp_path / "whole") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-4)

    # A resumed run starts with empty caches and still sees the same encodings, bit for bit.
    interrupted = load_config(values=tiny_config_values(tiny_model_dir, source, tmp_path / "cut", **cached))
    assert train(interrupted, stop_after=5).step == 5
    train(interrupted, resume="latest")
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "whole")


def test_config_refuses_to_cache_the_output_of_an_encoder_that_trains(tiny_model_dir, video_folder, tmp_path):
    def config(**overrides):
        return load_config(values=tiny_config_values(tiny_model_dir, video_folder, tmp_path, **overrides))

    assert config(data__cache_frames=True).data.cache_frames  # no constraint on the frame cache
    with pytest.raises(ValueError, match="data.cache_encodings: the luminance encoder trains"):
        config(data__cache_encodings=True)  # stage 1 trains it by default
    assert config(data__cache_encodings=True, trainable=["unet", "tda"]).data.cache_encodings
    with pytest.raises(ValueError, match="data.cache_encodings: not with distributed.sharding: fsdp"):
        config(data__cache_encodings=True, trainable=["unet", "tda"], distributed__sharding="fsdp")
