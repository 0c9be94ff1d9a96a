"""LC4Pipeline: loading from a local folder, the accepted inputs, CCF on a long video."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lc4_kernels
from lc4 import video as video_io
from lc4.ccf import ClipPlan
from lc4.pipeline import LC4Pipeline, scheduler_named
from lc4.unet import TDAAdapter, has_tda, runs_tda, tda_removed

from model_helpers import randomize_, recorded_tda_calls

RUN = dict(num_inference_steps=2, guidance_scale=3.0, seed=0, resolution=16, frames_per_clip=4)


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    pipe = LC4Pipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    randomize_(pipe.tda, std=0.1)  # trained-like TDA, so clip handling shows in the output
    return pipe


def gray_frames(frames=6, height=20, width=28, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, height, width, generator=generator)
    shift = torch.arange(frames).view(-1, 1, 1, 1) * 0.02
    return ((base + shift).clamp(0, 1) * 255).round().to(torch.uint8).expand(frames, 3, height, width).contiguous()


def test_model_folder_keeps_tda_weights_apart(tiny_model_dir, pipeline):
    unet_keys = load_file(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").keys()
    tda_keys = load_file(tiny_model_dir / "tda" / "diffusion_pytorch_model.safetensors").keys()
    assert unet_keys and not any("tda" in key for key in unet_keys)
    assert tda_keys and all(key.startswith("blocks.") for key in tda_keys)
    assert any(".tda." in name for name, _ in pipeline.unet.named_parameters())


def test_tensors_arrays_and_frame_folders_give_the_same_colours(pipeline, tmp_path):
    frames = gray_frames()
    out = pipeline(frames, "a red car on a road", **RUN)
    assert out.frames.shape == (6, 3, 16, 16) and out.chroma.shape == (6, 2, 16, 16)
    assert out.full_resolution_frames.shape == (6, 3, 20, 28)
    from_array = pipeline(frames.permute(0, 2, 3, 1).numpy(), "a red car on a road", **RUN)
    from_list = pipeline([f for f in frames[:, 0].numpy()], "a red car on a road", **RUN)  # (H, W) gray
    video_io.write_frame_folder(tmp_path / "frames", frames)
    from_folder = pipeline(str(tmp_path / "frames"), "a red car on a road", **RUN)
    for other in (from_array, from_list, from_folder):
        assert torch.allclose(other.frames, out.frames, atol=1e-5)
    other_seed = pipeline(frames, "a red car on a road", **{**RUN, "seed": 1})
    assert not torch.allclose(other_seed.frames, out.frames, atol=1e-3)


def test_sixteen_bit_frames_are_their_eight_bit_values_scaled(pipeline):
    frames = gray_frames()
    sixteen_bit = frames.numpy().astype(np.uint16) * 257  # 255 -> 65535
    out = pipeline(frames, "a red car on a road", **RUN)
    assert torch.allclose(pipeline(sixteen_bit, "a red car on a road", **RUN).frames, out.frames, atol=1e-5)


def test_the_pipeline_runs_the_tda_layers_it_is_given(tiny_model_dir):
    """Replacing ``tda`` (in the constructor, by ``from_pipe`` or by assignment) puts its layers
    into the UNet, and each pipeline runs its own even when two share one UNet."""
    pipe = LC4Pipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    other = TDAAdapter.from_config(pipe.tda.config)
    other.load_state_dict(pipe.tda.state_dict())
    randomize_(other, std=0.5)
    frames = gray_frames(frames=4)
    before = pipe(frames, "a red car", **RUN).frames
    swapped = LC4Pipeline.from_pipe(pipe, tda=other)
    assert swapped.unet is pipe.unet and runs_tda(swapped.unet, other)
    after = swapped(frames, "a red car", **RUN).frames
    assert not torch.allclose(after, before, atol=1e-4)
    # Back to the first pipeline, whose UNet now holds the other's layers: it runs its own.
    assert torch.equal(pipe(frames, "a red car", **RUN).frames, before)
    assert runs_tda(pipe.unet, pipe.tda)
    built = LC4Pipeline(**{**pipe.components, "tda": other})
    assert torch.equal(built(frames, "a red car", **RUN).frames, after)
    pipe.tda = other
    assert runs_tda(pipe.unet, other) and torch.equal(pipe(frames, "a red car", **RUN).frames, after)
    # A UNet without TDA layers is a bypass on purpose (the toy evaluation's ablation): left so.
    with tda_removed(pipe.unet):
        bypassed = pipe(frames, "a red car", **RUN).frames
        assert not has_tda(pipe.unet)
    assert not torch.allclose(bypassed, after, atol=1e-4) and runs_tda(pipe.unet, other)


def test_a_video_that_fits_one_clip_is_one_clip(pipeline):
    frames = gray_frames(frames=4)
    whole = pipeline(frames, "a blue sky", **RUN)
    one_clip = pipeline(frames, "a blue sky", clip_mode=ClipPlan([range(4)], 4), **{**RUN, "frames_per_clip": 4})
    assert torch.allclose(whole.frames, one_clip.frames, atol=1e-6)
    split = pipeline(frames, "a blue sky", clip_mode=ClipPlan.disjoint(4, 2), **RUN)
    assert not torch.allclose(whole.frames, split.frames, atol=1e-4)


def test_long_video_with_ccf_runs_clips_of_bounded_size(pipeline):
    """50 frames, clips of 4: TDA never sees more than clips_per_batch x 4 frames at once, and
    the rest of the UNet runs once per frame (batch 2 x 50 with guidance), not per clip."""
    frames = gray_frames(frames=50, height=16, width=16)
    batches = []
    hook = pipeline.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        with recorded_tda_calls() as calls:
            out = pipeline(frames, "a green tree", **{**RUN, "num_inference_steps": 1})
    finally:
        hook.remove()
    plan = pipeline.clip_plan(50, 4)
    assert len(plan) > 50 / 4  # skip windows at intervals 1 .. 32
    assert batches == [100]
    assert max(call["k"][1] for call in calls) <= 4
    assert max(call["k"][0] for call in calls) <= 2 * plan.clips_per_batch  # (videos x clips) per call
    assert len(calls) > len(plan) // plan.clips_per_batch  # every TDA layer ran the clips in chunks
    assert out.frames.shape == (50, 3, 16, 16) and torch.isfinite(out.frames).all()


def test_bad_inputs_are_clear_errors(pipeline, components, tmp_path):
    frames = gray_frames()
    with pytest.raises(ValueError, match="prompt: expected a non-empty"):
        pipeline(frames, "  ", **RUN)
    with pytest.raises(ValueError, match=r"video: expected frames \(T, 3, H, W\)"):
        pipeline(torch.rand(2, 5, 8, 8), "a car", **RUN)
    with pytest.raises(ValueError, match=r"guidance_rescale: expected a value in \[0, 1\], got 1.5"):
        pipeline(frames, "a car", **RUN, guidance_rescale=1.5)
    with pytest.raises(ValueError, match="resolution: expected a multiple of 2"):
        pipeline(frames, "a car", **{**RUN, "resolution": 15})
    with pytest.raises(ValueError, match="video: expected a video file or a folder"):
        pipeline(str(tmp_path / "nothing.mp4"), "a car", **RUN)
    with pytest.raises(FileNotFoundError, match="not a local model folder"):
        LC4Pipeline.from_pretrained("runwayml/stable-diffusion-v1-5")
    with pytest.raises(ValueError, match=r"video: an array \(20, 28, 3\) is one colour frame"):
        pipeline(frames[0].permute(1, 2, 0).numpy(), "a car", **RUN)
    with pytest.raises(ValueError, match="video: expected at least one frame"):
        pipeline([], "a car", **RUN)
    with pytest.raises(ValueError, match=r"video: float frames must lie in \[0, 1\].*divide them by 255"):
        pipeline(frames.float(), "a car", **RUN)
    with pytest.raises(ValueError, match="frames: expected uint8, uint16 or float in \\[0, 1\\], got torch.int32"):
        pipeline(frames.int(), "a car", **RUN)
    with pytest.raises(ValueError, match="decode_batch_size: expected an int >= 1, got 0"):
        pipeline(frames, "a car", **RUN, decode_batch_size=0)
    from lc4.init_model import write_tiny_tokenizer
    small = write_tiny_tokenizer(tmp_path / "tok", words=["car"])
    with pytest.raises(ValueError, match="tokenizer: has .* tokens but the text encoder expects"):
        LC4Pipeline(**{**components, "tokenizer": small})


@pytest.mark.parametrize("rescale", [0.0, 0.5, 1.0])
def test_guidance_rescale_mixes_in_the_guided_prediction_at_the_conditional_spread(pipeline, rescale, monkeypatch):
    """What the scheduler is handed, from the UNet's unconditional and conditional outputs:
    g = u + s (c - u), then (1 - r) g + r g std(c) / std(g), the stds per frame."""
    unet_outputs, scheduler_inputs = [], []
    unet_forward, scheduler_step = pipeline.unet.forward, pipeline.scheduler.step

    def recording_forward(*args, **kwargs):
        out = unet_forward(*args, **kwargs)
        unet_outputs.append(out.sample.clone())
        return out

    def recording_step(model_output, *args, **kwargs):
        scheduler_inputs.append(model_output.clone())
        return scheduler_step(model_output, *args, **kwargs)

    monkeypatch.setattr(pipeline.unet, "forward", recording_forward)
    monkeypatch.setattr(pipeline.scheduler, "step", recording_step)
    pipeline(gray_frames(frames=4), "a red car", **RUN, guidance_rescale=rescale)
    assert len(unet_outputs) == len(scheduler_inputs) == RUN["num_inference_steps"]
    for both, handed in zip(unet_outputs, scheduler_inputs):
        uncond, cond = both.double().chunk(2)
        guided = uncond + RUN["guidance_scale"] * (cond - uncond)
        ratio = cond.std(dim=(1, 2, 3), keepdim=True) / guided.std(dim=(1, 2, 3), keepdim=True)
        expected = (1 - rescale) * guided + rescale * guided * ratio
        torch.testing.assert_close(handed.double(), expected, rtol=1e-5, atol=1e-6)
        if rescale == 1.0:
            torch.testing.assert_close(handed.double().std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)),
                                       rtol=1e-5, atol=1e-6)


# Each is configured from the model's DDIM config. Four of them take no generator in step(); the
# ancestral ones draw noise every step.
SCHEDULERS = ["DDPMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
              "HeunDiscreteScheduler", "DEISMultistepScheduler", "KDPM2AncestralDiscreteScheduler"]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_other_schedulers_run_and_are_seeded(pipeline, name, monkeypatch):
    """Any compatible diffusers scheduler samples, and the seed fixes its output: the noise of
    an ancestral step comes from the seeded generator, not from torch's global one."""
    ddim = pipeline.scheduler
    monkeypatch.setattr(pipeline, "scheduler", scheduler_named(name, ddim))
    assert type(pipeline.scheduler).__name__ == name
    for key in ("prediction_type", "beta_schedule", "beta_end", "num_train_timesteps"):
        assert pipeline.scheduler.config[key] == ddim.config[key]
    frames, run = gray_frames(frames=4), {**RUN, "num_inference_steps": 4}  # PNDM's warm-up needs 4
    first = pipeline(frames, "a red car", **run)
    torch.manual_seed(123)  # moves the global generator between the runs
    again = pipeline(frames, "a red car", **run)
    assert torch.isfinite(first.frames).all() and first.frames.shape == (4, 3, 16, 16)
    torch.testing.assert_close(again.frames, first.frames, rtol=0, atol=0)
    other_seed = pipeline(frames, "a red car", **{**run, "seed": 1})
    assert not torch.allclose(other_seed.frames, first.frames, atol=1e-4)


def test_ddim_eta_adds_seeded_noise(pipeline):
    frames = gray_frames(frames=4)
    deterministic = pipeline(frames, "a red car", **RUN)
    noisy = pipeline(frames, "a red car", **RUN, eta=1.0)
    torch.manual_seed(123)
    noisy_again = pipeline(frames, "a red car", **RUN, eta=1.0)
    assert not torch.allclose(noisy.frames, deterministic.frames, atol=1e-4)
    torch.testing.assert_close(noisy_again.frames, noisy.frames, rtol=0, atol=0)


def test_scheduler_errors_name_the_argument(pipeline, monkeypatch):
    with pytest.raises(ValueError, match="eta: expected >= 0"):
        pipeline(gray_frames(frames=4), "a red car", **RUN, eta=-0.5)
    with pytest.raises(ValueError, match="scheduler: expected one of DDIMScheduler, DDPMScheduler, .*got 'Euler'"):
        scheduler_named("Euler", pipeline.scheduler)
    monkeypatch.setattr(pipeline, "scheduler", scheduler_named("EulerDiscreteScheduler", pipeline.scheduler))
    with pytest.raises(ValueError, match="eta: EulerDiscreteScheduler takes no eta"):
        pipeline(gray_frames(frames=4), "a red car", **RUN, eta=1.0)


def test_given_latents_are_the_initial_noise(pipeline):
    """``latents`` replaces the noise the seed would draw: the seed's own noise passed as
    ``latents`` gives the seeded output, other noise another output."""
    frames = gray_frames(frames=4)
    seeded = pipeline(frames, "a red car", **RUN)
    shape = (4, pipeline.unet.config.in_channels, 8, 8)  # resolution 16, VAE factor 2
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(RUN["seed"]))
    given = pipeline(frames, "a red car", **{**RUN, "seed": 7}, latents=noise)
    torch.testing.assert_close(given.frames, seeded.frames, rtol=0, atol=0)
    other = pipeline(frames, "a red car", **RUN, latents=torch.randn(shape))
    assert not torch.allclose(other.frames, seeded.frames, atol=1e-4)
    with pytest.raises(ValueError, match=r"latents: expected the initial noise of shape \(4, \d+, 8, 8\).*got \(4, \d+, 4, 4\)"):
        pipeline(frames, "a red car", **RUN, latents=torch.randn(shape[:2] + (4, 4)))


def test_a_generator_draws_the_noise_as_the_seed_does(pipeline):
    frames = gray_frames(frames=4)
    unseeded = {key: value for key, value in RUN.items() if key != "seed"}
    by_generator = pipeline(frames, "a red car", **unseeded, generator=torch.Generator().manual_seed(RUN["seed"]))
    torch.testing.assert_close(by_generator.frames, pipeline(frames, "a red car", **RUN).frames, rtol=0, atol=0)
    with pytest.raises(ValueError, match="seed, generator: expected one of them, got both"):
        pipeline(frames, "a red car", **RUN, generator=torch.Generator())
    with pytest.raises(ValueError, match="generator: expected a torch.Generator .*or a list of them, one a video, got 3"):
        pipeline(frames, "a red car", **unseeded, generator=3)
    with pytest.raises(ValueError, match="generator: expected 2 generators, one a video, got 1"):
        pipeline(frames, ["a red car", "a blue car"], **unseeded, generator=[torch.Generator()])


@pytest.mark.parametrize("eta", [0.0, 1.0])  # 1.0: DDIM draws noise of its own at every step
def test_a_list_of_generators_gives_each_video_its_own_noise(pipeline, eta):
    frames = gray_frames(frames=4)
    unseeded = {key: value for key, value in RUN.items() if key != "seed"}
    prompts = ["a red car", "a blue car"]

    def generators(*seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    batch = pipeline(frames, prompts, **unseeded, eta=eta, generator=generators(1, 2)).frames
    for n, seed in enumerate((1, 2)):
        alone = pipeline(frames, prompts[n], **unseeded, eta=eta, generator=generators(seed)).frames
        torch.testing.assert_close(batch[n], alone, rtol=0, atol=1e-5)
    swapped = pipeline(frames, prompts, **unseeded, eta=eta, generator=generators(2, 1)).frames
    assert not torch.allclose(swapped[0], batch[0], atol=1e-3)


def test_step_end_callback_sees_every_step_and_can_replace_the_latents(pipeline):
    frames = gray_frames(frames=4)
    seen = []

    def record(pipe, step, timestep, tensors):
        seen.append((step, int(timestep), sorted(tensors), tensors["latents"].shape, tensors["prediction"].shape))
        return {}

    plain = pipeline(frames, "a red car", **RUN, callback_on_step_end=record,
                     callback_on_step_end_tensor_inputs=["latents", "prediction"])
    timesteps = pipeline.scheduler.timesteps.tolist()
    assert [(s, t) for s, t, *_ in seen] == list(enumerate(timesteps)) and len(seen) == RUN["num_inference_steps"]
    assert all(names == ["latents", "prediction"] and a == b for _, _, names, a, b in seen)
    torch.testing.assert_close(pipeline(frames, "a red car", **RUN).frames, plain.frames, rtol=0, atol=0)

    def flatten_last(pipe, step, timestep, tensors):
        last = step == RUN["num_inference_steps"] - 1
        return {"latents": torch.zeros_like(tensors["latents"])} if last else {}

    zeroed = pipeline(frames, "a red car", **RUN, callback_on_step_end=flatten_last)
    assert not torch.allclose(zeroed.frames, plain.frames, atol=1e-4)
    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs: expected names among .*got \['noise'\]"):
        pipeline(frames, "a red car", **RUN, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise"])


def test_diffusers_pipeline_callbacks_name_their_own_tensors(pipeline):
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    class Count(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipe, step, timestep, tensors):
            self.steps = getattr(self, "steps", 0) + 1
            return tensors

    count = Count()
    pipeline(gray_frames(frames=4), "a red car", **RUN, callback_on_step_end=MultiPipelineCallbacks([count]))
    assert count.steps == RUN["num_inference_steps"]

    class WantsPromptEmbeds(Count):
        tensor_inputs = ["prompt_embeds"]

    with pytest.raises(ValueError, match=r"callback_on_step_end_tensor_inputs: .*got \['prompt_embeds'\]"):
        pipeline(gray_frames(frames=4), "a red car", **RUN, callback_on_step_end=WantsPromptEmbeds())


def test_output_types_are_the_same_frames_in_other_containers(pipeline):
    frames = gray_frames(frames=4)
    pt = pipeline(frames, "a red car", **RUN)
    as_np = pipeline(frames, "a red car", **RUN, output_type="np")
    assert isinstance(as_np.frames, np.ndarray) and as_np.frames.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(as_np.frames, pt.frames.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(as_np.chroma, pt.chroma.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(as_np.full_resolution_frames, pt.full_resolution_frames.permute(0, 2, 3, 1).numpy())

    as_pil = pipeline(frames, "a red car", **RUN, output_type="pil")
    assert len(as_pil.frames) == 4 and as_pil.frames[0].size == (16, 16) and as_pil.frames[0].mode == "RGB"
    assert len(as_pil.full_resolution_frames) == 4 and as_pil.full_resolution_frames[0].size == (28, 20)
    expected = (pt.frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(np.stack([np.asarray(image) for image in as_pil.frames]), expected)

    seen = {}

    def keep_last(pipe, step, timestep, tensors):
        seen["latents"] = tensors["latents"].clone()
        return {}

    latent = pipeline(frames, "a red car", **RUN, output_type="latent", callback_on_step_end=keep_last)
    assert latent.chroma is None and latent.full_resolution_frames is None
    torch.testing.assert_close(latent.frames, seen["latents"], rtol=0, atol=0)
    assert latent.frames.shape == (4, pipeline.unet.config.in_channels, 8, 8)
    with pytest.raises(ValueError, match=r"output_type: expected one of \('pt', 'np', 'pil', 'latent'\), got 'jpeg'"):
        pipeline(frames, "a red car", **RUN, output_type="jpeg")


def test_return_dict_false_gives_the_output_fields_as_a_tuple(pipeline):
    frames = gray_frames(frames=4)
    output = pipeline(frames, "a red car", **RUN)
    result = pipeline(frames, "a red car", **RUN, return_dict=False)
    assert isinstance(result, tuple) and len(result) == 3
    for got, expected in zip(result, (output.frames, output.chroma, output.full_resolution_frames)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    frames_only, chroma, full = pipeline(frames, "a red car", **RUN, full_resolution=False, return_dict=False)
    assert full is None and chroma.shape == (4, 2, 16, 16)


@pytest.fixture
def trained_conditioning(pipeline):
    """CMPF's W_e and the luminance encoder's latent residual and decoder skips made nonzero
    (zero when initialised), so that what they carry shows in the output."""
    modules = (pipeline.cmpf, pipeline.luminance_encoder)
    saved = [{name: value.clone() for name, value in module.state_dict().items()} for module in modules]
    for module in modules:
        randomize_(module, std=0.1)
    yield
    for module, state in zip(modules, saved):
        module.load_state_dict(state)


def test_prompt_embeds_stand_in_for_the_prompts(pipeline, trained_conditioning):
    """The text encoder's output and colour-word mask of a prompt, passed as ``prompt_embeds``
    and ``prompt_color_mask``, give exactly the prompt's output; so for the negative prompt."""
    frames = gray_frames(frames=4)
    embeds, mask = pipeline.encode_prompt(["a red car"])
    assert mask.any()  # "red" is a colour word: the mask matters
    by_text = pipeline(frames, "a red car", **RUN)
    by_embeds = pipeline(frames, **RUN, prompt_embeds=embeds, prompt_color_mask=mask)
    torch.testing.assert_close(by_embeds.frames, by_text.frames, rtol=0, atol=0)
    two_d = pipeline(frames, **RUN, prompt_embeds=embeds[0], prompt_color_mask=mask[0])
    torch.testing.assert_close(two_d.frames, by_text.frames, rtol=0, atol=0)
    unmasked = pipeline(frames, **RUN, prompt_embeds=embeds)  # no colour words: CMPF fuses every token
    assert not torch.allclose(unmasked.frames, by_text.frames, atol=1e-6)

    negative, negative_mask = pipeline.encode_prompt(["a blue car"])
    by_negative_text = pipeline(frames, "a red car", **RUN, negative_prompt="a blue car")
    by_negative_embeds = pipeline(frames, "a red car", **RUN, negative_prompt_embeds=negative,
                                  negative_prompt_color_mask=negative_mask)
    torch.testing.assert_close(by_negative_embeds.frames, by_negative_text.frames, rtol=0, atol=0)
    assert not torch.allclose(by_negative_text.frames, by_text.frames, atol=1e-4)

    other = pipeline(frames, **RUN, prompt_embeds=embeds + 0.5 * torch.randn(embeds.shape, generator=torch.Generator().manual_seed(1)),
                     prompt_color_mask=mask)
    assert not torch.allclose(other.frames, by_text.frames, atol=1e-4)


def test_prompt_embeds_errors_name_the_argument(pipeline):
    frames = gray_frames(frames=4)
    embeds, mask = pipeline.encode_prompt(["a red car"])
    length, width = embeds.shape[1:]
    with pytest.raises(ValueError, match="prompt, prompt_embeds: expected one of them, got both"):
        pipeline(frames, "a red car", **RUN, prompt_embeds=embeds)
    with pytest.raises(ValueError, match=r"prompt: expected a non-empty description .*\(or prompt_embeds\)"):
        pipeline(frames, **RUN)
    with pytest.raises(ValueError, match=rf"prompt_embeds: expected \(P, L, {width}\) or \(L, {width}\) .*got \(1, {length}, {width + 1}\)"):
        pipeline(frames, **RUN, prompt_embeds=torch.randn(1, length, width + 1))
    with pytest.raises(ValueError, match=rf"prompt_embeds: expected .*got \(1, 1, {length}, {width}\)"):
        pipeline(frames, **RUN, prompt_embeds=embeds[None])
    with pytest.raises(ValueError, match=r"prompt_embeds: expected a float tensor .*of torch.int64"):
        pipeline(frames, **RUN, prompt_embeds=torch.ones(1, length, width, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"prompt_color_mask: expected \(1, {length}\) like prompt_embeds, got \(1, 3\)"):
        pipeline(frames, **RUN, prompt_embeds=embeds, prompt_color_mask=mask[:, :3])
    with pytest.raises(ValueError, match=r"prompt_color_mask: expected a bool tensor .*got torch.float32"):
        pipeline(frames, **RUN, prompt_embeds=embeds, prompt_color_mask=mask.float())
    with pytest.raises(ValueError, match="prompt_color_mask: goes with prompt_embeds"):
        pipeline(frames, "a red car", **RUN, prompt_color_mask=mask)
    with pytest.raises(ValueError, match=rf"negative_prompt_embeds: expected \(1, {length}, {width}\), as prompt_embeds .*got \(1, 5, {width}\)"):
        pipeline(frames, "a red car", **RUN, negative_prompt_embeds=embeds[:, :5])
    with pytest.raises(ValueError, match=rf"negative_prompt_embeds: expected \(2, {length}, {width}\), as prompt_embeds .*got \(1, {length}, {width}\)"):
        pipeline(frames, ["a red car", "a blue car"], **RUN, negative_prompt_embeds=embeds)
    with pytest.raises(ValueError, match=r"negative_prompt: expected a text or a list of 2 texts, one a prompt, got \['grey'\]"):
        pipeline(frames, ["a red car", "a blue car"], **RUN, negative_prompt=["grey"])
    with pytest.raises(ValueError, match=r"prompt: expected a non-empty description .*got \['a red car', ''\]"):
        pipeline(frames, ["a red car", ""], **RUN)
    with pytest.raises(ValueError, match=r"num_videos_per_prompt: expected an int >= 1, got 0"):
        pipeline(frames, "a red car", **RUN, num_videos_per_prompt=0)
    with pytest.raises(ValueError, match="negative_prompt, negative_prompt_embeds: expected one of them, got both"):
        pipeline(frames, "a red car", **RUN, negative_prompt="grey", negative_prompt_embeds=embeds)
    long = torch.randn(1, length + 4, width)
    with pytest.raises(ValueError, match=rf"negative_prompt_embeds: expected with prompt_embeds longer than .*got prompt_embeds of {length + 4}"):
        pipeline(frames, **RUN, prompt_embeds=long)


def test_shorter_prompt_embeds_take_a_negative_prompt_of_their_length(pipeline):
    """As in diffusers, the negative prompt is tokenised to the given embeddings' length."""
    frames = gray_frames(frames=4)
    embeds, mask = pipeline.encode_prompt(["a red car"], max_length=8)
    assert embeds.shape[1] == 8
    output = pipeline(frames, **RUN, prompt_embeds=embeds, prompt_color_mask=mask)
    negative, negative_mask = pipeline.encode_prompt([""], max_length=8)
    explicit = pipeline(frames, **RUN, prompt_embeds=embeds, prompt_color_mask=mask, negative_prompt_embeds=negative,
                        negative_prompt_color_mask=negative_mask)
    torch.testing.assert_close(output.frames, explicit.frames, rtol=0, atol=0)


def test_interrupt_stops_sampling_and_the_call_exposes_its_settings(pipeline):
    frames = gray_frames(frames=4)
    run = {**RUN, "num_inference_steps": 3}
    steps, kept = [], {}

    def stop_after_first(pipe, step, timestep, tensors):
        steps.append(step)
        kept["latents"] = tensors["latents"].clone()
        assert pipe.guidance_scale == run["guidance_scale"] and pipe.do_classifier_free_guidance
        assert pipe.num_timesteps == 3
        pipe._interrupt = True
        return {}

    stopped = pipeline(frames, "a red car", **run, output_type="latent", callback_on_step_end=stop_after_first)
    assert steps == [0]
    torch.testing.assert_close(stopped.frames, kept["latents"], rtol=0, atol=0)
    full = pipeline(frames, "a red car", **run, output_type="latent")  # the flag is reset by every call
    assert not pipeline.interrupt and not torch.allclose(full.frames, stopped.frames, atol=1e-4)
    pipeline(frames, "a red car", **{**run, "guidance_scale": 1.0})
    assert pipeline.guidance_scale == 1.0 and not pipeline.do_classifier_free_guidance


@pytest.mark.parametrize("frames_count", [4, 6])  # one clip; two clips fused by CCF (frames_per_clip 4)
def test_a_batch_of_prompts_is_each_prompt_on_its_own(pipeline, trained_conditioning, frames_count):
    """Prompts in a list, each ``num_videos_per_prompt`` times, with their negative prompts: the
    n-th output is the single call with that prompt, negative prompt and the n-th noise."""
    # frames of their own, so that mixing up frames or videos in the batch shows
    frames = torch.randint(0, 256, (frames_count, 1, 20, 28), generator=torch.Generator().manual_seed(5),
                           dtype=torch.uint8).expand(-1, 3, -1, -1)
    prompts, negatives = ["a red car", "a blue car"], ["a green car", ""]
    noise = torch.randn(4, frames_count, pipeline.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(3))
    batch = pipeline(frames, prompts, **RUN, negative_prompt=negatives, num_videos_per_prompt=2, latents=noise)
    assert batch.frames.shape == (4, frames_count, 3, 16, 16) and batch.chroma.shape == (4, frames_count, 2, 16, 16)
    assert batch.full_resolution_frames.shape == (4, frames_count, 3, 20, 28)
    for n in range(4):
        single = pipeline(frames, prompts[n // 2], **RUN, negative_prompt=negatives[n // 2], latents=noise[n])
        for got, expected in zip((batch.frames, batch.chroma, batch.full_resolution_frames),
                                 (single.frames, single.chroma, single.full_resolution_frames)):
            torch.testing.assert_close(got[n], expected, rtol=0, atol=1e-5)
    assert not torch.allclose(batch.frames[0], batch.frames[2], atol=1e-3)  # the prompts differ
    assert not torch.allclose(batch.frames[0], batch.frames[1], atol=1e-3)  # so does the noise

    embeds, mask = pipeline.encode_prompt(prompts)
    negative, negative_mask = pipeline.encode_prompt(negatives)
    by_embeds = pipeline(frames, **RUN, prompt_embeds=embeds, prompt_color_mask=mask, negative_prompt_embeds=negative,
                         negative_prompt_color_mask=negative_mask, num_videos_per_prompt=2, latents=noise)
    torch.testing.assert_close(by_embeds.frames, batch.frames, rtol=0, atol=1e-5)


def test_batched_outputs_keep_the_video_dimension_in_every_output_type(pipeline):
    frames = gray_frames(frames=4)
    pt = pipeline(frames, ["a red car"], **RUN)  # a list, even of one prompt, is a batch
    assert pt.frames.shape == (1, 4, 3, 16, 16)
    torch.testing.assert_close(pt.frames[0], pipeline(frames, "a red car", **RUN).frames, rtol=0, atol=1e-5)
    as_np = pipeline(frames, ["a red car"], **RUN, output_type="np", num_videos_per_prompt=2)
    assert as_np.frames.shape == (2, 4, 16, 16, 3) and as_np.chroma.shape == (2, 4, 16, 16, 2)
    assert as_np.full_resolution_frames.shape == (2, 4, 20, 28, 3)
    as_pil = pipeline(frames, ["a red car", "a blue car"], **RUN, output_type="pil")
    assert [len(video) for video in as_pil.frames] == [4, 4] and as_pil.frames[1][0].size == (16, 16)
    latent = pipeline(frames, ["a red car", "a blue car"], **RUN, output_type="latent")
    assert latent.frames.shape == (2, 4, pipeline.unet.config.in_channels, 8, 8)
    with pytest.raises(ValueError, match=r"latents: expected the initial noise of shape \(2, 4, \d+, 8, 8\) \(videos, frames"):
        pipeline(frames, ["a red car", "a blue car"], **RUN, latents=torch.randn(4, pipeline.unet.config.in_channels, 8, 8))


def test_decoding_keeps_to_decode_batch_size_frames_a_call(pipeline, monkeypatch):
    import lc4.pipeline as pipeline_module

    frames = gray_frames(frames=4)
    run = dict(**RUN, num_videos_per_prompt=3)
    whole = pipeline(frames, ["a red car"], **run).frames
    sizes = []
    original = pipeline_module.decode_latents

    def record(vae, latents, skips=None):
        sizes.append(latents.shape[0])
        return original(vae, latents, skips)

    monkeypatch.setattr(pipeline_module, "decode_latents", record)
    for batch_size, expected in ((2, [2, 2] * 3), (8, [8, 4]), (12, [12])):
        sizes.clear()
        parts = pipeline(frames, ["a red car"], **run, decode_batch_size=batch_size).frames
        assert sizes == expected, (batch_size, sizes)
        torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler"])  # Euler: sigma > 1, scaled input
def test_each_step_feeds_the_unet_the_scaled_latents_plus_the_luminance_residual(pipeline, trained_conditioning,
                                                                                 name, monkeypatch):
    """UNet input at step k: ``scale_model_input(z_k, t_k) + conv(y_lum)``, ``z_0`` the noise times
    the scheduler's ``init_noise_sigma``, ``y_lum`` from luma in [-1, 1]; one copy per guidance
    group; the UNet is called at the scheduler's timesteps."""
    from lc4.pipeline import load_luma

    monkeypatch.setattr(pipeline, "scheduler", scheduler_named(name, pipeline.scheduler))
    frames = gray_frames(frames=4)
    noise = torch.randn(4, pipeline.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(4))
    calls, after_step = [], []
    unet_forward = pipeline.unet.forward

    def recording_forward(sample, timestep, *args, **kwargs):
        calls.append((sample.clone(), timestep))
        return unet_forward(sample, timestep, *args, **kwargs)

    def keep_latents(pipe, step, timestep, tensors):
        after_step.append(tensors["latents"].clone())
        return {}

    monkeypatch.setattr(pipeline.unet, "forward", recording_forward)
    pipeline(frames, "a red car", **RUN, latents=noise, callback_on_step_end=keep_latents, output_type="latent")

    def fresh_scheduler():
        scheduler = scheduler_named(name, pipeline.scheduler)
        scheduler.set_timesteps(RUN["num_inference_steps"])
        return scheduler

    with torch.no_grad():
        residual = pipeline.luminance_encoder(load_luma(frames, size=(16, 16)) * 2 - 1).latent_residual
    assert residual.abs().sum() > 0
    timesteps = fresh_scheduler().timesteps
    assert len(calls) == len(timesteps) == RUN["num_inference_steps"]
    latents = noise * fresh_scheduler().init_noise_sigma
    for (sample, timestep), t, after in zip(calls, timesteps, after_step):
        assert float(timestep) == float(t)
        expected = fresh_scheduler().scale_model_input(latents, t) + residual  # fresh: the step found by t
        torch.testing.assert_close(sample, torch.cat([expected] * 2), rtol=1e-5, atol=1e-5)
        latents = after
    if name == "EulerDiscreteScheduler":
        assert fresh_scheduler().init_noise_sigma > 1.5  # the scaling shows


def test_guidance_pairs_the_negative_prompt_with_the_first_half(pipeline, trained_conditioning, monkeypatch):
    """Under classifier-free guidance the UNet batch is (negative prompt, prompt), each with the
    embeddings a call with that text alone (no guidance) gives; the guidance takes the first half
    as the unconditional prediction."""
    seen = []
    unet_forward = pipeline.unet.forward

    def recording_forward(*args, **kwargs):
        seen.append(kwargs["encoder_hidden_states"].clone())
        return unet_forward(*args, **kwargs)

    monkeypatch.setattr(pipeline.unet, "forward", recording_forward)
    frames, run = gray_frames(frames=4), {**RUN, "num_inference_steps": 1}
    pipeline(frames, "a red car", **{**run, "guidance_scale": 1.0})
    pipeline(frames, "a blue car", **{**run, "guidance_scale": 1.0})
    pipeline(frames, "a red car", **run, negative_prompt="a blue car")
    red, blue, guided = seen
    assert not torch.allclose(red, blue, atol=1e-4)
    torch.testing.assert_close(guided, torch.cat([blue, red]), rtol=0, atol=1e-6)


def test_the_visual_prompt_is_frames_spread_over_the_whole_video(pipeline, monkeypatch):
    """CMPF sees the luminance features of ``frames_per_clip`` frames, first and last included,
    evenly spaced (a single one: the middle frame)."""
    from lc4.pipeline import evenly_spaced, load_luma

    seen = []
    cmpf_forward = pipeline.cmpf.forward

    def recording_forward(text, luminance_features, num_frames, *args, **kwargs):
        seen.append((luminance_features.clone(), num_frames))
        return cmpf_forward(text, luminance_features, num_frames, *args, **kwargs)

    monkeypatch.setattr(pipeline.cmpf, "forward", recording_forward)
    frames = gray_frames(frames=10, height=16, width=16)
    pipeline(frames, "a red car", **{**RUN, "num_inference_steps": 1})  # frames_per_clip 4
    (features, count), = seen
    picked = np.round(np.linspace(0, 9, RUN["frames_per_clip"])).astype(int).tolist()
    with torch.no_grad():
        expected = pipeline.luminance_encoder(load_luma(frames, size=(16, 16)) * 2 - 1, return_skips=False).features
    assert count == len(picked) and not torch.allclose(expected[picked], expected[:len(picked)])
    torch.testing.assert_close(features, expected[picked], rtol=0, atol=1e-6)
    assert evenly_spaced(1, 9) == [4] and evenly_spaced(8, 3) == [0, 1, 2]


def test_outputs_are_the_final_latents_decoded_with_the_luminance_skips(pipeline, trained_conditioning):
    """frames: VAE decode of the final latents with the luminance skips, mapped from [-1, 1] to
    [0, 1]; chroma: their Cb, Cr; full_resolution_frames: that chroma on the input's own luma."""
    from lc4.color import rgb_to_luma, rgb_to_ycbcr
    from lc4.luminance import decode_latents
    from lc4.pipeline import load_luma

    frames = gray_frames(frames=4)
    latents = pipeline(frames, "a red car", **RUN, output_type="latent").frames
    out = pipeline(frames, "a red car", **RUN)
    with torch.no_grad():
        skips = pipeline.luminance_encoder(load_luma(frames, size=(16, 16)) * 2 - 1).skips
        decoded = decode_latents(pipeline.vae, latents, skips)
        assert not torch.allclose(decoded, decode_latents(pipeline.vae, latents), atol=1e-4)  # skips matter
    torch.testing.assert_close(out.frames, ((decoded + 1) / 2).clamp(0, 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.chroma, rgb_to_ycbcr(out.frames)[:, 1:], rtol=0, atol=1e-6)
    assert out.chroma.abs().max() > 1e-3
    torch.testing.assert_close(rgb_to_luma(out.full_resolution_frames), load_luma(frames), rtol=0, atol=1e-5)


def test_frames_are_resized_to_the_model_resolution_by_area_averaging():
    from lc4.color import rgb_to_luma
    from lc4.pipeline import load_luma

    frames = torch.randint(0, 256, (2, 3, 32, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    expected = torch.nn.functional.avg_pool2d(rgb_to_luma(frames.double() / 255), 2).float()
    torch.testing.assert_close(load_luma(frames, size=(16, 24)), expected, rtol=0, atol=1e-6)


@pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")
def test_bfloat16_on_the_cpu_runs_the_tda_op_on_the_cpu_backend_and_stays_near_float32(tiny_model_dir):
    def loaded():
        pipe = LC4Pipeline.from_pretrained(tiny_model_dir)
        pipe.set_progress_bar_config(disable=True)
        randomize_(pipe.tda, std=0.1)
        return pipe

    expected = loaded()(gray_frames(), "a red car", **RUN).frames
    half = loaded().to("cpu", torch.bfloat16)
    assert half.unet.dtype == half.vae.dtype == half.cmpf.dtype == torch.bfloat16
    with recorded_tda_calls() as calls:
        got = half(gray_frames(), "a red car", **RUN, backend="cpu").frames
    assert calls and all(call["dtype"] == torch.bfloat16 and call["backend"] == "cpu" for call in calls)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=3e-2)
