"""The training caches: decoded videos kept by the dataset (``data.cache_frames``) and the frozen
encoders' outputs kept per frame (``data.cache_encodings``)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from lc4 import video as video_io
from lc4.train import load_config, train
from lc4.train.data import TextVideoDataset, collate, list_videos, probe, resized_size
from lc4.train.encoding_cache import FrozenEncodingCache, cache_fingerprint
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


def test_encoding_cache_file_round_trip_and_fingerprint(components, batch, tmp_path):
    pixels, luminance = batch["pixel_values"].flatten(0, 1), batch["luminance"].flatten(0, 1)
    keys = batch["frame_keys"].flatten(0, 1)
    filled = FrozenEncodingCache(components.vae, components.luminance_encoder)  # keeps features regardless
    filled.lookup(pixels, luminance, keys)
    fingerprint = "the encoders and data of this cache"
    file = tmp_path / "cache.safetensors"
    empty = FrozenEncodingCache(components.vae, components.luminance_encoder)
    empty.save(file, fingerprint)
    assert not file.exists()  # nothing to write
    filled.save(file, fingerprint)

    read = FrozenEncodingCache(components.vae, components.luminance_encoder, with_features=True)
    assert read.load(tmp_path / "missing.safetensors", fingerprint) == 0
    assert read.load(file, "another fingerprint") == 0 and len(read) == 0
    assert read.load(file, fingerprint) == len(keys)
    expected = FrozenEncodingCache(components.vae, components.luminance_encoder, with_features=True)
    posterior, lum = read.lookup(pixels, luminance, keys)
    reference, lum_reference = expected.lookup(pixels, luminance, keys)
    assert (read.hits, read.misses) == (len(keys), 0)
    assert torch.equal(posterior, reference) and torch.equal(lum.latent_residual, lum_reference.latent_residual)
    assert torch.equal(lum.features, lum_reference.features)


def test_cache_fingerprint_follows_weights_data_and_resolution(components, tmp_path):
    import copy

    files = [tmp_path / name for name in ("a.mp4", "b.mp4")]
    for file in files:
        file.write_bytes(b"clip")
    vae, lum = components.vae, components.luminance_encoder

    def fingerprint(vae=vae, lum=lum, paths=files, resolution=32):
        return cache_fingerprint(vae, lum, paths, resolution)

    base = fingerprint()
    assert fingerprint(vae=copy.deepcopy(vae), lum=copy.deepcopy(lum)) == base
    changed_vae = copy.deepcopy(vae)
    with torch.no_grad():
        next(changed_vae.encoder.parameters()).view(-1)[0] += 1e-3
    changed_lum = copy.deepcopy(lum)
    with torch.no_grad():
        next(changed_lum.parameters()).view(-1)[0] += 1e-3
    os.utime(files[1], ns=(0, 12345))  # regenerated data: same path, other modification time
    others = [fingerprint(vae=changed_vae), fingerprint(lum=changed_lum), fingerprint(paths=files[:1]),
              fingerprint(paths=files[::-1]), fingerprint(resolution=24), fingerprint()]
    assert len({base, *others}) == len(others) + 1


def test_cache_fingerprint_follows_frames_rewritten_in_a_frame_folder(components, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index:05d}.png").write_bytes(b"frame")
    os.utime(folder, ns=(0, 1))

    def fingerprint():
        return cache_fingerprint(components.vae, components.luminance_encoder, [folder], 32)

    base = fingerprint()
    os.utime(folder / "00001.png", ns=(0, 12345))  # one frame rewritten in place
    os.utime(folder, ns=(0, 1))  # the folder's own stat unchanged
    assert fingerprint() != base


def test_a_later_stage_reads_the_encodings_its_predecessor_wrote(tiny_model_dir, tmp_path, monkeypatch):
    # 4 clips of 2 frames, whole clips: the first stage encodes every frame in its first epoch.
    source = make_dataset(tmp_path / "data", count=4, num_frames=2)
    file = tmp_path / "encodings.safetensors"
    common = dict(max_steps=4, batch_size=2, trainable=["unet", "tda"], data__num_frames=2,
                  data__random_crop=False, data__cache_encodings=True, deterministic=True)
    first = train(load_config(values=tiny_config_values(tiny_model_dir, source, tmp_path / "first",
                                                        data__encoding_cache_file=str(file), **common)))
    assert file.exists()

    encoded = []
    original = FrozenEncodingCache._encode
    monkeypatch.setattr(FrozenEncodingCache, "_encode", lambda self, *a: encoded.append(1) or original(self, *a))
    later = dict(common, trainable=["unet", "tda", "text_encoder"])
    train(load_config(values=tiny_config_values(first.model_dir, source, tmp_path / "alone", **later)))
    assert len(encoded) == 8  # without the file: each of the 8 frames encoded once
    written = file.stat().st_mtime_ns
    train(load_config(values=tiny_config_values(first.model_dir, source, tmp_path / "read",
                                                data__encoding_cache_file=str(file), **later)))
    assert len(encoded) == 8  # with it: none
    assert file.stat().st_mtime_ns == written  # nothing new to write
    assert _losses(tmp_path / "read") == _losses(tmp_path / "alone")  # bit for bit

    # Another resolution: the file's fingerprint does not match, so every frame is encoded again.
    train(load_config(values=tiny_config_values(first.model_dir, source, tmp_path / "other", data__resolution=24,
                                                data__encoding_cache_file=str(file), **later)))
    assert len(encoded) == 16


def test_encoding_cache_file_needs_the_cache_and_is_relative_to_the_config(tiny_model_dir, video_folder, tmp_path):
    import yaml

    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", trainable=["unet", "tda"],
                                data__encoding_cache_file="encodings.safetensors")
    with pytest.raises(ValueError, match="data.encoding_cache_file: needs data.cache_encodings: true"):
        load_config(values=values)
    values["data"]["cache_encodings"] = True
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/stage.yaml").write_text(yaml.safe_dump(values))
    config = load_config(tmp_path / "configs/stage.yaml")
    assert config.data.encoding_cache_file == str(tmp_path / "configs/encodings.safetensors")
