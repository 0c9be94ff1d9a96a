"""Config defaults (the paper's Sec. 3.5), config files and errors; the data source formats,
clips, luminance, determinism of samples."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lc4.cmpf import without_color_words
from lc4.color import rgb_to_luma
from lc4.train.config import TrainConfig, dump_config, load_config
from lc4.train.data import ClipSampler, TextVideoDataset, list_videos, resized_size, split_holdout
from train_helpers import CAPTIONS, make_dataset


def test_defaults_are_the_papers():
    stage1, stage2 = TrainConfig(stage=1), TrainConfig(stage=2)
    assert stage1.optimizer.lr == 1e-5 and stage1.optimizer.betas == (0.99, 0.999)
    assert stage1.data.num_frames == 8 and stage1.batch_size == 2 and stage1.data.resolution in (256, 512)
    assert (stage1.num_epochs, stage2.num_epochs) == (20, 10)
    assert stage1.trainable_parts == ("unet", "tda", "luminance_encoder")
    assert stage2.trainable_parts == ("cmpf",)
    assert stage1.mixed_precision == "fp16" and stage1.gradient_checkpointing
    assert not stage1.uses_cmpf and stage2.uses_cmpf
    assert TrainConfig(stage=1, trainable=["unet", "cmpf"]).uses_cmpf


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_files_relative_paths_and_overrides(tmp_path, suffix):
    text = {".yaml": "stage: 2\nmodel: {path: models/s1}\ndata: {source: data.csv, resolution: 512}\n"
                     "optimizer: {betas: [0.9, 0.99]}\n",
            ".toml": "stage = 2\n[model]\npath = 'models/s1'\n[data]\nsource = 'data.csv'\nresolution = 512\n"
                     "[optimizer]\nbetas = [0.9, 0.99]\n"}[suffix]
    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    config = load_config(path, ["optimizer.lr=3e-5", "ema.enabled=true"])
    assert config.stage == 2 and config.data.resolution == 512 and config.optimizer.betas == (0.9, 0.99)
    assert config.model.path == str(tmp_path / "models/s1") and config.data.source == str(tmp_path / "data.csv")
    assert config.optimizer.lr == 3e-5 and config.ema.enabled is True and config.optimizer.weight_decay == 1e-4


@pytest.mark.parametrize("values, message", [
    ({"optimizer": {"learning_rate": 1}}, "unknown key(s) optimizer.learning_rate"),
    ({"stage": 2, "trainable": ["unet", "cmpf"]}, "stage 2 freezes the UNet"),
    ({"trainable": ["vae"]}, "trainable"),
    ({"data": {"resolution": 250}}, "multiple of 8"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"data": {"color_word_dropout": 1.5}}, "data.color_word_dropout: expected a probability, got 1.5"),
    ({"data": {"resolution": 32.5}}, "data.resolution: expected an integer, got 32.5"),
    ({"batch_size": 2.5}, "batch_size: expected an integer, got 2.5"),
    ({"seed": 1.5}, "seed: expected an integer, got 1.5"),
    ({"seed": -1}, "seed: expected an integer in [0, 2**32), got -1"),
    ({"ema": {"enabled": "false"}}, "ema.enabled: expected true or false, got 'false'"),
    ({"data": {"random_crop": "maybe"}}, "data.random_crop: expected true or false, got 'maybe'"),
    ({"optimizer": {"betas": 0.9}}, "optimizer.betas: expected a list, got 0.9"),
    ({"optimizer": {"betas": [0.9, 1.5]}}, "optimizer.betas: expected two values in [0, 1), got [0.9, 1.5]"),
    ({"model": {"path": 3}}, "model.path: expected a text, got 3"),
    ({"trainable": "unet"}, "trainable: expected a list, got 'unet'"),
    ({"epochs": 0}, "epochs: expected >= 1 or null, got 0"),
    ({"checkpointing": {"keep_last": -1}}, "checkpointing.keep_last: expected >= 1 or null, got -1"),
    ({"ema": {"decay": 2}}, "ema.decay: expected a value in [0, 1), got 2"),
    ({"data": {"num_workers": -1}}, "data.num_workers: expected >= 0, got -1"),
    ({"optimizer": {"lr_warmup_steps": -3}}, "optimizer.lr_warmup_steps: expected >= 0, got -3"),
    ({"data": {"resolution": None}}, "data.resolution: expected an integer, got null"),
    ({"data": {"resolution": 0}}, "data.resolution: expected a positive multiple of 8, got 0"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps: expected >= 1, got 0"),
    ({"max_steps": 0}, "max_steps: expected >= 1, got 0"),
    ({"ema": {"decay": 1.0}}, "ema.decay: expected a value in [0, 1), got 1.0"),
    ({"seed": 2 ** 32}, "seed: expected an integer in [0, 2**32), got 4294967296"),
    ({"data": {"caption_dropout": -0.1}}, "data.caption_dropout: expected a probability, got -0.1"),
])
def test_config_errors(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(values=values)


def test_config_values_of_the_right_kind_are_converted():
    config = load_config(values={"data": {"resolution": 32.0}, "optimizer": {"lr": "1e-4", "betas": [0, 1e-1]},
                                 "max_steps": "100"})
    assert config.data.resolution == 32 and isinstance(config.data.resolution, int)
    assert config.optimizer.lr == 1e-4 and config.optimizer.betas == (0.0, 0.1) and config.max_steps == 100
    with pytest.raises(ValueError, match=re.escape("--set data.source.x: data.source is a value, not a section")):
        load_config(values={"data": {"source": "videos"}}, overrides=["data.source.x=1"])


def test_the_dumped_config_loads_back_to_the_same_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("model: {path: ../model}\ndata: {source: ../videos}\n"
                                                   "output_dir: ../runs/a\n")
    config = load_config("configs/run.yaml", ["validation.video=held_out.mp4"])  # both relative
    (tmp_path / "runs").mkdir()
    dump_config(config, tmp_path / "runs" / "dumped.yaml")
    again = load_config(tmp_path / "runs" / "dumped.yaml")
    for key in ("model.path", "data.source", "output_dir", "validation.video"):
        section, leaf = key.rsplit(".", 1) if "." in key else (None, key)
        first = getattr(getattr(config, section), leaf) if section else getattr(config, leaf)
        second = getattr(getattr(again, section), leaf) if section else getattr(again, leaf)
        assert Path(second).resolve() == Path(first).resolve(), key


def test_empty_captions_and_bracketed_names(tmp_path):
    rows = tmp_path / "data.jsonl"
    rows.write_text('{"video": "a.mp4", "caption": ""}\n{"video": "b.mp4", "caption": "a red car"}\n')
    assert [item.caption for item in list_videos(rows)] == ["", "a red car"]
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("My video [dQw4w9WgXcQ]", "plain"):
        (folder / f"{name}.mp4").write_bytes(b"clip")
        (folder / f"{name}.txt").write_text(f"caption of {name}")
    assert sorted(item.path.name for item in list_videos(folder)) == ["My video [dQw4w9WgXcQ].mp4", "plain.mp4"]


@pytest.mark.parametrize("layout", ["folder", "csv", "jsonl"])
def test_data_sources(tmp_path, layout):
    source = make_dataset(tmp_path / layout, count=3, num_frames=10, layout=layout)
    items = list_videos(source)
    assert [item.caption for item in items] == list(CAPTIONS[:3])
    assert all(item.path.is_file() for item in items)


def test_clips_are_cropped_deterministic_and_luma_is_rec601(video_folder):
    dataset = TextVideoDataset(list_videos(video_folder), resolution=32, num_frames=8, frame_stride=1)
    sample = dataset[(1, 1234)]
    assert sample["pixel_values"].shape == (8, 3, 32, 32) and sample["luminance"].shape == (8, 1, 32, 32)
    assert -1 <= sample["pixel_values"].min() and sample["pixel_values"].max() <= 1
    expected = rgb_to_luma((sample["pixel_values"] + 1) / 2) * 2 - 1
    torch.testing.assert_close(sample["luminance"], expected.clamp(-1, 1))
    again = dataset[(1, 1234)]
    assert torch.equal(sample["pixel_values"], again["pixel_values"])
    others = [dataset[(1, seed)]["pixel_values"] for seed in range(6)]
    assert any(not torch.equal(sample["pixel_values"], other) for other in others), "seed changes nothing"


def test_sampler_order_is_a_function_of_seed_and_epoch():
    sampler = ClipSampler(10, seed=3)
    sampler.set_epoch_seed(0)
    first = list(sampler)
    assert sorted(index for index, _ in first) == list(range(10))
    assert list(sampler) == first
    sampler.set_epoch_seed(1)
    assert list(sampler) != first


def test_unreadable_source_stops_with_a_clear_error(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "a.txt").write_text("a red car")
    dataset = TextVideoDataset(list_videos(tmp_path), resolution=32, num_frames=8, max_skips=3)
    with pytest.raises(RuntimeError, match="could not be read"):
        dataset[(0, 0)]
    (tmp_path / "empty.csv").write_text("video,caption\n")
    with pytest.raises(ValueError, match="lists no"):
        list_videos(tmp_path / "empty.csv")


def test_captions_lose_their_colour_words_at_the_share_asked_for(video_folder):
    """Of 2000 draws: ``caption_dropout`` of the captions come out empty, ``color_word_dropout``
    of the rest without their colour words; with it at 0 the draws are those of before."""
    items = list_videos(video_folder)
    colorless = {item.caption: without_color_words(item.caption) for item in items}
    assert all(colorless[caption] != caption for caption in colorless)  # each names a colour
    settings = dict(resolution=16, num_frames=1, caption_dropout=0.2)
    dataset = TextVideoDataset(items, color_word_dropout=0.5, cache_frames=True, **settings)
    plain = TextVideoDataset(items, cache_frames=True, **settings)
    keys = [(seed % len(items), seed) for seed in range(2000)]
    captions = [dataset[key]["caption"] for key in keys]
    kept = [plain[key]["caption"] for key in keys]
    empty = [caption == "" for caption in captions]
    assert empty == [caption == "" for caption in kept]  # the same draws decide the empty captions
    assert 0.17 < np.mean(empty) < 0.23
    full = [caption for caption in captions if caption]
    stripped = [caption in colorless.values() for caption in full]
    assert all(caption in colorless for caption, s in zip(full, stripped) if not s)
    assert 0.45 < np.mean(stripped) < 0.55
    assert all(caption in colorless for caption in kept if caption)


def test_clip_starts_and_crops_cover_exactly_their_ranges(video_folder, tmp_path):
    """A 12-frame 40x48 video, shorter side resized to 32 (32x38, 48 * 32 / 40 = 38.4 rounded):
    8-frame clips start at 0..4, stride-2 clips of 4 frames (span 7) at 0..5; crops start at top
    0 and left 0..6; a video of exactly a clip's span is used, not skipped; ``index`` is the item asked for."""
    assert resized_size(40, 48, 32) == (32, 38) and resized_size(40, 47, 32) == (32, 38)
    items = list_videos(video_folder)
    for frames, stride, starts in ((8, 1, range(5)), (4, 2, range(6))):
        dataset = TextVideoDataset(items, resolution=32, num_frames=frames, frame_stride=stride, cache_frames=True)
        keys = torch.stack([dataset[(1, seed)]["frame_keys"] for seed in range(300)])
        assert (keys[:, :, 0] == 1).all()
        first = keys[:, 0, 1]
        assert sorted(set(first.tolist())) == list(starts)
        assert torch.equal(keys[:, :, 1], first[:, None] + stride * torch.arange(frames))
        assert set(keys[:, 0, 2].tolist()) == {0} and sorted(set(keys[:, 0, 3].tolist())) == list(range(7))
    dataset = TextVideoDataset(items, resolution=32, num_frames=8, random_crop=False)
    for index, item in enumerate(items):
        sample = dataset[(index, 5)]
        assert sample["index"] == index and sample["caption"] in ("", item.caption)
        assert sample["frame_keys"][0, 2:].tolist() == [0, 3]  # centred: (38 - 32) // 2
    exact = make_dataset(tmp_path / "exact", count=1, num_frames=7)
    for frames, stride in ((7, 1), (4, 2)):  # both span all its 7 frames
        sample = TextVideoDataset(list_videos(exact), resolution=32, num_frames=frames, frame_stride=stride)[(0, 3)]
        assert sample["pixel_values"].shape == (frames, 3, 32, 32)


def test_the_held_out_clip_is_not_trained_on(video_folder):
    items = list_videos(video_folder)
    training, held_out = split_holdout(items, holdout=True)
    assert held_out == items[-1] and training == items[:-1] and held_out not in training
    assert split_holdout(items, holdout=False) == (items, None)
