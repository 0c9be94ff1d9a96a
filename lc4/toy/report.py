"""Training curves of the toy model as one PNG (VAE, luminance encoder and each `lc4 train`
run's loss per step)."""
from __future__ import annotations

import json
from pathlib import Path


def read_curve(path: Path) -> list[dict]:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stage_title(run: Path) -> str:
    """"stage 1, 32 x 1 frame": the stage and the clips x frames a step of an `lc4 train` output folder."""
    from lc4.train.config import load_config

    config = load_config(run / "config.yaml")
    frames = config.data.num_frames
    return f"stage {config.stage}, {config.batch_size} x {frames} frame{'s' if frames > 1 else ''}"


def plot_curves(vae_curve: Path, stage_logs: list[Path], output: Path, luminance_curve: Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [("VAE reconstruction", read_curve(vae_curve))]
    if luminance_curve is not None and luminance_curve.is_file() and read_curve(luminance_curve):
        curves.append(("luminance encoder (decode + latent MSE)", read_curve(luminance_curve)))
    for log in stage_logs:
        curve = read_curve(log)
        heads = " + shape CE" if any("segmentation_loss" in r for r in curve) else ""
        curves.append((f"{stage_title(log.parent.parent)} (Eq. 9 MSE{heads})", curve))
    figure, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3))
    for axis, (title, curve) in zip(axes, curves):
        axis.plot([r["step"] for r in curve], [r["loss"] for r in curve], label="loss")
        heads = [r for r in curve if "segmentation_loss" in r]  # the training-only shape heads' share
        if heads:
            axis.plot([r["step"] for r in heads], [r["segmentation_loss"] for r in heads], label="shape heads' CE")
            axis.legend(fontsize="small")
        axis.set(title=title, xlabel="step", ylabel="loss", yscale="log")
    figure.tight_layout()
    figure.savefig(output, dpi=80)
    plt.close(figure)
    return output
