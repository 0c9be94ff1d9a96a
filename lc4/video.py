"""Reading and writing videos and frame folders with PyAV, one frame at a time.

A *video source* is either a video file (``bear.mp4``) or a folder of image files, one per
frame, in natural order (``bear/00000.jpg``, ``bear/00001.jpg``, ...; the DAVIS layout).
Frames are RGB ``uint8``: ``(H, W, 3)`` numpy arrays from :func:`iter_frames`, and
``(N, 3, H, W)`` torch tensors from :func:`iter_frame_batches` and :func:`read_video`.
Nothing here holds more than one batch of frames unless asked to (:func:`read_video`).

Colour: frames are read with each stream's own YUV matrix and range (untagged streams as BT.601
limited range) and written as BT.601 limited range, tagged so, both through swscale's exact
conversions; a read -> write round trip thus keeps the luma as closely as 8 bits allow.
Orientation: frames are the stored pixels, never turned; :func:`read_display_matrix` gives the
display transform a player applies (rotation and mirroring, as phones record), and
:class:`VideoWriter` writes it back (``display_matrix=``; ``rotation=`` for a plain rotation).
"""
from __future__ import annotations

import itertools
import os
import re
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import av
import numpy as np
import torch
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".gif"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

PathLike = Union[str, os.PathLike]
# None: native size; an int: a square side; a pair: (height, width).
Size = Union[None, int, Sequence[int]]

# AREA averages source pixels when shrinking (no aliasing) and matches bilinear when growing.
_RESIZE_INTERPOLATION = Interpolation.AREA
# swscale's default YUV -> RGB path neither rounds nor interpolates chroma fully, which darkens
# the luma by about 1.4 levels (bikes.mp4); these flags select its exact conversion.
_EXACT_CONVERSION = Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP | Interpolation.ACCURATE_RND
# What the writer converts to and tags: the matrix of the Rec. 601 luma that lc4 keeps.
_WRITTEN_COLORSPACE = Colorspace.ITU601


def is_video_file(path: PathLike) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def is_image_file(path: PathLike) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder: PathLike) -> list[Path]:
    """Image files directly inside ``folder``, in natural order (``2.png`` before ``10.png``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: expected a directory of frames, got {str(folder)!r}")
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: _natural_key(p.name))


def is_frame_folder(path: PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any(is_image_file(p) for p in path.iterdir())


def is_video_source(path: PathLike) -> bool:
    return is_video_file(path) or is_frame_folder(path)


def normalize_size(size: Size) -> tuple[int, int] | None:
    """``None`` stays ``None``; ``256`` becomes ``(256, 256)``; ``(h, w)`` is checked."""
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size: expected None, a positive int or (height, width), got {size!r}")
    return size


def _source_colorspace(frame: av.VideoFrame) -> Colorspace:
    """The frame's YUV matrix as swscale numbers it. The tags both number alike (BT.709, FCC,
    BT.470BG, SMPTE 240M, BT.2020) pass; the rest, untagged and SMPTE 170M among them, are BT.601."""
    try:
        return Colorspace(frame.colorspace)
    except ValueError:
        return Colorspace.ITU601


# Every conversion goes through a VideoReformatter of its own call (a read, a writer), never through
# VideoFrame.reformat: PyAV 18.1.1 caches that one per thread, and a forked process (a DataLoader
# worker) inheriting its swscale context hangs joining the parent's scaling threads.
def _to_rgb_array(frame: av.VideoFrame, size: tuple[int, int] | None, reformatter: VideoReformatter) -> np.ndarray:
    height, width = size or (frame.height, frame.width)
    interpolation = _RESIZE_INTERPOLATION if size else Interpolation.BILINEAR
    colorspace = _source_colorspace(frame)  # the range is the frame's own: swscale reads its tag
    return reformatter.reformat(
        frame, width=width, height=height, format="rgb24", src_colorspace=colorspace, dst_colorspace=colorspace,
        interpolation=interpolation | _EXACT_CONVERSION,
    ).to_ndarray()


def _decode(path: Path) -> Iterator[av.VideoFrame]:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"source: {str(path)!r} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from container.decode(stream)


def _decode_image(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return frame
    raise ValueError(f"source: {str(path)!r} holds no image")


def iter_frames(source: PathLike, size: Size = None, start: int = 0, stop: int | None = None,
                step: int = 1) -> Iterator[np.ndarray]:
    """Yields the frames of a video file or frame folder as ``(H, W, 3)`` RGB ``uint8`` arrays.

    ``size`` resizes every frame (``None``: native size; ``256``: 256x256; ``(h, w)``).
    ``start``, ``stop``, ``step`` pick frames as a slice does; a frame folder then decodes only
    the files picked, a video file decodes from its start (no seeking) and yields those.
    Raises ``ValueError`` for a path that is neither; PyAV's errors for unreadable files.

    Frames are the stored pixels: a display rotation (a phone video's, see :func:`read_rotation`)
    is not applied. lc4 colorizes the stored pixels and writes the result with that same
    ``rotation`` (:class:`VideoWriter`), so it plays turned as the input does.
    """
    if start < 0 or (stop is not None and stop < 0) or step <= 0:
        raise ValueError(f"start, stop, step: expected start >= 0, stop >= 0 or None, step > 0, "
                         f"got {start}, {stop}, {step}")
    source = Path(source)
    size = normalize_size(size)
    reformatter = VideoReformatter()
    if is_video_file(source):
        for frame in itertools.islice(_decode(source), start, stop, step):
            yield _to_rgb_array(frame, size, reformatter)
    elif source.is_dir():
        files = list_frame_files(source)
        if not files:
            raise ValueError(f"source: {str(source)!r} holds no image files ({sorted(IMAGE_SUFFIXES)})")
        for file in files[start:stop:step]:
            yield _to_rgb_array(_decode_image(file), size, reformatter)
    else:
        raise ValueError(
            f"source: expected a video file ({sorted(VIDEO_SUFFIXES)}) or a folder of frames, "
            f"got {str(source)!r}"
        )


def frames_to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """``[(H, W, 3)] * N`` uint8 arrays -> ``(N, 3, H, W)`` uint8 tensor."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def iter_frame_batches(source: PathLike, batch_size: int, size: Size = None) -> Iterator[torch.Tensor]:
    """Yields ``(n, 3, H, W)`` uint8 tensors of at most ``batch_size`` consecutive frames."""
    if batch_size <= 0:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    batch: list[np.ndarray] = []
    for frame in iter_frames(source, size):
        batch.append(frame)
        if len(batch) == batch_size:
            yield frames_to_tensor(batch)
            batch = []
    if batch:
        yield frames_to_tensor(batch)


def read_video(source: PathLike, size: Size = None, max_frames: int | None = None) -> torch.Tensor:
    """All frames (or the first ``max_frames``) as one ``(T, 3, H, W)`` uint8 tensor."""
    frames = list(iter_frames(source, size, stop=max_frames))
    if not frames:
        raise ValueError(f"source: {str(source)!r} has no frames")
    return frames_to_tensor(frames)


def read_fps(source: PathLike) -> Fraction | None:
    """The average frame rate of a video file; ``None`` for a frame folder or when unknown."""
    if not is_video_file(source):
        return None
    with av.open(str(source)) as container:
        rate = container.streams.video[0].average_rate
    return Fraction(rate) if rate else None


def read_rotation(source: PathLike) -> int:
    """The display rotation of a video file in degrees, counter-clockwise (PyAV's
    ``VideoFrame.rotation``, which :class:`VideoWriter`'s ``rotation`` takes back); 0 for a frame
    folder, an image or a video without one. Decodes the first frame, where FFmpeg reports it.
    A mirrored video's transform is more than a rotation: copy it with :func:`read_display_matrix`."""
    if not is_video_file(source):
        return 0
    for frame in _decode(Path(source)):
        return round(frame.rotation)
    return 0


# FFmpeg's display matrix: 3x3 int32, row-major, 16.16 fixed point but the last column 2.30.
_IDENTITY_DISPLAY_MATRIX = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def read_display_matrix(source: PathLike) -> tuple[int, ...] | None:
    """The display transform of a video file (rotation and mirroring) as FFmpeg's nine-integer
    display matrix, which :class:`VideoWriter`'s ``display_matrix`` takes back; ``None`` for a
    frame folder, an image or a video displayed as stored. Decodes the first frame."""
    if not is_video_file(source):
        return None
    for frame in _decode(Path(source)):
        # get() by type: PyAV 18.1.1 made the container a mapping whose iteration yields the types.
        side_data = frame.side_data.get(SideDataType.DISPLAYMATRIX)
        if side_data is None:
            return None
        matrix = tuple(int(x) for x in np.frombuffer(bytes(side_data), dtype=np.int32))
        return None if matrix == _IDENTITY_DISPLAY_MATRIX else matrix
    return None


def _as_hwc_uint8(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """Accepts ``(H, W, 3)`` arrays or ``(3, H, W)`` tensors: uint8 in [0, 255], or floats in
    [0, 1] (lc4's convention, as :func:`lc4.color.to_unit` and the pipeline give), clamped and
    rounded. Other integer types raise: whether they mean 0-255 or their full range is unclear."""
    if isinstance(frame, torch.Tensor):
        if frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(f"frame: expected a (3, H, W) tensor, got shape {tuple(frame.shape)}")
        if frame.is_floating_point():
            frame = frame.float()  # numpy has no bfloat16
        frame = frame.detach().cpu().permute(1, 2, 0).numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame: expected an (H, W, 3) array, got shape {frame.shape}")
    if np.issubdtype(frame.dtype, np.floating):
        frame = np.rint(np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ValueError(f"frame: expected uint8 values or floats in [0, 1], got dtype {frame.dtype}")
    return np.ascontiguousarray(frame)


def _split_frames(frames: np.ndarray | torch.Tensor | Iterable) -> Iterator:
    """A ``(T, 3, H, W)`` tensor or ``(T, H, W, 3)`` array is split into frames; iterables pass."""
    if isinstance(frames, torch.Tensor) and frames.dim() == 4:
        return iter(frames.unbind(0))
    return iter(frames)


# The encoder of each writable suffix unless asked for another: H.264 everywhere but WebM
# (VP8/VP9/AV1 only) and GIF (its own palette codec).
_SUFFIX_CODECS = {".webm": "libvpx-vp9", ".gif": "gif"}
_DEFAULT_CODEC = "libx264"
# Containers whose muxers store a display matrix; the others would drop a rotation silently.
_DISPLAY_MATRIX_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm"})


def _codec_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"path: expected a video file name ({sorted(VIDEO_SUFFIXES)}), got {str(path)!r}")
    codec = _SUFFIX_CODECS.get(suffix, _DEFAULT_CODEC)
    if codec not in av.codecs_available:
        raise ValueError(f"path: cannot write {suffix} videos: this PyAV build has no {codec} encoder")
    return codec


def _check_display_transform(path: Path, rotation: int, display_matrix) -> tuple[int, ...] | None:
    """The display matrix to write (None: display as stored), checked against the suffix."""
    if display_matrix is not None:
        if rotation % 360:
            raise ValueError(f"rotation, display_matrix: expected one of them, got {rotation} and a matrix")
        display_matrix = tuple(int(x) for x in display_matrix)
        if len(display_matrix) != 9:
            raise ValueError(f"display_matrix: expected FFmpeg's 9 integers, got {len(display_matrix)}")
        if display_matrix == _IDENTITY_DISPLAY_MATRIX:
            display_matrix = None
    argument = "display_matrix" if display_matrix is not None else "rotation"
    if (display_matrix is not None or rotation % 360) and path.suffix.lower() not in _DISPLAY_MATRIX_SUFFIXES:
        raise ValueError(f"{argument}: {path.suffix} files cannot store a display rotation or mirroring; "
                         f"expected one of {sorted(_DISPLAY_MATRIX_SUFFIXES)}")
    return display_matrix


def _default_pix_fmt(codec: str, height: int, width: int) -> str:
    if codec == "gif":
        return "pal8"
    return "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"


def _quality_options(codec: str, crf: int | None) -> dict[str, str]:
    if crf is None:
        return {}
    if codec in ("libx264", "libx265"):
        return {"crf": str(crf)}
    if codec == "libvpx-vp9":
        return {"crf": str(crf), "b": "0"}  # a zero bit rate makes crf constant quality, uncapped
    return {}


def _is_yuv(pix_fmt: str) -> bool:
    """YUV and gray formats, which have a matrix and a range (RGB and palette formats have not)."""
    video_format = av.VideoFormat(pix_fmt)
    return not video_format.is_rgb and video_format.name != "pal8"


def _color_range(pix_fmt: str) -> ColorRange:
    return ColorRange.JPEG if pix_fmt.startswith("yuvj") else ColorRange.MPEG


def _palette_frame(frame: np.ndarray) -> av.VideoFrame:
    """An RGB frame as a ``pal8`` frame with its own 256-colour palette (median cut)."""
    from PIL import Image

    image = Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT)
    colors = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), np.uint8)  # ARGB, opaque
    palette[:, 0] = 255
    palette[:len(colors), 1:] = colors
    return av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")


def _encoder_frame(frame: np.ndarray, pix_fmt: str, reformatter: VideoReformatter) -> av.VideoFrame:
    """An RGB frame converted to ``pix_fmt`` as the writer tags it (see the module docstring)."""
    if pix_fmt == "pal8":
        return _palette_frame(frame)
    rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
    if not _is_yuv(pix_fmt):
        return reformatter.reformat(rgb, format=pix_fmt)
    return reformatter.reformat(rgb, format=pix_fmt, dst_colorspace=_WRITTEN_COLORSPACE,
                                dst_color_range=_color_range(pix_fmt),
                                interpolation=Interpolation.BILINEAR | _EXACT_CONVERSION)


class VideoWriter:
    """Encodes frames one at a time into a video file::

        with VideoWriter("out.mp4", fps=25) as writer:
            for frame in frames:
                writer.write(frame)

    The size comes from the first frame. The codec follows the suffix (libx264; ``.webm``:
    libvpx-vp9; ``.gif``: gif, a 256-colour palette per frame). ``crf`` sets libx264/libx265/
    libvpx-vp9 quality (lower is better; 0 with libx264 and ``pix_fmt="yuv444p"`` is lossless).
    Odd sizes use ``yuv444p`` because ``yuv420p`` needs even sides. ``display_matrix`` (nine
    integers, as :func:`read_display_matrix` gives them) is written as the display transform, or
    ``rotation`` (degrees, counter-clockwise, as :func:`read_rotation` gives it) as a display
    rotation; only .mp4, .m4v, .mov, .mkv and .webm can store one. The suffix, codec and display
    transform are checked here, before any frame; the file is created with the first frame.
    """

    def __init__(
        self,
        path: PathLike,
        fps: int | float | Fraction = 25,
        codec: str | None = None,
        crf: int | None = 18,
        pix_fmt: str | None = None,
        rotation: int = 0,
        display_matrix: Sequence[int] | None = None,
    ):
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = codec or _codec_for(self.path)
        self.crf = crf
        self.pix_fmt = pix_fmt
        self.display_matrix = _check_display_transform(self.path, rotation, display_matrix)
        self.rotation = rotation
        self._container = None
        self._stream = None
        self._reformatter = VideoReformatter()
        self.frames_written = 0

    def _open(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        try:
            self._stream = self._add_stream(height, width)
        except BaseException:
            self._close_container()
            raise

    def _add_stream(self, height: int, width: int) -> av.VideoStream:
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = self.pix_fmt or _default_pix_fmt(self.codec, height, width)
        stream.options = _quality_options(self.codec, self.crf)
        if _is_yuv(stream.pix_fmt):
            stream.codec_context.colorspace = _WRITTEN_COLORSPACE
            stream.codec_context.color_range = _color_range(stream.pix_fmt)
        if self.display_matrix is not None:
            stream.set_display_matrix(list(self.display_matrix))
        elif self.rotation % 360:
            stream.set_display_rotation(self.rotation)
        return stream

    def write(self, frame: np.ndarray | torch.Tensor) -> None:
        frame = _as_hwc_uint8(frame)
        if self._container is None:
            self._open(*frame.shape[:2])
        elif frame.shape[:2] != (self._stream.height, self._stream.width):
            raise ValueError(
                f"frame: expected size {(self._stream.height, self._stream.width)} like the first "
                f"frame, got {frame.shape[:2]}"
            )
        self._container.mux(self._stream.encode(_encoder_frame(frame, self._stream.pix_fmt, self._reformatter)))
        self.frames_written += 1

    def close(self) -> None:
        """Flushes the encoder and closes the file (a no-op when nothing was written)."""
        if self._container is None:
            return
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode(None))
        finally:
            self._close_container()

    def _close_container(self) -> None:
        container, self._container, self._stream = self._container, None, None
        if container is not None:
            container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:  # no flush: an encoder error there would replace the error on its way out
            self._close_container()


def write_video(path: PathLike, frames, fps: int | float | Fraction = 25, **writer_options) -> Path:
    """Writes frames (an iterable of frames, or a ``(T, 3, H, W)`` tensor) to a video file;
    ``writer_options`` go to :class:`VideoWriter` (``codec``, ``crf``, ``pix_fmt``, ``rotation``,
    ``display_matrix``)."""
    with VideoWriter(path, fps=fps, **writer_options) as writer:
        for frame in _split_frames(frames):
            writer.write(frame)
    if writer.frames_written == 0:
        raise ValueError("frames: expected at least one frame")
    return Path(path)


_IMAGE_CODECS = {".png": ("png", "rgb24"), ".jpg": ("mjpeg", "yuvj444p"), ".jpeg": ("mjpeg", "yuvj444p")}


def write_image(path: PathLike, frame: np.ndarray | torch.Tensor, quality: int = 2) -> Path:
    """Writes one frame as PNG or JPEG (``quality``: mjpeg's qscale, 2 is best, 31 worst)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _IMAGE_CODECS:
        raise ValueError(f"path: expected a {sorted(_IMAGE_CODECS)} file name, got {str(path)!r}")
    frame = _as_hwc_uint8(frame)
    codec_name, pix_fmt = _IMAGE_CODECS[suffix]
    codec = av.CodecContext.create(codec_name, "w")
    codec.height, codec.width = frame.shape[:2]
    codec.pix_fmt = pix_fmt
    codec.time_base = Fraction(1, 25)
    if codec_name == "mjpeg":
        codec.qscale = quality  # a fixed quantiser; mjpeg has no crf
    video_frame = VideoReformatter().reformat(av.VideoFrame.from_ndarray(frame, format="rgb24"), format=pix_fmt)
    packets = codec.encode(video_frame) + codec.encode(None)
    path.write_bytes(b"".join(bytes(packet) for packet in packets))
    return path


def write_frame_folder(folder: PathLike, frames, suffix: str = ".png", start: int = 0) -> Path:
    """Writes frames as ``folder/00000.png``, ``00001.png``, ... (the DAVIS naming)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for index, frame in enumerate(_split_frames(frames), start=start):
        write_image(folder / f"{index:05d}{suffix}", frame)
        count += 1
    if count == 0:
        raise ValueError("frames: expected at least one frame")
    return folder


def has_audio(source: PathLike) -> bool:
    """Whether a video file has an audio stream (a frame folder never has)."""
    if not is_video_file(source):
        return False
    with av.open(str(source)) as container:
        return bool(container.streams.audio)


def can_copy_audio(audio_source: PathLike, output_path: PathLike) -> bool:
    """Whether :func:`mux_audio` can copy the first audio stream of ``audio_source`` into a file
    named like ``output_path`` (WebM takes no AAC, GIF no audio at all). Writes nothing there."""
    with tempfile.TemporaryDirectory() as tmp, av.open(str(audio_source)) as source:
        probe = av.open(str(Path(tmp) / f"probe{Path(output_path).suffix}"), mode="w")
        try:
            probe.add_stream_from_template(source.streams.audio[0])
            return True
        except ValueError:
            return False
        finally:
            probe.close()


def mux_audio(video_path: PathLike, audio_source: PathLike, output_path: PathLike) -> Path:
    """Writes ``output_path`` with the video stream of ``video_path`` (its display transform
    included) and the first audio stream of ``audio_source``, both copied without re-encoding."""
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(video_path)) as video_in, av.open(str(audio_source)) as audio_in, \
            av.open(str(output_path), mode="w") as out:
        streams = [(video_in, video_in.streams.video[0]), (audio_in, audio_in.streams.audio[0])]
        # Every stream must exist before the first packet is muxed (that writes the header).
        targets = [out.add_stream_from_template(stream) for _, stream in streams]
        for (container, stream), out_stream in zip(streams, targets):
            for packet in container.demux(stream):
                # The demuxer ends with an empty flush packet. (dts None is no sign of it: Matroska
                # leaves it out on the first keyframe; the muxer derives it from pts.)
                if packet.size == 0:
                    continue
                packet.stream = out_stream
                out.mux(packet)
    return Path(output_path)
