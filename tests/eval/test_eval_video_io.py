import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace

from lc4 import video


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


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


def _moving_gradient(count: int = 6, height: int = 48, width: int = 64) -> torch.Tensor:
    """A small smooth clip, ``(count, 3, height, width)`` uint8, that changes from frame to frame."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    frames = [torch.stack([x, y, (x + y + t / count) / 3]) * 200 + 20 for t in range(count)]
    return torch.stack(frames).round().to(torch.uint8)


def _write_audio(path, seconds: float = 1.0, rate: int = 16000):
    """A mono AAC track alone: an audio source for mux_audio."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = (0.2 * np.sin(np.arange(int(rate * seconds)) * 2 * np.pi * 440 / rate)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = rate
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    return path


def _write_rotated(path, frames: torch.Tensor, degrees: int, hflip: bool = False, vflip: bool = False):
    """A video whose container asks players to turn it by ``degrees`` and mirror it, as phones
    record."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[-1], frames.shape[-2], "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).numpy(), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _coded_luma(path) -> np.ndarray:
    """The Y planes a video file stores, ``(T, H, W)`` float64: no RGB conversion involved."""
    planes = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            plane = frame.planes[0]
            planes.append(np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width])
    return np.stack(planes).astype(np.float64)


REC601, REC709 = (0.299, 0.587, 0.114), (0.2126, 0.7152, 0.0722)


def _luma(frames: torch.Tensor, weights) -> np.ndarray:
    """The luma of ``(T, 3, H, W)`` uint8 RGB frames under a matrix's ``weights``, in 0-255 levels."""
    return np.einsum("c,tchw->thw", np.array(weights), frames.double().numpy())


@pytest.mark.parametrize("output_suffix", [".mkv", ".mp4"])
def test_muxing_audio_onto_a_matroska_video_keeps_every_frame(tmp_path, output_suffix):
    frames = _moving_gradient(12)
    silent = video.write_video(tmp_path / "silent.mkv", frames)
    output = video.mux_audio(silent, _write_audio(tmp_path / "audio.mp4"), tmp_path / f"out{output_suffix}")
    assert video.has_audio(output)
    with av.open(str(output)) as container:
        timestamps = [frame.pts for frame in container.decode(video=0)]
    assert len(timestamps) == len(frames) and timestamps == sorted(set(timestamps))
    assert torch.equal(video.read_video(output), video.read_video(silent))  # the same packets


def test_muxing_audio_creates_the_output_folder(tmp_path):
    silent = video.write_video(tmp_path / "silent.mp4", _moving_gradient(3))
    output = video.mux_audio(silent, _write_audio(tmp_path / "audio.mp4"), tmp_path / "new" / "sub" / "out.mp4")
    assert video.read_video(output).shape[0] == 3 and video.has_audio(output)


@pytest.mark.parametrize("suffix", sorted(video.VIDEO_SUFFIXES))
def test_every_video_suffix_is_written_and_read_back(tmp_path, suffix):
    frames = _moving_gradient(5)
    path = video.write_video(tmp_path / f"clip{suffix}", frames, fps=25)
    decoded = video.read_video(path)
    assert decoded.shape == frames.shape
    assert video.read_fps(path) == 25
    assert _psnr(decoded, frames) > 30  # .gif: a 256-colour palette per frame


def test_a_codec_the_container_refuses_is_the_error_raised_and_the_file_is_closed(tmp_path, monkeypatch):
    closed = []
    open_container = av.open

    class ClosingSpy:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def close(self):
            closed.append(True)
            self._container.close()

    monkeypatch.setattr(av, "open", lambda *args, **kwargs: ClosingSpy(open_container(*args, **kwargs)))
    with pytest.raises(ValueError, match="gif"):
        video.write_video(tmp_path / "clip.gif", _moving_gradient(2), codec="libx264")
    assert closed == [True]
    with pytest.raises(ValueError, match="frame: expected size"):  # an error after the first frame
        video.write_video(tmp_path / "clip.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)])
    assert closed == [True, True]
    with pytest.raises(ValueError, match=r"path: expected a video file name .*clip\.txt'"):
        video.write_video(tmp_path / "clip.txt", _moving_gradient(2))


def test_float_frames_mean_zero_to_one_and_are_clamped(tmp_path):
    values = np.array([-0.5, 0.0, 0.25, 0.5, 1.0, 2.0])
    frame = np.broadcast_to(values[None, :, None], (2, 6, 3))
    video.write_image(tmp_path / "floats.png", frame)
    assert video.read_video(tmp_path)[0, 0, 0].tolist() == [0, 0, 64, 128, 255, 255]
    gray = torch.full((3, 3, 48, 64), 0.5, dtype=torch.bfloat16)
    decoded = video.read_video(video.write_video(tmp_path / "gray.mp4", gray))
    assert (decoded.float() - 128).abs().max() <= 1
    with pytest.raises(ValueError, match="dtype int32"):
        video.write_video(tmp_path / "ints.mp4", torch.zeros(2, 3, 8, 8, dtype=torch.int32))


def test_display_rotation_is_read_and_written_back(tmp_path):
    frames = _moving_gradient(4)
    phone = _write_rotated(tmp_path / "phone.mp4", frames, 90)
    assert video.read_rotation(phone) == 90
    assert video.read_video(phone).shape == frames.shape  # the stored pixels, not turned
    assert video.read_rotation(video.write_video(tmp_path / "plain.mp4", frames)) == 0
    video.write_frame_folder(tmp_path / "folder", frames)
    assert video.read_rotation(tmp_path / "folder") == 0
    for suffix, degrees in ((".mp4", 90), (".mov", -90), (".mkv", 180)):
        copy = video.write_video(tmp_path / f"copy{suffix}", video.read_video(phone), rotation=degrees)
        assert video.read_rotation(copy) % 360 == degrees % 360  # 180 may read back as -180
    with pytest.raises(ValueError, match=r"rotation: \.avi files cannot store"):
        video.write_video(tmp_path / "copy.avi", frames, rotation=90)


# The eight EXIF orientations, each as (degrees, hflip, vflip).
_ORIENTATIONS = [(degrees, hflip, False) for degrees in (0, 90, 180, 270) for hflip in (False, True)]


def _display_matrix(degrees: int, hflip: bool, vflip: bool = False) -> np.ndarray:
    """The 2x2 part (16.16 fixed point) of FFmpeg's display matrix of that orientation, worked out
    here up to the signs of its entries (FFmpeg's y axis points down): rotation, then mirrors."""
    theta = np.deg2rad(degrees)
    rotate = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    mirror = np.diag([-1.0 if hflip else 1.0, -1.0 if vflip else 1.0])
    return np.rint(rotate @ mirror * 65536).astype(np.int64)


@pytest.mark.parametrize("degrees,hflip,vflip", _ORIENTATIONS)
def test_display_matrix_with_mirroring_is_read_and_written_back(tmp_path, degrees, hflip, vflip):
    frames = _moving_gradient(3)
    phone = _write_rotated(tmp_path / "phone.mp4", frames, degrees, hflip, vflip)
    matrix = video.read_display_matrix(phone)
    if (degrees, hflip) == (0, False):
        assert matrix is None
        return
    assert len(matrix) == 9 and matrix[8] == 1 << 30 and matrix[2] == matrix[5] == matrix[6] == matrix[7] == 0
    linear = np.array([[matrix[0], matrix[1]], [matrix[3], matrix[4]]])
    assert np.array_equal(np.abs(linear), np.abs(_display_matrix(degrees, hflip, vflip)))
    # A mirror flips the orientation: the sign of the determinant tells it, whatever the rotation.
    assert np.sign(np.linalg.det(linear)) == (-1 if hflip != vflip else 1)
    for suffix in (".mp4", ".mkv", ".mov"):
        copy = video.write_video(tmp_path / f"copy{suffix}", video.read_video(phone), display_matrix=matrix)
        assert video.read_display_matrix(copy) == matrix
        assert torch.equal(video.read_video(copy)[:, :, :1, :1], video.read_video(phone)[:, :, :1, :1])
    with pytest.raises(ValueError, match=r"display_matrix: \.avi files cannot store"):
        video.write_video(tmp_path / "copy.avi", frames, display_matrix=matrix)


def test_display_matrix_argument_checks(tmp_path):
    frames = _moving_gradient(2)
    identity = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    assert video.read_display_matrix(video.write_video(tmp_path / "id.avi", frames, display_matrix=identity)) is None
    assert video.read_display_matrix(video.write_video(tmp_path / "plain.mp4", frames)) is None
    video.write_frame_folder(tmp_path / "folder", frames)
    assert video.read_display_matrix(tmp_path / "folder") is None
    with pytest.raises(ValueError, match="rotation, display_matrix: expected one of them"):
        video.VideoWriter(tmp_path / "both.mp4", rotation=90, display_matrix=identity)
    with pytest.raises(ValueError, match="display_matrix: expected FFmpeg's 9 integers, got 4"):
        video.VideoWriter(tmp_path / "short.mp4", display_matrix=(1, 0, 0, 1))


def test_muxing_audio_keeps_the_display_rotation(tmp_path):
    silent = video.write_video(tmp_path / "silent.mkv", _moving_gradient(4), rotation=90)
    output = video.mux_audio(silent, _write_audio(tmp_path / "audio.mp4"), tmp_path / "out.mp4")
    assert video.read_rotation(output) == 90
    mirrored = _write_rotated(tmp_path / "mirrored.mp4", _moving_gradient(4), 90, hflip=True)
    output = video.mux_audio(mirrored, _write_audio(tmp_path / "audio.mp4"), tmp_path / "mirrored_out.mkv")
    assert video.read_display_matrix(output) == video.read_display_matrix(mirrored)


def _write_yuv_clip(path, colorspace=None, count: int = 3, height: int = 48, width: int = 64):
    """A yuv420p clip with a noisy luma ramp and smooth chroma (no RGB clipping); ``colorspace``
    tags its matrix (``None``: untagged)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        for t in range(count):
            luma = np.clip(np.linspace(20, 230, width)[None, :] + rng.normal(0, 8, (height, width)), 16, 235)
            chroma = 128 + 24 * np.sin(np.arange(width)[None, :] / 9 + np.arange(height // 2)[:, None] / 5 + t)
            planes = np.concatenate([luma, chroma]).round().astype(np.uint8)  # Y, then U and V
            container.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("colorspace, weights", [(None, REC601), (Colorspace.ITU709, REC709)])
def test_reading_keeps_the_stored_luma(tmp_path, colorspace, weights):
    """RGB frames read carry the file's own luma (limited range; its matrix, untagged BT.601)."""
    path = _write_yuv_clip(tmp_path / "clip.mp4", colorspace)
    expected = (_coded_luma(path) - 16) * 255 / 219
    difference = _luma(video.read_video(path), weights) - expected
    assert abs(difference.mean()) < 0.2 and np.abs(difference).mean() < 0.5  # 8-bit RGB rounding


def test_a_lossless_read_write_round_trip_keeps_the_stored_luma(tmp_path):
    source = _write_yuv_clip(tmp_path / "clip.mp4")
    copy = video.write_video(tmp_path / "copy.mp4", video.read_video(source), crf=0, pix_fmt="yuv444p")
    difference = _coded_luma(copy) - _coded_luma(source)
    assert np.abs(difference).mean() < 0.3
    with av.open(str(copy)) as container:  # tagged as written, so players convert it back alike
        frame = next(container.decode(video=0))
    assert (frame.colorspace, frame.color_range) == (Colorspace.ITU601, ColorRange.MPEG)


def _read_in_child(path, size, results):
    results.put([frame.tolist() for frame in video.iter_frames(path, size)])


def test_a_forked_process_reads_after_the_parent_read_and_wrote(tmp_path):
    # A DataLoader worker is such a fork: a scaler state shared with the parent once hung it there.
    path = video.write_video(tmp_path / "clip.mp4", _moving_gradient(4), crf=18)
    list(video.iter_frames(path)), list(video.iter_frames(path, 32))
    context = torch.multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_read_in_child, args=(path, (24, 40), results))
    child.start()
    try:
        read = results.get(timeout=60)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert np.array_equal(np.asarray(read, np.uint8), np.stack(list(video.iter_frames(path, (24, 40)))))
