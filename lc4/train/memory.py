"""``lc4 train CONFIG --plan-memory``: the peak memory of one training step, before renting a GPU.

The step is *simulated*, not estimated from formulas: the model's architecture (from the
config's model folder, or SD1.5's when the folder is absent) is built with fake tensors
(``torch._subclasses.FakeTensorMode``: shapes and dtypes, no storage) and runs one full step
as training runs it: VAE and text encoder under ``no_grad`` in the frozen dtype, the
denoiser's forward under autocast, backward (with gradient checkpointing when the config asks
for it), the AdamW step (fused, as on a GPU), the EMA update. It is a second step: AdamW's
states only exist from the first step on, and that first one is run as its update alone, on
zero gradients. A dispatch-level tracker adds up the bytes of every live tensor storage after
each op and keeps the maximum.

What the simulation assumes:

* autocast's casts are the CPU autocast's (the fake tensors live on a fake CPU); its
  lower-precision list (linear, conv, matmul, attention) matches CUDA's, its float32 list is
  close to CUDA's;
* attention runs as a fused kernel keeping only its output and log-sum-exp for backward
  (PyTorch's CPU flash attention in the simulation; the memory-efficient or flash kernel of
  SDPA on the GPU), and so does TDA (the compiled ``lc4::tda_attention`` op's signature,
  which the CUDA kernels share); without the compiled extension TDA is simulated with the
  reference implementation, which keeps its score matrices: an upper bound, said in the plan;
* not counted: the CUDA context (about 0.3 to 0.5 GiB), cuDNN/cuBLAS workspaces and the
  caching allocator's fragmentation. :data:`CUDA_OVERHEAD_GIB` is added to the total that is
  compared with a GPU's memory.

Several GPUs (``--num-gpus N``): without sharding (DDP) each GPU holds what one GPU holds. With
``distributed.sharding: fsdp`` the step runs on rank 0 of a fake process group of N ranks
(torch's ``fake`` backend: collectives do nothing, shapes are right), the denoiser sharded by
accelerate's own ``fsdp2_prepare_model`` with the plugin training uses: shards of weights,
gradients and states, gathered fp16 weights and their resharding (``storage.resize_``, which
the tracker follows) are counted as on one of N GPUs. ``optimizer.name: adamw8bit`` is
simulated by its state tensors (:class:`SimulatedAdamW8bit`).

``--measure`` runs the same step for real on the GPU (random weights of the same
architecture; memory does not depend on the values) and reports ``max_memory_allocated``.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .config import TrainConfig
from .models import LC4Denoiser, encode_frames

GIB = 2**30
CUDA_OVERHEAD_GIB = 0.5
PLAN_BACKEND = "fused-estimate"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "no": torch.float32}

# CLIP ViT-L/14's text tower, SD1.5's text encoder.
SD15_TEXT_ENCODER_CONFIG = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")


@dataclass
class MemoryPlan:
    architecture: str
    stage: int
    trainable: tuple
    resolution: int
    frames: int
    batch_size: int
    dtype: str
    gradient_checkpointing: bool
    ema: bool
    num_gpus: int = 1
    sharding: str = "none"  # "none" (DDP when num_gpus > 1) or "fsdp"
    fsdp_strategy: str = ""
    optimizer: str = "adamw"
    uses_cmpf: bool = False  # TrainConfig.uses_cmpf: CMPF conditions the UNet (and sits on the GPU)
    luminance_chunk_frames: Optional[int] = None
    weights: dict = field(default_factory=dict)  # component -> bytes on one GPU (its shard under FSDP)
    trainable_parameters: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    ema_weights: int = 0
    peak: int = 0  # simulated peak of one step, bytes
    measured_peak: Optional[int] = None  # max_memory_allocated on the GPU, bytes
    notes: list = field(default_factory=list)

    @property
    def static(self) -> int:
        return sum(self.weights.values()) + self.optimizer_states + self.ema_weights

    @property
    def peak_with_overhead_gib(self) -> float:
        return self.peak / GIB + CUDA_OVERHEAD_GIB


class LiveMemoryTracker(TorchDispatchMode):
    """Sums the bytes of live tensor storages (fake or real) after every op; ``peak`` is the
    largest sum seen. Tensors made before the tracker starts are added with :meth:`track`.
    Storages resized in place (FSDP frees and re-allocates its gathered weights that way) are
    followed while :meth:`follow_resizes` is active."""

    def __init__(self):
        super().__init__()
        self._live = weakref.WeakKeyDictionary()  # storage -> [bytes]
        self.current = 0
        self.peak = 0

    def _add(self, tensor: torch.Tensor) -> None:
        tensor = _local(tensor)
        storage = tensor.untyped_storage()
        if storage in self._live:
            return
        size = [storage.nbytes()]
        self._live[storage] = size
        self.current += size[0]
        weakref.finalize(storage, self._release, size)

    def _release(self, size: list) -> None:
        self.current -= size[0]

    def _resized(self, storage, nbytes: int) -> None:
        size = self._live.get(storage)
        if size is not None:
            self.current += nbytes - size[0]
            size[0] = nbytes
            self.peak = max(self.peak, self.current)

    @contextlib.contextmanager
    def follow_resizes(self):
        original = torch.UntypedStorage.resize_
        tracker = self

        def resize_(storage, nbytes):
            out = original(storage, nbytes)
            tracker._resized(storage, storage.nbytes())
            return out

        torch.UntypedStorage.resize_ = resize_
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = original

    def track(self, tensors) -> None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        self.peak = max(self.peak, self.current)
        return out


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this process (what its memory is); any other tensor as is."""
    local = getattr(tensor, "_local_tensor", None)
    return local if isinstance(local, torch.Tensor) else tensor


def _register_plan_backend() -> Optional[str]:
    """A TDA backend for planning only (never chosen automatically): the compiled op, whose
    fake kernel gives the fused kernels' outputs and saved tensors. None when unavailable."""
    import lc4_kernels
    from lc4_kernels import backends

    if lc4_kernels.extension_error is not None:
        return None
    backends.register_backend(backends.Backend(
        name=PLAN_BACKEND, priority=-100, device_types=frozenset({"cpu", "cuda", "meta"}),
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
        trilinear_sample=lambda value, points: torch.ops.lc4.trilinear_sample(value, points),
        tda_attention=lambda q, k, v, points, scale: torch.ops.lc4.tda_attention(q, k, v, points, scale)[0],
        auto_selectable=False))
    return PLAN_BACKEND


def _folder_config(folder: Path, component: str) -> dict:
    import json

    names = ("config.json",)
    for name in names:
        path = folder / component / name
        if path.is_file():
            return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    raise FileNotFoundError(f"model: {folder / component} has no config.json")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_architecture(model_dir: Optional[str], frozen_dtype: torch.dtype = torch.float32,
                       train_text_encoder: bool = False):
    """Randomly initialised components with the architecture of ``model_dir`` (or SD1.5's when
    it is not a folder): ``(name, vae, text_encoder, unet, tda, luminance_encoder, cmpf)``, the
    VAE and (unless it trains) the text encoder made in ``frozen_dtype`` (fake tensors cannot
    change dtype later).
    Build under a fake-tensor mode or a device context; nothing is loaded or downloaded."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..cmpf import CrossModalityPreFusion
    from ..luminance import SD15_VAE_CONFIG, LuminanceEncoder
    from ..unet import SD15_UNET_CONFIG, TDAAdapter, insert_tda

    folder = Path(model_dir) if model_dir else None
    if folder is not None and folder.is_dir():
        name = str(folder)
        with _default_dtype(frozen_dtype):
            vae = AutoencoderKL.from_config(_folder_config(folder, "vae"))
        with _default_dtype(torch.float32 if train_text_encoder else frozen_dtype):
            text_config = _folder_config(folder, "text_encoder")
            text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in text_config.items()
                                                           if k not in ("architectures", "transformers_version")}))
        unet = UNet2DConditionModel.from_config(_folder_config(folder, "unet"))
        tda = TDAAdapter.from_config(_folder_config(folder, "tda"))
        luminance_encoder = LuminanceEncoder.from_config(_folder_config(folder, "luminance_encoder"))
        cmpf = CrossModalityPreFusion.from_config(_folder_config(folder, "cmpf"))
    else:
        name = "SD1.5 (no model folder at model.path)"
        with _default_dtype(frozen_dtype):
            vae = AutoencoderKL(**SD15_VAE_CONFIG)
        with _default_dtype(torch.float32 if train_text_encoder else frozen_dtype):
            text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG))
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        tda = TDAAdapter.from_unet(unet)
        luminance_encoder = LuminanceEncoder.from_vae(vae)  # reads the config only: float32
        cmpf = CrossModalityPreFusion(text_dim=768, luminance_channels=2 * vae.config.latent_channels)
    insert_tda(unet, tda)
    return name, vae, text_encoder, unet, tda, luminance_encoder, cmpf


def _bytes(params) -> int:
    return sum(_local(p).numel() * _local(p).element_size() for p in params)


BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes: smaller tensors keep 32-bit states
BNB_BLOCK_SIZE = 256  # one float32 absmax per block of a blockwise-quantised state


def adamw8bit_state_bytes(param: torch.Tensor) -> int:
    """Bytes of bitsandbytes ``AdamW8bit``'s state for one parameter: two uint8 moments and
    their float32 block scales, or two float32 moments below ``min_8bit_size``."""
    n = _local(param).numel()
    if n < BNB_MIN_8BIT_SIZE:
        return 8 * n
    return 2 * n + 2 * 4 * -(-n // BNB_BLOCK_SIZE)


class SimulatedAdamW8bit(torch.optim.Optimizer):
    """Stands in for ``bitsandbytes.optim.AdamW8bit`` in the plan (it has no CPU or fake-tensor
    path to trace): the same state tensors, an in-place update (its blockwise kernel keeps no
    temporaries of parameter size)."""

    def __init__(self, params, lr=1e-3):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    n = p.numel()
                    if n < BNB_MIN_8BIT_SIZE:
                        state["state1"], state["state2"] = torch.zeros_like(p), torch.zeros_like(p)
                    else:
                        blocks = -(-n // BNB_BLOCK_SIZE)
                        state["state1"] = torch.zeros(n, dtype=torch.uint8, device=p.device)
                        state["state2"] = torch.zeros(n, dtype=torch.uint8, device=p.device)
                        state["absmax1"] = torch.zeros(blocks, device=p.device)
                        state["absmax2"] = torch.zeros(blocks, device=p.device)
                p.add_(p.grad, alpha=-group["lr"])


def fsdp_plugin(config: TrainConfig, mixed_precision: str):
    """The ``FullyShardedDataParallelPlugin`` that training passes to accelerate for
    ``distributed.sharding: fsdp``: FSDP2 (``fully_shard``), one unit per ``fsdp_wrap`` module,
    weights gathered in the mixed-precision dtype, sharded checkpoints."""
    from accelerate import FullyShardedDataParallelPlugin

    dist = config.distributed
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=dist.fsdp_strategy == "FULL_SHARD",
        auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=list(dist.fsdp_wrap),
        state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False, activation_checkpointing=False)
    if mixed_precision in ("fp16", "bf16"):
        plugin.set_mixed_precision(mixed_precision)
    return plugin


def _shard_like_accelerate(denoiser, config: TrainConfig, dtype: str, mesh):
    """``fully_shard`` applied to ``denoiser`` as ``accelerator.prepare`` applies it with
    :func:`fsdp_plugin` (accelerate's own ``fsdp2_prepare_model``), on the current process group."""
    from types import SimpleNamespace

    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    mixed = {"fp32": "no"}.get(dtype, dtype)
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=fsdp_plugin(config, mixed)),
                                  torch_device_mesh=mesh, parallelism_config=SimpleNamespace(fsdp_dim_names=("dp_shard",)),
                                  mixed_precision=mixed, is_main_process=True,
                                  device=torch.device("cpu"))
    return fsdp2_prepare_model(accelerator, denoiser)


def _prepare_step(parts, config: TrainConfig, plan: MemoryPlan, real_optimizer: bool = False, mesh=None):
    """Freezing, dtypes, checkpointing, sharding, optimizer and EMA as :func:`lc4.train.loop.train`
    sets them up: ``(denoiser, text_encoder, vae, params, optimizer, ema, resident)``."""
    from types import SimpleNamespace

    from .models import freeze_all_but

    name, vae, text_encoder, unet, tda, luminance_encoder, cmpf = parts
    components = SimpleNamespace(vae=vae, text_encoder=text_encoder, unet=unet, tda=tda,
                                 luminance_encoder=luminance_encoder, cmpf=cmpf)
    params = freeze_all_but(components, plan.trainable)
    if plan.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        luminance_encoder.enable_gradient_checkpointing()
        luminance_encoder.checkpoint_chunk_frames = plan.luminance_chunk_frames
    denoiser = LC4Denoiser(unet, luminance_encoder, cmpf if plan.uses_cmpf else None,
                           text_encoder if "text_encoder" in plan.trainable else None)
    if plan.sharding == "fsdp":
        denoiser = _shard_like_accelerate(denoiser, config, plan.dtype, mesh)
        params = [p for p in denoiser.parameters() if p.requires_grad]
    optim = config.optimizer
    if real_optimizer:  # measuring on the GPU
        from .optim import build_optimizer
        optimizer = build_optimizer(params, optim, torch.device("cuda"))
    elif plan.optimizer == "adamw8bit":
        optimizer = SimulatedAdamW8bit(params, lr=optim.lr)
    else:
        optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay,
                                      eps=optim.eps, fused=True)
    ema = None
    if plan.ema:
        from diffusers.training_utils import EMAModel
        ema = EMAModel(params, decay=config.ema.decay)

    plan.weights = {"unet (with TDA)": _bytes(unet.parameters()), "vae": _bytes(vae.parameters()),
                    "text_encoder": _bytes(text_encoder.parameters()),
                    "luminance_encoder": _bytes(luminance_encoder.parameters())}
    if plan.uses_cmpf:  # otherwise CMPF is not used and stays on the CPU
        plan.weights["cmpf"] = _bytes(cmpf.parameters())
    plan.trainable_parameters = sum(p.numel() for p in params)  # the whole model's, not a shard's
    local_trainable = sum(_local(p).numel() for p in params)
    plan.gradients = 4 * local_trainable
    plan.optimizer_states = (sum(adamw8bit_state_bytes(p) for p in params) if plan.optimizer == "adamw8bit"
                             else 8 * local_trainable)
    plan.ema_weights = 4 * local_trainable if ema is not None else 0
    tensors = [*vae.parameters(), *vae.buffers(), *text_encoder.parameters(), *text_encoder.buffers(),
               *denoiser.parameters(), *denoiser.buffers(), *(ema.shadow_params if ema else [])]
    resident = list({id(t): t for t in tensors}.values())  # a trained text encoder is in the denoiser too
    return denoiser, text_encoder, vae, params, optimizer, ema, resident


def _training_step(prepared, plan: MemoryPlan, device_type: str) -> None:
    """One step as :func:`lc4.train.loop.train` runs it, on random inputs."""
    denoiser, text_encoder, vae, params, optimizer, ema, _ = prepared
    frames, side = plan.batch_size * plan.frames, plan.resolution
    pixels = torch.rand(frames, 3, side, side, device=device_type) * 2 - 1
    luminance = torch.rand(frames, 1, side, side, device=device_type) * 2 - 1
    ids = torch.zeros(plan.batch_size, text_encoder.config.max_position_embeddings, dtype=torch.long,
                      device=device_type)
    latents = encode_frames(vae, pixels)
    if "text_encoder" in plan.trainable:  # the denoiser holds it and embeds the ids itself
        text = ids
    else:
        with torch.no_grad():
            text = text_encoder(ids)[0].float()
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 1000, (frames,), device=device_type)
    noisy = latents + noise
    color_mask = torch.zeros(ids.shape, dtype=torch.bool, device=device_type) if plan.uses_cmpf else None
    autocast = (torch.autocast(device_type, dtype=DTYPES[plan.dtype]) if plan.dtype != "fp32"
                else contextlib.nullcontext())
    with autocast:
        prediction = denoiser(noisy, timesteps, text, luminance, plan.frames, color_mask)
    loss = torch.nn.functional.mse_loss(prediction.float(), noise)
    loss.backward()
    optimizer.step()
    if ema is not None:
        ema.step(params)
    optimizer.zero_grad(set_to_none=True)


def _make_optimizer_states(prepared) -> None:
    """What a first training step leaves behind: the optimizer's states (and the EMA's step).
    The step that the plan then runs is a second one, whose backward has the states resident.
    A first step's forward and backward would only add a peak lower than the second's, so the
    update runs on zero gradients instead (same shapes, same states, half the tracing)."""
    _, _, _, params, optimizer, ema, _ = prepared
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    if ema is not None:
        ema.step(params)
    optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _fake_process_group(world_size: int):
    """A process group of ``world_size`` ranks, this one rank 0, whose collectives do nothing
    (torch's ``fake`` backend): FSDP shards and communicates as on ``world_size`` GPUs."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_available() and dist.is_initialized():
        raise ValueError("--plan-memory: run it outside a distributed launch (one process plans for all)")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,), mesh_dim_names=("dp_shard",))
    finally:
        dist.destroy_process_group()


def plan_memory(config: TrainConfig, resolution: Optional[int] = None, frames: Optional[int] = None,
                batch_size: Optional[int] = None, dtype: Optional[str] = None, measure: bool = False,
                num_gpus: Optional[int] = None) -> MemoryPlan:
    """The simulated (and, with ``measure``, measured) peak memory of one training step on one
    of ``num_gpus`` GPUs (default 1): with ``distributed.sharding: fsdp`` the model is sharded
    over them as accelerate shards it; without sharding (DDP) every GPU holds the same."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..tda import set_tda_backend

    dtype = dtype or ("fp32" if config.mixed_precision == "no" else config.mixed_precision)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of fp16, bf16, fp32, got {dtype!r}")
    num_gpus = 1 if num_gpus is None else num_gpus
    if num_gpus < 1:
        raise ValueError(f"--num-gpus: expected >= 1, got {num_gpus}")
    sharding = config.distributed.sharding
    plan = MemoryPlan(
        architecture="", stage=config.stage, trainable=config.trainable_parts, uses_cmpf=config.uses_cmpf,
        resolution=resolution or config.data.resolution, frames=frames or config.data.num_frames,
        batch_size=batch_size or config.batch_size, dtype=dtype,
        gradient_checkpointing=config.gradient_checkpointing, ema=config.ema.enabled, num_gpus=num_gpus,
        sharding=sharding, fsdp_strategy=config.distributed.fsdp_strategy if sharding == "fsdp" else "",
        optimizer=config.optimizer.name,
        luminance_chunk_frames=config.luminance_chunk_frames if config.gradient_checkpointing else None)
    if plan.resolution % 8 or plan.frames < 1 or plan.batch_size < 1:
        raise ValueError(f"plan: expected a resolution that is a multiple of 8 and positive frames and batch size, "
                         f"got {plan.resolution}, {plan.frames}, {plan.batch_size}")
    backend = _register_plan_backend()
    if backend is None:
        plan.notes.append("lc4_kernels._C is not built: TDA simulated with the reference implementation, "
                          "which keeps its score matrices (an upper bound)")
    if plan.optimizer == "adamw8bit":
        plan.notes.append("AdamW8bit simulated by its state tensors (bitsandbytes: uint8 moments, float32 "
                          f"scale per {BNB_BLOCK_SIZE} values, 32-bit below {BNB_MIN_8BIT_SIZE} values)")
    if sharding == "none" and num_gpus > 1:
        plan.notes.append(f"DDP on {num_gpus} GPUs: every GPU holds what one holds (gradients in DDP's buckets, "
                          "gradient_as_bucket_view); distributed.sharding: fsdp divides them")
    try:
        tracker = LiveMemoryTracker()
        sharded = _fake_process_group(num_gpus) if sharding == "fsdp" else contextlib.nullcontext()
        with sharded as mesh, FakeTensorMode(), tracker.follow_resizes():
            parts = build_architecture(config.model.path, DTYPES[dtype], "text_encoder" in plan.trainable)
            plan.architecture = parts[0]
            for module in (parts[3], parts[6]):
                set_tda_backend(module, backend)
            prepared = _prepare_step(parts, config, plan, mesh=mesh)
            with tracker:
                tracker.track(prepared[-1])
                _make_optimizer_states(prepared)
                _training_step(prepared, plan, "cpu")
        plan.peak = tracker.peak
        if measure:
            if sharding == "fsdp" or num_gpus > 1:
                raise ValueError("--measure: measures one process on one GPU (sharding: none, --num-gpus 1); "
                                 "for FSDP read torch.cuda.max_memory_allocated in a real accelerate launch")
            plan.measured_peak = measure_peak_memory(config, plan)
    finally:
        if backend is not None:
            from lc4_kernels import backends
            backends.unregister_backend(PLAN_BACKEND)
    return plan


def measure_peak_memory(config: TrainConfig, plan: MemoryPlan) -> int:
    """Runs the planned step on the GPU and returns ``torch.cuda.max_memory_allocated``."""
    if not torch.cuda.is_available():
        raise ValueError("--measure: needs a CUDA GPU")
    from types import SimpleNamespace

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.device(device):
        parts = build_architecture(config.model.path, DTYPES[plan.dtype])
    measured = SimpleNamespace(**vars(plan))  # preparing fills in the same fields; keep the plan's
    prepared = _prepare_step(parts, config, measured, real_optimizer=True)
    for _ in range(2):
        _training_step(prepared, measured, "cuda")
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def format_plan(plan: MemoryPlan, gpu_gib: float = 16.0) -> str:
    gib = lambda n: f"{n / GIB:8.2f} GiB"  # noqa: E731
    if plan.sharding == "fsdp":
        layout = f"{plan.num_gpus} GPU(s), FSDP {plan.fsdp_strategy}: per GPU, trained weights, gradients and states sharded"
    elif plan.num_gpus > 1:
        layout = f"{plan.num_gpus} GPUs, DDP: per GPU, everything replicated"
    else:
        layout = "1 GPU"
    states = "AdamW8bit states" if plan.optimizer == "adamw8bit" else "AdamW states"
    lines = [
        f"memory plan: one training step, stage {plan.stage} (trains {', '.join(plan.trainable)})",
        f"  architecture        {plan.architecture}",
        f"  clips x frames      {plan.batch_size} x {plan.frames} at {plan.resolution}x{plan.resolution} px, "
        f"{plan.dtype}{', gradient checkpointing' if plan.gradient_checkpointing else ''}"
        f"{f', luminance encoder {plan.luminance_chunk_frames} frame(s) at a time' if plan.luminance_chunk_frames else ''}"
        f"{', EMA' if plan.ema else ''}",
        f"  GPUs                {layout}",
        f"  trainable params    {plan.trainable_parameters / 1e6:8.1f} M",
        "  weights:",
        *(f"    {name:<18}{gib(size)}" for name, size in plan.weights.items()),
        f"  gradients (fp32)    {gib(plan.gradients)}",
        f"  {states:<20}{gib(plan.optimizer_states)}",
        f"  EMA weights         {gib(plan.ema_weights)}",
        f"  peak of the step    {gib(plan.peak)}  (weights, states, activations, temporaries)",
        f"  + CUDA overhead     {gib(CUDA_OVERHEAD_GIB * GIB)}  (context, workspaces; estimated)",
        f"  = about             {plan.peak_with_overhead_gib:8.2f} GiB: "
        f"{'fits' if plan.peak_with_overhead_gib <= gpu_gib else 'does not fit'} a {gpu_gib:g} GB GPU",
    ]
    if plan.measured_peak is not None:
        lines.append(f"  measured on the GPU {gib(plan.measured_peak)}  (torch.cuda.max_memory_allocated)")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)
