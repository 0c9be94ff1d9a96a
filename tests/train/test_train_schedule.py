"""The optimizer's steps, the learning-rate schedule, gradient accumulation and the EMA, each
checked against a computation of its own: the EMA from snapshots of the weights after each
optimizer step, the schedule from its formula, the accumulated gradient from a loss whose
gradient is known."""
from __future__ import annotations

import json

import pytest
import torch

from lc4.train import load_config, train
from lc4.train.models import load_components
from train_helpers import tiny_config_values


def snapshot_steps(monkeypatch, grads: bool = False) -> list[list[torch.Tensor]]:
    """Clones of the trained parameters (or, with ``grads``, of their gradients) at every real
    optimizer step of the next run: a hook on the torch optimizer itself, not on accelerate's."""
    import lc4.train.loop

    snapshots = []
    build = lc4.train.loop.build_optimizer

    def hooked(params, optim, device):
        optimizer = build(params, optim, device)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if grads:
            optimizer.register_step_pre_hook(lambda *_: snapshots.append(
                [None if p.grad is None else p.grad.detach().clone() for p in params]))
        else:
            optimizer.register_step_post_hook(lambda *_: snapshots.append([p.detach().clone() for p in params]))
        return optimizer

    monkeypatch.setattr(lc4.train.loop, "build_optimizer", hooked)
    return snapshots


def test_ema_is_the_decayed_mean_of_the_weights_after_each_optimizer_step(tiny_model_dir, video_folder, tmp_path,
                                                                          monkeypatch):
    """diffusers' EMAModel: decay min(decay, (1 + k) / (10 + k)) at its k-th update after the first
    (which copies); one update per optimizer step, not per micro-batch; the saved model holds it."""
    snapshots = snapshot_steps(monkeypatch)
    decay = 0.1  # below the warm-up's 2/11 and 3/12: the configured decay decides steps 2 and 3
    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=3,
                                gradient_accumulation_steps=2, ema__enabled=True, ema__decay=decay)
    result = train(load_config(values=values))

    assert len(snapshots) == 3, f"{len(snapshots)} optimizer steps for 3 steps of 2 micro-batches"
    expected = [p.clone() for p in snapshots[0]]
    for k, step in enumerate(snapshots[1:], start=1):
        d = min(decay, (1 + k) / (10 + k))
        expected = [d * e + (1 - d) * p for e, p in zip(expected, step)]
    names = {id(p): name for name, p in result.components.unet.named_parameters()}
    saved = dict(load_components(result.model_dir).unet.named_parameters())
    compared = 0
    for param, ema in zip(result.trainable, expected):
        name = names.get(id(param))
        if name in saved:
            torch.testing.assert_close(saved[name].detach(), ema, msg=name)
            compared += 1
    assert compared > 10
    # The run's own weights are the last step's, not the EMA's.
    assert all(torch.equal(p.detach(), s) for p, s in zip(result.trainable, snapshots[-1]))


def test_warmup_and_linear_decay_follow_the_optimizer_steps(tiny_model_dir, video_folder, tmp_path):
    """Linear warm-up over W steps then linear decay to 0 at T: the rate after step s is
    lr * s / W for s < W, lr * (T - s) / (T - W) after; counted in optimizer steps (accumulation 2)."""
    lr, warmup, total = 1e-3, 2, 4
    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=total,
                                gradient_accumulation_steps=2, optimizer__lr=lr, optimizer__lr_scheduler="linear",
                                optimizer__lr_warmup_steps=warmup)
    train(load_config(values=values))
    records = [json.loads(line) for line in (tmp_path / "run/logs/metrics.jsonl").read_text().splitlines()]
    expected = [lr * (s / warmup if s < warmup else (total - s) / (total - warmup)) for s in range(1, total + 1)]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["lr"] for r in records] == pytest.approx(expected, abs=1e-12)


def test_accumulated_gradient_is_the_mean_over_the_micro_batches(tiny_model_dir, video_folder, tmp_path,
                                                                 monkeypatch):
    """A loss whose gradient is 1 for every trained weight: accumulation 3 over 4 clips gives a
    step of 3 micro-batches (gradient 3 / 3) and the epoch's short step of 1 (1 / 3, every clip
    weighing the same); the gradients start from zero each step, and one epoch is
    ceil(4 / 3) = 2 optimizer steps."""
    import lc4.train.loop

    grads = snapshot_steps(monkeypatch, grads=True)
    monkeypatch.setattr(lc4.train.loop, "diffusion_loss", lambda denoiser, *args, **kwargs: sum(
        p.sum() for p in denoiser.parameters() if p.requires_grad))
    values = tiny_config_values(tiny_model_dir, video_folder, tmp_path / "run", max_steps=None, epochs=1,
                                gradient_accumulation_steps=3, optimizer__max_grad_norm=None)
    result = train(load_config(values=values))

    assert result.step == 2 and len(grads) == 2
    for step, expected in zip(grads, (1.0, 1 / 3)):
        assert all(g is not None for g in step)
        torch.testing.assert_close(torch.cat([g.flatten() for g in step]),
                                   torch.full((sum(g.numel() for g in step),), expected))


def test_optimizer_takes_every_hyperparameter_from_the_config():
    from lc4.train.config import OptimizerConfig
    from lc4.train.optim import build_optimizer

    optim = OptimizerConfig(lr=3e-4, betas=(0.8, 0.95), weight_decay=0.05, eps=1e-7)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(4))], optim, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults.get("fused")
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (3e-4, (0.8, 0.95), 0.05, 1e-7)
    with pytest.raises(ValueError, match="optimizer.name: expected adamw or adamw8bit, got 'sgd'"):
        build_optimizer([torch.nn.Parameter(torch.zeros(4))], OptimizerConfig(name="sgd"), torch.device("cpu"))


def test_resume_latest_is_the_highest_complete_step(tmp_path):
    from lc4.train.checkpoint import list_checkpoints, resolve_resume

    for name in ("step-00000010", "step-00000002", "step-00000009", ".tmp-step-00000011", "step-12"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-00000012").write_text("a file, not a checkpoint")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 9, 10]
    assert resolve_resume("latest", tmp_path) == tmp_path / "step-00000010"
    assert resolve_resume("latest", tmp_path / "none") is None and resolve_resume(None, tmp_path) is None
