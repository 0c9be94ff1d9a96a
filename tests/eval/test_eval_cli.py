"""`lc4 eval` end to end on real footage: bikes.mp4 frames as ground truth, a lightly
re-encoded copy and a degraded copy as predictions, in both layouts (videos, frame folders)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lc4 import video
from lc4.cli import main
from lc4.eval import EvalOptions, evaluate, parse_resolution
from lc4.metrics import LPIPS
from lc4.metrics.fvd import ENV_VAR as I3D_ENV_VAR
from lc4.metrics.i3d import InceptionI3d
from lc4.metrics.lpips import ENV_VAR as LPIPS_ENV_VAR

from eval_helpers import degrade

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def folders(tmp_path, bikes_frames):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    # clean: GT as a frame folder, prediction a good-quality re-encode
    video.write_frame_folder(gt / "bikes_clean", bikes_frames)
    video.write_video(pred / "bikes_clean.mp4", bikes_frames, crf=18)
    # degraded: GT as a near-lossless video, prediction a frame folder
    video.write_video(gt / "bikes_degraded.mp4", bikes_frames, crf=0, pix_fmt="yuv444p")
    video.write_frame_folder(pred / "bikes_degraded", degrade(bikes_frames))
    # entries that must be skipped and reported
    video.write_video(pred / "only_in_pred.mp4", bikes_frames[:3])
    video.write_frame_folder(gt / "only_in_gt", bikes_frames[:3])
    (pred / "broken.mp4").write_bytes(b"not a video")
    (gt / "broken.mp4").write_bytes(b"not a video either")
    return pred, gt


def test_eval_ranks_the_degraded_copy_worse(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    monkeypatch.delenv(I3D_ENV_VAR, raising=False)
    pred, gt = folders
    report_path = tmp_path / "report.json"
    code = main(["eval", str(pred), str(gt), "--resolution", "64", "--json", str(report_path), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "leaving out lpips, fvd" in err

    report = json.loads(report_path.read_text())
    assert report["options"]["metrics"] == ["colorfulness", "psnr", "ssim", "cdc"]
    videos = {v["name"]: v for v in report["videos"]}
    assert set(videos) == {"bikes_clean", "bikes_degraded"}
    clean, degraded = videos["bikes_clean"]["scores"], videos["bikes_degraded"]["scores"]
    assert videos["bikes_clean"]["frames"] == videos["bikes_degraded"]["frames"] == 12
    assert degraded["psnr"] < clean["psnr"]
    assert degraded["ssim"] < clean["ssim"]
    assert degraded["cdc"] > clean["cdc"] > 0
    assert report["mean"]["psnr"] == pytest.approx((clean["psnr"] + degraded["psnr"]) / 2)

    reasons = {item["name"]: item["reason"] for item in report["skipped"]}
    assert reasons["only_in_pred"].startswith("in PRED only")
    assert reasons["only_in_gt"].startswith("in GT only")
    assert "unreadable" in reasons["broken"]

    lines = out.splitlines()
    assert lines[0].startswith("| video | frames | Color.")
    assert any(line.startswith("| bikes_degraded | 12 |") for line in lines)
    assert any(line.startswith("| **mean** (2 videos) | 24 |") for line in lines)
    assert "Skipped (3):" in out


def test_eval_with_lpips_and_fvd_from_weight_files(folders, tmp_path):
    torch.manual_seed(0)
    lpips_model = LPIPS()
    for lin in lpips_model.lins:  # LPIPS's trained linear weights are non-negative
        lin.weight.data.abs_()
    torch.save(lpips_model.state_dict(), tmp_path / "lpips.pth")
    i3d = InceptionI3d()
    for module in i3d.modules():
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(i3d.state_dict(), tmp_path / "i3d.pt")
    pred, gt = folders
    options = EvalOptions(
        metrics=("psnr", "lpips", "fvd"), size=(64, 64),
        lpips_weights=str(tmp_path / "lpips.pth"), i3d_weights=str(tmp_path / "i3d.pt"),
        fvd_clip_length=4, fvd_input_size=32,  # 3 clips per video, small enough for a CPU test
    )
    report = evaluate(pred, gt, options, progress=False)
    for result in report.videos:
        assert result.scores["lpips"] > 0 and "fvd" not in result.scores
    assert math.isfinite(report.mean["fvd"]) and report.mean["fvd"] > 0
    assert "FVD ↓ (whole set):" in report.to_markdown()


def test_missing_weights_is_a_one_line_error(folders, capsys, monkeypatch):
    monkeypatch.delenv(LPIPS_ENV_VAR, raising=False)
    pred, gt = folders
    assert main(["eval", str(pred), str(gt), "--metrics", "psnr,lpips", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lc4 eval: error:" in err and LPIPS_ENV_VAR in err and "Traceback" not in err


def test_frame_count_and_size_mismatches(tmp_path, bikes_frames, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    video.write_frame_folder(pred / "longer", bikes_frames)
    video.write_frame_folder(gt / "longer", bikes_frames[:9])
    video.write_frame_folder(pred / "resized", bikes_frames[:4, :, :32, :32])
    video.write_frame_folder(gt / "resized", bikes_frames[:4])
    code = main(["eval", str(pred), str(gt), "--resolution", "0", "--metrics", "psnr", "--json", "-", "--no-progress"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    longer = report["videos"][0]
    assert longer["frames"] == 9
    assert longer["notes"] == ["PRED has 3 more frames; compared the first 9"]
    assert longer["scores"]["psnr"] == "inf"  # identical frames; inf is written as a string
    assert "frame sizes differ" in report["skipped"][0]["reason"]


def test_a_one_frame_video_keeps_its_other_scores(tmp_path, bikes_frames):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for name, frames in (("long", bikes_frames[:4]), ("single", bikes_frames[:1])):
        video.write_frame_folder(pred / name, degrade(frames))
        video.write_frame_folder(gt / name, frames)
    only_psnr = evaluate(pred, gt, EvalOptions(metrics=("psnr",), size=None), progress=False)
    with_cdc = evaluate(pred, gt, EvalOptions(metrics=("psnr", "cdc"), size=None), progress=False)
    assert [r.name for r in with_cdc.videos] == ["long", "single"] and not with_cdc.skipped
    assert with_cdc.mean["psnr"] == only_psnr.mean["psnr"]
    single = with_cdc.videos[1]
    assert "cdc" not in single.scores and single.notes == ["one frame: not in CDC"]
    assert with_cdc.mean["cdc"] == with_cdc.videos[0].scores["cdc"]


def test_ambiguous_names_empty_folders_and_bad_inputs_are_reported(folders, tmp_path, bikes_frames, capsys):
    pred, gt = folders
    video.write_video(pred / "bikes_degraded.mp4", bikes_frames)  # beside the frame folder bikes_degraded/
    report = evaluate(pred, gt, EvalOptions(metrics=("psnr",), size=(32, 32)), progress=False)
    assert [r.name for r in report.videos] == ["bikes_clean"]
    reasons = {entry["name"]: entry["reason"] for entry in report.skipped}
    assert reasons["bikes_degraded"] == "PRED has 2 entries of this name (bikes_degraded, bikes_degraded.mp4): keep one"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(empty), str(gt), "--no-progress"]) == 2
    assert "PRED: no video files or frame folders" in capsys.readouterr().err
    video.write_frame_folder(tmp_path / "flat", bikes_frames[:2])
    assert main(["eval", str(tmp_path / "flat"), str(gt), "--no-progress"]) == 2
    assert "holds 2 image files directly" in capsys.readouterr().err
    assert main(["eval", str(pred), str(gt), "--metrics", "psnr", "--device", "nonsense", "--no-progress"]) == 2
    assert "device: cannot use 'nonsense'" in capsys.readouterr().err
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert main(["eval", str(pred), str(gt), "--metrics", "lpips", "--lpips-weights", str(tmp_path / "truncated.pt"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a readable PyTorch weights file" in err and "Traceback" not in err


def test_too_few_clips_for_fvd_is_reported_not_fatal(folders, tmp_path):
    torch.save(InceptionI3d().state_dict(), tmp_path / "i3d.pt")
    pred, gt = folders
    options = EvalOptions(metrics=("psnr", "fvd"), size=(32, 32), i3d_weights=str(tmp_path / "i3d.pt"))
    report = evaluate(pred, gt, options, progress=False)  # 12-frame videos, 16-frame clips
    assert "fvd" not in report.mean and "psnr" in report.mean
    assert any(note.startswith("fvd: needs at least 2 clips") for note in report.notes)
    assert all("not in FVD" in result.notes[0] for result in report.videos)


def test_argument_parsing(folders, capsys):
    assert parse_resolution("256") == (256, 256)
    assert parse_resolution("128x320") == (128, 320)
    assert parse_resolution("native") is None
    pred, gt = folders
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(pred), str(gt), "--metrics", "psnr,sharpness"])
    assert exit_info.value.code == 2
    assert "sharpness" in capsys.readouterr().err
    assert main(["eval", str(pred / "nowhere"), str(gt)]) == 2
    assert "expected a directory" in capsys.readouterr().err


def test_python_dash_m_lc4_runs():
    result = subprocess.run(
        [sys.executable, "-m", "lc4", "eval", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--resolution" in result.stdout and "--metrics" in result.stdout
