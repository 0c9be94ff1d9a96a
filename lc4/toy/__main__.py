"""``python -m lc4.toy COMMAND``: the toy L-C4 of ``make toy-model`` and ``make demo``.

* ``data ROOT``: writes the generated train and held-out clips with their JSONL lists;
* ``init-model DIR --data ROOT``: a fresh toy model folder whose VAE, then luminance encoder,
  are trained on the data;
* ``finish OUT --runs RUN...``: copies the last stage's model to OUT and plots the loss curves;
* ``evaluate MODEL --data ROOT``: the three claims on held-out clips, as JSON;
* ``score MODEL --first N --count M``: claims 1 and 2 alone on generated held-out clips (any
  seeds, e.g. beyond the written split), with every miss named and 95% intervals, as JSON: the
  figure to compare models on more clips than the report's;
* ``demo MODEL --out DIR``: a held-out clip colorized under two prompts.

Every command takes ``--config`` (default ``configs/toy/toy.yaml``) and ``--set KEY=VALUE``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ..cli_logging import setup_cli_logging

DEFAULT_CONFIG = "configs/toy/toy.yaml"


def _settings(args):
    import yaml

    from .settings import load_settings

    overrides = {}
    for text in args.overrides:
        key, _, value = text.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return load_settings(args.config if Path(args.config).is_file() else None, overrides)


def cmd_data(args) -> int:
    from .dataset import write_dataset

    data = _settings(args).data
    write_dataset(args.root, data.num_train, data.num_heldout, data.size, data.num_frames)
    print(f"wrote {data.num_train} training and {data.num_heldout} held-out clips to {args.root}")
    return 0


def cmd_init_model(args) -> int:
    from ..pipeline import LC4Pipeline
    from .model import toy_components, train_luminance_encoder, train_vae

    settings = _settings(args)
    listing = Path(args.data) / "train.jsonl"
    components = toy_components(settings.model, settings.data.size, seed=settings.vae.seed)
    curve = train_vae(components["vae"], listing, settings.vae)
    luminance_curve = train_luminance_encoder(components["vae"], components["luminance_encoder"], listing,
                                              settings.luminance)
    folder = Path(args.folder)
    LC4Pipeline(**components).save_pretrained(folder)
    (folder / "vae_curve.json").write_text(json.dumps(curve))
    (folder / "luminance_curve.json").write_text(json.dumps(luminance_curve))
    message = f"VAE reconstruction loss {curve[-1]['loss']:.5f}"
    if luminance_curve:
        message += (f", luminance encoder: decode loss {luminance_curve[-1]['decode_loss']:.5f}, "
                    f"latent loss {luminance_curve[-1]['latent_loss']:.5f}")
    print(f"wrote {folder} ({message})")
    return 0


def cmd_finish(args) -> int:
    from .report import plot_curves

    out = Path(args.out)
    model = Path(args.runs[-1]) / "model"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out)
    plot_curves(Path(args.init) / "vae_curve.json", [Path(run) / "logs" / "metrics.jsonl" for run in args.runs],
                out / "training_curves.png", luminance_curve=Path(args.init) / "luminance_curve.json")
    print(f"wrote {out} and {out / 'training_curves.png'}")
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from ..pipeline import LC4Pipeline
    from .dataset import clip_of_row, read_rows
    from .run import evaluate_pipeline, heldout_long_clips

    settings = _settings(args)
    torch.manual_seed(0)
    pipeline = LC4Pipeline.from_pretrained(args.model)
    rows = read_rows(Path(args.data) / "heldout.jsonl")[:settings.evaluation.clips]
    clips = [clip_of_row(row) for row in rows]
    report = evaluate_pipeline(pipeline, clips, settings.evaluation,
                               heldout_long_clips(settings.evaluation, settings.data.size))
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


def _intervals(scores: dict) -> dict:
    """95% Wilson intervals of the colour accuracy and the swap success, from the counts behind
    them: whether two models' figures differ by more than the clips' own noise."""
    from scipy.stats import binomtest

    caption_misses = sum(miss["prompt"] == "caption" for miss in scores["misses"])
    counts = {"color_accuracy_95ci": (scores["objects"] - caption_misses, scores["objects"]),
              "swap_success_95ci": (scores["swap_clips"] - len(scores["swaps_failed"]), scores["swap_clips"])}
    intervals = {}
    for key, (successes, trials) in counts.items():
        interval = binomtest(successes, trials).proportion_ci(0.95, method="wilson") if trials else None
        intervals[key] = [interval.low, interval.high] if interval else None
    return intervals


def cmd_score(args) -> int:
    import torch

    from ..pipeline import LC4Pipeline
    from .generator import generate_clip
    from .run import color_and_swap_scores

    if args.count < 1:
        raise SystemExit(f"--count: expected at least one clip, got {args.count}")
    settings = _settings(args)
    torch.manual_seed(0)
    pipeline = LC4Pipeline.from_pretrained(args.model)
    data = settings.data
    clips = [generate_clip(seed, "heldout", data.size, data.num_frames)
             for seed in range(args.first, args.first + args.count)]
    scores, _ = color_and_swap_scores(pipeline, clips, settings.evaluation)
    text = json.dumps({"first_seed": args.first, **scores, **_intervals(scores)}, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


def cmd_demo(args) -> int:
    from ..pipeline import LC4Pipeline
    from .demo import write_demo
    from .generator import generate_clip

    settings = _settings(args)
    pipeline = LC4Pipeline.from_pretrained(args.model)
    data = settings.data
    clips = (generate_clip(seed, "heldout", data.size, data.num_frames) for seed in range(args.seed, args.seed + 100))
    clip = next(c for c in clips if len(c.spec.objects) >= 2)
    for path in write_demo(pipeline, clip, settings.evaluation, Path(args.out)):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lc4.toy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=DEFAULT_CONFIG, help="toy config (YAML); default %(default)s")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", parents=[common], help="write the generated clips")
    p.add_argument("root")
    p.set_defaults(handler=cmd_data)
    p = sub.add_parser("init-model", parents=[common],
                       help="fresh toy model with its VAE and luminance encoder trained on the data")
    p.add_argument("folder")
    p.add_argument("--data", required=True)
    p.set_defaults(handler=cmd_init_model)
    p = sub.add_parser("finish", parents=[common], help="copy the trained model, plot the curves")
    p.add_argument("out")
    p.add_argument("--init", required=True, help="the init-model folder (for the VAE curve)")
    p.add_argument("--runs", nargs="+", required=True, help="the stage output folders, in order")
    p.set_defaults(handler=cmd_finish)
    p = sub.add_parser("evaluate", parents=[common], help="the three claims on held-out clips")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--output", help="also write the JSON report here")
    p.set_defaults(handler=cmd_evaluate)
    p = sub.add_parser("score", parents=[common],
                       help="colour accuracy and swap success on generated held-out clips, misses named")
    p.add_argument("model")
    p.add_argument("--first", type=int, default=100, help="first held-out seed; default %(default)s (after the "
                   "written split's 100)")
    p.add_argument("--count", type=int, default=100, help="number of clips; default %(default)s")
    p.add_argument("--output", help="also write the JSON here")
    p.set_defaults(handler=cmd_score)
    p = sub.add_parser("demo", parents=[common], help="a held-out clip under two prompts")
    p.add_argument("model")
    p.add_argument("--seed", type=int, default=0, help="first held-out seed to try (a clip with two objects)")
    p.add_argument("--out", required=True)
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv=None) -> int:
    setup_cli_logging("%(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
