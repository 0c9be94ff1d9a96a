"""Cross-clip fusion (CCF), seed Sec. 3.4, Eq. 8: long videos at inference.

The video is covered by clips of ``N^f`` frames taken at intervals ``d in {1, 2, 4, ..., N^d}``
(``N^d``: the largest power of two below the frame count). At every TDA layer each clip runs
TDA on its own frames, and each frame's outputs from all clips that hold it are fused with the
distance weights of Eq. 8. After a fusion every copy of a frame holds the same features, so
everything between two TDA layers (resnets, spatial and cross-attention, feed-forward) runs
once per *frame*: the UNet sees ``B * num_frames`` images, and only TDA sees clips, a few at a
time (``clips_per_batch``). Time and memory grow with the number of frames, not with
frames x clips.

Choices the paper leaves open (and why):

* **Forming a clip with interval d.** Frames of one residue class ``r, r + d, r + 2d, ...`` are
  cut into consecutive clips of ``N^f``; a last clip that would run past the end is moved back
  to end at the class's last frame (it overlaps its neighbour instead of shrinking or wrapping
  round, so every clip spans real, ordered frames at one interval), and a class with fewer than
  ``N^f`` frames forms one shorter clip. Every frame lies in at least one clip per interval.
* **Distance in Eq. 8.** ``|i - c|`` counts *positions in the clip*, with the centre
  ``c = (n - 1) / 2`` of a clip of ``n`` frames, and the weight is ``n / 2 - |i - c|``. For a
  full clip (``n = N^f``) this is Eq. 8; the weights run ``0.5, 1.5, ..., N^f/2 - 0.5`` from
  the ends inwards and are always positive. Counting *frames* instead would reach
  ``|i - c| = d (N^f - 1) / 2 > N^f / 2`` for ``d > 1``, i.e. negative weights; an integer
  centre (``N^f / 2``) would give the first frame of a clip weight 0, and a frame that is
  first in all its clips an undefined average. Using ``n / 2`` for short clips keeps a
  one-frame clip (large ``d``) from outweighing the centre of a full clip.

``fusion="average"`` (all weights 1) and :meth:`ClipPlan.sliding_windows` are the paper's
ablations; :meth:`ClipPlan.disjoint` is inference clip by clip, without CCF.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch

FUSIONS = ("weighted", "average")


def position_weights(length: int) -> list[float]:
    """Eq. 8's numerator for the positions of a clip of ``length`` frames."""
    centre = (length - 1) / 2
    return [length / 2 - abs(position - centre) for position in range(length)]


def skip_window_intervals(num_frames: int, max_interval: int | None = None) -> list[int]:
    """``[1, 2, 4, ..., N^d]`` with ``N^d`` the largest power of two below ``num_frames``
    (``[1]`` for a single frame), capped at ``max_interval`` when given."""
    intervals = [1]
    while intervals[-1] * 2 < num_frames and (max_interval is None or intervals[-1] * 2 <= max_interval):
        intervals.append(intervals[-1] * 2)
    return intervals


def interval_clips(num_frames: int, frames_per_clip: int, interval: int) -> list[tuple[int, ...]]:
    """The clips of one interval ``d``: each residue class cut into clips of ``frames_per_clip``."""
    clips = []
    for residue in range(min(interval, num_frames)):
        members = list(range(residue, num_frames, interval))
        if len(members) <= frames_per_clip:
            clips.append(tuple(members))
            continue
        for start in range(0, len(members), frames_per_clip):
            start = min(start, len(members) - frames_per_clip)  # move a last, short clip back
            clips.append(tuple(members[start:start + frames_per_clip]))
    return clips


class ClipPlan:
    """Clips (tuples of frame indices, in time order) and per-clip fusion weights for a video of
    ``num_frames`` frames; :meth:`fuse` applies a per-clip function and fuses by Eq. 8."""

    def __init__(self, clips: Sequence[Sequence[int]], num_frames: int, fusion: str = "weighted",
                 clips_per_batch: int = 4):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
        if clips_per_batch < 1:
            raise ValueError(f"clips_per_batch: expected >= 1, got {clips_per_batch}")
        self.clips = [tuple(int(f) for f in clip) for clip in clips]
        self.num_frames, self.fusion, self.clips_per_batch = num_frames, fusion, clips_per_batch
        covered = {f for clip in self.clips for f in clip}
        if any(not clip for clip in self.clips) or not covered <= set(range(num_frames)):
            raise ValueError(f"clips: expected non-empty clips of frames in [0, {num_frames - 1}]")
        missing = sorted(set(range(num_frames)) - covered)
        if missing:
            raise ValueError(f"clips: frames {missing[:10]} are in no clip")
        raw = [position_weights(len(clip)) if fusion == "weighted" else [1.0] * len(clip) for clip in self.clips]
        totals = [0.0] * num_frames
        for clip, weights in zip(self.clips, raw):
            for frame, weight in zip(clip, weights):
                totals[frame] += weight
        # Normalised per frame: the fused feature is sum_j weights[j][pos] * f_{i,j}.
        self.weights = [[w / totals[f] for f, w in zip(clip, ws)] for clip, ws in zip(self.clips, raw)]

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def skip_windows(cls, num_frames: int, frames_per_clip: int = 8, max_interval: int | None = None,
                     **options) -> "ClipPlan":
        """The paper's CCF: clips at intervals 1, 2, 4, ..., N^d (see the module docstring)."""
        _check_counts(num_frames, frames_per_clip)
        clips = [clip for d in skip_window_intervals(num_frames, max_interval)
                 for clip in interval_clips(num_frames, frames_per_clip, d)]
        return cls(clips, num_frames, **options)

    @classmethod
    def sliding_windows(cls, num_frames: int, frames_per_clip: int = 8, stride: int | None = None,
                        **options) -> "ClipPlan":
        """Consecutive clips every ``stride`` frames (default half a clip); an ablation."""
        _check_counts(num_frames, frames_per_clip)
        stride = stride or max(1, frames_per_clip // 2)
        length = min(frames_per_clip, num_frames)
        starts = sorted({min(s, num_frames - length) for s in range(0, num_frames, stride)})
        return cls([tuple(range(s, s + length)) for s in starts], num_frames, **options)

    @classmethod
    def disjoint(cls, num_frames: int, frames_per_clip: int = 8, **options) -> "ClipPlan":
        """Clip-by-clip inference without fusion (the paper's "w/o CCF")."""
        _check_counts(num_frames, frames_per_clip)
        return cls(interval_clips(num_frames, frames_per_clip, 1), num_frames, **options)

    # -- use ------------------------------------------------------------------------------
    def clips_of(self, frame: int) -> list[tuple[int, float]]:
        """``(clip index, normalised weight)`` for every clip holding ``frame``."""
        return [(j, ws[clip.index(frame)]) for j, (clip, ws) in enumerate(zip(self.clips, self.weights))
                if frame in clip]

    def fuse(self, x: torch.Tensor, per_clip: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``x`` ``(B, num_frames, ...)``; ``per_clip`` maps clips ``(B*m, n, ...)`` to the same
        shape. Returns ``(B, num_frames, ...)`` with each frame's clip outputs fused."""
        if x.shape[1] != self.num_frames:
            raise ValueError(f"x: expected (B, {self.num_frames}, ...) for this clip plan, got {tuple(x.shape)}")
        by_length = defaultdict(list)
        for clip, weights in zip(self.clips, self.weights):
            by_length[len(clip)].append((clip, weights))
        fused = None
        batch, rest = x.shape[0], x.shape[2:]
        for length, members in by_length.items():
            for start in range(0, len(members), self.clips_per_batch):
                chunk = members[start:start + self.clips_per_batch]
                index = torch.tensor([f for clip, _ in chunk for f in clip], device=x.device)
                weight = torch.tensor([w for _, ws in chunk for w in ws], device=x.device)
                clips = x[:, index].reshape(batch * len(chunk), length, *rest)
                out = per_clip(clips).reshape(batch, len(chunk) * length, *rest)
                weighted = out * weight.to(out.dtype).view(1, -1, *([1] * len(rest)))
                if fused is None:
                    fused = out.new_zeros((batch, self.num_frames, *rest))
                fused = fused.index_add(1, index, weighted)
        return fused

    def __len__(self) -> int:
        return len(self.clips)

    def __repr__(self) -> str:
        return f"ClipPlan({len(self.clips)} clips over {self.num_frames} frames, fusion={self.fusion!r})"


def _check_counts(num_frames: int, frames_per_clip: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip: expected >= 1, got {frames_per_clip}")
