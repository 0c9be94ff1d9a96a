import av
import numpy as np
import pytest
import torch

from lc4 import video


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * np.log10(255**2 / mse)


def test_frame_folder_round_trip_is_exact(tmp_path, bikes_frames):
    video.write_frame_folder(tmp_path / "clip", bikes_frames)
    assert sorted(p.name for p in (tmp_path / "clip").iterdir())[:2] == ["00000.png", "00001.png"]
    assert torch.equal(video.read_video(tmp_path / "clip"), bikes_frames)


def test_frame_folder_is_read_in_natural_order(tmp_path):
    frames = [np.full((4, 6, 3), value, np.uint8) for value in (10, 20, 30)]
    for name, frame in zip(("2.png", "10.png", "1.png"), (frames[1], frames[2], frames[0])):
        video.write_image(tmp_path / name, frame)
    (tmp_path / "notes.txt").write_text("not a frame")
    values = [frame[0, 0, 0] for frame in video.iter_frames(tmp_path)]
    assert values == [10, 20, 30]


def test_frames_are_picked_as_a_slice_picks_them(tmp_path, bikes_frames):
    video.write_frame_folder(tmp_path / "clip", bikes_frames[:9])
    path = video.write_video(tmp_path / "clip.mp4", bikes_frames[:9], crf=18)
    for source in (tmp_path / "clip", path):
        every = list(video.iter_frames(source))
        for start, stop, step in ((0, None, 1), (2, 7, 2), (5, 6, 1), (8, None, 3), (7, 3, 1)):
            picked = list(video.iter_frames(source, None, start, stop, step))
            assert len(picked) == len(every[start:stop:step])
            assert all(np.array_equal(a, b) for a, b in zip(picked, every[start:stop:step]))


def test_a_frame_folder_decodes_only_the_frames_picked(tmp_path, bikes_frames):
    video.write_frame_folder(tmp_path / "clip", bikes_frames[:4])
    (tmp_path / "clip" / "00000.png").write_bytes(b"not a png")  # would fail to decode
    picked = list(video.iter_frames(tmp_path / "clip", None, 2, 4))
    assert np.array_equal(picked[0], bikes_frames[2].permute(1, 2, 0).numpy())
    with pytest.raises(av.FFmpegError):
        list(video.iter_frames(tmp_path / "clip", None, 0, 1))


def test_video_round_trip_keeps_count_size_rate_and_content(tmp_path, bikes_frames):
    path = video.write_video(tmp_path / "clip.mp4", bikes_frames, fps=12, crf=18)
    decoded = video.read_video(path)
    assert decoded.shape == bikes_frames.shape
    assert video.read_fps(path) == 12
    assert _psnr(decoded, bikes_frames) > 35  # lossy, but close


def test_odd_sized_frames_are_written(tmp_path, bikes_frames):
    odd = bikes_frames[:3, :, :33, :47]
    decoded = video.read_video(video.write_video(tmp_path / "odd.mp4", odd))
    assert decoded.shape == odd.shape


def test_resizing_and_batches(tmp_path, bikes_frames):
    video.write_frame_folder(tmp_path / "clip", bikes_frames)
    assert video.read_video(tmp_path / "clip", size=32).shape == (len(bikes_frames), 3, 32, 32)
    assert video.read_video(tmp_path / "clip", size=(20, 40), max_frames=5).shape == (5, 3, 20, 40)
    batches = list(video.iter_frame_batches(tmp_path / "clip", batch_size=5))
    assert [b.shape[0] for b in batches] == [5, 5, len(bikes_frames) - 10]
    assert torch.equal(torch.cat(batches), bikes_frames)


def test_jpeg_frames_are_close(tmp_path, bikes_frames):
    path = video.write_image(tmp_path / "frame.jpg", bikes_frames[0])
    assert _psnr(video.read_video(path.parent)[0], bikes_frames[0]) > 30


def test_bad_input_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="source"):
        list(video.iter_frames(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="source"):
        list(video.iter_frames(tmp_path))  # an empty folder
    with pytest.raises(ValueError, match=r"frame: expected a \(3, H, W\)"):
        video.write_video(tmp_path / "x.mp4", torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="size"):
        video.read_video(tmp_path, size=(0, 4))
    with pytest.raises(ValueError, match="start, stop, step"):
        list(video.iter_frames(tmp_path, None, 0, None, 0))
