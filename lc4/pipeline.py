"""``LC4Pipeline``: language-guided video colorization at inference (seed Fig. 2 b).

Per video: Rec. 601 luma at the model resolution -> luminance encoder (``y_lum``) -> CLIP
embeddings of the prompt, refined by CMPF with ``y_lum`` as visual prompt -> sampling (DDIM by
default, or any compatible diffusers scheduler, see :func:`scheduler_named`) of
all frames' latents with the UNet with TDA (the luminance residual added to the noisy latent
at every step; classifier-free guidance; cross-clip fusion when the video is longer than one
clip) -> VAE decoding with the luminance skips -> chroma. Outputs: the decoded frames at the
model resolution and, by default, the predicted chroma carried onto the input's own
full-resolution luma (:func:`lc4.color.merge_luma_chroma`).

The CMPF visual prompt is built from ``frames_per_clip`` frames spread evenly over the whole
video, so every clip is denoised under the same instance-aware embedding (one more thing that
keeps colours consistent across a long video).
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer

from . import video as video_io
from .ccf import ClipPlan
from .cmpf import CrossModalityPreFusion, color_token_mask
from .color import merge_luma_chroma, rgb_to_luma, rgb_to_ycbcr, to_unit, to_uint8
from .luminance import LuminanceEncoder, decode_latents, luminance_input
from .tda import set_tda_backend
from .unet import TDAAdapter, has_tda, insert_tda, runs_tda, tda_removed, temporal_kwargs

VideoInput = Union[str, os.PathLike, torch.Tensor, np.ndarray, Sequence[np.ndarray]]
CLIP_MODES = ("skip", "sliding", "disjoint")


def scheduler_named(name: str, current, argument: str = "scheduler"):
    """A diffusers scheduler of class ``name`` configured from ``current``'s config (its betas,
    prediction type and timestep spacing carry over), as ``X.from_config(pipe.scheduler.config)``
    does; ``name`` must be one of ``current``'s compatible classes."""
    compatible = {cls.__name__: cls for cls in current.compatibles}
    if name not in compatible:
        raise ValueError(f"{argument}: expected one of {', '.join(sorted(compatible))}, got {name!r}")
    return compatible[name].from_config(current.config)


OUTPUT_TYPES = ("pt", "np", "pil", "latent")
Frames = Union[torch.Tensor, np.ndarray, list]


@dataclass
class LC4PipelineOutput(BaseOutput):
    """frames: colorized frames at the model resolution, in [0, 1]: ``(T, 3, r, r)`` tensor
    (``output_type="pt"``), ``(T, r, r, 3)`` float32 array (``"np"``), list of PIL images
    (``"pil"``), or the final latents ``(T, C, r / f, r / f)`` undecoded (``"latent"``).
    chroma: predicted Cb, Cr (Rec. 601, in [-0.5, 0.5]), ``(T, 2, r, r)`` tensor, or ``(T, r, r, 2)``
    array for ``"np"`` and ``"pil"``; None for ``"latent"``.
    full_resolution_frames: the chroma carried onto the input's own luma, ``(T, 3, H, W)`` (or as
    ``frames``, by ``output_type``); None when not asked for and for ``"latent"``.
    A batched call (a list of prompts, or several videos a prompt) puts a leading video dimension
    ``N`` before ``T`` (``"pil"``: a list of ``N`` lists)."""

    frames: Frames
    chroma: Optional[Union[torch.Tensor, np.ndarray]]
    full_resolution_frames: Optional[Frames] = None


def load_luma(video: VideoInput, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Any accepted video input -> luma ``(T, 1, H, W)`` float in [0, 1], resized to ``size``.

    Accepts a video file or frame folder path; a tensor ``(T, 3, H, W)``, ``(T, 1, H, W)`` or
    ``(T, H, W)``; an array ``(T, H, W, 3)`` or ``(T, H, W)`` or a list of ``(H, W, 3)`` /
    ``(H, W)`` arrays or PIL images. Values: uint8, uint16, or float in [0, 1].
    """
    if isinstance(video, (str, os.PathLike)):
        if not video_io.is_video_source(video):
            raise ValueError(f"video: expected a video file or a folder of frames, got {str(video)!r}")
        frames = video_io.read_video(video, size=size)
        return rgb_to_luma(to_unit(frames))
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError("video: expected at least one frame, got an empty list")
        video = np.stack([np.asarray(frame) for frame in video])
    if isinstance(video, np.ndarray):
        if video.ndim == 3 and video.shape[-1] in (3, 4):
            # (T, H, W) frames 3 or 4 pixels wide are no video anyone means.
            raise ValueError(f"video: an array {video.shape} is one colour frame; pass frames (T, H, W, 3) "
                             "or a list of them")
        array = torch.from_numpy(np.ascontiguousarray(video))
        if array.dim() == 4 and array.shape[-1] in (1, 3):
            array = array.permute(0, 3, 1, 2)
        video = array
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video: expected a path, tensor or array of frames, got {type(video).__name__}")
    if video.dim() == 3:
        video = video.unsqueeze(1)
    if video.dim() != 4 or video.shape[1] not in (1, 3) or video.shape[0] == 0:
        raise ValueError("video: expected frames (T, 3, H, W), (T, 1, H, W), (T, H, W) or arrays (T, H, W, 3), "
                         f"got shape {tuple(video.shape)}")
    frames = to_unit(video.cpu())
    if video.is_floating_point() and frames.numel() and not -0.02 <= float(frames.min()) <= float(frames.max()) <= 1.02:
        raise ValueError(f"video: float frames must lie in [0, 1], got values in [{float(frames.min()):.3g}, "
                         f"{float(frames.max()):.3g}] (uint8 values as floats? divide them by 255)")
    luma = rgb_to_luma(frames) if frames.shape[1] == 3 else frames
    if size is not None and tuple(luma.shape[-2:]) != tuple(size):
        luma = F.interpolate(luma, size=size, mode="area")
    return luma.clamp(0, 1)


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` frame indices spread over ``total`` frames, first and last included."""
    count = min(count, total)
    if count == 1:
        return [total // 2]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


class LC4Pipeline(DiffusionPipeline):
    """L-C4 inference. Components: ``vae`` (SD1.5), ``luminance_encoder``, ``unet`` (SD1.5 UNet;
    the ``tda`` adapter's layers are inserted on construction), ``tda``, ``text_encoder`` and
    ``tokenizer`` (CLIP), ``cmpf``, ``scheduler`` (DDIM by default).
    Load with ``LC4Pipeline.from_pretrained(folder)``: local folders only, never a download."""

    model_cpu_offload_seq = "text_encoder->cmpf->luminance_encoder->unet->vae"
    # What callback_on_step_end may ask for: the latents after the step, and the (guided) model
    # output the step took.
    _callback_tensor_inputs = ["latents", "prediction"]

    def __init__(self, vae: AutoencoderKL, luminance_encoder: LuminanceEncoder, unet: UNet2DConditionModel,
                 tda: TDAAdapter, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 cmpf: CrossModalityPreFusion, scheduler: KarrasDiffusionSchedulers):
        super().__init__()
        vocab = text_encoder.config.vocab_size
        if len(tokenizer) != vocab:
            # A CLIP tokenizer requested by hub name while offline comes back with 2 tokens.
            raise ValueError(f"tokenizer: has {len(tokenizer)} tokens but the text encoder expects {vocab}; "
                             "load it from the model folder's tokenizer/ (vocab.json and merges.txt)")
        self.register_modules(vae=vae, luminance_encoder=luminance_encoder, unet=unet, tda=tda,
                              text_encoder=text_encoder, tokenizer=tokenizer, cmpf=cmpf, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in ("unet", "tda"):
            self._run_own_tda(bypassed_too=True)

    def _run_own_tda(self, bypassed_too: bool) -> None:
        """Puts this pipeline's ``tda`` layers into its ``unet`` unless they are there already: on
        construction and when either is replaced; before each call only where the UNet holds
        another adapter's (a UNet shared with another pipeline, as ``from_pipe`` shares it), not
        where it holds none (TDA bypassed on purpose, ``tda_removed``)."""
        unet, tda = getattr(self, "unet", None), getattr(self, "tda", None)
        if unet is None or tda is None or runs_tda(unet, tda):
            return
        if bypassed_too or has_tda(unet):
            insert_tda(unet, tda)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            raise FileNotFoundError(f"model: {str(folder)!r} is not a local model folder "
                                    "(make one with `lc4 init-model`; nothing is downloaded)")
        kwargs["local_files_only"] = True
        return super().from_pretrained(folder, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """Saves every component in its own folder; ``unet/`` holds plain SD1.5-layout weights
        and ``tda/`` the TDA layers."""
        with tda_removed(self.unet):
            super().save_pretrained(save_directory, **kwargs)

    @property
    def default_resolution(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    # -- pieces ---------------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str], max_length: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP embeddings ``(B, L, D)`` and the colour-word mask ``(B, L)``, ``L`` the
        tokenizer's ``model_max_length`` unless ``max_length`` is given. The pipeline takes
        both back as ``prompt_embeds`` and ``prompt_color_mask``."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=max_length or self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        embeds = self.text_encoder(ids.to(self.text_encoder.device))[0]
        return embeds, color_token_mask(self.tokenizer, ids).to(embeds.device)

    def _given_embeds(self, embeds: torch.Tensor, mask: Optional[torch.Tensor], name: str,
                      like: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeds`` ``(P, L, D)`` or ``(L, D)`` and ``mask`` ``(P, L)`` or ``(L,)`` (None: no colour
        words) checked and brought to the text encoder's device; ``like``: the shape they must have."""
        width = self.text_encoder.config.hidden_size
        expected = f"{tuple(like.shape)}, as prompt_embeds" if like is not None else f"(P, L, {width}) or (L, {width})"
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor {expected}, got {type(embeds).__name__}"
                             + (f" of {embeds.dtype}" if isinstance(embeds, torch.Tensor) else ""))
        if embeds.dim() == 2:
            embeds = embeds[None]
        if embeds.dim() != 3 or embeds.shape[2] != width or (like is not None and embeds.shape != like.shape):
            raise ValueError(f"{name}: expected {expected} (the text encoder's output, one row a prompt), "
                             f"got {tuple(embeds.shape)}")
        mask_name = name.replace("_embeds", "_color_mask")
        if mask is None:
            mask = torch.zeros(embeds.shape[:2], dtype=torch.bool)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"{mask_name}: expected a bool tensor {tuple(embeds.shape[:2])}, got "
                             f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        mask = mask.reshape(1, -1) if mask.dim() == 1 else mask
        if tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ValueError(f"{mask_name}: expected {tuple(embeds.shape[:2])} like {name}, got {tuple(mask.shape)}")
        device = self.text_encoder.device
        return embeds.to(device, self.text_encoder.dtype), mask.to(device)

    def _prompt_embeddings(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_color_mask,
                           negative_prompt_color_mask, do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings ``(G, P, L, D)`` and colour-word masks ``(G, P, L)`` of the ``P`` prompts:
        ``G`` = 2 (negative, prompt) under classifier-free guidance, else 1 (prompt); each from its
        text or given as embeddings."""
        if prompt_embeds is None:
            if prompt_color_mask is not None:
                raise ValueError("prompt_color_mask: goes with prompt_embeds; a text prompt's colour words are found "
                                 "from its tokens")
            texts = [prompt] if isinstance(prompt, str) else prompt
            if (not isinstance(texts, (list, tuple)) or not texts
                    or not all(isinstance(text, str) and text.strip() for text in texts)):
                raise ValueError("prompt: expected a non-empty description of the colours, e.g. 'a red car on a "
                                 f"road', or a list of them (or prompt_embeds), got {prompt!r}")
            positive = self.encode_prompt(list(texts))
        elif prompt is not None:
            raise ValueError("prompt, prompt_embeds: expected one of them, got both")
        else:
            positive = self._given_embeds(prompt_embeds, prompt_color_mask, "prompt_embeds")
        if not do_cfg:
            return positive[0][None], positive[1][None]
        num_prompts, length = positive[0].shape[:2]
        if negative_prompt_embeds is None:
            if negative_prompt_color_mask is not None:
                raise ValueError("negative_prompt_color_mask: goes with negative_prompt_embeds")
            texts = [negative_prompt or ""] * num_prompts if isinstance(negative_prompt, (str, type(None))) \
                else list(negative_prompt)
            if len(texts) != num_prompts or not all(isinstance(text, str) for text in texts):
                raise ValueError(f"negative_prompt: expected a text or a list of {num_prompts} texts, one a prompt, "
                                 f"got {negative_prompt!r}")
            if length > self.tokenizer.model_max_length:
                raise ValueError(f"negative_prompt_embeds: expected with prompt_embeds longer than the tokenizer's "
                                 f"{self.tokenizer.model_max_length} tokens, got prompt_embeds of {length}")
            negative = self.encode_prompt(texts, max_length=length)
        elif negative_prompt:
            raise ValueError("negative_prompt, negative_prompt_embeds: expected one of them, got both")
        else:
            negative = self._given_embeds(negative_prompt_embeds, negative_prompt_color_mask, "negative_prompt_embeds",
                                          like=positive[0])
        return torch.stack([negative[0], positive[0]]), torch.stack([negative[1], positive[1]])

    def _luminance_in(self, luma: torch.Tensor) -> torch.Tensor:
        return luminance_input(luma).to(self.luminance_encoder.device, self.luminance_encoder.dtype)

    def clip_plan(self, num_frames: int, frames_per_clip: int, mode: Union[str, ClipPlan] = "skip"):
        """``None`` (one clip) when the video fits a clip; else the CCF plan of ``mode``."""
        if isinstance(mode, ClipPlan):
            return mode
        if mode not in CLIP_MODES:
            raise ValueError(f"clip_mode: expected one of {CLIP_MODES} or a ClipPlan, got {mode!r}")
        if num_frames <= frames_per_clip:
            return None
        build = {"skip": ClipPlan.skip_windows, "sliding": ClipPlan.sliding_windows, "disjoint": ClipPlan.disjoint}
        return build[mode](num_frames, frames_per_clip)

    def _step_kwargs(self, eta: float, generator: Optional[torch.Generator]) -> dict:
        """What ``scheduler.step`` is handed besides the prediction: the generator where the
        scheduler draws noise of its own, DDIM's ``eta`` where it is set. Schedulers differ here:
        UniPC, PNDM, LMS and Heun take no generator, only DDIM takes ``eta``."""
        params = inspect.signature(self.scheduler.step).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {}
        if "generator" in params or takes_any:
            kwargs["generator"] = generator
        if eta:
            if "eta" not in params and not takes_any:
                raise ValueError(f"eta: {type(self.scheduler).__name__} takes no eta (DDIM does), got {eta}")
            kwargs["eta"] = eta
        return kwargs

    # -- what a running call exposes, as in diffusers ---------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in a step-end callback) to stop sampling after the
        current step; the latents reached so far are decoded."""
        return getattr(self, "_interrupt", False)

    # -- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        video: VideoInput,
        prompt: Union[str, Sequence[str], None] = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        guidance_rescale: float = 0.0,
        eta: float = 0.0,
        seed: Optional[int] = None,
        negative_prompt: Union[str, Sequence[str]] = "",
        resolution: Optional[int] = None,
        frames_per_clip: int = 8,
        clip_mode: Union[str, ClipPlan] = "skip",
        full_resolution: bool = True,
        decode_batch_size: int = 8,
        backend: Optional[str] = None,
        generator: Union[torch.Generator, Sequence[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        callback_on_step_end: Optional[Callable[["LC4Pipeline", int, int, dict], dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        prompt_color_mask: Optional[torch.Tensor] = None,
        negative_prompt_color_mask: Optional[torch.Tensor] = None,
        num_videos_per_prompt: int = 1,
        output_type: str = "pt",
        return_dict: bool = True,
    ) -> Union[LC4PipelineOutput, tuple]:
        """Colorizes ``video`` (a path, frames ``(T, 3, H, W)`` / ``(T, H, W, 3)`` / ``(T, H, W)``,
        or a list of frames) as ``prompt`` describes.

        As in diffusers: ``prompt`` may be a list of ``P`` texts (``negative_prompt`` then one
        text or ``P``), each colorized ``num_videos_per_prompt`` times in one batch: ``N`` = ``P``
        x ``num_videos_per_prompt`` outputs, stacked on a leading dimension (which a single text,
        or one row of ``prompt_embeds``, with one video per prompt goes without). ``prompt_embeds``
        / ``negative_prompt_embeds`` ``(P, L, D)`` (the text encoder's output, before CMPF) stand in
        for the texts, with ``prompt_color_mask`` / ``negative_prompt_color_mask`` ``(P, L)``
        marking their colour words (as :meth:`encode_prompt` returns them; None: no colour words).
        ``latents`` is the initial noise, ``(T, C, h, w)`` or, batched, ``(N, T, C, h, w)`` (else
        drawn from ``generator``, on its device, or ``seed``, on the CPU; a list of ``N``
        generators draws each video's noise as a call for that video alone with ``[generator]``
        would). ``callback_on_step_end(pipe, step, timestep,
        tensors)`` runs after every step with the tensors named in
        ``callback_on_step_end_tensor_inputs`` (a diffusers ``PipelineCallback`` names its own;
        the latents are ``(N * T, C, h, w)`` there) and may return replacements. ``output_type``
        is one of ``"pt"``, ``"np"``, ``"pil"``, ``"latent"`` (see :class:`LC4PipelineOutput`);
        with ``return_dict=False`` the result is the tuple ``(frames, chroma,
        full_resolution_frames)``."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: expected one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected >= 1, got {num_inference_steps}")
        if frames_per_clip < 1:
            raise ValueError(f"frames_per_clip: expected >= 1, got {frames_per_clip}")
        if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt: expected an int >= 1, got {num_videos_per_prompt!r}")
        if not isinstance(decode_batch_size, int) or decode_batch_size < 1:
            raise ValueError(f"decode_batch_size: expected an int >= 1, got {decode_batch_size!r}")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale: expected a value in [0, 1], got {guidance_rescale}")
        if eta < 0:
            raise ValueError(f"eta: expected >= 0 (0 is deterministic DDIM), got {eta}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: expected names among "
                             f"{list(self._callback_tensor_inputs)}, got {unknown}")
        resolution = resolution or self.default_resolution
        if resolution % self.vae_scale_factor:
            raise ValueError(f"resolution: expected a multiple of {self.vae_scale_factor}, got {resolution}")
        if generator is not None and seed is not None:
            raise ValueError("seed, generator: expected one of them, got both")
        generators = list(generator) if isinstance(generator, (list, tuple)) else None
        if generator is not None and not all(isinstance(g, torch.Generator) for g in generators or [generator]):
            raise ValueError(f"generator: expected a torch.Generator (on any device) or a list of them, one a video, "
                             f"got {generator!r}")
        if seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)  # the same noise on every device
        step_kwargs = self._step_kwargs(eta, generator)
        self._run_own_tda(bypassed_too=False)
        set_tda_backend(self.unet, backend)
        set_tda_backend(self.cmpf, backend)
        device = self._execution_device

        luma = load_luma(video, size=(resolution, resolution))
        num_frames = luma.shape[0]
        lum = self.luminance_encoder(self._luminance_in(luma), return_skips=False)

        self._guidance_scale, self._interrupt = guidance_scale, False
        do_cfg = self.do_classifier_free_guidance
        embeds, color_mask = self._prompt_embeddings(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                                     prompt_color_mask, negative_prompt_color_mask, do_cfg)
        groups, num_prompts = embeds.shape[:2]  # groups: (negative,) prompt
        num_videos = num_prompts * num_videos_per_prompt
        batched = num_videos > 1 or (prompt is not None and not isinstance(prompt, str))
        prompt_frames = evenly_spaced(frames_per_clip, num_frames)
        embeds = self.cmpf(embeds.flatten(0, 1).to(self.cmpf.dtype), lum.features[prompt_frames], len(prompt_frames),
                           color_mask.flatten(0, 1))
        # (groups x videos x frames, L, D), in the order of the UNet's batch below
        embeds = embeds.to(self.unet.dtype).repeat_interleave(num_videos_per_prompt * num_frames, dim=0)

        shape = (num_frames, self.unet.config.in_channels, resolution // self.vae_scale_factor,
                 resolution // self.vae_scale_factor)
        shape = (num_videos, *shape) if batched else shape
        if generators is not None:
            if len(generators) != num_videos:
                raise ValueError(f"generator: expected {num_videos} generators, one a video, got {len(generators)}")
            # Each video's noise from its own generator, as in a call for that video alone; the
            # scheduler's own noise too, frame by frame (a list given to it is one generator a row).
            if "generator" in step_kwargs:
                step_kwargs["generator"] = [g for g in generators for _ in range(num_frames)]
            if latents is None:
                latents = torch.stack([_noise(shape[-4:], g) for g in generators]).reshape(shape)
        if latents is None:
            latents = _noise(shape, generator)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents: expected the initial noise of shape {shape} ({'videos, ' if batched else ''}"
                             f"frames, latent channels, resolution / {self.vae_scale_factor}, same), "
                             f"got {tuple(latents.shape)}")
        latents = latents.reshape(num_videos * num_frames, *shape[-3:]).to(device, self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        latents = latents * self.scheduler.init_noise_sigma
        residual = lum.latent_residual.to(self.unet.dtype).repeat(num_videos, 1, 1, 1)
        plan = self.clip_plan(num_frames, frames_per_clip, clip_mode)

        for step, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_in = self.scheduler.scale_model_input(latents, t) + residual
            model_in = torch.cat([model_in] * groups)
            # The noise, or v, or x0: whatever the scheduler's prediction_type says.
            prediction = self.unet(model_in, t, encoder_hidden_states=embeds,
                                   cross_attention_kwargs=temporal_kwargs(model_in, num_frames, plan)).sample
            if do_cfg:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
                if guidance_rescale > 0:
                    # Lin et al. 2024, Sec. 3.4: the guided prediction scaled back towards the
                    # conditional one's spread (per frame), against over-saturation at high guidance.
                    prediction = rescale_noise_cfg(prediction, cond, guidance_rescale)
            latents = self.scheduler.step(prediction, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                tensors = {"latents": latents, "prediction": prediction}
                returned = callback_on_step_end(self, step, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                latents = (returned or {}).get("latents", latents)
            if self.interrupt:
                break

        latents = latents.unflatten(0, (num_videos, num_frames))
        if output_type == "latent":
            self.maybe_free_model_hooks()
            output = LC4PipelineOutput(frames=latents if batched else latents[0], chroma=None)
            return output if return_dict else (output.frames, output.chroma, output.full_resolution_frames)
        frames = torch.cat([self._decode(latents[:, part], luma[part], decode_batch_size)
                            for part in _batches(num_frames, decode_batch_size)], dim=1)
        chroma = rgb_to_ycbcr(frames.flatten(0, 1))[:, 1:].unflatten(0, frames.shape[:2])

        full = None
        if full_resolution:
            full_luma = load_luma(video)
            full = torch.stack([merge_luma_chroma(full_luma, video_chroma) for video_chroma in chroma])
        self.maybe_free_model_hooks()
        if not batched:
            frames, chroma, full = frames[0], chroma[0], None if full is None else full[0]
        if output_type != "pt":
            frames, chroma = _as_output_type(frames, output_type), chroma.movedim(-3, -1).numpy()
            full = None if full is None else _as_output_type(full, output_type)
        output = LC4PipelineOutput(frames=frames, chroma=chroma, full_resolution_frames=full)
        return output if return_dict else (output.frames, output.chroma, output.full_resolution_frames)

    def _decode(self, latents: torch.Tensor, luma: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Latents ``(N, t, C, h, w)`` of ``N`` videos of the same ``t`` frames of luma -> frames
        ``(N, t, 3, r, r)`` in [0, 1] on the CPU, decoded with the luminance skips, at most
        ``batch_size`` frames (or one video's ``t``) a VAE call."""
        skips = self.luminance_encoder(self._luminance_in(luma)).skips
        per_call = max(1, batch_size // latents.shape[1])  # videos a call
        frames = []
        for videos in _batches(latents.shape[0], per_call):
            part = latents[videos]
            decoded = decode_latents(self.vae, part.flatten(0, 1).to(self.vae.dtype),
                                     [skip.repeat(part.shape[0], 1, 1, 1) for skip in skips])
            frames.append(((decoded.float() + 1) / 2).clamp(0, 1).cpu().unflatten(0, part.shape[:2]))
        return torch.cat(frames)


def _noise(shape: tuple, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Float32 noise drawn on ``generator``'s device (the CPU without one)."""
    return torch.randn(shape, generator=generator, dtype=torch.float32,
                       device=generator.device if generator is not None else "cpu").cpu()


def _batches(total: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, total, size)]


def _as_output_type(frames: torch.Tensor, output_type: str) -> Union[np.ndarray, list]:
    """Frames ``(..., T, 3, H, W)`` in [0, 1] as a ``(..., T, H, W, 3)`` float32 array or (nested
    per video) lists of PIL images."""
    if frames.dim() == 5:
        videos = [_as_output_type(video, output_type) for video in frames]
        return videos if output_type == "pil" else np.stack(videos)
    array = VaeImageProcessor.pt_to_numpy(frames.float())
    return VaeImageProcessor.numpy_to_pil(array) if output_type == "pil" else array


def transfer_chroma_to_frames(frame: Union[np.ndarray, torch.Tensor], chroma: torch.Tensor) -> np.ndarray:
    """One full-resolution frame ``(H, W, 3)`` uint8 plus its chroma ``(2, h, w)`` -> the
    colorized ``(H, W, 3)`` uint8 frame with the frame's own luma (used when streaming)."""
    frame = torch.as_tensor(np.asarray(frame)).permute(2, 0, 1)[None]
    rgb = merge_luma_chroma(rgb_to_luma(to_unit(frame)), chroma[None].float())
    return to_uint8(rgb)[0].permute(1, 2, 0).numpy()
