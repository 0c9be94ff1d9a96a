"""The training loop: one stage of L-C4 training, on one process or many (accelerate).

Resuming is exact: a checkpoint holds the weights, optimizer, learning-rate scheduler, EMA,
the step count and every process's RNG states; the data order and each sample's random choices
are functions of ``(seed, epoch, position)`` (:class:`lc4.train.data.ClipSampler`), and the
batches of the interrupted epoch already seen are skipped without decoding them. With
``deterministic: true`` a run killed after step k and resumed ends with the same weights, bit
for bit, as one never interrupted. Validation runs under a forked RNG, so it does not shift
the training's random numbers either.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .checkpoint import (check_ema_matches, refuse_fresh_run_over_checkpoints, resolve_resume, save_checkpoint,
                         save_model_folder)
from .config import TrainConfig
from .data import (ClipSampler, TextVideoDataset, VideoItem, collate, list_videos, split_holdout,
                   validation_clip)
from .encoding_cache import FrozenEncodingCache, cache_fingerprint
from .grounding import CrossAttentionGrounding, class_word_ids
from .models import (Components, LC4Denoiser, diffusion_loss, freeze_all_but, load_components,
                     tokenize_captions, use_channels_last)
from .optim import build_optimizer
from .segmentation import CrossAttentionSegmentationHeads

logger = logging.getLogger(__name__)


class TrainingProgress:
    """The step count, saved and restored with the checkpoint (accelerate custom object)."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


@dataclass
class TrainResult:
    step: int
    output_dir: Path
    model_dir: Optional[Path]
    components: Components
    denoiser: torch.nn.Module = field(repr=False)
    trainable: list = field(repr=False, default_factory=list)
    validation_outputs: list = field(default_factory=list)


def _mixed_precision(requested: str) -> str:
    if requested != "no" and not torch.cuda.is_available():
        logger.warning("mixed_precision=%s needs a GPU; training in float32 on the CPU", requested)
        return "no"
    return requested


def _frozen_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: resident high-water


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """``torch.use_deterministic_algorithms`` for the run, restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def build_dataloader(config: TrainConfig, items: list[VideoItem]):
    data = config.data
    dataset = TextVideoDataset(items, data.resolution, data.num_frames, data.frame_stride, data.random_crop,
                               data.caption_dropout, data.max_skips, segmentation=config.uses_label_maps,
                               cache_frames=data.cache_frames, color_word_dropout=data.color_word_dropout)
    sampler = ClipSampler(len(dataset), seed=config.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate, num_workers=data.num_workers,
        # Its own generator: creating an iterator must not draw from the global RNG (resume).
        generator=torch.Generator().manual_seed(config.seed), pin_memory=torch.cuda.is_available(),
        # Workers that outlive an epoch keep their decoded videos (data.cache_frames).
        persistent_workers=data.cache_frames and data.num_workers > 0)
    return loader, sampler


def _validation_item(config: TrainConfig, items: list[VideoItem]) -> tuple[list[VideoItem], Optional[VideoItem]]:
    validation = config.validation
    if validation.video:
        caption = validation.caption
        if not caption:
            raise ValueError("validation.caption: needed with validation.video")
        return items, VideoItem(Path(validation.video), caption)
    return split_holdout(items, holdout=validation.every_steps > 0)


def colorize_validation_clip(components: Components, item: VideoItem, config: TrainConfig, path: Path) -> Path:
    """Colorizes the held-out clip with its caption and writes it to ``path`` (an .mp4)."""
    from diffusers import DDIMScheduler

    from ..color import to_uint8
    from ..pipeline import LC4Pipeline
    from ..video import write_video

    clip = validation_clip(item, config.data.resolution, config.data.num_frames)
    pipeline = LC4Pipeline(components.vae, components.luminance_encoder, components.unet, components.tda,
                           components.text_encoder, components.tokenizer, components.cmpf,
                           DDIMScheduler.from_config(components.scheduler_config))
    pipeline.set_progress_bar_config(disable=True)
    validation = config.validation
    result = pipeline(clip, item.caption, num_inference_steps=validation.num_inference_steps,
                      guidance_scale=validation.guidance_scale, seed=validation.seed,
                      resolution=config.data.resolution, frames_per_clip=config.data.num_frames,
                      full_resolution=False, backend=config.model.tda_backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, to_uint8(result.frames), fps=8)


class MetricsLog:
    """Appends one JSON object per logging step to ``logs/metrics.jsonl`` (main process). A file
    already there keeps only its records up to ``start_step``, where this run starts (0 when
    fresh): the later ones are of steps this run makes again."""

    def __init__(self, path: Path, enabled: bool, start_step: int):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = path.read_text().splitlines() if path.exists() else []
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= start_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


class LossWindow:
    """The losses and clips of the optimizer steps since the last logged record. A step's loss
    is the mean over the micro-batches it had (an epoch's last step may have fewer than
    gradient_accumulation_steps); a record's, the mean over the steps in its window (after a
    resume the first window holds only the steps this run made)."""

    def __init__(self):
        self.step_sums, self.micro_batches = {}, 0
        self.reset()

    def reset(self) -> None:
        self.sums, self.steps, self.clips, self.start = {}, 0, 0, time.perf_counter()

    def add_micro_batch(self, losses: dict[str, float], clips: int) -> None:
        for name, value in losses.items():
            self.step_sums[name] = self.step_sums.get(name, 0.0) + value
        self.micro_batches += 1
        self.clips += clips

    def end_step(self) -> None:
        for name, total in self.step_sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + total / self.micro_batches
        self.step_sums, self.micro_batches = {}, 0
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {name: total / self.steps for name, total in self.sums.items()}

    def clips_per_second(self) -> float:
        return self.clips / max(time.perf_counter() - self.start, 1e-9)


def _resume_point(config: TrainConfig, resume: Optional[str], checkpoints_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from (None: start afresh), refusing what would mix two runs or
    fail inside accelerate."""
    resume_path = resolve_resume(resume, checkpoints_dir)
    if resume is None:
        refuse_fresh_run_over_checkpoints(checkpoints_dir, config.output_dir)
    if resume_path is not None:
        check_ema_matches(resume_path, config.ema.enabled)
    return resume_path


def train(config: TrainConfig, resume: Optional[str] = None, stop_after: Optional[int] = None) -> TrainResult:
    """Runs (or resumes, ``resume="latest"`` or a checkpoint path) one training stage.
    ``stop_after``: leave the loop after that many optimizer steps in total, as a killed run
    would (a checkpoint is written there first); the schedule still counts to ``max_steps``."""
    with _deterministic(config.deterministic):
        return _train(config, resume, stop_after)


def _train(config: TrainConfig, resume: Optional[str], stop_after: Optional[int]) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from ..tda import set_tda_backend

    output_dir = Path(config.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    resume_path = _resume_point(config, resume, checkpoints_dir)
    mixed_precision = _mixed_precision(config.mixed_precision)
    log_with = None
    if config.logging.tensorboard:
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            logger.warning("logging.tensorboard: tensorboard is not installed (pip install tensorboard); "
                           "logging to logs/metrics.jsonl only")
        else:
            log_with = "tensorboard"
    sharded = config.distributed.sharding == "fsdp"
    if sharded:
        from .memory import fsdp_plugin
        plugin = fsdp_plugin(config, mixed_precision)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps, mixed_precision=mixed_precision,
        log_with=log_with, project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                               logging_dir=str(output_dir / "logs")),
        fsdp_plugin=plugin if sharded else None,
        # DDP: gradients live in its communication buckets instead of in a second copy.
        kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)])
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if sharded and not fsdp:
        logger.warning("distributed.sharding: fsdp needs several GPUs under `accelerate launch` (accelerate runs "
                       "%s here); training without sharding", accelerator.distributed_type)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and accelerator.num_processes == 1:
        logger.warning("WORLD_SIZE=%s but accelerate runs one process: each trains alone. On CPUs launch "
                       "with `accelerate launch --cpu` (or set ACCELERATE_USE_CPU=1)", os.environ["WORLD_SIZE"])
    # Every process its own noise, one model: the weights come from the model folder.
    set_seed(config.seed, device_specific=True)
    device = accelerator.device
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        from .config import dump_config
        dump_config(config, output_dir / "config.yaml")

    # -- model ---------------------------------------------------------------------------
    components = load_components(config.model.path)
    set_tda_backend(components.unet, config.model.tda_backend)
    set_tda_backend(components.cmpf, config.model.tda_backend)
    if config.channels_last:
        use_channels_last(components)
    parts = config.trainable_parts
    params = freeze_all_but(components, parts)
    frozen_dtype = _frozen_dtype(mixed_precision)
    train_text_encoder = "text_encoder" in parts
    for frozen in (components.vae,) + (() if train_text_encoder else (components.text_encoder,)):
        frozen.to(device) if frozen_dtype == torch.float32 else frozen.to(device, frozen_dtype)
    if config.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        components.luminance_encoder.enable_gradient_checkpointing()
        components.luminance_encoder.checkpoint_chunk_frames = config.luminance_chunk_frames
    denoiser = LC4Denoiser(components.unet, components.luminance_encoder, components.cmpf if config.uses_cmpf else None,
                           components.text_encoder if train_text_encoder else None)
    segmentation_heads = None
    if config.segmentation.weight > 0:  # a submodule of the denoiser: prepared, checkpointed, synced with it
        segmentation_heads = CrossAttentionSegmentationHeads(components.unet, config.segmentation.num_classes,
                                                            config.segmentation.targets)
        denoiser.segmentation_heads = segmentation_heads
        params = params + list(segmentation_heads.parameters())
    grounding = None
    if config.grounding.weight > 0:
        grounding = CrossAttentionGrounding(components.unet,
                                            class_word_ids(components.tokenizer, config.grounding.class_words))
    denoiser.to(device)
    denoiser.train()

    encodings = None
    if config.data.cache_encodings:
        encodings = FrozenEncodingCache(components.vae, components.luminance_encoder, with_features=config.uses_cmpf)

    optim = config.optimizer
    optimizer = build_optimizer(params, optim, device)

    # -- data ----------------------------------------------------------------------------
    items = list_videos(config.data.source)
    items, validation_item = _validation_item(config, items)
    dataloader, sampler = build_dataloader(config, items)
    cache_file, fingerprint = config.data.encoding_cache_file, None
    if encodings is not None and cache_file:
        fingerprint = cache_fingerprint(components.vae, components.luminance_encoder, [item.path for item in items],
                                        config.data.resolution)
        encodings.load(cache_file, fingerprint)

    denoiser, optimizer, dataloader = accelerator.prepare(denoiser, optimizer, dataloader)
    if fsdp:  # FSDP2 replaced the parameters by sharded ones (DTensors), the optimizer's too
        params = [p for p in denoiser.parameters() if p.requires_grad]
    # accelerate's FSDP clipping wants exactly the prepared model's parameters (a global norm over shards).
    clipped = denoiser.parameters if fsdp else (lambda: params)

    # -- schedule ------------------------------------------------------------------------
    steps_per_epoch = max(1, math.ceil(len(dataloader) / config.gradient_accumulation_steps))  # per process
    max_steps = config.max_steps or config.num_epochs * steps_per_epoch
    # accelerate steps a prepared scheduler once per process per optimizer step.
    lr_scheduler = accelerator.prepare(get_scheduler(
        optim.lr_scheduler, optimizer, num_warmup_steps=optim.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes))
    ema = None
    if config.ema.enabled:
        from diffusers.training_utils import EMAModel
        ema = EMAModel(params, decay=config.ema.decay)
        accelerator.register_for_checkpointing(ema)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)

    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        accelerator.print(f"resumed from {resume_path} at step {progress.step}")
    if ema is not None:  # accelerate loads it onto the CPU, and EMAModel keeps the tensors it is given
        ema.to(device)
    if accelerator.is_main_process:
        accelerator.init_trackers("lc4-train", config={"stage": config.stage, "lr": optim.lr,
                                                       "resolution": config.data.resolution})

    metrics = MetricsLog(output_dir / "logs" / "metrics.jsonl", accelerator.is_main_process, progress.step)
    validation_outputs = []

    def validate(step: int) -> None:
        if validation_item is None or not accelerator.is_main_process:
            return
        path = output_dir / "validation" / f"step-{step:08d}.mp4"
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                _ema_weights(ema, params):
            denoiser.eval()
            try:
                validation_outputs.append(colorize_validation_clip(components, validation_item, config, path))
            except (ValueError, OSError) as error:  # an unreadable held-out clip must not end a run
                logger.warning("validation: could not colorize %s: %s", validation_item.path, error)
            finally:
                denoiser.train()

    # -- loop ----------------------------------------------------------------------------
    step = progress.step
    epoch, batches_to_skip = divmod(step, steps_per_epoch)
    batches_to_skip *= config.gradient_accumulation_steps
    last_stop = min(max_steps, stop_after) if stop_after else max_steps
    bar = tqdm(total=max_steps, initial=step, desc=f"stage {config.stage}", unit="step",
               disable=not (accelerator.is_local_main_process and config.logging.progress_bar))
    window = LossWindow()
    while step < last_stop:
        sampler.set_epoch_seed(epoch)
        loader = accelerator.skip_first_batches(dataloader, batches_to_skip) if batches_to_skip else dataloader
        batches_to_skip = 0
        for batch in loader:
            with accelerator.accumulate(denoiser):
                if config.uses_label_maps and "segmentation" not in batch:
                    raise ValueError("segmentation.weight, segmentation.boundary_weight or grounding.weight > 0: "
                                     "data.source must give every clip a segmentation folder of label maps")
                loss = diffusion_loss(denoiser, components, batch, with_cmpf=config.uses_cmpf,
                                      snr_gamma=config.snr_gamma, train_text_encoder=train_text_encoder,
                                      encodings=encodings, boundary_weight=config.segmentation.boundary_weight,
                                      latents_from_mode=config.latents == "mode")
                logged = {}
                if segmentation_heads is not None:
                    segmentation_loss = segmentation_heads.loss(batch["segmentation"].flatten(0, 1))
                    logged["segmentation_loss"] = segmentation_loss.detach().float().item()
                    loss = loss + config.segmentation.weight * segmentation_loss
                if grounding is not None:
                    labels = batch["segmentation"]
                    token_ids = tokenize_captions(components.tokenizer, batch["captions"], device)[0]
                    grounding_loss = grounding.loss(labels.flatten(0, 1),
                                                    token_ids.repeat_interleave(labels.shape[1], dim=0))
                    logged["grounding_loss"] = grounding_loss.detach().float().item()
                    loss = loss + config.grounding.weight * grounding_loss
                # accelerate divides every micro-batch's loss by gradient_accumulation_steps, also in
                # an epoch's short last step: every clip weighs the same in the sum of the updates.
                accelerator.backward(loss)
                # Gradient checkpointing reruns the hooks in the backward: drop what they recorded.
                if segmentation_heads is not None:
                    segmentation_heads.logits = {}
                if grounding is not None:
                    grounding.probs = {}
                if accelerator.sync_gradients and optim.max_grad_norm:
                    accelerator.clip_grad_norm_(clipped(), optim.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window.add_micro_batch({"loss": loss.detach().float().item(), **logged},
                                   clips=batch["pixel_values"].shape[0] * accelerator.num_processes)
            if not accelerator.sync_gradients:
                continue
            window.end_step()
            step += 1
            progress.step = step
            if ema is not None:
                ema.step(params)
            bar.update(1)
            if step % config.logging.every_steps == 0 or step == last_stop:
                # "loss" includes segmentation_loss and grounding_loss, weighted
                means = {name: accelerator.reduce(torch.tensor(mean, device=device), "mean").item()
                         for name, mean in window.means().items()}
                record = {"step": step, "epoch": epoch, "loss": means.pop("loss"), "lr": lr_scheduler.get_last_lr()[0],
                          "clips_per_s": window.clips_per_second(), "memory_gib": _peak_memory_gib(device), **means}
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
                metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                window.reset()
            if step % config.checkpointing.every_steps == 0 or step == last_stop:
                save_checkpoint(accelerator, checkpoints_dir, step, config.checkpointing.keep_last)
            if config.validation.every_steps and step % config.validation.every_steps == 0:
                validate(step)
            if step >= last_stop:
                break
        epoch += 1
    bar.close()
    if segmentation_heads is not None:
        segmentation_heads.detach_hooks()  # the heads are dropped: the model folder is the plain model
    if grounding is not None:
        grounding.detach_hooks()

    model_dir = None
    if step >= max_steps:
        accelerator.wait_for_everyone()
        if fsdp:  # every process takes part in gathering the full weights; the main one saves them
            full_state = accelerator.get_state_dict(denoiser)
            if accelerator.is_main_process:
                model_dir = _save_gathered(full_state, config, output_dir / "model", parts)
        elif accelerator.is_main_process:
            with torch.no_grad(), _ema_weights(ema, params):
                model_dir = save_model_folder(components, config.model.path, output_dir / "model", parts)
            if config.validation.every_steps and step % config.validation.every_steps:
                validate(step)
    if fingerprint is not None and encodings.misses and accelerator.is_main_process:
        encodings.save(cache_file, fingerprint)  # the main process's frames; the others' are encoded again
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(step, output_dir, model_dir, components, accelerator.unwrap_model(denoiser), params,
                       validation_outputs)


def _save_gathered(full_state: dict, config: TrainConfig, model_dir: Path, parts) -> Path:
    """The model folder from a gathered (FSDP) state dict of the denoiser: loaded into fresh
    components from the input folder, then saved as without sharding."""
    fresh = load_components(config.model.path)
    denoiser = LC4Denoiser(fresh.unet, fresh.luminance_encoder, fresh.cmpf if config.uses_cmpf else None,
                           fresh.text_encoder if "text_encoder" in parts else None)
    denoiser.load_state_dict({k: v for k, v in full_state.items() if not k.startswith("segmentation_heads.")})
    return save_model_folder(fresh, config.model.path, model_dir, parts)


@contextlib.contextmanager
def _ema_weights(ema, params):
    """The EMA weights in place of the trained ones for the duration (no-op without EMA)."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)
