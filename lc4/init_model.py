"""``lc4 init-model DIR --tiny | --from-sd15 SD_DIR``: writes a complete L-C4 model folder.

``--tiny``: a tiny random configuration (every component, a small word-level CLIP tokenizer)
for tests and demos; it runs on a CPU in seconds and colorizes nothing meaningfully.
``--from-sd15``: SD1.5's VAE, UNet, CLIP text encoder, tokenizer and scheduler config from a
local diffusers folder, plus freshly initialised TDA layers, luminance encoder and CMPF (their
zero-initialised outputs make the result behave as SD1.5 until trained).

Layout (diffusers): ``model_index.json``, ``vae/``, ``luminance_encoder/``, ``unet/``, ``tda/``,
``text_encoder/``, ``tokenizer/``, ``cmpf/``, ``scheduler/``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

TINY_WORDS = (
    "a an the and or of in on at to with by from is are this that its his her their man woman boy girl "
    "child people person dog cat horse bird car bike bicycle bus truck road street tree trees grass sky "
    "cloud clouds sea water river house wall building shirt dress hat coat jacket pants shoes hair face "
    "flower flowers field mountain sun light dark old young riding walking standing sitting wearing").split()
REQUIRED_FILES = {
    "model_index.json": ("model_index.json",),
    "vae": ("vae/config.json",),
    "luminance_encoder": ("luminance_encoder/config.json",),
    "unet": ("unet/config.json",),
    "tda": ("tda/config.json",),
    "text_encoder": ("text_encoder/config.json",),
    "tokenizer": ("tokenizer/tokenizer_config.json",),
    "cmpf": ("cmpf/config.json",),
    "scheduler": ("scheduler/scheduler_config.json",),
}
# The weight files' names without suffix: what `from_pretrained` loads without a `variant`
# (safetensors or .bin, whole or as a sharded index).
WEIGHT_STEMS = {
    "vae": ("diffusion_pytorch_model",),
    "luminance_encoder": ("diffusion_pytorch_model",),
    "unet": ("diffusion_pytorch_model",),
    "tda": ("diffusion_pytorch_model",),
    "text_encoder": ("model", "pytorch_model"),
    "cmpf": ("diffusion_pytorch_model",),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def _has_weights(folder: Path, stems: tuple[str, ...]) -> bool:
    return any((folder / (stem + suffix)).is_file() for stem in stems for suffix in WEIGHT_SUFFIXES)


def missing_model_files(folder: str | Path) -> list[str]:
    """Paths (relative to ``folder``) a complete model folder needs but ``folder`` lacks."""
    folder = Path(folder)
    missing = [path for paths in REQUIRED_FILES.values() for path in paths if not (folder / path).is_file()]
    missing += [f"{component}/{stems[0]}.safetensors (or another weights file of {component})"
                for component, stems in WEIGHT_STEMS.items() if not _has_weights(folder / component, stems)]
    tokenizer = folder / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file() and not (
            (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()):
        missing.append("tokenizer/tokenizer.json (or tokenizer/vocab.json and tokenizer/merges.txt)")
    return missing


def check_model_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model: no model folder at {str(folder)!r}; expected a folder with "
                                f"{', '.join(REQUIRED_FILES)} (write one with `lc4 init-model`)")
    missing = missing_model_files(folder)
    if missing:
        raise FileNotFoundError(f"model: {str(folder)!r} lacks {', '.join(missing)}")
    return folder


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def write_tiny_tokenizer(folder: str | Path, words=None, model_max_length: int = 77):
    """A CLIP BPE tokenizer whose merges spell out ``words`` (each becomes one token); any other
    word falls back to byte-level pieces. Written as vocab.json/merges.txt and loaded from there."""
    from transformers import CLIPTokenizer

    from .cmpf import COLOR_NAMES

    words = sorted({w for name in (words or [*TINY_WORDS, *COLOR_NAMES]) for w in name.lower().split()})
    characters = list(_bytes_to_unicode().values())
    vocab = characters + [c + "</w>" for c in characters]
    known, ranks = set(vocab), {}
    for word in words:
        # BPE applies the lowest-ranked merge first, so a merge added for an earlier word (say
        # "a n" for "and") can split a later one ("tri" "an" "g" ... for "triangle"). Merges are
        # therefore added onto the pieces the earlier merges leave; being ranked after all of
        # them, they change no earlier word.
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
        current = pieces[0]
        for piece in pieces[1:]:
            ranks.setdefault((current, piece), len(ranks))
            current += piece
            if current not in known:
                vocab.append(current)
                known.add(current)
    merges = [f"{a} {b}" for a, b in sorted(ranks, key=ranks.get)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length}))
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tokenizer: loaded {len(tokenizer)} tokens from {folder}, wrote {len(vocab)}")
    split = [word for word in words if len(tokenizer.tokenize(word)) != 1]
    if split:
        raise RuntimeError(f"tokenizer: these words do not come out as one token: {split}")
    return tokenizer


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """``pieces`` merged as CLIP's BPE merges them: the lowest-ranked adjacent pair first."""
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        first, second = pieces[i], pieces[i + 1]
        merged, j = [], 0
        while j < len(pieces):
            if j + 1 < len(pieces) and pieces[j] == first and pieces[j + 1] == second:
                merged.append(first + second)
                j += 2
            else:
                merged.append(pieces[j])
                j += 1
        pieces = merged
    return pieces


def tiny_components(seed: int = 0) -> dict:
    """Every pipeline component in a tiny random configuration (VAE factor 2, two UNet levels)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .cmpf import CrossModalityPreFusion
    from .luminance import LuminanceEncoder
    from .unet import TDAAdapter

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_tiny_tokenizer(folder)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        layers_per_block=1, sample_size=32)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8)
    return dict(
        vae=vae, luminance_encoder=LuminanceEncoder.from_vae(vae), unet=unet,
        tda=TDAAdapter.from_unet(unet, spatial_stride=2, temporal_stride=2),
        text_encoder=text_encoder, tokenizer=tokenizer,
        cmpf=CrossModalityPreFusion(text_dim=32, num_layers=1, num_heads=4, luminance_channels=8,
                                    spatial_stride=2, temporal_stride=2),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
    )


def sd15_components(sd_dir: str | Path) -> dict:
    """SD1.5 from a local diffusers folder plus fresh TDA, luminance encoder and CMPF."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .cmpf import CrossModalityPreFusion
    from .luminance import LuminanceEncoder
    from .unet import TDAAdapter

    sd_dir = Path(sd_dir)
    missing = [p for p in ("vae", "unet", "text_encoder", "tokenizer", "scheduler") if not (sd_dir / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"sd_dir: {str(sd_dir)!r} is not a diffusers SD1.5 folder; lacks {', '.join(missing)}/")
    vae = AutoencoderKL.from_pretrained(sd_dir / "vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(sd_dir / "text_encoder", local_files_only=True)
    luminance_encoder = LuminanceEncoder.from_vae(vae)
    return dict(
        vae=vae, luminance_encoder=luminance_encoder, unet=unet, tda=TDAAdapter.from_unet(unet),
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(sd_dir / "tokenizer", local_files_only=True),
        cmpf=CrossModalityPreFusion(text_dim=text_encoder.config.hidden_size,
                                    luminance_channels=2 * vae.config.latent_channels),
        scheduler=DDIMScheduler.from_pretrained(sd_dir / "scheduler", local_files_only=True),
    )


def init_model(folder: str | Path, tiny: bool = False, from_sd15: str | Path | None = None, seed: int = 0):
    from .pipeline import LC4Pipeline

    if tiny == (from_sd15 is not None):
        raise ValueError("init-model: give exactly one of --tiny or --from-sd15 SD_DIR")
    components = tiny_components(seed) if tiny else sd15_components(from_sd15)
    pipeline = LC4Pipeline(**components)
    pipeline.save_pretrained(folder)
    return pipeline


def _run(args: argparse.Namespace) -> int:
    init_model(args.folder, tiny=args.tiny, from_sd15=args.from_sd15, seed=args.seed)
    print(f"wrote {args.folder}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("init-model", help="write a model folder (tiny random, or SD1.5 + fresh L-C4 parts)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", metavar="DIR")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tiny", action="store_true", help="tiny random configuration for tests and demos")
    group.add_argument("--from-sd15", metavar="SD_DIR", help="a local diffusers Stable Diffusion 1.5 folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.set_defaults(handler=_run)
