"""Cross-clip fusion (seed Sec. 3.4, Eq. 8): clips, weights worked by hand, coverage, fusion."""
from __future__ import annotations

import pytest
import torch

from lc4.ccf import ClipPlan, interval_clips, position_weights, skip_window_intervals


def test_eq8_weights_count_positions_in_the_clip():
    # N^f = 8: N^f/2 - |i - c| with c = 3.5.
    assert position_weights(8) == [0.5, 1.5, 2.5, 3.5, 3.5, 2.5, 1.5, 0.5]
    assert position_weights(4) == [0.5, 1.5, 1.5, 0.5]
    assert position_weights(3) == [0.5, 1.5, 0.5]
    assert position_weights(1) == [0.5]


def test_intervals_go_up_to_the_largest_power_of_two_below_the_frame_count():
    assert skip_window_intervals(10) == [1, 2, 4, 8]
    assert skip_window_intervals(16) == [1, 2, 4, 8]
    assert skip_window_intervals(17) == [1, 2, 4, 8, 16]
    assert skip_window_intervals(1) == [1]
    assert skip_window_intervals(50, max_interval=4) == [1, 2, 4]


def test_skip_window_clips_for_ten_frames_worked_by_hand():
    plan = ClipPlan.skip_windows(10, frames_per_clip=4)
    assert plan.clips == [
        (0, 1, 2, 3), (4, 5, 6, 7), (6, 7, 8, 9),                # d = 1 (last one moved back)
        (0, 2, 4, 6), (2, 4, 6, 8), (1, 3, 5, 7), (3, 5, 7, 9),  # d = 2
        (0, 4, 8), (1, 5, 9), (2, 6), (3, 7),                    # d = 4 (short classes)
        (0, 8), (1, 9), (2,), (3,), (4,), (5,), (6,), (7,),      # d = 8
    ]
    # Frame 0 is first in four clips (weight 0.5 each): an equal average.
    assert sorted(w for _, w in plan.clips_of(0)) == [0.25] * 4
    # Frame 5: 1.5 (d=1, position 1), 1.5 and 1.5 (d=2), 1.5 (d=4, centre of 3), 0.5 (alone).
    weights = dict(plan.clips_of(5))
    assert weights == pytest.approx({1: 1.5 / 6.5, 5: 1.5 / 6.5, 6: 1.5 / 6.5, 8: 1.5 / 6.5, 16: 0.5 / 6.5})


@pytest.mark.parametrize("frames", [1, 5, 8, 9, 23, 50, 64])
@pytest.mark.parametrize("per_clip", [3, 8])
def test_every_frame_is_covered_with_positive_weights_summing_to_one(frames, per_clip):
    plan = ClipPlan.skip_windows(frames, per_clip)
    for interval in skip_window_intervals(frames):
        clips = interval_clips(frames, per_clip, interval)
        assert {f for c in clips for f in c} == set(range(frames))  # every interval covers every frame
        assert all(b - a == interval for c in clips for a, b in zip(c, c[1:]))
    assert len(plan) == sum(len(interval_clips(frames, per_clip, d)) for d in skip_window_intervals(frames))
    for clip in plan.clips:
        assert 1 <= len(clip) <= per_clip
        assert len({b - a for a, b in zip(clip, clip[1:])}) <= 1  # one interval per clip
    for frame in range(frames):
        weights = [w for _, w in plan.clips_of(frame)]
        assert weights and min(weights) > 0
        assert sum(weights) == pytest.approx(1.0)
    for builder in (ClipPlan.sliding_windows, ClipPlan.disjoint):
        other = builder(frames, per_clip)
        assert {f for c in other.clips for f in c} == set(range(frames))


def test_fuse_weights_each_frames_clip_outputs():
    plan = ClipPlan.skip_windows(10, frames_per_clip=4, clips_per_batch=3)
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    assert torch.allclose(plan.fuse(x, lambda clips: clips), x)  # copies of a frame: same features
    # A per-clip function that depends on the clip: each frame gets the weighted clip means.
    fused = plan.fuse(x, lambda clips: clips.mean(dim=1, keepdim=True).expand_as(clips))
    expected = torch.zeros_like(x)
    for frame in range(10):
        for j, w in plan.clips_of(frame):
            expected[:, frame] += w * x[:, list(plan.clips[j])].mean(dim=1)
    assert torch.allclose(fused, expected)
    average = ClipPlan.skip_windows(10, frames_per_clip=4, fusion="average")
    assert set(dict(average.clips_of(0)).values()) == {0.25}
    assert dict(average.clips_of(5)) == pytest.approx({j: 0.2 for j in (1, 5, 6, 8, 16)})


def test_bad_plans_are_errors():
    with pytest.raises(ValueError, match=r"frames \[2\] are in no clip"):
        ClipPlan([(0, 1), (3,)], 4)
    with pytest.raises(ValueError, match="fusion"):
        ClipPlan([(0,)], 1, fusion="median")
    with pytest.raises(ValueError, match=r"x: expected \(B, 4, \.\.\.\)"):
        ClipPlan([(0, 1, 2, 3)], 4).fuse(torch.randn(1, 5, 2), lambda c: c)


def test_sliding_and_disjoint_clips_for_ten_frames_worked_by_hand():
    """The ablations: sliding windows every half clip by default, disjoint consecutive clips;
    a last clip that would run past the end is moved back to end at the last frame."""
    assert ClipPlan.sliding_windows(10, frames_per_clip=4).clips == [
        (0, 1, 2, 3), (2, 3, 4, 5), (4, 5, 6, 7), (6, 7, 8, 9)]
    assert ClipPlan.sliding_windows(10, frames_per_clip=4, stride=3).clips == [
        (0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]
    assert ClipPlan.disjoint(10, frames_per_clip=4).clips == [(0, 1, 2, 3), (4, 5, 6, 7), (6, 7, 8, 9)]
    assert ClipPlan.disjoint(3, frames_per_clip=4).clips == [(0, 1, 2)]
