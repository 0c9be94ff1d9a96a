"""``lc4 eval PRED GT``: the seed paper's six metrics over folders of videos.

PRED and GT are folders whose entries are videos (``bear.mp4``) or frame folders (``bear/``);
entries match by name without the suffix, so a DAVIS ``JPEGImages/480p`` folder can serve as GT
for a folder of predicted ``.mp4`` files. Both sides are resized to the evaluation resolution
(256x256 by default, as in the paper) and compared frame by frame. Per video: Color. (of the
prediction), PSNR, SSIM and LPIPS (means over frames), CDC x1000 (of the prediction). Over the
set: the mean of each per-video score, and FVD (a set-level metric).
"""
from __future__ import annotations

import abc

import argparse
import itertools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import av
import torch
from tqdm import tqdm

from . import metrics, video
from .devices import check_device
from .metrics.fvd import DEFAULT_CLIP_LENGTH, DEFAULT_INPUT_SIZE
from .metrics.fvd import ENV_VAR as I3D_ENV_VAR
from .metrics.lpips import ENV_VAR as LPIPS_ENV_VAR

METRIC_NAMES = ("colorfulness", "psnr", "ssim", "lpips", "fvd", "cdc")
# Column titles and decimals, as in the seed's Tab. 1.
COLUMNS = {
    "colorfulness": ("Color. ↑", 2),
    "psnr": ("PSNR ↑", 2),
    "ssim": ("SSIM ↑", 4),
    "lpips": ("LPIPS ↓", 4),
    "fvd": ("FVD ↓", 2),
    "cdc": ("CDC×1000 ↓", 3),
}


@dataclass
class EvalOptions:
    metrics: tuple[str, ...] = ("colorfulness", "psnr", "ssim", "cdc")  # the four needing no weights
    size: tuple[int, int] | None = (256, 256)  # None: native size (PRED and GT must agree)
    colorfulness_variant: str = "abs"
    lpips_weights: str | None = None
    i3d_weights: str | None = None
    fvd_clip_length: int = DEFAULT_CLIP_LENGTH
    fvd_input_size: int = DEFAULT_INPUT_SIZE
    chunk_frames: int = 16
    device: str = "cpu"


@dataclass
class VideoResult:
    name: str
    frames: int
    scores: dict[str, float]
    notes: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    options: dict
    videos: list[VideoResult]
    mean: dict[str, float]
    skipped: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        payload = {
            "options": self.options,
            "videos": [asdict(v) for v in self.videos],
            "mean": self.mean,
            "skipped": self.skipped,
            "notes": self.notes,
        }
        # inf/nan (PSNR of identical frames) are not JSON numbers: written as strings.
        return json.dumps(_json_safe(payload), indent=2, ensure_ascii=False)

    def to_markdown(self) -> str:
        names = [m for m in self.options["metrics"] if m != "fvd"]
        header = ["video", "frames"] + [COLUMNS[m][0] for m in names]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for result in self.videos:
            cells = [result.name, str(result.frames)] + [_format(result.scores.get(m), m) for m in names]
            lines.append("| " + " | ".join(cells) + " |")
        count = len(self.videos)
        mean_cells = [f"**mean** ({count} video{'s' if count != 1 else ''})", str(sum(v.frames for v in self.videos))]
        lines.append("| " + " | ".join(mean_cells + [_format(self.mean.get(m), m) for m in names]) + " |")
        if "fvd" in self.options["metrics"]:
            lines += ["", f"{COLUMNS['fvd'][0]} (whole set): {_format(self.mean.get('fvd'), 'fvd')}"]
        video_notes = [f"- {v.name}: {note}" for v in self.videos for note in v.notes]
        if video_notes or self.notes:
            lines += ["", "Notes:"] + [f"- {note}" for note in self.notes] + video_notes
        if self.skipped:
            lines += ["", f"Skipped ({len(self.skipped)}):"]
            lines += [f"- {item['name']}: {item['reason']}" for item in self.skipped]
        return "\n".join(lines)


def _format(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{COLUMNS[metric][1]}f}"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def list_sources(folder: Path) -> dict[str, list[Path]]:
    """Video files and frame folders directly in ``folder``, by name without suffix (a name with
    more than one entry, e.g. ``a.mp4`` and ``a/``, lists them all)."""
    if not folder.is_dir():
        raise ValueError(f"folder: expected a directory of videos or frame folders, got {str(folder)!r}")
    sources: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if video.is_video_file(entry) or entry.is_dir():
            sources.setdefault(entry.stem if entry.is_file() else entry.name, []).append(entry)
    return sources


def match_sources(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[dict[str, str]]]:
    """Pairs PRED and GT entries by name; the rest (unmatched, or a name with two entries on one
    side) are reported."""
    pred, gt = list_sources(pred_dir), list_sources(gt_dir)
    if not pred or not gt:
        empty, folder = ("PRED", pred_dir) if not pred else ("GT", gt_dir)
        images = sorted(p.name for p in folder.iterdir() if video.is_image_file(p)) if folder.is_dir() else []
        hint = (f"; it holds {len(images)} image files directly: put each video's frames in a folder of its own"
                if images else "")
        raise ValueError(f"{empty}: no video files or frame folders in {str(folder)!r}{hint}")
    pairs, skipped = [], []
    for name in sorted(pred.keys() & gt.keys()):
        both = [(side, entries) for side, entries in (("PRED", pred[name]), ("GT", gt[name])) if len(entries) > 1]
        if both:
            side, entries = both[0]
            skipped.append({"name": name, "reason": f"{side} has {len(entries)} entries of this name "
                                                    f"({', '.join(e.name for e in entries)}): keep one"})
        else:
            pairs.append((name, pred[name][0], gt[name][0]))
    skipped += [{"name": n, "reason": "in PRED only, no match in GT"} for n in sorted(pred.keys() - gt.keys())]
    skipped += [{"name": n, "reason": "in GT only, no match in PRED"} for n in sorted(gt.keys() - pred.keys())]
    return pairs, skipped


class _Metric(abc.ABC):
    """Accumulates one metric over a video's frame chunks, then over the set of videos."""

    def start_video(self) -> None:
        self.values: list[torch.Tensor] = []

    @abc.abstractmethod
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Takes one chunk of matching PRED and GT frames."""

    @abc.abstractmethod
    def end_video(self) -> float | None:
        """The video's score; ``None`` for a metric of the whole set only."""

    def commit_video(self) -> None:
        """Called once every metric has scored the video, so a failed video leaves no trace."""

    def set_score(self, per_video: list[float]) -> float | None:
        return sum(per_video) / len(per_video) if per_video else None


class _PerFrame(_Metric):
    """Mean over a video's frames of a per-frame score."""

    def __init__(self, score_fn):
        self.score_fn = score_fn

    def update(self, pred, gt):
        self.values.append(self.score_fn(pred, gt).double().cpu())

    def end_video(self):
        return torch.cat(self.values).mean().item()


class _CDC(_Metric):
    def update(self, pred, gt):
        self.values.append(metrics.channel_histograms(pred).cpu())

    def end_video(self):
        histograms = torch.cat(self.values)
        if histograms.shape[0] < 2:  # no frame pairs: the video's other metrics still count
            return None
        return 1000.0 * metrics.cdc_from_histograms(histograms).item()


class _FVD(_Metric):
    """Collects the clip features of both sides, video by video; scores only the whole set."""

    def __init__(self, model, clip_length: int, input_size: int):
        self.clip_length = clip_length
        self.pred_clips = metrics.ClipFeatures(model, clip_length, input_size)
        self.gt_clips = metrics.ClipFeatures(model, clip_length, input_size)
        self.pred_features: list[torch.Tensor] = []
        self.gt_features: list[torch.Tensor] = []
        self.video_features = None

    def start_video(self):
        self.pred_clips.end_video(), self.gt_clips.end_video()  # drops a failed video's clips
        self.video_features = None

    def update(self, pred, gt):
        self.pred_clips.add(pred)
        self.gt_clips.add(gt)

    def end_video(self):
        self.video_features = (self.pred_clips.end_video(), self.gt_clips.end_video())
        return None

    def commit_video(self):
        pred, gt = self.video_features
        if pred.numel():
            self.pred_features.append(pred)
            self.gt_features.append(gt)

    def set_score(self, per_video):
        num_clips = sum(f.shape[0] for f in self.pred_features)
        if num_clips < 2:
            raise ValueError(f"needs at least 2 clips of {self.clip_length} frames per side, found {num_clips}")
        return metrics.frechet_distance(torch.cat(self.pred_features), torch.cat(self.gt_features))


def _build_metrics(options: EvalOptions) -> dict[str, _Metric]:
    built: dict[str, _Metric] = {}
    for name in options.metrics:
        if name == "colorfulness":
            built[name] = _PerFrame(lambda p, g: metrics.colorfulness(p, options.colorfulness_variant))
        elif name == "psnr":
            built[name] = _PerFrame(metrics.psnr)
        elif name == "ssim":
            built[name] = _PerFrame(metrics.ssim)
        elif name == "lpips":
            model = metrics.load_lpips(options.lpips_weights).to(options.device)
            built[name] = _PerFrame(lambda p, g, m=model: metrics.lpips(p, g, model=m))
        elif name == "fvd":
            model = metrics.load_i3d(options.i3d_weights).to(options.device)
            built[name] = _FVD(model, options.fvd_clip_length, options.fvd_input_size)
        elif name == "cdc":
            built[name] = _CDC()
        else:
            raise ValueError(f"metrics: expected names from {METRIC_NAMES}, got {name!r}")
    return built


def _paired_frames(pred: Path, gt: Path, size, notes: list[str]) -> Iterator[tuple]:
    """Yields ``(pred, gt)`` frames in step; notes it when one side has more frames."""
    pred_frames, gt_frames = video.iter_frames(pred, size), video.iter_frames(gt, size)
    count = 0
    while True:
        p, g = next(pred_frames, None), next(gt_frames, None)
        if p is None or g is None:
            break
        if p.shape != g.shape:
            raise ValueError(
                f"frame sizes differ: PRED {p.shape[:2]}, GT {g.shape[:2]}; pass --resolution to resize both"
            )
        count += 1
        yield p, g
    if p is not None or g is not None:
        longer, rest = ("PRED", pred_frames) if p is not None else ("GT", gt_frames)
        extra = 1 + sum(1 for _ in rest)
        notes.append(f"{longer} has {extra} more frames; compared the first {count}")


def _paired_chunks(pred: Path, gt: Path, options: EvalOptions, notes: list[str]) -> Iterator[tuple]:
    """``(pred, gt)`` chunks of ``(n, 3, H, W)`` uint8 frames on ``options.device``."""
    pairs = _paired_frames(pred, gt, options.size, notes)
    while chunk := list(itertools.islice(pairs, options.chunk_frames)):
        pred_chunk, gt_chunk = zip(*chunk)
        yield tuple(video.frames_to_tensor(side).to(options.device) for side in (pred_chunk, gt_chunk))


def _score_video(name: str, pred: Path, gt: Path, built: dict, options: EvalOptions) -> VideoResult:
    notes: list[str] = []
    for metric in built.values():
        metric.start_video()
    frames = 0
    for p, g in _paired_chunks(pred, gt, options, notes):
        frames += p.shape[0]
        for metric in built.values():
            metric.update(p, g)
    if frames == 0:
        raise ValueError("no frames")
    scores = {key: metric.end_video() for key, metric in built.items()}
    for metric in built.values():
        metric.commit_video()
    if "cdc" in built and scores["cdc"] is None:
        notes.append("one frame: not in CDC")
    if "fvd" in built and built["fvd"].video_features[0].numel() == 0:
        notes.append(f"shorter than one FVD clip ({options.fvd_clip_length} frames): not in FVD")
    return VideoResult(name, frames, {k: v for k, v in scores.items() if v is not None}, notes)


def evaluate(pred_dir, gt_dir, options: EvalOptions | None = None, progress: bool = True) -> EvalReport:
    """Scores every matching PRED/GT pair; unmatched and unreadable entries are skipped and listed."""
    options = options or EvalOptions()
    pairs, skipped = match_sources(Path(pred_dir), Path(gt_dir))
    check_device(options.device, argument="device")
    built = _build_metrics(options)
    results: list[VideoResult] = []
    bar = tqdm(pairs, desc="lc4 eval", unit="video", file=sys.stderr, disable=not progress)
    for name, pred, gt in bar:
        bar.set_postfix_str(name)
        try:
            results.append(_score_video(name, pred, gt, built, options))
        except (av.error.FFmpegError, OSError, ValueError) as error:  # listed, the run goes on
            skipped.append({"name": name, "reason": f"unreadable or invalid: {type(error).__name__}: {error}"})
    mean: dict[str, float] = {}
    notes: list[str] = []
    for key, metric in built.items():
        try:
            score = metric.set_score([r.scores[key] for r in results if key in r.scores])
        except ValueError as error:
            notes.append(f"{key}: {error}")
            score = None
        if score is not None:
            mean[key] = score
    report_options = asdict(options)
    report_options["metrics"] = list(options.metrics)
    return EvalReport(report_options, results, mean, skipped, notes)


def parse_resolution(text: str) -> tuple[int, int] | None:
    """``256`` -> (256, 256); ``256x448`` -> (256, 448) as height x width; ``0`` or ``native`` -> None."""
    if text.lower() in ("0", "native"):
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
        return video.normalize_size(parts[0] if len(parts) == 1 else parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N, HxW, or 0/native for the native size, got {text!r}"
        ) from None


def parse_metrics(text: str) -> tuple[str, ...]:
    """``psnr,ssim`` -> the named metrics, in the table's order."""
    names = {n.strip().lower() for n in text.split(",") if n.strip()}
    if not names or not names <= set(METRIC_NAMES):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(METRIC_NAMES)}, got {text!r}")
    return tuple(n for n in METRIC_NAMES if n in names)


def default_metrics(lpips_weights: str | None, i3d_weights: str | None) -> tuple[str, ...]:
    """All six when LPIPS's and I3D's weights are configured; otherwise those that need none."""
    configured = {
        "lpips": bool(lpips_weights or os.environ.get(LPIPS_ENV_VAR)),
        "fvd": bool(i3d_weights or os.environ.get(I3D_ENV_VAR)),
    }
    return tuple(name for name in METRIC_NAMES if configured.get(name, True))


def register(subparsers) -> None:
    """Adds ``eval`` to the ``lc4`` command line."""
    parser = subparsers.add_parser(
        "eval",
        help="score predicted videos against ground truth with the paper's metrics",
        description=__doc__.split("\n\n", 1)[1].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pred", type=Path, help="folder of predicted videos or frame folders")
    parser.add_argument("gt", type=Path, help="folder of ground-truth videos or frame folders")
    parser.add_argument(
        "--metrics", type=parse_metrics, default=None,
        help=f"comma-separated subset of {','.join(METRIC_NAMES)} (default: all whose weights are "
             "configured; lpips and fvd need --lpips-weights/--i3d-weights or their variables)",
    )
    parser.add_argument(
        "--resolution", type=parse_resolution, default=(256, 256),
        help="evaluate at N x N (default 256, as the paper), HxW, or 0 for the native size",
    )
    parser.add_argument(
        "--colorfulness-variant", choices=metrics.COLORFULNESS_VARIANTS, default="abs",
        help="abs: |rg|, |yb| as common evaluation code (default); hasler: the published formula",
    )
    parser.add_argument("--lpips-weights", help="LPIPS weights folder or file (default: $LC4_LPIPS_WEIGHTS)")
    parser.add_argument("--i3d-weights", help="I3D state dict for FVD (default: $LC4_I3D_WEIGHTS)")
    parser.add_argument("--fvd-clip-length", type=int, default=EvalOptions.fvd_clip_length,
                        help="frames per FVD clip (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH ('-': stdout only JSON)")
    parser.add_argument("--device", default="cpu", help="torch device for the metrics (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = EvalOptions(
        metrics=args.metrics or default_metrics(args.lpips_weights, args.i3d_weights),
        size=args.resolution,
        colorfulness_variant=args.colorfulness_variant,
        lpips_weights=args.lpips_weights,
        i3d_weights=args.i3d_weights,
        fvd_clip_length=args.fvd_clip_length,
        device=args.device,
    )
    left_out = [m for m in METRIC_NAMES if m not in options.metrics]
    if args.metrics is None and left_out:
        print(f"lc4 eval: leaving out {', '.join(left_out)} (no weights configured)", file=sys.stderr)
    report = evaluate(args.pred, args.gt, options, progress=not args.no_progress)
    if args.json == "-":
        print(report.to_json())
    else:
        print(report.to_markdown())
        if args.json:
            Path(args.json).write_text(report.to_json() + "\n", encoding="utf-8")
    return 0 if report.videos else 1
